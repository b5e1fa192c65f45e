"""Fitting the engagement model: channel-held-out split, elastic net chosen by grouped CV,
split-conformal intervals, bootstrap refits over training channels, and the held-out metrics."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import scipy.sparse as sp
from sklearn.exceptions import ConvergenceWarning
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import ElasticNet, ElasticNetCV
from sklearn.metrics import r2_score
from sklearn.model_selection import GroupKFold, GroupShuffleSplit, KFold, ShuffleSplit

from thumbsae.analysis.engagement.baseline import ridge_baseline
from thumbsae.analysis.engagement.config import TARGET_KINDS, EngagementConfig, Scaling
from thumbsae.analysis.engagement.metrics import (
    conformal_quantiles,
    pairwise_accuracy,
    spearman,
)
from thumbsae.analysis.engagement.model import (
    BootstrapFits,
    EngagementModel,
    transform_latents,
)
from thumbsae.analysis.latents import LatentMatrix
from thumbsae.errors import ThumbsaeError
from thumbsae.jsonable import to_json_ready

# Random streams of the bootstrap refits and of the pairs behind the win curve, apart from the
# split's and the folds' (which use `seed`).
STREAM_BOOTSTRAP, STREAM_PAIRS = 7, 8
# Training pairs behind the win curve, and the curve's knots kept in the model.
N_PAIRS, N_CURVE_KNOTS = 200_000, 201


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


def _column_scale(x_NF: sp.csr_matrix, scaling: Scaling) -> np.ndarray:
    """Per-latent divisor `[F]` from training rows: std over all rows (zeros included) or max |x|."""
    if scaling == "maxabs":
        scale_F = np.asarray(abs(x_NF).max(axis=0).todense()).reshape(-1)
    else:
        mean_F = np.asarray(x_NF.mean(axis=0)).reshape(-1)
        sq_F = np.asarray(x_NF.multiply(x_NF).mean(axis=0)).reshape(-1)
        scale_F = np.sqrt(np.maximum(sq_F - mean_F**2, 0.0))
    # A constant latent carries no signal; dividing by 1 leaves it harmless.
    return np.where(scale_F > 0, scale_F, 1.0)


def _folds(n: int, groups: np.ndarray | None, cfg: EngagementConfig, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Cross-validation folds of the training rows, grouped by channel when there are channels."""
    x_dummy = np.zeros((n, 1))
    if groups is not None and np.unique(groups).size >= 2:
        cv = GroupKFold(n_splits=min(cfg.cv_folds, np.unique(groups).size))
        return list(cv.split(x_dummy, groups=groups))
    cv = KFold(n_splits=min(cfg.cv_folds, n), shuffle=True, random_state=seed)
    return list(cv.split(x_dummy))


