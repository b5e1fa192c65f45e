"""How well an engagement model ranks held-out thumbnails, and its prediction-interval quantiles."""

from __future__ import annotations

import math

import numpy as np
import scipy.stats


def spearman(pred_N: np.ndarray, y_N: np.ndarray) -> float:
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


def conformal_quantiles(residual_N: np.ndarray, level: float) -> tuple[float, float]:
    """Lower/upper residual quantiles for a two-sided `level` interval, finite-sample corrected."""
    n = residual_N.size
    tail = (1.0 - level) / 2.0
    hi = min(1.0, math.ceil((n + 1) * (1.0 - tail)) / n)
    lo = max(0.0, math.floor((n + 1) * tail) / n)
    return float(np.quantile(residual_N, lo, method="lower")), float(np.quantile(residual_N, hi, method="higher"))
