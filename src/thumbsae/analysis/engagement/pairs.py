"""How sure is "A beats B"? Pairwise probabilities from the engagement model, and their calibration.

P(A beats B) is the probability that A's channel-relative log views exceed B's, given both
pictures. The difference of their scores is uncertain in two ways, and both enter:
- the model's estimate: the score difference d_b under each of B bootstrap refits over training
  channels (`EngagementModel.score_samples`); the intercept and the channel cancel in it;
- what a score difference means in views: the win curve g(d) = P(y_A > y_B | d), learned out of
  fold on pairs of training thumbnails of one channel (`EngagementModel.pair_curve`, isotonic).
So P(A beats B) = mean over refits of g(d_b). Both parts come from the training data alone. The
out-of-fold curve already carries some estimation error, so the average over refits leans towards
0.5: where the two disagree, the stated probability is the cautious one.

"Truly better", for calibration: the realised views of held-out channels' thumbnails, compared
within a channel. It is the only truth a real dataset has, so the same check runs on any data with
channels, and it is what the stated probability promises. Against a world's noise-free expected
log views (where a video's own luck is held fixed, as for two stills of one video) the same
probabilities are conservative: closer to 0.5 than the true rate (`truth="expected"` measures it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from thumbsae.analysis.engagement.config import EngagementConfig
from thumbsae.analysis.engagement.fit import split_by_channel
from thumbsae.analysis.engagement.model import EngagementModel
from thumbsae.errors import ThumbsaeError

# Pairs per chunk of the all-pairs computation: bounds memory at about 8 x this x B bytes.
PAIR_CHUNK = 20_000


def beat_probability(diff_KB: np.ndarray, curve: tuple[np.ndarray, np.ndarray] | None) -> np.ndarray:
    """float64 `[K]`: P(first beats second) of K pairs from their score differences under B refits.

    diff_KB: `[K, B]` first's minus second's score per refit (B = 1: the point scores only).
    curve: the model's win curve (d knots ascending, g), interpolated linearly and flat beyond
    its ends; None: a pair counts as won when its difference is > 0 (ties half).
    """
    diff_KB = np.atleast_2d(np.asarray(diff_KB, dtype=np.float64))
    if curve is None:
        return (diff_KB > 0).mean(axis=1) + 0.5 * (diff_KB == 0).mean(axis=1)
    return np.interp(diff_KB, curve[0], curve[1]).mean(axis=1)


def model_samples(model: EngagementModel, latents) -> np.ndarray:
    """`[N, B]` scores under the refits, or `[N, 1]` point scores for a model without refits."""
    samples = model.score_samples(latents)
    return samples if samples is not None else model.predict(latents)[0][:, None]


def beat_probabilities(model: EngagementModel, latents) -> np.ndarray:
    """float64 `[N, N]`: entry (i, j) = P(thumbnail i beats j) for the rows of `latents` `[N, F]`.

    The diagonal is 0.5 and P(j, i) = 1 - P(i, j).
    """
    samples_NB = model_samples(model, latents)
    n = samples_NB.shape[0]
    first, second = np.triu_indices(n, k=1)
    p = np.full((n, n), 0.5)
    for start in range(0, first.size, PAIR_CHUNK):
        a, b = first[start : start + PAIR_CHUNK], second[start : start + PAIR_CHUNK]
        p_ab = beat_probability(samples_NB[a] - samples_NB[b], model.pair_curve)
        p[a, b], p[b, a] = p_ab, 1.0 - p_ab
    return p


@dataclass(frozen=True)
class PairCalibration:
    """The reliability of stated pairwise probabilities.

    table: one row per bin of p (`bin_lo`, `bin_hi`, `n_pairs`, `mean_p`, `win_rate`, `gap` =
        win_rate - mean_p, `counted`: n_pairs >= min_pairs); ece: expected calibration error
        (|gap| weighted by pairs, all bins); max_gap: the largest |gap| over counted bins;
        n_pairs: pairs in all; truth: what "truly better" meant.
    """

    table: pd.DataFrame
    ece: float
    max_gap: float
    n_pairs: int
    min_pairs: int
    truth: str

    def summary(self) -> dict:
        """JSON-ready numbers for summary.json: `ece`, `max_gap`, `n_pairs`, `min_pairs`, `truth`, `bins`."""
        bins = [
            {k: (None if isinstance(v, float) and np.isnan(v) else (v.item() if hasattr(v, "item") else v))
             for k, v in row.items()}
            for row in self.table.to_dict(orient="records")
        ]
        max_gap = None if np.isnan(self.max_gap) else self.max_gap
        return {"ece": self.ece, "max_gap": max_gap, "n_pairs": self.n_pairs, "min_pairs": self.min_pairs,
                "truth": self.truth, "bins": bins}


def reliability(
    p_P: np.ndarray, win_P: np.ndarray, *, n_bins: int = 10, min_pairs: int = 200, truth: str = ""
) -> PairCalibration:
    """Reliability table and calibration errors of stated probabilities `p_P` against outcomes
    `win_P` (1 won, 0 lost, 0.5 tie), both `[P]`. Bins are [k/n_bins, (k+1)/n_bins)."""
    p_P, win_P = np.asarray(p_P, dtype=np.float64), np.asarray(win_P, dtype=np.float64)
    if p_P.shape != win_P.shape or p_P.ndim != 1 or p_P.size == 0:
        raise ThumbsaeError(
            f"reliability needs equal non-empty [P] probabilities and outcomes, got {p_P.shape}, {win_P.shape}"
        )
    bin_P = np.minimum((p_P * n_bins).astype(np.int64), n_bins - 1)
    count_K = np.bincount(bin_P, minlength=n_bins)
    safe_K = np.maximum(count_K, 1)
    mean_p_K = np.bincount(bin_P, weights=p_P, minlength=n_bins) / safe_K
    win_K = np.bincount(bin_P, weights=win_P, minlength=n_bins) / safe_K
    filled = count_K > 0
    table = pd.DataFrame({
        "bin_lo": np.arange(n_bins) / n_bins,
        "bin_hi": np.arange(1, n_bins + 1) / n_bins,
        "n_pairs": count_K,
        "mean_p": np.where(filled, mean_p_K, np.nan),
        "win_rate": np.where(filled, win_K, np.nan),
    })
    table["gap"] = table["win_rate"] - table["mean_p"]
    table["counted"] = count_K >= min_pairs
    ece = float(np.sum(count_K[filled] * np.abs(win_K - mean_p_K)[filled]) / p_P.size)
    counted = table.loc[table["counted"], "gap"].abs()
    return PairCalibration(
        table=table, ece=ece, max_gap=float(counted.max()) if len(counted) else float("nan"),
        n_pairs=int(p_P.size), min_pairs=int(min_pairs), truth=truth,
    )


def _pairs_within(groups_N: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(i `[P]`, j `[P]`), i < j: every pair of rows sharing a group."""
    firsts, seconds = [], []
    for g in np.unique(groups_N):
        rows = np.flatnonzero(groups_N == g)
        i, j = np.triu_indices(rows.size, k=1)
        firsts.append(rows[i])
        seconds.append(rows[j])
    return np.concatenate(firsts), np.concatenate(seconds)