def _check_inputs(latents_csr: Any, log_views_target: Any, groups: Any, baseline_embeddings: Any, target_kind: str):
    """(x csr float64 `[N, F]`, y `[N]`, groups `[N]` str or None), or a one-line error."""
    if target_kind not in TARGET_KINDS:
        raise ThumbsaeError(f"engagement model: target_kind must be one of {TARGET_KINDS}, got {target_kind!r}")
    if isinstance(latents_csr, LatentMatrix):
        latents_csr = latents_csr.csr
    if not sp.issparse(latents_csr) or latents_csr.ndim != 2:
        raise ThumbsaeError("engagement model: latents must be a 2-D scipy sparse matrix [N, F]")
    x_NF = sp.csr_matrix(latents_csr, dtype=np.float64)
    y_N = np.asarray(log_views_target, dtype=np.float64).reshape(-1)
    n = x_NF.shape[0]
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
    return x_NF, y_N, groups_N


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
    (adjusted) log views, e.g. `engagement_target(table).values`. groups: `[N]` channel ids, or
    None (then a plain seeded split). baseline_embeddings: `[N, E]` raw CLIP embeddings of the
    same thumbnails, or None. config: EngagementConfig (defaults when None).
    Returns (model fitted on the training rows, with `config.n_bootstrap` refits on resampled
    training channels; metrics): `spearman_test`, `spearman_baseline`, `n_features_used`,
    `within_channel_pairwise_accuracy` (and `_baseline`), `r2_test`, `r2_baseline`,
    `interval_coverage_test`, `n_train`, `n_test`, `split`, `alpha`, `l1_ratio`, `n_bootstrap`, ...
    """
    cfg = config or EngagementConfig()
    x_NF, y_N, groups_N = _check_inputs(latents_csr, log_views_target, groups, baseline_embeddings, target_kind)
    n, n_latents = x_NF.shape

    train, test, split = split_by_channel(groups_N, n=n, test_fraction=cfg.test_fraction, seed=seed)
    g_train = None if groups_N is None else groups_N[train]
    by_channel = g_train if split == "by channel" else None
    folds = _folds(train.size, by_channel, cfg, seed)

    # Candidates: latents active often enough in training to estimate an effect at all.
    x_train = transform_latents(x_NF[train], cfg.log1p)
    candidates = np.flatnonzero(x_train.getnnz(axis=0) >= cfg.min_active)
    x_train = x_train[:, candidates]
    scale_C = _column_scale(x_train, cfg.scaling)
    x_train = x_train @ sp.diags(1.0 / scale_C, format="csr")
    y_train = y_N[train]

    fit = _fit_sparse_linear(x_train, y_train, folds, cfg)
    coef_C = fit.coef_C
    used = np.flatnonzero(coef_C)
    residual_quantiles = conformal_quantiles(y_train - fit.oof_N, cfg.interval)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), STREAM_BOOTSTRAP]))
    boot = _bootstrap_refits(x_train, y_train, by_channel, fit, cfg, rng)
    pair_rng = np.random.default_rng(np.random.SeedSequence([int(seed), STREAM_PAIRS]))
    pair_curve = pair_win_curve(fit.oof_N, y_train, by_channel, pair_rng)
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
        bootstrap=None if boot is None else BootstrapFits(
            feature_indices=candidates[boot[0]].astype(np.int64), scale=scale_C[boot[0]],
            coef=boot[1], intercept=boot[2],
        ),
        pair_curve=pair_curve,
    )

    score_test, lo_test, hi_test = model.predict(x_NF[test])
    y_test = y_N[test]
    g_test = groups_N[test] if groups_N is not None else None
    metrics: dict[str, Any] = {
        "spearman_test": spearman(score_test, y_test),
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
        "n_bootstrap": 0 if model.bootstrap is None else model.bootstrap.n_bootstrap,
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
        emb_NE = np.asarray(baseline_embeddings, dtype=np.float64)
        metrics.update(ridge_baseline(emb_NE, y_N, train, test, folds, g_test))
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


def _pairs_within_groups(
    groups_N: np.ndarray | None, n: int, n_pairs: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """(i `[P]`, j `[P]`): random pairs of different rows of one group (any rows without groups),
    each group weighted by its number of pairs, as all pairs within a channel would be."""
    codes_N = np.zeros(n, dtype=np.int64) if groups_N is None else np.unique(groups_N, return_inverse=True)[1]
    size_C = np.bincount(codes_N)
    weight_C = size_C * (size_C - 1) / 2.0
    if weight_C.sum() == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    order = np.argsort(codes_N, kind="stable")
    start_C = np.r_[0, np.cumsum(size_C)[:-1]]
    channel_P = rng.choice(size_C.size, size=n_pairs, p=weight_C / weight_C.sum())
    i_P = rng.integers(0, size_C[channel_P])
    j_P = rng.integers(0, size_C[channel_P] - 1)
    j_P = j_P + (j_P >= i_P)  # a different row of the same group
    return order[start_C[channel_P] + i_P], order[start_C[channel_P] + j_P]


def pair_win_curve(
    oof_N: np.ndarray, y_N: np.ndarray, groups_N: np.ndarray | None, rng: np.random.Generator,
    n_pairs: int = N_PAIRS, n_knots: int = N_CURVE_KNOTS,
) -> tuple[np.ndarray, np.ndarray]:
    """P(y_i > y_j) as a function of the score difference d = oof_i - oof_j, for rows of one group.

    Learned out of fold on random pairs of training thumbnails of one channel (both orders, so
    the curve is symmetric: g(-d) = 1 - g(d)), by isotonic regression of the outcome (1 won, 0
    lost, 0.5 tied) on d. It carries the shrinkage of penalised scores, the spread of what the
    latents leave unexplained, and how that spread grows with d. g stays within 1 / (m + 2) of 0
    and 1 (m: thumbnails in the pairs), so no pair is ever called certain. Returns (d knots
    `[K]` ascending, g `[K]`); without any pair, the flat curve (0, 0.5).
    """
    i_P, j_P = _pairs_within_groups(groups_N, y_N.size, n_pairs, rng)
    if i_P.size == 0:
        return np.zeros(1), np.full(1, 0.5)
    d_P = oof_N[i_P] - oof_N[j_P]
    win_P = np.where(y_N[i_P] > y_N[j_P], 1.0, np.where(y_N[i_P] < y_N[j_P], 0.0, 0.5))
    d_all, win_all = np.r_[d_P, -d_P], np.r_[win_P, 1.0 - win_P]
    curve = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip").fit(d_all, win_all)
    knots = np.unique(np.quantile(d_all, np.linspace(0.0, 1.0, n_knots)))
    g = curve.predict(knots)
    # Exact symmetry (the fit is symmetric up to ties at the knots): average g(d) and 1 - g(-d).
    g = 0.5 * (g + 1.0 - curve.predict(-knots))
    # Never certain: the rule of succession over the m thumbnails the pairs came from.
    m = np.unique(np.r_[i_P, j_P]).size
    return knots, np.clip(g, 1.0 / (m + 2), 1.0 - 1.0 / (m + 2))


def _resampled_rows(groups_N: np.ndarray | None, n: int, rng: np.random.Generator) -> np.ndarray:
    """Rows of one bootstrap sample: whole channels drawn with replacement, else rows."""
    if groups_N is None:
        return rng.integers(0, n, size=n)
    channels, codes_N = np.unique(groups_N, return_inverse=True)
    rows_by_channel = np.split(np.argsort(codes_N, kind="stable"), np.cumsum(np.bincount(codes_N))[:-1])
    drawn = rng.integers(0, channels.size, size=channels.size)
    return np.concatenate([rows_by_channel[c] for c in drawn])


def _bootstrap_refits(
    x_NC: sp.csr_matrix,
    y_N: np.ndarray,
    groups_N: np.ndarray | None,
    fit: _SparseFit,
    cfg: EngagementConfig,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """`n_bootstrap` refits at the chosen (alpha, l1_ratio) on resampled training channels.

    Returns (candidate columns `[V]` non-zero in any refit, coef `[B, V]`, intercept `[B]`), or
    None when n_bootstrap is 0. The strength is not re-chosen per refit (that would cost a full
    grouped CV each); the refits carry the sampling variability of the coefficients at it.
    """
    b_total = cfg.n_bootstrap
    if b_total == 0:
        return None
    c = x_NC.shape[1]
    coef_BC = np.zeros((b_total, c))
    intercept_B = np.empty(b_total)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for b in range(b_total):
            rows = _resampled_rows(groups_N, y_N.size, rng)
            if fit.alpha is None:
                intercept_B[b] = y_N[rows].mean()
                continue
            refit = _fit_fixed(x_NC[rows], y_N[rows], fit.alpha, fit.l1_ratio, cfg)
            coef_BC[b], intercept_B[b] = refit.coef_, refit.intercept_
    columns = np.flatnonzero(np.any(coef_BC != 0, axis=0))
    return columns, coef_BC[:, columns], intercept_B
