"""Statistics of feature groups: group statistics, the study's tests and the rigorous additions.

Everything works on a vector `values_N` (views, or adjusted log views) and index arrays of
thumbnail rows. Medians are taken on integer rank codes (`RankedValues`): the median of values is
the value at the median code, so the heavy loops (permutations, bootstrap, nulls) move int32
instead of float64 and stay exact. Every random draw comes from a seeded `numpy.random.Generator`
passed in, and large draws are chunked so memory stays small.

Two medians of an even count: `median` averages the two middle values (numpy's convention);
`median_lower` takes the lower one (torch's `Tensor.median()`, what the study's author ran).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import stats

Statistic = Literal["median", "median_lower", "mean"]

# Elements gathered per chunk (int32 or float64): bounds the memory of every loop here.
CHUNK_ELEMS = 4_000_000


@dataclass(frozen=True)
class RankedValues:
    """`values_N` with their dense rank codes.

    values_N: float64 `[N]`; sorted_U: float64 `[U]` distinct values ascending;
    codes_N: int32 `[N]` with `sorted_U[codes_N] == values_N`.
    """

    values_N: np.ndarray
    sorted_U: np.ndarray
    codes_N: np.ndarray

    @classmethod
    def of(cls, values_N: np.ndarray) -> "RankedValues":
        values_N = np.asarray(values_N, dtype=np.float64)
        sorted_U, codes_N = np.unique(values_N, return_inverse=True)
        return cls(values_N=values_N, sorted_U=sorted_U, codes_N=codes_N.astype(np.int32).ravel())

    @property
    def n(self) -> int:
        return int(self.values_N.shape[0])


def is_median(statistic: Statistic) -> bool:
    """True for either median convention."""
    return statistic in ("median", "median_lower")


def _median_of_codes(codes_XM: np.ndarray, sorted_U: np.ndarray, *, lower: bool = False) -> np.ndarray:
    """float64 `[X]` medians of the value rows whose codes are `codes_XM` (`[X, M]`, scratch).

    Even M: the mean of the two middle values, or the lower of them when `lower`.
    """
    m = codes_XM.shape[-1]
    lo, hi = (m - 1) // 2, m // 2
    if lower or lo == hi:
        return sorted_U[np.partition(codes_XM, lo, axis=-1)[..., lo]].astype(np.float64)
    part = np.partition(codes_XM, [lo, hi], axis=-1)
    return 0.5 * (sorted_U[part[..., lo]] + sorted_U[part[..., hi]])


def statistic_of(values: np.ndarray, statistic: Statistic) -> float:
    """The median (either convention) or mean of a 1-D array; NaN when it is empty."""
    if values.shape[0] == 0:
        return float("nan")
    if statistic == "median_lower":
        return float(np.sort(values)[(values.shape[0] - 1) // 2])
    return float(np.median(values) if statistic == "median" else values.mean())


def stat_of_rows(ranked: RankedValues, rows_XM: np.ndarray, statistic: Statistic) -> np.ndarray:
    """float64 `[X]`: the median or mean of `values_N[rows_XM[x]]` for every row x (chunked)."""
    x, m = rows_XM.shape
    out_X = np.empty(x, dtype=np.float64)
    step = max(1, CHUNK_ELEMS // max(m, 1))
    for start in range(0, x, step):
        rows = rows_XM[start : start + step]
        if is_median(statistic):
            out_X[start : start + step] = _median_of_codes(
                ranked.codes_N[rows], ranked.sorted_U, lower=statistic == "median_lower"
            )
        else:
            out_X[start : start + step] = ranked.values_N[rows].mean(axis=1)
    return out_X


def random_stats(
    ranked: RankedValues, n_draws: int, size: int, statistic: Statistic, rng: np.random.Generator
) -> np.ndarray:
    """float64 `[n_draws]`: statistics of `size` thumbnails drawn uniformly WITH replacement.

    Used for the study's random groups (399 views each) and its held-out null (1,000,000 medians
    of 100 views); drawn in chunks of about CHUNK_ELEMS indices.
    """
    out = np.empty(n_draws, dtype=np.float64)
    step = max(1, CHUNK_ELEMS // max(size, 1))
    for start in range(0, n_draws, step):
        k = min(step, n_draws - start)
        rows = rng.integers(0, ranked.n, size=(k, size), dtype=np.int64)
        out[start : start + k] = stat_of_rows(ranked, rows, statistic)
    return out


def random_subset_stats(
    ranked: RankedValues, n_draws: int, size: int, statistic: Statistic, rng: np.random.Generator
) -> np.ndarray:
    """float64 `[n_draws]`: statistics of `size` distinct thumbnails drawn WITHOUT replacement.

    Each permutation of the N rows is cut into N // size disjoint groups, every one a uniform
    random subset (the exact null of a feature group under 'views unrelated to the feature').
    """
    per_perm = ranked.n // size
    out = np.empty(n_draws, dtype=np.float64)
    done = 0
    while done < n_draws:
        perm = rng.permutation(ranked.n)[: per_perm * size].reshape(per_perm, size)
        k = min(per_perm, n_draws - done)
        out[done : done + k] = stat_of_rows(ranked, perm[:k], statistic)
        done += k
    return out


def ks_tests(stats_G: np.ndarray, random_R: np.ndarray, n_features: int) -> dict[str, float]:
    """The study's two-sample KS test of feature-group statistics against random groups.

    stats_G: `[G]` statistics of the qualifying features; random_R: `[R]` random-group statistics;
    n_features: F, all latents. Returns `ks_statistic`/`ks_pvalue` on the qualifying features
    (the correct test) and `ks_study_statistic`/`ks_study_pvalue`, the study's version on a
    length-F vector with zeros for non-qualifying latents (its D = 64,716 / 65,536 came from it).
    """
    right = stats.ks_2samp(stats_G, random_R)
    study_F = np.zeros(n_features, dtype=np.float64)
    study_F[: stats_G.shape[0]] = stats_G
    study = stats.ks_2samp(study_F, random_R)
    return {
        "ks_statistic": float(right.statistic),
        "ks_pvalue": float(right.pvalue),
        "ks_study_statistic": float(study.statistic),
        "ks_study_pvalue": float(study.pvalue),
    }


def tail_probabilities(
    null_S: np.ndarray, high: float, low: float, *, strict: bool = False
) -> tuple[float, float]:
    """(P(null >= high), P(null <= low)) as plain fractions of the null sample (the study's p).

    strict: count only null values beyond the observed one (P(null > high), P(null < low)), as the
    study's author did; ties with the observed value then count for nothing.
    """
    if null_S.shape[0] == 0:
        return float("nan"), float("nan")
    above = null_S > high if strict else null_S >= high
    below = null_S < low if strict else null_S <= low
    p_high = float(np.count_nonzero(above)) / null_S.shape[0] if np.isfinite(high) else float("nan")
    p_low = float(np.count_nonzero(below)) / null_S.shape[0] if np.isfinite(low) else float("nan")
    return p_high, p_low


def side_means(score_G: np.ndarray, n_high: int, n_low: int) -> tuple[float, float]:
    """(mean of the n_high largest, mean of the n_low smallest) of `score_G`."""
    g = score_G.shape[0]
    high = float(np.partition(score_G, g - n_high)[g - n_high :].mean()) if n_high else float("nan")
    low = float(np.partition(score_G, n_low - 1)[:n_low].mean()) if n_low else float("nan")
    return high, low


def selection_null(
    ranked: RankedValues,
    others_GK: np.ndarray,
    statistic: Statistic,
    log_lift,
    n_high: int,
    n_low: int,
    n_permutations: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """The whole selection re-run on permuted views.

    others_GK: int `[G, K]` member rows without the held-out one (the groups stay fixed; only the
    views assigned to thumbnails are permuted). log_lift: callable stat_G -> log-lift_G.
    Returns (`[B]` mean log-lift of the n_high best groups, `[B]` of the n_low worst) per permutation.
    """
    high_B = np.empty(n_permutations, dtype=np.float64)
    low_B = np.empty(n_permutations, dtype=np.float64)
    for b in range(n_permutations):
        # Permuting the views = shuffling the codes (median) or values (mean) over the rows; the
        # sorted distinct values stay the same. One shuffle, no index array, no extra gather.
        if is_median(statistic):
            permuted = RankedValues(ranked.values_N, ranked.sorted_U, rng.permutation(ranked.codes_N))
        else:
            permuted = RankedValues(rng.permutation(ranked.values_N), ranked.sorted_U, ranked.codes_N)
        stats_G = stat_of_rows(permuted, others_GK, statistic)
        high_B[b], low_B[b] = side_means(log_lift(stats_G), n_high, n_low)
    return high_B, low_B


def permutation_p(observed: float, null_B: np.ndarray, *, greater: bool) -> float:
    """(1 + #{null at least as extreme}) / (B + 1): a valid Monte Carlo p-value."""
    if not np.isfinite(observed) or null_B.shape[0] == 0:
        return float("nan")
    extreme = np.count_nonzero(null_B >= observed) if greater else np.count_nonzero(null_B <= observed)
    return float(1 + extreme) / float(1 + null_B.shape[0])


def median_pvalues(
    ranked: RankedValues, stats_G: np.ndarray, size: int, *, lower: bool = False
) -> tuple[np.ndarray, str]:
    """Two-sided p of each group median under 'the group is a random `size`-subset of the data'.

    For odd `size` exact: median >= x  iff  at least (size+1)/2 members are >= x, and that count
    is hypergeometric (N thumbnails, K of them >= x, `size` drawn). For even `size` and the
    lower median (`lower`, the (size/2)-th smallest) also exact: >= x iff size/2 + 1 members are
    >= x, <= x iff size/2 members are <= x. For even `size` and the averaged median the tail with
    size/2 members bounds the probability from above, so the p is valid but conservative.
    Returns (`[G]` p, method name).
    """
    n = ranked.n
    sorted_N = np.sort(ranked.values_N)
    k_ge_G = n - np.searchsorted(sorted_N, stats_G, side="left")
    k_le_G = np.searchsorted(sorted_N, stats_G, side="right")
    if size % 2:
        need_up = need_down = (size + 1) // 2
    elif lower:
        need_up, need_down = size // 2 + 1, size // 2
    else:
        need_up = need_down = size // 2
    p_up_G = stats.hypergeom.sf(need_up - 1, n, k_ge_G, size)
    p_down_G = stats.hypergeom.sf(need_down - 1, n, k_le_G, size)
    p_G = np.minimum(1.0, 2.0 * np.minimum(p_up_G, p_down_G))
    exact = size % 2 or lower
    return p_G, ("hypergeometric_exact" if exact else "hypergeometric_bound")


def monte_carlo_pvalues(stats_G: np.ndarray, null_S: np.ndarray) -> np.ndarray:
    """Two-sided p of each statistic against a shared null sample `null_S` (`[S]`), +1 corrected."""
    sorted_S = np.sort(null_S)
    s = sorted_S.shape[0]
    n_ge_G = s - np.searchsorted(sorted_S, stats_G, side="left")
    n_le_G = np.searchsorted(sorted_S, stats_G, side="right")
    p_up_G = (1.0 + n_ge_G) / (1.0 + s)
    p_down_G = (1.0 + n_le_G) / (1.0 + s)
    return np.minimum(1.0, 2.0 * np.minimum(p_up_G, p_down_G))


def benjamini_hochberg(p_G: np.ndarray) -> np.ndarray:
    """`[G]` Benjamini-Hochberg adjusted p-values (q-values) over all tested features."""
    p_G = np.asarray(p_G, dtype=np.float64)
    if p_G.shape[0] == 0:
        return p_G.copy()
    return np.asarray(stats.false_discovery_control(p_G, method="bh"), dtype=np.float64)


def _resample_draws(n_bootstrap: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """int64 `[B, k]`: B bootstrap resamples of k positions drawn with replacement from 0..k-1."""
    return rng.integers(0, k, size=(n_bootstrap, k), dtype=np.int64)


def _percentiles(boot_CB: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """(`[C]` alpha/2, `[C]` 1 - alpha/2) percentiles of each row of bootstrap replicates."""
    lo_C, hi_C = np.quantile(boot_CB, [alpha / 2, 1 - alpha / 2], axis=1)
    return lo_C, hi_C


def bootstrap_ci(
    ranked: RankedValues,
    others_GK: np.ndarray,
    statistic: Statistic,
    n_bootstrap: int,
    alpha: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap (1 - alpha) CI of each group's statistic, B = n_bootstrap resamples.

    others_GK: int `[G, K]` member rows. A resample is K positions drawn with replacement; which
    positions are drawn does not depend on the data, so the same B resamples serve every group
    (each group's CI is a plain bootstrap CI; only the Monte Carlo error is shared). Median: the
    resample applied to the group's SORTED values has its median at the middle drawn position,
    so a replicate costs one (two for even K) look-ups instead of K. Mean: the replicates are
    `values_GK @ counts_KB / K` with counts_KB the resamples' multiplicities.
    Returns (`[G]` low, `[G]` high).
    """
    g, k = others_GK.shape
    draws_BK = _resample_draws(n_bootstrap, k, rng)
    lo_G = np.empty(g, dtype=np.float64)
    hi_G = np.empty(g, dtype=np.float64)
    step = max(1, CHUNK_ELEMS // max(k, n_bootstrap, 1))
    if is_median(statistic):
        lo = (k - 1) // 2
        hi = lo if statistic == "median_lower" else k // 2
        mid_BK = np.partition(draws_BK, [lo, hi] if hi != lo else lo, axis=1)
        mid_lo_B, mid_hi_B = mid_BK[:, lo], mid_BK[:, hi]
        for start in range(0, g, step):
            sorted_CK = np.sort(ranked.codes_N[others_GK[start : start + step]], axis=1)
            boot_CB = 0.5 * (
                ranked.sorted_U[sorted_CK[:, mid_lo_B]] + ranked.sorted_U[sorted_CK[:, mid_hi_B]]
            )
            lo_G[start : start + step], hi_G[start : start + step] = _percentiles(boot_CB, alpha)
    else:
        counts_KB = np.bincount(
            (np.arange(n_bootstrap)[:, None] * k + draws_BK).ravel(), minlength=n_bootstrap * k
        ).reshape(n_bootstrap, k).T.astype(np.float64)
        for start in range(0, g, step):
            boot_CB = (ranked.values_N[others_GK[start : start + step]] @ counts_KB) / k
            lo_G[start : start + step], hi_G[start : start + step] = _percentiles(boot_CB, alpha)
    return lo_G, hi_G


def order_statistic_ci(
    ranked: RankedValues, others_GK: np.ndarray, alpha: float
) -> tuple[np.ndarray, np.ndarray]:
    """Distribution-free (>= 1 - alpha) CI of each group's median from its order statistics.

    [x_(r), x_(K-r+1)] covers the population median with probability 1 - 2 P(Bin(K, 1/2) <= r-1);
    r is the largest rank keeping that >= 1 - alpha (r >= 1). Returns (`[G]` low, `[G]` high).
    """
    g, k = others_GK.shape
    r = max(1, int(stats.binom.ppf(alpha / 2, k, 0.5)))
    lo_G = np.empty(g, dtype=np.float64)
    hi_G = np.empty(g, dtype=np.float64)
    step = max(1, CHUNK_ELEMS // max(k, 1))
    for start in range(0, g, step):
        codes = ranked.codes_N[others_GK[start : start + step]]
        part = np.partition(codes, [r - 1, k - r], axis=1)
        lo_G[start : start + step] = ranked.sorted_U[part[:, r - 1]]
        hi_G[start : start + step] = ranked.sorted_U[part[:, k - r]]
    return lo_G, hi_G


def normal_ci(ranked: RankedValues, others_GK: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """(1 - alpha) normal-approximation CI of each group's mean: mean +- z * sd / sqrt(K)."""
    vals_GK = ranked.values_N[others_GK]
    k = vals_GK.shape[1]
    mean_G = vals_GK.mean(axis=1)
    se_G = vals_GK.std(axis=1, ddof=1) / np.sqrt(k) if k > 1 else np.zeros_like(mean_G)
    z = stats.norm.ppf(1 - alpha / 2)
    return mean_G - z * se_G, mean_G + z * se_G