def pair_calibration(
    model: EngagementModel,
    latents,
    outcome_N: np.ndarray,
    groups_N: np.ndarray,
    *,
    n_bins: int = 10,
    min_pairs: int = 200,
    truth: str = "realised views",
) -> PairCalibration:
    """Calibration of `model`'s P(A beats B) over all pairs of thumbnails sharing a group.

    latents: `[N, F]` of thumbnails the model did not see (held-out channels); outcome_N: `[N]`
    what decides who truly wins (views, or a world's expected log views); groups_N: `[N]`
    channel ids. Each pair is oriented as a ranking shows it, the higher score first (equal
    scores: the lower row first), so p is the probability stated for "the model's pick wins".
    """
    outcome_N = np.asarray(outcome_N, dtype=np.float64)
    groups_N = np.asarray(groups_N).astype(str)
    samples_NB = model_samples(model, latents)
    score_N = model.predict(latents)[0]
    if not (outcome_N.shape == groups_N.shape == score_N.shape):
        raise ThumbsaeError(
            f"pair_calibration: {score_N.size} latent rows, {outcome_N.size} outcomes, {groups_N.size} groups"
        )
    first, second = _pairs_within(groups_N)
    if first.size == 0:
        raise ThumbsaeError("pair_calibration: no two thumbnails share a channel")
    swap = score_N[second] > score_N[first]
    first, second = np.where(swap, second, first), np.where(swap, first, second)
    p_P = np.concatenate([
        beat_probability(samples_NB[first[k : k + PAIR_CHUNK]] - samples_NB[second[k : k + PAIR_CHUNK]],
                         model.pair_curve)
        for k in range(0, first.size, PAIR_CHUNK)
    ])
    diff_P = outcome_N[first] - outcome_N[second]
    win_P = np.where(diff_P > 0, 1.0, np.where(diff_P < 0, 0.0, 0.5))
    return reliability(p_P, win_P, n_bins=n_bins, min_pairs=min_pairs, truth=truth)


