"""The engagement model: from a thumbnail's SAE latents to its (channel-relative) log views.

A sparse linear model (elastic net, regularisation chosen by cross-validation grouped by channel)
on latents scaled per latent; held-out evaluation on whole channels; a ridge on raw CLIP
embeddings of the same split as the baseline; split-conformal prediction intervals from
out-of-fold residuals. Each prediction decomposes exactly into the intercept plus one
contribution per active feature, which is what `thumbsae rank` shows as reasons.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import scipy.sparse as sp
import scipy.stats
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import ElasticNet, ElasticNetCV, Ridge
from sklearn.metrics import r2_score
from sklearn.model_selection import GroupKFold, GroupShuffleSplit, KFold, ShuffleSplit

from thumbsae.jsonable import to_json_ready
from thumbsae.analysis.latents import LatentMatrix
from thumbsae.files import atomic_dir
from thumbsae.errors import ThumbsaeError

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
EXAMPLES_DIR = "examples"
FORMAT = "thumbsae.engagement_model"
TARGET_KINDS = ("channel_relative", "channel_date_relative", "raw")
MAX_EXAMPLES = 6  # example thumbnails copied per used feature on save
EXAMPLE_PX = 160  # longest side of a copied example thumbnail
Scaling = Literal["std", "maxabs"]


@dataclass(frozen=True)
class EngagementConfig:
    """How the engagement model is fitted and evaluated."""

    test_fraction: float = 0.2  # of channels (of thumbnails without channels) held out for the test
    interval: float = 0.8  # prediction-interval coverage
    l1_ratio: tuple[float, ...] = (0.5, 1.0)  # elastic-net mixes tried by cross-validation
    n_alphas: int = 20  # regularisation strengths tried per mix, log-spaced down from the largest
    eps: float = 1e-2  # smallest / largest strength (extended 10x once if the best is the smallest)
    alpha_rule: Literal["min", "1se"] = "min"  # lowest CV error, or the sparsest within one SE of it
    cv_folds: int = 5  # grouped by channel
    min_active: int = 5  # latents active on fewer training thumbnails are not candidates
    scaling: Scaling = "std"  # divide each latent by its training std (or max |value|)
    log1p: bool = False  # log1p of activations before scaling
    max_iter: int = 5000


@dataclass(frozen=True, eq=False)
class EngagementModel:
    """Predicted log views = intercept + sum over used latents of coef * scaled activation.

    feature_indices: int64 `[U]` used latents (of `n_latents`), sorted.
    coef: float64 `[U]` per scaled activation; scale: float64 `[U]` (activation / scale).
    residual_quantiles: out-of-fold residual quantiles `(lo, hi)` giving `interval` coverage.
    feature_info: per used latent, what evaluate knows about it (name, lift, q_value, examples
        as paths relative to `path`).
    """

    feature_indices: np.ndarray
    coef: np.ndarray
    scale: np.ndarray
    intercept: float
    n_latents: int
    residual_quantiles: tuple[float, float]
    interval: float = 0.8
    log1p: bool = False
    target_kind: str = "channel_relative"
    metrics: dict[str, Any] = field(default_factory=dict)
    feature_info: dict[int, dict[str, Any]] = field(default_factory=dict)
    path: Path | None = None

    @property
    def n_features_used(self) -> int:
        return int(self.feature_indices.size)

    def _scaled(self, latents: Any) -> sp.csr_matrix:
        """Scaled activations of the used latents: csr float64 `[N, U]`."""
        if isinstance(latents, LatentMatrix):
            latents = latents.csr
        x_NF = sp.csr_matrix(np.atleast_2d(latents) if isinstance(latents, np.ndarray) else latents)
        if x_NF.shape[1] != self.n_latents:
            raise ThumbsaeError(
                f"engagement model expects {self.n_latents} latents per thumbnail, got {x_NF.shape[1]}"
            )
        x_NU = x_NF[:, self.feature_indices].astype(np.float64)
        return _transform(x_NU, self.log1p) @ sp.diags(1.0 / self.scale, format="csr")

    def predict(self, latents: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Scores and intervals of thumbnails from their latents.

        latents: csr `[N, F]` (or a dense `[N, F]` / `[F]` array, or a LatentMatrix).
        Returns (score `[N]`, lo `[N]`, hi `[N]`) in the target's units (log views).
        """
        x_NU = self._scaled(latents)
        score_N = np.asarray(x_NU @ self.coef, dtype=np.float64).reshape(-1) + self.intercept
        lo_q, hi_q = self.residual_quantiles
        return score_N, score_N + lo_q, score_N + hi_q

    def contributions(self, latents_row: Any, top: int | None = 5) -> tuple[list[dict], list[dict]]:
        """The features pushing one thumbnail's score up and down.

        latents_row: its latents, csr `[1, F]` or an array `[F]`.
        Returns (up, down): dicts `{feature, contribution, activation}` (plus `name` when known),
        up by largest positive contribution, down by most negative; `top=None` gives all. The
        contributions of all active used features plus the intercept equal the score.
        """
        x_NU = self._scaled(latents_row)
        if x_NU.shape[0] != 1:
            raise ThumbsaeError(f"contributions takes one thumbnail's latents, got {x_NU.shape[0]} rows")
        x_U = x_NU.toarray()[0]
        contrib_U = self.coef * x_U
        raw_U = x_U * self.scale
        if self.log1p:
            raw_U = np.sign(raw_U) * np.expm1(np.abs(raw_U))
        entries = [
            self._entry(int(u), float(contrib_U[u]), float(raw_U[u])) for u in np.flatnonzero(contrib_U)
        ]
        # Ties broken by feature id so the order is reproducible.
        up = sorted((e for e in entries if e["contribution"] > 0), key=lambda e: (-e["contribution"], e["feature"]))
        down = sorted((e for e in entries if e["contribution"] < 0), key=lambda e: (e["contribution"], e["feature"]))
        return (up, down) if top is None else (up[:top], down[:top])

    def _entry(self, u: int, contribution: float, activation: float) -> dict:
        feature = int(self.feature_indices[u])
        entry = {"feature": feature, "contribution": contribution, "activation": activation}
        name = self.feature_info.get(feature, {}).get("name")
        if name:
            entry["name"] = name
        return entry

    def examples(self, feature: int) -> list[Path]:
        """Absolute paths of the example thumbnails saved for `feature` (empty if none)."""
        paths = self.feature_info.get(int(feature), {}).get("examples", [])
        base = self.path or Path(".")
        return [Path(p) if Path(p).is_absolute() else base / p for p in paths]

    def save(self, out_dir: str | os.PathLike, feature_info: dict[int, dict] | None = None) -> Path:
        """Write `model.safetensors`, `config.json` and `examples/` to `out_dir`, atomically.

        feature_info: per feature, JSON-able facts (`name`, `lift`, `q_value`, ...) and `examples`,
        paths of its thumbnails; kept for the used features only, with up to 6 examples each
        copied into `examples/` (longest side 160 px) and stored as relative paths.
        Returns `out_dir`.
        """
        out_dir = Path(out_dir)
        info = self.feature_info if feature_info is None else feature_info
        used = {int(f) for f in self.feature_indices}
        tensors = {
            "feature_indices": np.ascontiguousarray(self.feature_indices, dtype=np.int64),
            "coef": np.ascontiguousarray(self.coef, dtype=np.float64),
            "scale": np.ascontiguousarray(self.scale, dtype=np.float64),
            "intercept": np.array([self.intercept], dtype=np.float64),
            "residual_quantiles": np.array(self.residual_quantiles, dtype=np.float64),
        }
        try:
            with atomic_dir(out_dir) as tmp:
                saved_info = {
                    str(f): self._save_feature(f, dict(info[f]), tmp)
                    for f in sorted(int(k) for k in info)
                    if f in used
                }
                save_file(tensors, str(tmp / MODEL_FILE), metadata={"format": FORMAT})
                config = {
                    "format": FORMAT,
                    "version": 1,
                    "n_latents": int(self.n_latents),
                    "n_features_used": self.n_features_used,
                    "target_kind": self.target_kind,
                    "log1p": bool(self.log1p),
                    "interval": {
                        "level": float(self.interval),
                        "residual_lo": float(self.residual_quantiles[0]),
                        "residual_hi": float(self.residual_quantiles[1]),
                    },
                    "metrics": to_json_ready(self.metrics),
                    "features": saved_info,
                }
                (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        except OSError as e:
            raise ThumbsaeError(f"{out_dir}: cannot write the engagement model ({e.strerror or e})") from e
        return out_dir

    def _save_feature(self, feature: int, info: dict, tmp: Path) -> dict:
        """Copy the feature's example thumbnails into `tmp/examples/`; return its JSON-able info."""
        from thumbsae.data.images import load_rgb

        sources = [Path(p) for p in info.pop("examples", []) or []][:MAX_EXAMPLES]
        copied = []
        for j, src in enumerate(sources):
            if not src.is_absolute() and self.path is not None:
                src = self.path / src  # a loaded model's own examples
            image = load_rgb(src)  # raises a one-line ImageDecodeError naming the file
            image.thumbnail((EXAMPLE_PX, EXAMPLE_PX))
            rel = f"{EXAMPLES_DIR}/f{feature}_{j}.jpg"
            (tmp / EXAMPLES_DIR).mkdir(exist_ok=True)
            image.save(tmp / rel, format="JPEG", quality=85)
            copied.append(rel)
        out = to_json_ready(info)
        out["examples"] = copied
        return out

    @classmethod
    def load(cls, model_dir: str | os.PathLike) -> EngagementModel:
        """Read a model written by `save`; a missing or corrupt folder raises ThumbsaeError."""
        model_dir = Path(model_dir)
        if not model_dir.is_dir():
            raise ThumbsaeError(f"{model_dir}: engagement model folder not found")
        for name in (MODEL_FILE, CONFIG_FILE):
            if not (model_dir / name).is_file():
                raise ThumbsaeError(f"{model_dir}: not an engagement model folder ({name} missing)")
        try:
            config = json.loads((model_dir / CONFIG_FILE).read_text())
            if not isinstance(config, dict) or config.get("format") != FORMAT:
                raise ValueError(f"{CONFIG_FILE} is not a {FORMAT} config")
            tensors = load_file(str(model_dir / MODEL_FILE))
            feature_indices = tensors["feature_indices"].astype(np.int64)
            coef, scale = tensors["coef"].astype(np.float64), tensors["scale"].astype(np.float64)
            intercept = float(tensors["intercept"][0])
            lo, hi = (float(v) for v in tensors["residual_quantiles"])
            n_latents = int(config["n_latents"])
            info = {int(k): dict(v) for k, v in config.get("features", {}).items()}
            model = cls(
                feature_indices=feature_indices,
                coef=coef,
                scale=scale,
                intercept=intercept,
                n_latents=n_latents,
                residual_quantiles=(lo, hi),
                interval=float(config["interval"]["level"]),
                log1p=bool(config.get("log1p", False)),
                target_kind=str(config["target_kind"]),
                metrics=dict(config.get("metrics", {})),
                feature_info=info,
                path=model_dir.resolve(),
            )
        except (OSError, ValueError, KeyError, TypeError, IndexError, SafetensorError) as e:
            raise ThumbsaeError(f"{model_dir}: corrupt engagement model ({e})") from e
        shapes_ok = feature_indices.ndim == 1 and coef.shape == scale.shape == feature_indices.shape
        values_ok = shapes_ok and bool(
            np.all(np.isfinite(coef)) and np.all(scale > 0) and np.isfinite(intercept)
            and np.all((feature_indices >= 0) & (feature_indices < n_latents))
        )
        if not values_ok:
            raise ThumbsaeError(f"{model_dir}: corrupt engagement model (inconsistent {MODEL_FILE})")
        return model


def _transform(x: sp.csr_matrix, log1p: bool) -> sp.csr_matrix:
    """Activations as the model sees them: as is, or signed log1p (sparsity kept)."""
    if not log1p:
        return x
    x = x.copy()
    x.data = np.sign(x.data) * np.log1p(np.abs(x.data))
    return x


def _column_scale(x_NF: sp.csr_matrix, scaling: Scaling) -> np.ndarray:
    """Per-latent divisor `[F]` from training rows: std over all rows (zeros included) or max |x|."""
    if scaling == "maxabs":
        scale_F = np.asarray(abs(x_NF).max(axis=0).todense()).reshape(-1)
    elif scaling == "std":
        mean_F = np.asarray(x_NF.mean(axis=0)).reshape(-1)
        sq_F = np.asarray(x_NF.multiply(x_NF).mean(axis=0)).reshape(-1)
        scale_F = np.sqrt(np.maximum(sq_F - mean_F**2, 0.0))
    else:
        raise ThumbsaeError(f"engagement model: scaling must be 'std' or 'maxabs', got {scaling!r}")
    # A constant latent carries no signal; dividing by 1 leaves it harmless.
    return np.where(scale_F > 0, scale_F, 1.0)


def _spearman(pred_N: np.ndarray, y_N: np.ndarray) -> float:
    """Spearman correlation; a constant prediction ranks nothing, so it scores 0."""
    if np.ptp(pred_N) == 0 or np.ptp(y_N) == 0:
        return 0.0
    return float(scipy.stats.spearmanr(pred_N, y_N).statistic)


def _tied_pairs(*columns: np.ndarray) -> int:
    """Number of pairs of rows equal in every column."""
    _, counts = np.unique(np.stack(columns, axis=1), axis=0, return_counts=True)
    return int((counts * (counts - 1) // 2).sum())


def pairwise_accuracy(pred_N: np.ndarray, y_N: np.ndarray, groups_N: np.ndarray) -> float | None:
    """Over pairs of thumbnails in the same group with different `y`: the fraction ordered right.

    A pair tied in prediction counts half. Uses Kendall's S per group (O(n log n)), so large
    channels are fine. Returns None when no group has such a pair.
    """
    correct = 0.0
    n_pairs = 0
    for g in np.unique(groups_N):
        mask = groups_N == g
        p, y = pred_N[mask], y_N[mask]
        m = p.size
        n0 = m * (m - 1) // 2
        n_y_tied = _tied_pairs(y)
        pairs = n0 - n_y_tied  # pairs with different y
        if pairs == 0:
            continue
        n_p_tied, n_both_tied = _tied_pairs(p), _tied_pairs(p, y)
        pred_tied_only = n_p_tied - n_both_tied
        both_differ = n0 - n_p_tied - n_y_tied + n_both_tied  # concordant + discordant
        if n0 - n_p_tied == 0:
            s = 0.0
        else:
            tau_b = scipy.stats.kendalltau(p, y, variant="b").statistic
            s = round(tau_b * math.sqrt((n0 - n_p_tied) * (n0 - n_y_tied)))  # concordant - discordant
        correct += (both_differ + s) / 2 + 0.5 * pred_tied_only
        n_pairs += pairs
    return None if n_pairs == 0 else correct / n_pairs


def _conformal_quantiles(residual_N: np.ndarray, level: float) -> tuple[float, float]:
    """Lower/upper residual quantiles for a two-sided `level` interval, finite-sample corrected."""
    n = residual_N.size
    tail = (1.0 - level) / 2.0
    hi = min(1.0, math.ceil((n + 1) * (1.0 - tail)) / n)
    lo = max(0.0, math.floor((n + 1) * tail) / n)
    return float(np.quantile(residual_N, lo, method="lower")), float(np.quantile(residual_N, hi, method="higher"))


def split_by_channel(
    groups: Any, *, n: int | None = None, test_fraction: float = 0.2, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, str]:
    """Train and test rows, holding out whole channels when there are at least two.

    groups: `[N]` channel ids, or None (then `n` rows and a plain seeded split).
    Returns (train rows, test rows, how: "by channel", "random (no channel)" or "random (one channel)").
    """
    groups_N = None if groups is None else np.asarray(groups).astype(str).reshape(-1)
    n = groups_N.size if groups_N is not None else int(n)
    x_dummy = np.zeros((n, 1))
    if groups_N is not None and np.unique(groups_N).size >= 2:
        splitter = GroupShuffleSplit(n_splits=1, test_size=test_fraction, random_state=seed)
        train, test = next(splitter.split(x_dummy, groups=groups_N))
        return np.sort(train), np.sort(test), "by channel"
    splitter = ShuffleSplit(n_splits=1, test_size=test_fraction, random_state=seed)
    train, test = next(splitter.split(x_dummy))
    how = "random (no channel)" if groups_N is None else "random (one channel)"
    return np.sort(train), np.sort(test), how


def _folds(n: int, groups: np.ndarray | None, cfg: EngagementConfig, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Cross-validation folds of the training rows, grouped by channel when there are channels."""
    x_dummy = np.zeros((n, 1))
    if groups is not None and np.unique(groups).size >= 2:
        cv = GroupKFold(n_splits=min(cfg.cv_folds, np.unique(groups).size))
        return list(cv.split(x_dummy, groups=groups))
    cv = KFold(n_splits=min(cfg.cv_folds, n), shuffle=True, random_state=seed)
    return list(cv.split(x_dummy))


def fit_engagement_model(
    latents_csr: Any,
    log_views_target: Any,
    *,
    groups: Any = None,
    baseline_embeddings: np.ndarray | None = None,
    seed: int = 0,
    target_kind: str = "channel_relative",
    config: EngagementConfig | None = None,
) -> tuple[EngagementModel, dict[str, Any]]:
    """Fit the engagement model on a channel-held-out split and measure it and its baseline.

    latents_csr: SAE latents `[N, F]` (csr, or a LatentMatrix). log_views_target: `[N]` the
    (adjusted) log views. groups: `[N]` channel ids, or None (then a plain seeded split).
    baseline_embeddings: `[N, E]` raw CLIP embeddings of the same thumbnails, or None.
    Returns (model fitted on the training rows, metrics): `spearman_test`, `spearman_baseline`,
    `n_features_used`, `within_channel_pairwise_accuracy` (and `_baseline`), `r2_test`,
    `r2_baseline`, `interval_coverage_test`, `n_train`, `n_test`, `split`, `alpha`, `l1_ratio`, ...
    """
    cfg = config or EngagementConfig()
    if target_kind not in TARGET_KINDS:
        raise ThumbsaeError(f"engagement model: target_kind must be one of {TARGET_KINDS}, got {target_kind!r}")
    if not 0.0 < cfg.interval < 1.0:
        raise ThumbsaeError(f"engagement model: interval must be in (0, 1), got {cfg.interval}")
    if cfg.alpha_rule not in ("min", "1se"):
        raise ThumbsaeError(f"engagement model: alpha_rule must be 'min' or '1se', got {cfg.alpha_rule!r}")
    if isinstance(latents_csr, LatentMatrix):
        latents_csr = latents_csr.csr
    if not sp.issparse(latents_csr) or latents_csr.ndim != 2:
        raise ThumbsaeError("engagement model: latents must be a 2-D scipy sparse matrix [N, F]")
    x_NF = sp.csr_matrix(latents_csr, dtype=np.float64)
    y_N = np.asarray(log_views_target, dtype=np.float64).reshape(-1)
    n, n_latents = x_NF.shape
    if y_N.size != n:
        raise ThumbsaeError(f"engagement model: {n} latent rows but {y_N.size} targets")
    if not np.all(np.isfinite(y_N)):
        raise ThumbsaeError(f"engagement model: {int((~np.isfinite(y_N)).sum())} targets are NaN or infinite")
    if n < 20:
        raise ThumbsaeError(f"engagement model: needs at least 20 thumbnails, got {n}")
    groups_N = None if groups is None else np.asarray(groups).astype(str).reshape(-1)
    if groups_N is not None and groups_N.size != n:
        raise ThumbsaeError(f"engagement model: {n} latent rows but {groups_N.size} channel ids")
    if baseline_embeddings is not None and np.shape(baseline_embeddings)[0] != n:
        raise ThumbsaeError(
            f"engagement model: {n} latent rows but {np.shape(baseline_embeddings)[0]} baseline embeddings"
        )

    train, test, split = split_by_channel(groups_N, n=n, test_fraction=cfg.test_fraction, seed=seed)
    g_train = None if groups_N is None else groups_N[train]
    folds = _folds(train.size, g_train if split == "by channel" else None, cfg, seed)

    # Candidates: latents active often enough in training to estimate an effect at all.
    x_train = _transform(x_NF[train], cfg.log1p)
    candidates = np.flatnonzero(x_train.getnnz(axis=0) >= cfg.min_active)
    x_train = x_train[:, candidates]
    scale_C = _column_scale(x_train, cfg.scaling)
    x_train = x_train @ sp.diags(1.0 / scale_C, format="csr")
    y_train = y_N[train]

    fit = _fit_sparse_linear(x_train, y_train, folds, cfg)
    coef_C = fit.coef_C
    used = np.flatnonzero(coef_C)
    residual_quantiles = _conformal_quantiles(y_train - fit.oof_N, cfg.interval)
    model = EngagementModel(
        feature_indices=candidates[used].astype(np.int64),
        coef=coef_C[used].astype(np.float64),
        scale=scale_C[used].astype(np.float64),
        intercept=fit.intercept,
        n_latents=int(n_latents),
        residual_quantiles=residual_quantiles,
        interval=cfg.interval,
        log1p=cfg.log1p,
        target_kind=target_kind,
    )

    score_test, lo_test, hi_test = model.predict(x_NF[test])
    y_test = y_N[test]
    g_test = groups_N[test] if groups_N is not None else None
    metrics: dict[str, Any] = {
        "spearman_test": _spearman(score_test, y_test),
        "r2_test": float(r2_score(y_test, score_test)),
        "n_features_used": model.n_features_used,
        "n_candidate_features": int(candidates.size),
        "within_channel_pairwise_accuracy": None if g_test is None else pairwise_accuracy(score_test, y_test, g_test),
        "interval": cfg.interval,
        "interval_coverage_test": float(np.mean((y_test >= lo_test) & (y_test <= hi_test))),
        "residual_quantiles": list(residual_quantiles),
        "alpha": fit.alpha,
        "l1_ratio": fit.l1_ratio,
        "converged": fit.converged,
        "scaling": cfg.scaling,
        "log1p": cfg.log1p,
        "n_train": int(train.size),
        "n_test": int(test.size),
        "n_channels_train": None if g_train is None else int(np.unique(g_train).size),
        "n_channels_test": None if g_test is None else int(np.unique(g_test).size),
        "split": split,
        "seed": int(seed),
        "target_kind": target_kind,
        "spearman_baseline": None,
        "r2_baseline": None,
        "within_channel_pairwise_accuracy_baseline": None,
    }
    if baseline_embeddings is not None:
        metrics.update(_baseline(np.asarray(baseline_embeddings, dtype=np.float64), y_N, train, test, folds, g_test))
    metrics = to_json_ready(metrics)
    return replace(model, metrics=metrics), metrics


@dataclass(frozen=True)
class _SparseFit:
    coef_C: np.ndarray  # [C] per scaled candidate latent
    intercept: float
    oof_N: np.ndarray  # [N_train] out-of-fold predictions at the chosen strength
    alpha: float | None  # None when there was no candidate
    l1_ratio: float
    converged: bool


def _fit_sparse_linear(
    x_NC: sp.csr_matrix, y_N: np.ndarray, folds: list[tuple[np.ndarray, np.ndarray]], cfg: EngagementConfig
) -> _SparseFit:
    """Elastic net on scaled candidates `[N, C]`, strength and mix chosen on `folds`; its OOF predictions."""
    oof_N = np.empty(y_N.size)
    if x_NC.shape[1] == 0:
        # No candidate latent: the model is the training mean.
        for fit_rows, held_rows in folds:
            oof_N[held_rows] = y_N[fit_rows].mean()
        return _SparseFit(np.zeros(0), float(y_N.mean()), oof_N, None, 1.0, True)
    with warnings.catch_warnings():
        # Weakly regularised fits on the search path may stop early; the chosen one is checked.
        warnings.simplefilter("ignore", ConvergenceWarning)
        # The weak end of the path is the slow end, so it starts short and grows only if needed.
        for eps in (cfg.eps, cfg.eps / 10):
            search = ElasticNetCV(
                l1_ratio=list(cfg.l1_ratio), alphas=cfg.n_alphas, eps=eps, cv=folds, max_iter=cfg.max_iter,
                selection="cyclic",
            ).fit(x_NC, y_N)
            if search.alpha_ > np.min(search.alphas_):
                break
        alpha, l1_ratio = _chosen_strength(search, len(cfg.l1_ratio), cfg.alpha_rule)
        # Out-of-fold predictions at the chosen strength give honest residuals for the intervals.
        for fit_rows, held_rows in folds:
            fold_fit = _fit_fixed(x_NC[fit_rows], y_N[fit_rows], alpha, l1_ratio, cfg)
            oof_N[held_rows] = fold_fit.predict(x_NC[held_rows])
        final = _fit_fixed(x_NC, y_N, alpha, l1_ratio, cfg)
    converged = bool(final.n_iter_ < cfg.max_iter)
    return _SparseFit(np.asarray(final.coef_, np.float64), float(final.intercept_), oof_N, alpha, l1_ratio, converged)


def _chosen_strength(search: ElasticNetCV, n_l1: int, rule: str) -> tuple[float, float]:
    """(alpha, l1_ratio) of a finished search: its best, or the largest alpha within one SE of it."""
    if rule == "min":
        return float(search.alpha_), float(search.l1_ratio_)
    alphas_LA = np.reshape(search.alphas_, (n_l1, -1))
    mse_LAK = np.reshape(search.mse_path_, (n_l1, alphas_LA.shape[1], -1))
    mean_LA = mse_LAK.mean(axis=2)
    se_LA = mse_LAK.std(axis=2, ddof=1) / math.sqrt(mse_LAK.shape[2])
    best_l, best_a = np.unravel_index(np.argmin(mean_LA), mean_LA.shape)
    within = mean_LA[best_l] <= mean_LA[best_l, best_a] + se_LA[best_l, best_a]
    # alphas_ run from strongest to weakest, so the first within one SE is the sparsest.
    return float(alphas_LA[best_l, np.flatnonzero(within)[0]]), float(np.atleast_1d(search.l1_ratio)[best_l])


def _fit_fixed(x: sp.csr_matrix, y: np.ndarray, alpha: float, l1_ratio: float, cfg: EngagementConfig) -> ElasticNet:
    return ElasticNet(alpha=alpha, l1_ratio=l1_ratio, max_iter=cfg.max_iter, selection="cyclic").fit(x, y)


def _ridge_alpha_by_cv(
    z_NE: np.ndarray, y_N: np.ndarray, folds: list[tuple[np.ndarray, np.ndarray]], alphas_A: np.ndarray
) -> float:
    """The ridge strength with the lowest out-of-fold squared error, all strengths per fold from one SVD."""
    sq_err_A = np.zeros(alphas_A.size)
    for fit_rows, held_rows in folds:
        z_fit, y_fit = z_NE[fit_rows], y_N[fit_rows]
        z_mean, y_mean = z_fit.mean(axis=0), y_fit.mean()
        u, s, vt = np.linalg.svd(z_fit - z_mean, full_matrices=False)
        uty = u.T @ (y_fit - y_mean)
        # coef(alpha) = V diag(s / (s^2 + alpha)) U^T y, for every alpha at once: [E, A]
        coef_EA = vt.T @ ((s / (s**2 + alphas_A[:, None]))[..., None] * uty[None, :, None])[..., 0].T
        pred_HA = (z_NE[held_rows] - z_mean) @ coef_EA + y_mean
        sq_err_A += ((pred_HA - y_N[held_rows, None]) ** 2).sum(axis=0)
    return float(alphas_A[np.argmin(sq_err_A)])


def _baseline(
    emb_NE: np.ndarray,
    y_N: np.ndarray,
    train: np.ndarray,
    test: np.ndarray,
    folds: list[tuple[np.ndarray, np.ndarray]],
    g_test: np.ndarray | None,
) -> dict[str, Any]:
    """Ridge on standardised raw CLIP embeddings, same split and folds as the SAE model."""
    emb_NE = emb_NE.reshape(emb_NE.shape[0], -1)
    mean_E = emb_NE[train].mean(axis=0)
    std_E = emb_NE[train].std(axis=0)
    std_E = np.where(std_E > 0, std_E, 1.0)
    z_NE = (emb_NE - mean_E) / std_E
    alpha = _ridge_alpha_by_cv(z_NE[train], y_N[train], folds, np.logspace(-2, 5, 15))
    ridge = Ridge(alpha=alpha).fit(z_NE[train], y_N[train])
    pred_test = ridge.predict(z_NE[test])
    y_test = y_N[test]
    return {
        "spearman_baseline": _spearman(pred_test, y_test),
        "r2_baseline": float(r2_score(y_test, pred_test)),
        "within_channel_pairwise_accuracy_baseline": None
        if g_test is None
        else pairwise_accuracy(pred_test, y_test, g_test),
        "baseline_alpha": alpha,
    }
