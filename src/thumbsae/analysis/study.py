"""The feature-group study: the published statistics exactly, then made rigorous.

`run_feature_study(latents, table, cfg)` takes sparse SAE latents `[N, F]` of thumbnails and their
table (`video_id`, `views`, optional `channel_id`, `upload_date`) and returns a `StudyResult`:

The study exactly (keys of `summary`):
- groups: each feature's `group_size` top thumbnails; it qualifies if all of them activate above
  `threshold`; one is held out (`top1` or seeded `random`); `group_stat` is the median (or mean)
  of the others' views; `lift` = group_stat / dataset median.
- sides: the `n_side` qualifying features with the highest (`high`) and lowest (`low`) group_stat.
- `ks_statistic`/`ks_pvalue`: group statistics vs as many random groups (drawn with replacement),
  on the qualifying features; `ks_study_*`: the study's version over all F latents, zeros included.
- `hhm`/`lhm`: the statistic of the held-out views of the high / low features; `p_hhm` =
  P(null >= hhm), `p_lhm` = P(null <= lhm) over `n_null` statistics of n_side random views
  (`strict_p`: P(null > hhm), P(null < lhm), the author's way).

The author's code conventions (`eval=study` follows them; docs/study.md has the table):
- `median=lower`: the median of an even count is the lower middle value (torch), not the mean of
  the two (numpy); it applies to every median the study takes.
- `strict_p`: the held-out p-values count only random medians strictly beyond HHM / LHM.
- `drop_zero_median`: features whose group statistic is 0 views are not qualifying (the author's
  `means > 0`), so they are neither ranked nor counted.
- fewer than 2 x n_side qualifying features: ours split them between the sides; the author's
  top and bottom n_side overlap. Then a warning is logged and `summary["author_sides"]` says
  what the author's code would have taken.

Beyond the study:
- `selection_null_p` (`_low`): the mean log-lift of the high (low) side against the same
  selection re-run on `n_permutations` permutations of the views, p = (1 + #extreme) / (B + 1).
- per feature `p_value` (two-sided; `p_method` says how: hypergeometric for the median, Monte
  Carlo against random subsets for the mean), `q_value` (Benjamini-Hochberg over all tested
  features), `lift_ci_low`/`lift_ci_high` (`ci_method`: percentile bootstrap; beyond
  `max_bootstrap_features` tested features only the sides are bootstrapped and the rest get an
  order-statistic CI for the median or a normal CI for the mean).
- `adjust=channel|channel_date`: the primary analysis runs on adjusted log views (`lift` =
  exp(group_stat - dataset median)); the raw analysis runs too, side by side (`summary["raw"]`,
  `summary["adjusted"]`, per-feature `*_raw` columns).

Raw log-lift (for the selection null) is log((stat + 1) / (median + 1)), finite for zero views.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from thumbsae.analysis import stats as st
from thumbsae.analysis.adjust import adjust_views, channel_codes
from thumbsae.analysis.groups import FeatureGroups, top_groups
from thumbsae.config import Seed
from thumbsae.files import atomic_path
from thumbsae.errors import ThumbsaeError
from thumbsae.jsonable import to_json_ready

log = logging.getLogger(__name__)

# Independent random streams per purpose, so changing one setting never moves another's draws.
STREAM_RANDOM_GROUPS, STREAM_HELDOUT_NULL, STREAM_SELECTION, STREAM_FEATURE_NULL, STREAM_BOOTSTRAP = 1, 2, 3, 4, 5


@dataclass(frozen=True)
class EvalConfig:
    """Settings of the feature-group study (Hydra `eval.*`); defaults are the published study's.

    group_size: members per group, the held-out one included. n_side: features per side.
    threshold: a feature qualifies if its group_size-th highest activation is > threshold.
    heldout: `top1` | `random`. statistic: `median` | `mean`. adjust: `none` | `channel` |
    `channel_date`. max_per_channel: None or the most members one channel may have in a group.
    n_null: draws of the held-out null. n_random_groups: random groups for the KS test (None: as
    many as qualifying features). n_permutations: B of the selection null. n_bootstrap: B of the
    CIs. alpha: test level and 1 - CI coverage. seed: all random draws. pool: carried for the
    latents code. n_feature_null: random subsets behind the per-feature p of the mean statistic.
    max_bootstrap_features: above this many tested features only the sides are bootstrapped.
    median: `average` (numpy: the mean of the two middle values of an even count) | `lower`
    (torch's `median()`: the lower one, the author's). strict_p: the held-out p-values count only
    random statistics strictly beyond HHM / LHM (the author's `>`, `<`) instead of ties too.
    drop_zero_median: a feature whose group statistic is 0 views does not qualify (the author's
    `means > 0`).
    """

    group_size: int = 400
    n_side: int = 100
    threshold: float = 0.05
    heldout: str = "top1"
    statistic: str = "median"
    adjust: str = "none"
    max_per_channel: int | None = None
    n_null: int = 1_000_000
    n_random_groups: int | None = None
    n_permutations: int = 200
    n_bootstrap: int = 1000
    alpha: float = 0.05
    seed: Seed = 0
    pool: str = "max"
    n_feature_null: int = 100_000
    max_bootstrap_features: int = 20_000
    median: str = "average"
    strict_p: bool = False
    drop_zero_median: bool = False

    def __post_init__(self) -> None:
        choices = {
            "heldout": ("top1", "random"),
            "statistic": ("median", "mean"),
            "adjust": ("none", "channel", "channel_date"),
            "pool": ("max", "mean"),
            "median": ("average", "lower"),
        }
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ThumbsaeError(f"eval.{key}={getattr(self, key)!r}: expected one of {', '.join(allowed)}")
        minimum = {"group_size": 2, "n_side": 1, "n_null": 1, "n_permutations": 1, "n_bootstrap": 1,
                   "n_feature_null": 1, "max_bootstrap_features": 0}
        for key, low in minimum.items():
            if int(getattr(self, key)) < low:
                raise ThumbsaeError(f"eval.{key}={getattr(self, key)}: must be >= {low}")
        if self.max_per_channel is not None and int(self.max_per_channel) < 1:
            raise ThumbsaeError(f"eval.max_per_channel={self.max_per_channel}: must be >= 1 or null")
        if self.n_random_groups is not None and int(self.n_random_groups) < 1:
            raise ThumbsaeError(f"eval.n_random_groups={self.n_random_groups}: must be >= 1 or null")
        if not 0 < float(self.alpha) < 1:
            raise ThumbsaeError(f"eval.alpha={self.alpha}: must be in (0, 1)")
        if not (math.isfinite(float(self.threshold)) and float(self.threshold) >= 0):
            raise ThumbsaeError(f"eval.threshold={self.threshold}: must be a finite number >= 0")
        for key in ("strict_p", "drop_zero_median"):
            if not isinstance(getattr(self, key), bool):
                raise ThumbsaeError(f"eval.{key}={getattr(self, key)!r}: expected true or false")

    @property
    def statistic_kind(self) -> st.Statistic:
        """The statistic as `thumbsae.analysis.stats` takes it (`median_lower` for median=lower)."""
        return "median_lower" if self.statistic == "median" and self.median == "lower" else self.statistic

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any]) -> "EvalConfig":
        """Build from a Hydra/dict `eval` node; keys that belong to other eval parts are ignored."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in dict(mapping).items() if k in known})


@dataclass(frozen=True)
class StudyResult:
    """What the study found.

    feature_groups: one row per tested feature (CONTRACT columns + extras), ascending `feature`.
    summary: JSON-ready dict (NaN -> None) with the CONTRACT keys, `raw` and `adjusted` blocks.
    top_and_bottom: the study's CSV, `top_or_bottom, rank, latent_feature_index, group_median_views`.
    nulls: arrays for plots (primary analysis): `group_stats` `[G]`, `random_group_stats` `[R]`,
        `heldout_null` `[n_null]`, `selection_null_high`/`_low` `[B]`, and the scalars
        `dataset_median`, `hhm`, `lhm`, `cutoff_high`/`cutoff_low` (the n_side-th group stat).
    """

    feature_groups: pd.DataFrame
    summary: dict
    top_and_bottom: pd.DataFrame
    nulls: dict


@dataclass(frozen=True)
class _Analysis:
    """One analysis (raw views or adjusted log views) of fixed groups; arrays are `[G]`."""

    stat_G: np.ndarray
    lift_G: np.ndarray
    ci_low_G: np.ndarray
    ci_high_G: np.ndarray
    ci_method_G: np.ndarray
    p_G: np.ndarray
    q_G: np.ndarray
    side_G: np.ndarray
    side_rank_G: np.ndarray
    heldout_value_G: np.ndarray
    high_G: np.ndarray  # group positions of the high side, best first
    low_G: np.ndarray  # group positions of the low side, lowest first
    block: dict
    nulls: dict


def _median_kind(cfg: EvalConfig) -> st.Statistic:
    """The median convention of `cfg` for medians that are medians whatever the statistic."""
    return "median_lower" if cfg.median == "lower" else "median"


def _rng(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), stream]))


