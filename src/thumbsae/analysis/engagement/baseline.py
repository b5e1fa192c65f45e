"""The engagement model's baseline: a ridge on raw CLIP embeddings, same split and folds."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.linear_model import Ridge
from sklearn.metrics import r2_score

from thumbsae.analysis.engagement.metrics import pairwise_accuracy, spearman


def ridge_alpha_by_cv(
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


def ridge_baseline(
    emb_NE: np.ndarray,
    y_N: np.ndarray,
    train: np.ndarray,
    test: np.ndarray,
    folds: list[tuple[np.ndarray, np.ndarray]],
    g_test: np.ndarray | None,
) -> dict[str, Any]:
    """Ridge on standardised raw CLIP embeddings `[N, E]`, fitted on `train`, measured on `test`.

    Returns `spearman_baseline`, `r2_baseline`, `within_channel_pairwise_accuracy_baseline`,
    `baseline_alpha`.
    """
    emb_NE = emb_NE.reshape(emb_NE.shape[0], -1)
    mean_E = emb_NE[train].mean(axis=0)
    std_E = emb_NE[train].std(axis=0)
    std_E = np.where(std_E > 0, std_E, 1.0)
    z_NE = (emb_NE - mean_E) / std_E
    alpha = ridge_alpha_by_cv(z_NE[train], y_N[train], folds, np.logspace(-2, 5, 15))
    ridge = Ridge(alpha=alpha).fit(z_NE[train], y_N[train])
    pred_test = ridge.predict(z_NE[test])
    y_test = y_N[test]
    return {
        "spearman_baseline": spearman(pred_test, y_test),
        "r2_baseline": float(r2_score(y_test, pred_test)),
        "within_channel_pairwise_accuracy_baseline": None
        if g_test is None
        else pairwise_accuracy(pred_test, y_test, g_test),
        "baseline_alpha": alpha,
    }