def world_expected_log_views(table: pd.DataFrame, ground_truth: dict) -> np.ndarray:
    """float64 `[N]`: the part of a world thumbnail's noise-free expected log views its picture sets.

    sum of its motifs' log effects + warmth_effect x warmth (ground_truth.json's formula without
    base, channel, age and noise): for two stills of one video, channel, upload date and the
    video's own noise are shared, so this is exactly where their expected log views differ.
    table: the world's `thumbnails.csv` rows (`motifs` `;`-joined, `warmth`). A null world: 0.
    """
    if ground_truth.get("null"):
        return np.zeros(len(table))  # the views were permuted: no picture changes them
    for column in ("motifs", "warmth"):
        if column not in table.columns:
            raise ThumbsaeError(f"world truth: the thumbnails table has no '{column}' column (not a world manifest)")
    effects = ground_truth.get("motif_effects")
    if not isinstance(effects, dict):
        raise ThumbsaeError("world truth: ground_truth.json has no 'motif_effects' object")
    motif_N = [
        sum(float(effects.get(m, 0.0)) for m in s.split(";") if m) if isinstance(s, str) else 0.0
        for s in table["motifs"]
    ]
    warmth_N = pd.to_numeric(table["warmth"], errors="coerce").fillna(0.0).to_numpy(dtype=np.float64)
    return np.asarray(motif_N, dtype=np.float64) + float(ground_truth.get("warmth_effect", 0.0)) * warmth_N


def held_out_pair_calibration(
    model: EngagementModel,
    latents_NF,
    table: pd.DataFrame,
    *,
    seed: int = 0,
    config: EngagementConfig | None = None,
    ground_truth: dict | None = None,
    truth: str = "views",
    n_bins: int = 10,
    min_pairs: int = 200,
) -> PairCalibration:
    """`pair_calibration` of `model` on the held-out channels of the table it was fitted on.

    latents_NF: the latents `[N, F]` the model was fitted on, rows = `table` rows (`views`,
    `channel_id`); seed and config: those of the fit, so the held-out channels are the same.
    truth: `views` (the realised views, any data with channels) or `expected` (a world's
    noise-free expected log views from `ground_truth`, `world_expected_log_views`).
    """
    if "channel_id" not in table.columns:
        raise ThumbsaeError("pair calibration needs a 'channel_id' column: pairs are compared within a channel")
    cfg = config or EngagementConfig()
    groups = table["channel_id"].astype(str).to_numpy()
    _, test, _ = split_by_channel(groups, n=len(table), test_fraction=cfg.test_fraction, seed=seed)
    if truth == "views":
        outcome, label = table["views"].to_numpy(dtype=np.float64), "realised views (held-out channels)"
    elif truth == "expected":
        if ground_truth is None:
            raise ThumbsaeError("pair calibration: truth='expected' needs the world's ground_truth.json")
        outcome = world_expected_log_views(table, ground_truth)
        label = "world expected log views (motifs + warmth; channel, date, noise held fixed)"
    else:
        raise ThumbsaeError(f"pair calibration: truth must be 'views' or 'expected', got {truth!r}")
    return pair_calibration(
        model, latents_NF[test], outcome[test], groups[test], n_bins=n_bins, min_pairs=min_pairs, truth=label,
    )
