"""The study's statistics on a fixture small enough to work out by hand."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from scipy import stats

from thumbsae.analysis import stats as st
from thumbsae.analysis.groups import top_groups
from thumbsae.analysis.study import EvalConfig, run_feature_study, write_study
from thumbsae.errors import ThumbsaeError

CONTRACT_COLUMNS = [
    "feature", "n_active", "group_size", "group_stat", "lift", "heldout_video_id", "heldout_views",
    "side", "p_value", "q_value", "members",
]
CONTRACT_KEYS = [
    "n_thumbnails", "n_features_tested", "dataset_median", "ks_statistic", "ks_pvalue", "hhm", "lhm",
    "p_hhm", "p_lhm", "selection_null_p",
]


def hand_fixture() -> tuple[sp.csr_matrix, pd.DataFrame]:
    """10 thumbnails (views 100..1000), 4 latents; group_size 3 makes features 0, 1, 3 qualify.

    feature 0: rows 9 (.9), 8 (.8), 7 (.7), 1 (.1)  -> held out v9 (1000), others 900, 800 -> 850
    feature 1: rows 0 (.9), 1 (.9), 2 (.5), 3 (.3)  -> tie: row 0 first; held out v0, others 200, 300 -> 250
    feature 2: rows 4 (.5), 5 (.5), 6 (.04)         -> 3rd activation .04 <= .05: not qualifying
    feature 3: rows 5 (.6), 6 (.3), 3 (.2)          -> held out v5 (600), others 700, 400 -> 550
    """
    dense = np.zeros((10, 4), dtype=np.float32)
    dense[[9, 8, 7, 1], 0] = [0.9, 0.8, 0.7, 0.1]
    dense[[0, 1, 2, 3], 1] = [0.9, 0.9, 0.5, 0.3]
    dense[[4, 5, 6], 2] = [0.5, 0.5, 0.04]
    dense[[5, 6, 3], 3] = [0.6, 0.3, 0.2]
    table = pd.DataFrame({"video_id": [f"v{i}" for i in range(10)], "views": np.arange(1, 11, dtype=np.int64) * 100})
    return sp.csr_matrix(dense), table


def small_cfg(**overrides) -> EvalConfig:
    base = dict(group_size=3, n_side=1, threshold=0.05, n_null=20_000, n_permutations=50, n_bootstrap=200)
    return EvalConfig(**{**base, **overrides})


def test_groups_medians_and_heldout_by_hand():
    latents, table = hand_fixture()
    result = run_feature_study(latents, table, small_cfg())
    fg = result.feature_groups.set_index("feature")
    assert set(CONTRACT_COLUMNS) <= set(result.feature_groups.columns)
    assert list(fg.index) == [0, 1, 3]
    assert fg.loc[[0, 1, 3], "group_stat"].tolist() == [850.0, 250.0, 550.0]
    assert fg.loc[[0, 1, 3], "heldout_video_id"].tolist() == ["v9", "v0", "v5"]
    assert fg.loc[[0, 1, 3], "heldout_views"].tolist() == [1000, 100, 600]
    assert fg.loc[1, "members"] == "v0;v1;v2"  # the tie at .9 goes to the earlier row
    assert fg.loc[3, "members"] == "v5;v6;v3"
    assert fg.loc[[0, 1, 3], "n_active"].tolist() == [4, 4, 3]
    assert fg.loc[0, "lift"] == pytest.approx(850 / 550)
    assert fg.loc[0, "side"] == "high" and fg.loc[1, "side"] == "low" and fg.loc[3, "side"] == ""

    s = result.summary
    assert all(key in s for key in CONTRACT_KEYS)
    assert s["n_thumbnails"] == 10 and s["n_features_tested"] == 3 and s["n_qualifying"] == 3
    assert s["dataset_median"] == 550.0
    assert s["hhm"] == 1000.0 and s["lhm"] == 100.0

    tb = result.top_and_bottom
    assert list(tb.columns[:4]) == ["top_or_bottom", "rank", "latent_feature_index", "group_median_views"]
    assert tb.iloc[:, :4].values.tolist() == [["top", 1, 0, 850.0], ["bottom", 1, 1, 250.0]]


def test_p_hhm_matches_exact_probability_with_one_feature_per_side():
    # n_side=1: the null is single random views, P(view >= 1000) = P(view <= 100) = 1/10 exactly.
    latents, table = hand_fixture()
    s = run_feature_study(latents, table, small_cfg(n_null=200_000)).summary
    assert s["p_hhm"] == pytest.approx(0.1, abs=0.004)
    assert s["p_lhm"] == pytest.approx(0.1, abs=0.004)


def test_held_out_null_of_medians_matches_binomial_formula():
    # Median of 3 draws with replacement >= x  iff at least 2 of 3 are >= x: 3q^2(1-q) + q^3.
    ranked = st.RankedValues.of(np.arange(1, 11) * 100.0)
    null = st.random_stats(ranked, 300_000, 3, "median", np.random.default_rng(1))
    for x, q in [(800.0, 0.3), (500.0, 0.6)]:
        exact = 3 * q**2 * (1 - q) + q**3
        p_high, _ = st.tail_probabilities(null, x, float("nan"))
        assert p_high == pytest.approx(exact, abs=0.004)
    # Even size: np.median's convention, the mean of the two middle values.
    assert st.stat_of_rows(ranked, np.array([[0, 9, 3, 4]]), "median")[0] == 450.0


def test_random_heldout_is_a_member_and_excluded_from_the_statistic():
    latents, table = hand_fixture()
    views = dict(zip(table["video_id"], table["views"]))
    positions = set()
    for seed in range(6):
        fg = run_feature_study(latents, table, small_cfg(heldout="random", seed=seed)).feature_groups
        for _, row in fg.iterrows():
            members = row["members"].split(";")
            assert row["heldout_video_id"] in members
            others = [views[m] for m in members if m != row["heldout_video_id"]]
            assert row["group_stat"] == np.median(others)
            positions.add(members.index(row["heldout_video_id"]))
    assert len(positions) > 1  # not always the top-1


def _exact_ks_pvalue(x, y) -> float:
    """Brute force: fraction of all interleavings of the pooled sample with D >= observed."""
    pooled = np.concatenate([x, y])
    observed = stats.ks_2samp(x, y).statistic
    hits = total = 0
    for idx in itertools.combinations(range(len(pooled)), len(x)):
        mask = np.zeros(len(pooled), dtype=bool)
        mask[list(idx)] = True
        total += 1
        hits += stats.ks_2samp(pooled[mask], pooled[~mask]).statistic >= observed - 1e-12
    return hits / total


def test_ks_with_and_without_zeros_by_hand():
    groups_G = np.array([1.0, 2.0, 3.0])
    random_R = np.array([2.5, 3.5, 4.5])
    ks = st.ks_tests(groups_G, random_R, n_features=6)
    # Qualifying only: at x = 2, ECDFs 2/3 vs 0.
    assert ks["ks_statistic"] == pytest.approx(2 / 3)
    assert ks["ks_pvalue"] == pytest.approx(_exact_ks_pvalue(groups_G, random_R))
    # The study's vector [1, 2, 3, 0, 0, 0]: at x = 2, ECDFs 5/6 vs 0.
    assert ks["ks_study_statistic"] == pytest.approx(5 / 6)


def test_study_ks_uses_its_random_groups():
    latents, table = hand_fixture()
    result = run_feature_study(latents, table, small_cfg())
    random_R = result.nulls["random_group_stats"]
    assert random_R.shape == (3,)  # as many random groups as qualifying features
    allowed = {(a + b) / 2 for a in table["views"] for b in table["views"]}  # medians of 2 views
    assert set(random_R.tolist()) <= allowed
    stats_G = np.array([850.0, 250.0, 550.0])
    assert result.summary["ks_statistic"] == pytest.approx(stats.ks_2samp(stats_G, random_R).statistic)
    with_zeros = np.r_[stats_G, 0.0]
    assert result.summary["ks_study_statistic"] == pytest.approx(stats.ks_2samp(with_zeros, random_R).statistic)


def test_too_few_features_are_split_without_overlap():
    latents, table = hand_fixture()
    result = run_feature_study(latents, table, small_cfg(n_side=2))
    assert result.summary["sides_split"] is True and "split" in result.summary["sides_note"]
    sides = result.feature_groups.set_index("feature")["side"]
    assert sides.tolist() == ["high", "low", "high"]  # 850 and 550 high, 250 low
    assert result.summary["n_high"] == 2 and result.summary["n_low"] == 1


def test_max_per_channel_walks_down_the_activation_order():
    dense = np.zeros((6, 1), dtype=np.float32)
    dense[:, 0] = [0.9, 0.8, 0.7, 0.6, 0.5, 0.0]
    channel_N = np.array([0, 0, 0, 1, 2, 2])
    one = top_groups(sp.csr_matrix(dense), 3, 0.05, channel_N=channel_N, max_per_channel=1)
    assert one.members_GM.tolist() == [[0, 3, 4]]
    two = top_groups(sp.csr_matrix(dense), 3, 0.05, channel_N=channel_N, max_per_channel=2)
    assert two.members_GM.tolist() == [[0, 1, 3]]
    # Capped at 1 per channel, 4 members are not available: the feature no longer qualifies.
    assert top_groups(sp.csr_matrix(dense), 4, 0.05, channel_N=channel_N, max_per_channel=1).n_groups == 0


def test_groups_match_a_dense_reference():
    rng = np.random.default_rng(0)
    dense = rng.exponential(size=(300, 40)).astype(np.float32) * (rng.random((300, 40)) < 0.3)
    dense[:50, 5] = 1.0  # ties: row order decides
    groups = top_groups(sp.csr_matrix(dense), 20, 0.05)
    for g, f in enumerate(groups.features_G):
        order = np.lexsort((np.arange(300), -dense[:, f]))[:20]
        assert groups.members_GM[g].tolist() == order.tolist()
        assert dense[order[-1], f] > 0.05
    expected = [f for f in range(40) if np.sort(dense[:, f])[::-1][19] > 0.05]
    assert groups.features_G.tolist() == expected


def test_outputs_are_deterministic_and_json_ready(tmp_path):
    latents, table = hand_fixture()
    first = write_study(run_feature_study(latents, table, small_cfg()), tmp_path / "a")
    second = write_study(run_feature_study(latents, table, small_cfg()), tmp_path / "b")
    for name in ("feature_groups.csv", "top_and_bottom_groups.csv"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert json.dumps(first, sort_keys=True) == json.dumps(second, sort_keys=True)
    assert not [p for p in (tmp_path / "a").iterdir() if p.name.startswith(".")]  # no temporaries left
    back = pd.read_csv(tmp_path / "a" / "feature_groups.csv")
    assert set(CONTRACT_COLUMNS) <= set(back.columns)


def test_adjusted_run_reports_raw_and_adjusted_side_by_side():
    latents, table = hand_fixture()
    table["channel_id"] = ["a", "a", "b", "b", "c", "c", "d", "d", "e", "e"]
    result = run_feature_study(latents, table, small_cfg(adjust="channel"))
    s = result.summary
    assert s["primary"] == "adjusted" and s["raw"]["hhm"] == 1000.0
    assert s["adjusted"]["scale"] == "adjusted_log_views" and s["hhm"] == s["adjusted"]["hhm"]
    fg = result.feature_groups.set_index("feature")
    assert fg.loc[0, "group_stat_raw"] == 850.0
    assert {"lift_raw", "q_value_raw", "p_value_raw"} <= set(fg.columns)
    # Feature 0's others: v8 (channel e: log 900 - median(log 901, log 1001)), v7 (channel d).
    adj = {8: np.log1p(900) - np.median(np.log1p([900, 1000])), 7: np.log1p(800) - np.median(np.log1p([700, 800]))}
    assert fg.loc[0, "group_stat"] == pytest.approx(np.median([adj[8], adj[7]]))


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(cfg=dict(threshold=5.0)), "eval.threshold"),
        (dict(cfg=dict(group_size=11)), "larger than the number of thumbnails"),
        (dict(views=np.zeros(10, dtype=np.int64)), "0 views"),
        (dict(views=np.r_[np.arange(9) * 100 + 100, -5]), "row 9"),
        (dict(cfg=dict(adjust="channel")), "channel_id"),
        (dict(cfg=dict(max_per_channel=1)), "channel_id"),
        (dict(cfg=dict(statistic="mode")), "eval.statistic"),
        (dict(rows=9), "rows must match"),
    ],
)
def test_bad_input_gives_one_clear_error(change, message):
    latents, table = hand_fixture()
    if "views" in change:
        table["views"] = change["views"]
    if "rows" in change:
        table = table.iloc[: change["rows"]]
    with pytest.raises(ThumbsaeError, match=message):
        run_feature_study(latents, table, small_cfg(**change.get("cfg", {})))


def test_channel_date_needs_parseable_dates():
    latents, table = hand_fixture()
    table["channel_id"] = "c"
    table["upload_date"] = ["2020-01-0%d" % (i % 9 + 1) for i in range(10)]
    table.loc[4, "upload_date"] = "yesterday"
    with pytest.raises(ThumbsaeError, match="upload_date: row 4"):
        run_feature_study(latents, table, small_cfg(adjust="channel_date"))


def test_eval_config_from_mapping_ignores_other_parts_keys():
    cfg = EvalConfig.from_mapping({"group_size": 40, "n_side": 20, "pool": "mean", "names": {"vocab": "x"}})
    assert (cfg.group_size, cfg.n_side, cfg.pool) == (40, 20, "mean")
