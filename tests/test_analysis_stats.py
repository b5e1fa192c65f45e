"""The rigorous statistics: BH, exact per-feature p, CIs, adjustment, and calibration on null data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from scipy import stats

from thumbsae.analysis import stats as st
from thumbsae.analysis.adjust import adjust_views
from thumbsae.analysis.study import EvalConfig, run_feature_study


def test_benjamini_hochberg_against_the_1995_paper_table():
    # Benjamini & Hochberg (1995), section 4: 15 p-values; at q = 0.05 the first four are rejected.
    p = np.array([0.0001, 0.0004, 0.0019, 0.0095, 0.0201, 0.0278, 0.0298, 0.0344, 0.0459,
                  0.3240, 0.4262, 0.5719, 0.6528, 0.7590, 1.0000])
    # By hand: q_(i) = min over j >= i of p_(j) * 15 / j (what R's p.adjust(p, "BH") prints).
    expected = np.array([0.0015, 0.003, 0.0095, 0.035625, 0.0603, 0.0638571429, 0.0638571429,
                         0.0645, 0.0765, 0.486, 0.5811818182, 0.714875, 0.7532307692,
                         0.8132142857, 1.0])
    shuffle = np.random.default_rng(0).permutation(15)
    q = st.benjamini_hochberg(p[shuffle])
    np.testing.assert_allclose(q, expected[shuffle], rtol=1e-6)
    assert int((q < 0.05).sum()) == 4


@pytest.mark.parametrize("size", [7, 8])
def test_hypergeometric_median_p_against_brute_force(size):
    rng = np.random.default_rng(1)
    values = rng.integers(0, 25, size=60).astype(np.float64)  # many ties
    ranked = st.RankedValues.of(values)
    xs = np.array([np.quantile(values, 0.2), np.median(values), np.quantile(values, 0.85)])
    p, method = st.median_pvalues(ranked, xs, size)
    # Brute force: medians of random `size`-subsets WITHOUT replacement.
    subsets = np.argsort(rng.random((40_000, values.shape[0])), axis=1)[:, :size]
    medians = np.median(values[subsets], axis=1)
    for x, p_x in zip(xs, p):
        simulated = min(1.0, 2 * min((medians >= x).mean(), (medians <= x).mean()))
        if size % 2:
            assert method == "hypergeometric_exact"
            assert p_x == pytest.approx(simulated, abs=0.015)
        else:
            assert method == "hypergeometric_bound"
            assert p_x >= simulated - 0.015  # conservative for even sizes


def test_median_bootstrap_equals_the_direct_resampling():
    rng = np.random.default_rng(2)
    values = np.round(rng.lognormal(8, 1, size=500))
    ranked = st.RankedValues.of(values)
    others = rng.integers(0, 500, size=(4, 21))
    lo, hi = st.bootstrap_ci(ranked, others, "median", 300, 0.05, np.random.default_rng(5))
    draws = np.random.default_rng(5).integers(0, 21, size=(300, 21))
    for g in range(4):
        sample = np.sort(values[others[g]])
        boot = np.median(sample[draws], axis=1)
        assert (lo[g], hi[g]) == tuple(np.quantile(boot, [0.025, 0.975]))
        assert lo[g] <= np.median(sample) <= hi[g]
    lo_m, hi_m = st.bootstrap_ci(ranked, others, "mean", 300, 0.05, np.random.default_rng(5))
    boot_mean = values[others[1]][draws].mean(axis=1)
    np.testing.assert_allclose([lo_m[1], hi_m[1]], np.quantile(boot_mean, [0.025, 0.975]), rtol=1e-12)


def test_order_statistic_ci_covers_the_median():
    rng = np.random.default_rng(3)
    population = rng.lognormal(0, 1, size=100_000)
    ranked = st.RankedValues.of(population)
    others = rng.integers(0, population.shape[0], size=(2000, 39))
    lo, hi = st.order_statistic_ci(ranked, others, 0.05)
    true_median = np.median(population)
    coverage = np.mean((lo <= true_median) & (true_median <= hi))
    assert 0.93 <= coverage <= 0.995


def _channel_age_table(n=4000, seed=0):
    """Views with planted channel sizes and an age trend; old channels are the big ones."""
    rng = np.random.default_rng(seed)
    effect_C = rng.normal(0, 1.0, size=30)
    channel_N = rng.integers(0, 30, size=n)
    # Channel c uploads over 6 years, starting (29 - c) / 5 years earlier: channel and age correlate.
    age_days = 30 + 365 * (rng.uniform(0, 6, size=n) + (29 - channel_N) / 5)
    newest = pd.Timestamp("2024-12-31")
    dates = (newest - pd.to_timedelta(np.round(age_days), unit="D")).strftime("%Y-%m-%d")
    dates = np.array(dates)
    dates[int(np.argmin(age_days))] = newest.strftime("%Y-%m-%d")
    log_age = np.log1p((newest - pd.to_datetime(dates)).days.to_numpy())
    log_views = 8 + effect_C[channel_N] + 0.8 * log_age + rng.normal(0, 0.3, size=n)
    table = pd.DataFrame({
        "video_id": [f"v{i}" for i in range(n)],
        "views": np.round(np.exp(log_views)).astype(np.int64),
        "channel_id": [f"c{c}" for c in channel_N],
        "upload_date": dates,
    })
    return table, effect_C[channel_N], log_age


def test_channel_adjustment_removes_a_planted_channel_effect():
    table, effect_N, _ = _channel_age_table()
    raw = np.log1p(table["views"].to_numpy(dtype=float))
    adjusted = adjust_views(table, "channel")
    assert abs(np.corrcoef(raw, effect_N)[0, 1]) > 0.5
    assert abs(np.corrcoef(adjusted, effect_N)[0, 1]) < 0.05
    medians = pd.Series(adjusted).groupby(table["channel_id"]).median()
    np.testing.assert_allclose(medians.to_numpy(), 0.0, atol=1e-12)


def test_channel_date_adjustment_also_removes_the_age_effect():
    table, effect_N, log_age = _channel_age_table()
    channel_only = adjust_views(table, "channel")
    both = adjust_views(table, "channel_date")
    assert abs(np.corrcoef(channel_only, log_age)[0, 1]) > 0.3  # age still in there
    assert abs(np.corrcoef(both, log_age)[0, 1]) < 0.05
    assert abs(np.corrcoef(both, effect_N)[0, 1]) < 0.05
    # Deterministic: the same table gives the same values.
    np.testing.assert_array_equal(both, adjust_views(table.copy(), "channel_date"))


def _null_study(views_seed: int, plant: float = 0.0, **cfg):
    """3,000 thumbnails, 150 latents active on ~60 random thumbnails each, log-normal views."""
    rng = np.random.default_rng(7)
    n, f = 3000, 150
    rows = np.concatenate([rng.choice(n, size=60, replace=False) for _ in range(f)])
    cols = np.repeat(np.arange(f), 60)
    acts = rng.exponential(1.0, size=rows.shape[0]).astype(np.float32) + 0.06
    latents = sp.csr_matrix((acts, (rows, cols)), shape=(n, f))
    views = np.round(np.exp(np.random.default_rng(views_seed).normal(8, 1.5, size=n)))
    if plant:
        views[rows[cols < 5]] *= plant  # features 0..4 go with `plant` times more views
    table = pd.DataFrame({"video_id": [f"v{i}" for i in range(n)], "views": views.astype(np.int64)})
    base = dict(group_size=40, n_side=10, n_null=20_000, n_permutations=100, n_bootstrap=100)
    return run_feature_study(latents, table, EvalConfig(**{**base, **cfg}))


def test_null_data_is_calibrated():
    # Five null data sets (views unrelated to the latents), pooled: 750 per-feature p-values.
    runs = [_null_study(views_seed=seed, n_permutations=100 if seed == 1 else 1) for seed in range(1, 6)]
    assert all(r.summary["p_value_method"] == "hypergeometric_exact" for r in runs)
    p = np.concatenate([r.feature_groups["p_value"].to_numpy() for r in runs])
    assert stats.kstest(p, "uniform").pvalue > 0.01  # per-feature p roughly uniform
    assert 0.02 < np.mean(p < 0.05) < 0.08
    # BH keeps P(any discovery) near 0.05 per run: at most a stray one over five runs.
    assert sum(int((r.feature_groups["q_value"] < 0.05).sum()) for r in runs) <= 2
    assert runs[0].summary["selection_null_p"] > 0.05
    assert runs[0].summary["selection_null_p_low"] > 0.05


def test_planted_features_are_found_and_the_selection_null_rejects():
    result = _null_study(views_seed=11, plant=6.0)
    fg = result.feature_groups.set_index("feature")
    assert (fg.loc[[0, 1, 2, 3, 4], "q_value"] < 0.05).all()
    assert (fg.loc[[0, 1, 2, 3, 4], "side"] == "high").all()
    assert (fg.loc[[0, 1, 2, 3, 4], "lift_ci_low"] > 1).all()
    assert result.summary["selection_null_p"] < 0.02


def test_mean_statistic_uses_monte_carlo_p_and_is_calibrated():
    result = _null_study(views_seed=12, statistic="mean", n_feature_null=20_000)
    assert result.summary["p_value_method"] == "monte_carlo_random_subsets"
    p = result.feature_groups["p_value"].to_numpy()
    assert stats.kstest(p, "uniform").pvalue > 0.01
    assert int((result.feature_groups["q_value"] < 0.05).sum()) <= 1


def test_many_features_bootstrap_only_the_sides():
    result = _null_study(views_seed=11, max_bootstrap_features=50)
    fg = result.feature_groups
    on_side = fg["side"] != ""
    assert (fg.loc[on_side, "ci_method"] == "bootstrap").all()
    assert (fg.loc[~on_side, "ci_method"] == "order_statistic").all()
    assert (fg["lift_ci_low"] <= fg["lift"]).all() and (fg["lift"] <= fg["lift_ci_high"]).all()