def _side_sizes(n_groups: int, n_side: int) -> tuple[int, int, bool]:
    """(n_high, n_low, split): fewer than 2 * n_side qualifying features are split in two halves."""
    if n_groups >= 2 * n_side:
        return n_side, n_side, False
    return n_groups - n_groups // 2, n_groups // 2, True


def _check_table(latents: sp.spmatrix, table: pd.DataFrame) -> np.ndarray:
    """int64/float64 `[N]` views, after checking the table matches the latents."""
    if not isinstance(table, pd.DataFrame):
        raise ThumbsaeError(f"thumbnails table: expected a pandas DataFrame, got {type(table).__name__}")
    for column in ("video_id", "views"):
        if column not in table.columns:
            raise ThumbsaeError(f"thumbnails table: no '{column}' column")
    if not sp.issparse(latents):
        raise ThumbsaeError(f"latents: expected a scipy.sparse matrix, got {type(latents).__name__}")
    if latents.shape[0] != len(table):
        raise ThumbsaeError(
            f"latents have {latents.shape[0]} rows but the thumbnails table has {len(table)}: rows must match"
        )
    duplicated = table["video_id"].astype(str).duplicated()
    if duplicated.any():
        r = int(np.flatnonzero(duplicated.to_numpy())[0])
        raise ThumbsaeError(f"video_id: row {r} repeats {table['video_id'].iloc[r]!r}; ids must be unique")
    views = pd.to_numeric(table["views"], errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(views) | (views < 0)
    if bad.any():
        r = int(np.flatnonzero(bad)[0])
        raise ThumbsaeError(
            f"views: row {r} (video_id {table['video_id'].iloc[r]!r}) has {table['views'].iloc[r]!r};"
            f" views must be numbers >= 0 ({int(bad.sum())} bad rows)"
        )
    if len(views) and not views.any():
        raise ThumbsaeError(f"views: all {len(views)} thumbnails have 0 views; nothing to compare")
    if len(views) and np.median(views) <= 0:
        raise ThumbsaeError(
            f"views: the dataset median is 0 ({int((views == 0).sum())} of {len(views)} thumbnails have 0 views),"
            " so lift (group statistic / dataset median) is undefined"
        )
    return views


def _analyse(
    groups: FeatureGroups,
    others_GK: np.ndarray,
    values_N: np.ndarray,
    cfg: EvalConfig,
    *,
    log_scale: bool,
) -> _Analysis:
    """The study's and the added statistics of fixed groups on one value scale.

    values_N: `[N]` raw views (`log_scale=False`) or adjusted log views (`log_scale=True`).
    """
    ranked = st.RankedValues.of(values_N)
    statistic = cfg.statistic_kind
    g, k = others_GK.shape
    median = st.statistic_of(values_N, _median_kind(cfg))

    def lift(stat):
        return np.exp(np.asarray(stat) - median) if log_scale else np.asarray(stat) / median

    def log_lift(stat_G):
        return stat_G - median if log_scale else np.log1p(stat_G) - math.log1p(median)

    stat_G = st.stat_of_rows(ranked, others_GK, statistic)
    n_high, n_low, split = _side_sizes(g, cfg.n_side)
    order_high = np.lexsort((groups.features_G, -stat_G))
    order_low = np.lexsort((groups.features_G, stat_G))
    high_G, low_G = order_high[:n_high], order_low[:n_low]
    side_G = np.full(g, "", dtype=object)
    side_rank_G = np.zeros(g, dtype=np.int64)
    side_G[high_G], side_rank_G[high_G] = "high", np.arange(1, n_high + 1)
    side_G[low_G], side_rank_G[low_G] = "low", np.arange(1, n_low + 1)

    # The study's KS test against random groups drawn with replacement.
    n_random = int(cfg.n_random_groups) if cfg.n_random_groups is not None else g
    random_R = st.random_stats(ranked, n_random, k, statistic, _rng(cfg.seed, STREAM_RANDOM_GROUPS))
    ks = st.ks_tests(stat_G, random_R, groups.n_features)

    # The held-out test: statistic of the held-out views per side vs statistics of random views.
    heldout_value_G = values_N[groups.heldout_rows_G]
    hhm = st.statistic_of(heldout_value_G[high_G], statistic)
    lhm = st.statistic_of(heldout_value_G[low_G], statistic)
    null_rng = _rng(cfg.seed, STREAM_HELDOUT_NULL)
    null_high = st.random_stats(ranked, int(cfg.n_null), max(n_high, 1), statistic, null_rng)
    null_low = (
        null_high if n_low == n_high
        else st.random_stats(ranked, int(cfg.n_null), max(n_low, 1), statistic, null_rng)
    )
    p_hhm, _ = st.tail_probabilities(null_high, hhm, float("nan"), strict=cfg.strict_p)
    _, p_lhm = st.tail_probabilities(null_low, float("nan"), lhm, strict=cfg.strict_p)

    # The whole selection re-run on permuted views.
    obs_high, obs_low = st.side_means(log_lift(stat_G), n_high, n_low)
    perm_high, perm_low = st.selection_null(
        ranked, others_GK, statistic, log_lift, n_high, n_low, int(cfg.n_permutations),
        _rng(cfg.seed, STREAM_SELECTION),
    )

    # Per-feature p and BH q over every tested feature.
    if st.is_median(statistic):
        p_G, p_method = st.median_pvalues(ranked, stat_G, k, lower=statistic == "median_lower")
    else:
        subset_null = st.random_subset_stats(
            ranked, int(cfg.n_feature_null), k, statistic, _rng(cfg.seed, STREAM_FEATURE_NULL)
        )
        p_G, p_method = st.monte_carlo_pvalues(stat_G, subset_null), "monte_carlo_random_subsets"
    q_G = st.benjamini_hochberg(p_G)

    # CIs of the statistic, turned into CIs of the lift (lift is monotone in the statistic).
    ci_low_G = np.empty(g)
    ci_high_G = np.empty(g)
    ci_method_G = np.full(g, "bootstrap", dtype=object)
    boot_G = np.arange(g) if g <= cfg.max_bootstrap_features else np.union1d(high_G, low_G)
    if g > cfg.max_bootstrap_features:
        rest_G = np.setdiff1d(np.arange(g), boot_G)
        if st.is_median(statistic):
            lo, hi = st.order_statistic_ci(ranked, others_GK[rest_G], cfg.alpha)
            ci_method_G[rest_G] = "order_statistic"
        else:
            lo, hi = st.normal_ci(ranked, others_GK[rest_G], cfg.alpha)
            ci_method_G[rest_G] = "normal"
        ci_low_G[rest_G], ci_high_G[rest_G] = lo, hi
    if boot_G.shape[0]:
        lo, hi = st.bootstrap_ci(
            ranked, others_GK[boot_G], statistic, int(cfg.n_bootstrap), cfg.alpha,
            _rng(cfg.seed, STREAM_BOOTSTRAP),
        )
        ci_low_G[boot_G], ci_high_G[boot_G] = lo, hi

    lift_G = lift(stat_G)
    significant = q_G < cfg.alpha
    block = {
        "scale": "adjusted_log_views" if log_scale else "views",
        "statistic": cfg.statistic,
        "median_rule": cfg.median,
        "dataset_median": median,
        "n_high": n_high,
        "n_low": n_low,
        **ks,
        "n_random_groups": n_random,
        "hhm": hhm,
        "lhm": lhm,
        "p_hhm": p_hhm,
        "p_lhm": p_lhm,
        "n_null": int(cfg.n_null),
        "strict_p": bool(cfg.strict_p),
        "selection_null_p": st.permutation_p(obs_high, perm_high, greater=True),
        "selection_null_p_low": st.permutation_p(obs_low, perm_low, greater=False),
        "mean_log_lift_high": obs_high,
        "mean_log_lift_low": obs_low,
        "n_permutations": int(cfg.n_permutations),
        "p_value_method": p_method,
        "ci_method_counts": {m: int(c) for m, c in zip(*np.unique(ci_method_G.astype(str), return_counts=True))},
        "n_significant": int(significant.sum()),
        "n_significant_above": int((significant & (lift_G > 1)).sum()),
        "n_significant_below": int((significant & (lift_G < 1)).sum()),
        "high_lift_range": [float(lift_G[high_G].min()), float(lift_G[high_G].max())] if n_high else None,
        "low_lift_range": [float(lift_G[low_G].min()), float(lift_G[low_G].max())] if n_low else None,
        "best_feature": int(groups.features_G[high_G[0]]) if n_high else None,
        "best_group_stat": float(stat_G[high_G[0]]) if n_high else None,
        "worst_feature": int(groups.features_G[low_G[0]]) if n_low else None,
        "worst_group_stat": float(stat_G[low_G[0]]) if n_low else None,
    }
    nulls = {
        "group_stats": stat_G,
        "random_group_stats": random_R,
        "heldout_null": null_high,
        "heldout_null_low": null_low,
        "selection_null_high": perm_high,
        "selection_null_low": perm_low,
        "dataset_median": median,
        "hhm": hhm,
        "lhm": lhm,
        "cutoff_high": float(stat_G[high_G[-1]]) if n_high else float("nan"),
        "cutoff_low": float(stat_G[low_G[-1]]) if n_low else float("nan"),
        "log_scale": log_scale,
    }
    return _Analysis(
        stat_G=stat_G, lift_G=lift_G, ci_low_G=lift(ci_low_G), ci_high_G=lift(ci_high_G),
        ci_method_G=ci_method_G, p_G=p_G, q_G=q_G, side_G=side_G, side_rank_G=side_rank_G,
        heldout_value_G=heldout_value_G, high_G=high_G, low_G=low_G, block=block, nulls=nulls,
    )


def _author_sides(n_groups: int, n_side: int, raw: _Analysis, cfg: EvalConfig) -> dict:
    """What the author's `topk(means, n_side)` / bottom-k would have taken from `n_groups` < 2 n_side.

    Both sides take n_side features, so they share max(0, 2 n_side - G) of them; with G < n_side
    each side is padded by n_side - G latents that do not qualify (group statistic 0 or, at the
    bottom, +inf), which this study does not have, so their HHM / LHM are not computed then.
    """
    overlap = min(n_groups, max(0, 2 * n_side - n_groups))
    padding = max(0, n_side - n_groups)
    hhm = lhm = None
    if padding == 0:
        stat_G = raw.nulls["group_stats"]
        # Ours order ties by feature id; the author's torch.topk leaves their order undefined.
        top = np.lexsort((np.arange(n_groups), -stat_G))[:n_side]
        bottom = np.lexsort((np.arange(n_groups), stat_G))[:n_side]
        hhm = st.statistic_of(raw.heldout_value_G[top], cfg.statistic_kind)
        lhm = st.statistic_of(raw.heldout_value_G[bottom], cfg.statistic_kind)
    note = (
        f"only {n_groups} features qualified (< 2 x eval.n_side = {2 * n_side}): thumbsae split them into"
        f" {n_groups - n_groups // 2} high and {n_groups // 2} low; the author's code would take {n_side} per side,"
        f" {overlap} features on both sides"
        + (f" and {padding} non-qualifying latents padding each side" if padding else "")
        + (f" (its raw HHM {hhm:g}, LHM {lhm:g})" if hhm is not None else "")
    )
    return {
        "n_high": n_side, "n_low": n_side, "n_overlap": overlap, "n_padding_per_side": padding,
        "hhm": hhm, "lhm": lhm, "note": note,
    }


def _as_counts(values: np.ndarray) -> np.ndarray:
    """int64 copy of whole-number views (as the table gave them), float64 otherwise."""
    return values.astype(np.int64) if np.all(values == np.round(values)) else values


def run_feature_study(latents: sp.spmatrix, table: pd.DataFrame, cfg: EvalConfig) -> StudyResult:
    """Run the feature-group study on thumbnails' SAE latents.

    latents: sparse float32 `[N, F]` post-activation latents, row i = `table` row i.
    table: `video_id`, `views` (int >= 0); `channel_id` for adjust or max_per_channel;
        `upload_date` (ISO) for adjust=channel_date.
    cfg: EvalConfig. Returns StudyResult; raises ThumbsaeError on bad input or no qualifying feature.
    """
    views_N = _check_table(latents, table)
    if cfg.group_size > len(table):
        raise ThumbsaeError(f"eval.group_size={cfg.group_size} is larger than the number of thumbnails ({len(table)})")
    channel_N = channel_codes(table, "eval.max_per_channel") if cfg.max_per_channel is not None else None
    adjusted_N = adjust_views(table, cfg.adjust) if cfg.adjust != "none" else None

    groups = top_groups(
        latents, int(cfg.group_size), float(cfg.threshold), heldout=cfg.heldout, seed=int(cfg.seed),
        channel_N=channel_N, max_per_channel=cfg.max_per_channel,
    )
    if groups.n_groups == 0:
        capped = f" with at most {cfg.max_per_channel} per channel" if cfg.max_per_channel is not None else ""
        raise ThumbsaeError(
            f"no feature qualifies: none of the {groups.n_features} latents has {cfg.group_size} thumbnails{capped}"
            f" with activation > {cfg.threshold}; lower eval.threshold or eval.group_size"
        )
    n_zero_median = 0
    if cfg.drop_zero_median:
        raw_stat_G = st.stat_of_rows(st.RankedValues.of(views_N), groups.others(), cfg.statistic_kind)
        n_zero_median = int((raw_stat_G <= 0).sum())
        groups = groups.subset(raw_stat_G > 0)
        if groups.n_groups == 0:
            raise ThumbsaeError(
                f"no feature qualifies: all {n_zero_median} features with {cfg.group_size} thumbnails above"
                f" {cfg.threshold} have a group {cfg.statistic} of 0 views (eval.drop_zero_median=true)"
            )
    others_GK = groups.others()
    raw = _analyse(groups, others_GK, views_N, cfg, log_scale=False)
    adjusted = _analyse(groups, others_GK, adjusted_N, cfg, log_scale=True) if adjusted_N is not None else None
    primary = adjusted if adjusted is not None else raw

    video_ids = table["video_id"].astype(str).to_numpy(dtype=object)
    heldout_rows_G = groups.heldout_rows_G
    frame = {
        "feature": groups.features_G,
        "n_active": groups.n_active_F[groups.features_G],
        "group_size": np.full(groups.n_groups, groups.group_size, dtype=np.int64),
        "group_stat": primary.stat_G,
        "lift": primary.lift_G,
        "lift_ci_low": primary.ci_low_G,
        "lift_ci_high": primary.ci_high_G,
        "ci_method": primary.ci_method_G,
        "heldout_video_id": video_ids[heldout_rows_G],
        "heldout_views": _as_counts(views_N[heldout_rows_G]),
        "side": primary.side_G,
        "side_rank": primary.side_rank_G,
        "p_value": primary.p_G,
        "p_method": primary.block["p_value_method"],
        "q_value": primary.q_G,
    }
    if adjusted is not None:
        frame.update({
            "heldout_adjusted": adjusted.heldout_value_G,
            "group_stat_raw": raw.stat_G,
            "lift_raw": raw.lift_G,
            "lift_ci_low_raw": raw.ci_low_G,
            "lift_ci_high_raw": raw.ci_high_G,
            "side_raw": raw.side_G,
            "p_value_raw": raw.p_G,
            "q_value_raw": raw.q_G,
        })
    frame["members"] = [";".join(row) for row in video_ids[groups.members_GM]]
    feature_groups = pd.DataFrame(frame)

    top_rows = [("top", r + 1, gi) for r, gi in enumerate(primary.high_G)]
    top_rows += [("bottom", r + 1, gi) for r, gi in enumerate(primary.low_G)]
    top_and_bottom = pd.DataFrame({
        "top_or_bottom": [t for t, _, _ in top_rows],
        "rank": np.array([r for _, r, _ in top_rows], dtype=np.int64),
        "latent_feature_index": groups.features_G[[gi for _, _, gi in top_rows]].astype(np.int64),
        # The study's column: the raw group statistic in views, whatever the primary scale.
        "group_median_views": raw.stat_G[[gi for _, _, gi in top_rows]],
        "lift": primary.lift_G[[gi for _, _, gi in top_rows]],
        "q_value": primary.q_G[[gi for _, _, gi in top_rows]],
    })

    n_high, n_low, split = _side_sizes(groups.n_groups, cfg.n_side)
    author_sides = _author_sides(groups.n_groups, cfg.n_side, raw, cfg) if split else None
    warnings_ = []
    if split:
        warnings_.append(author_sides["note"])
        log.warning(author_sides["note"])
    summary = {
        "n_thumbnails": int(len(table)),
        "n_features": groups.n_features,
        "n_features_tested": groups.n_groups,
        "n_qualifying": groups.n_groups,
        "n_zero_median_dropped": n_zero_median,
        "group_size": int(cfg.group_size),
        "threshold": float(cfg.threshold),
        "dataset_median_views": st.statistic_of(views_N, _median_kind(cfg)),
        "adjust": cfg.adjust,
        "primary": "adjusted" if adjusted is not None else "raw",
        "sides_split": split,
        "sides_note": (
            f"only {groups.n_groups} features qualified (< 2 x n_side = {2 * cfg.n_side}):"
            f" split into {n_high} high and {n_low} low without overlap"
        ) if split else None,
        "author_sides": author_sides,
        "warnings": warnings_,
        **primary.block,
        "raw": raw.block,
        "adjusted": adjusted.block if adjusted is not None else None,
        "config": asdict(cfg),
    }
    return StudyResult(
        feature_groups=feature_groups,
        summary=to_json_ready(summary),
        top_and_bottom=top_and_bottom,
        nulls=primary.nulls,
    )


def write_study(result: StudyResult, out_dir: str | Path) -> dict:
    """Write `feature_groups.csv` and `top_and_bottom_groups.csv` under out_dir (atomically).

    Returns the summary dict (JSON-ready) for the caller to merge into summary.json.
    """
    out = Path(out_dir)
    for name, frame in (("feature_groups.csv", result.feature_groups), ("top_and_bottom_groups.csv", result.top_and_bottom)):
        with atomic_path(out / name) as tmp:
            frame.to_csv(tmp, index=False, lineterminator="\n")
    # Round-trip through JSON here so a caller's json.dump cannot fail on what we hand back.
    return json.loads(json.dumps(result.summary, allow_nan=False))
