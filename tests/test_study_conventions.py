"""`eval=study` follows its author's code; `eval=default` keeps ours. Each convention on an input
small enough to work out by hand, where the two give different answers (docs/study.md's table)."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from thumbsae.analysis import stats as st
from thumbsae.analysis.study import EvalConfig, run_feature_study
from thumbsae.errors import ThumbsaeError


def fixture(views=None) -> tuple[sp.csr_matrix, pd.DataFrame]:
    """10 thumbnails (views 100..1000 unless given), group_size 3, so every group median is of 2
    views (an even count, where the conventions differ).

    feature 0: rows 9, 8, 7    -> held out v9; others v8, v7
    feature 1: rows 0, 1, 2    -> held out v0; others v1, v2
    feature 2: rows 5, 6, 3    -> held out v5; others v6, v3
    feature 3: rows 4, 2, 1    -> held out v4; others v2, v1 (the same others as feature 1)
    """
    dense = np.zeros((10, 4), dtype=np.float32)
    dense[[9, 8, 7], 0] = [0.9, 0.8, 0.7]
    dense[[0, 1, 2], 1] = [0.9, 0.8, 0.7]
    dense[[5, 6, 3], 2] = [0.6, 0.3, 0.2]
    dense[[4, 2, 1], 3] = [0.9, 0.8, 0.7]
    views = np.arange(1, 11, dtype=np.int64) * 100 if views is None else np.asarray(views, dtype=np.int64)
    return sp.csr_matrix(dense), pd.DataFrame({"video_id": [f"v{i}" for i in range(10)], "views": views})


def cfg(**overrides) -> EvalConfig:
    base = {"group_size": 3, "n_side": 1, "threshold": 0.05, "n_null": 20_000, "n_permutations": 20, "n_bootstrap": 100}
    return EvalConfig(**{**base, **overrides})


def test_even_median_averages_by_default_and_takes_the_lower_value_in_the_study():
    latents, table = fixture()
    ours = run_feature_study(latents, table, cfg()).feature_groups.set_index("feature")["group_stat"]
    theirs = run_feature_study(latents, table, cfg(median="lower")).feature_groups.set_index("feature")["group_stat"]
    assert ours.tolist() == [850.0, 250.0, 550.0, 250.0]  # numpy: mean of the two middle values
    assert theirs.tolist() == [800.0, 200.0, 400.0, 200.0]  # torch: the lower one
    s = run_feature_study(latents, table, cfg(median="lower")).summary
    assert s["dataset_median"] == 500.0 and s["median_rule"] == "lower"  # 10 views: lower middle


def test_heldout_median_of_an_even_side_follows_the_median_rule():
    # n_side 2: the high side's held-out views are v9 (1000) and v5 (600) by our group medians.
    latents, table = fixture()
    ours = run_feature_study(latents, table, cfg(n_side=2)).summary
    theirs = run_feature_study(latents, table, cfg(n_side=2, median="lower")).summary
    assert ours["hhm"] == 800.0 and theirs["hhm"] == 600.0
    # Low side: features 1 and 3 (tied medians, lower feature id first), held out v0 and v4.
    assert ours["lhm"] == 300.0 and theirs["lhm"] == 100.0


@pytest.mark.parametrize("size", [6, 8])
def test_lower_median_p_is_exact_against_brute_force(size):
    rng = np.random.default_rng(4)
    values = rng.integers(0, 25, size=60).astype(np.float64)  # many ties
    ranked = st.RankedValues.of(values)
    xs = np.array([np.quantile(values, 0.2), np.median(values), np.quantile(values, 0.85)])
    p, method = st.median_pvalues(ranked, xs, size, lower=True)
    assert method == "hypergeometric_exact"
    subsets = np.argsort(rng.random((40_000, values.shape[0])), axis=1)[:, :size]
    lower_medians = np.sort(values[subsets], axis=1)[:, (size - 1) // 2]
    for x, p_x in zip(xs, p):
        simulated = min(1.0, 2 * min((lower_medians >= x).mean(), (lower_medians <= x).mean()))
        assert p_x == pytest.approx(simulated, abs=0.015)


def test_lower_median_bootstrap_and_null_draws_take_the_lower_value():
    rng = np.random.default_rng(2)
    values = np.round(rng.lognormal(8, 1, size=300))
    ranked = st.RankedValues.of(values)
    others = rng.integers(0, 300, size=(3, 20))
    lo, hi = st.bootstrap_ci(ranked, others, "median_lower", 200, 0.05, np.random.default_rng(5))
    draws = np.random.default_rng(5).integers(0, 20, size=(200, 20))
    for g in range(3):
        boot = np.sort(np.sort(values[others[g]])[draws], axis=1)[:, 9]
        assert (lo[g], hi[g]) == tuple(np.quantile(boot, [0.025, 0.975]))
    null = st.random_stats(ranked, 50, 4, "median_lower", np.random.default_rng(1))
    rows = np.random.default_rng(1).integers(0, 300, size=(50, 4))
    np.testing.assert_array_equal(null, np.sort(values[rows], axis=1)[:, 1])


def test_heldout_p_counts_ties_by_default_and_not_in_the_study():
    # n_side 1: the null is single random views; HHM is v9 = 1000, the largest view, LHM v0 = 100.
    latents, table = fixture()
    ours = run_feature_study(latents, table, cfg(n_null=100_000)).summary
    theirs = run_feature_study(latents, table, cfg(n_null=100_000, strict_p=True)).summary
    assert ours["p_hhm"] == pytest.approx(0.1, abs=0.005)  # P(view >= 1000)
    assert ours["p_lhm"] == pytest.approx(0.1, abs=0.005)  # P(view <= 100)
    assert theirs["p_hhm"] == 0.0 and theirs["p_lhm"] == 0.0  # nothing strictly beyond
    assert theirs["strict_p"] is True
    assert st.tail_probabilities(np.array([1.0, 2.0, 2.0, 3.0]), 2.0, 2.0, strict=True) == (0.25, 0.25)
    assert st.tail_probabilities(np.array([1.0, 2.0, 2.0, 3.0]), 2.0, 2.0) == (0.75, 0.75)


def test_number_of_null_draws_is_a_setting():
    latents, table = fixture()
    result = run_feature_study(latents, table, cfg(n_null=1234))
    assert result.summary["n_null"] == 1234 and result.nulls["heldout_null"].shape == (1234,)


def test_zero_median_feature_is_ranked_by_default_and_left_out_in_the_study():
    views = np.array([100, 0, 0, 400, 500, 600, 700, 800, 900, 1000])
    latents, table = fixture(views)  # feature 1's and 3's others are v1, v2: 0 views
    ours = run_feature_study(latents, table, cfg())
    low = ours.feature_groups.set_index("feature")
    assert low.loc[1, "side"] == "low" and low.loc[1, "group_stat"] == 0.0  # ranked first on the low side
    assert ours.summary["n_qualifying"] == 4 and ours.summary["n_zero_median_dropped"] == 0
    theirs = run_feature_study(latents, table, cfg(drop_zero_median=True))
    assert theirs.feature_groups["feature"].tolist() == [0, 2]
    assert theirs.summary["n_qualifying"] == 2 and theirs.summary["n_zero_median_dropped"] == 2
    assert theirs.feature_groups.set_index("feature").loc[2, "side"] == "low"
    # The study's KS vector: the dropped features count as zeros, like every non-qualifying latent.
    assert theirs.nulls["random_group_stats"].shape == (2,)


def test_all_zero_median_features_give_one_clear_error():
    latents, table = fixture(np.array([100, 0, 0, 400, 500, 600, 700, 800, 900, 1000]))
    latents = latents.tolil()
    latents[:, [0, 2]] = 0  # left: features 1 and 3, both with 0-view others
    with pytest.raises(ThumbsaeError, match="drop_zero_median"):
        run_feature_study(latents.tocsr(), table, cfg(drop_zero_median=True))


def test_too_few_features_split_ours_and_say_what_the_author_would_take(caplog):
    latents, table = fixture()
    with caplog.at_level(logging.WARNING, logger="thumbsae.analysis.study"):
        result = run_feature_study(latents, table, cfg(n_side=3))
    s = result.summary
    assert s["sides_split"] is True and (s["n_high"], s["n_low"]) == (2, 2)
    author = s["author_sides"]
    # 4 qualifying, 3 per side: the author's top 3 and bottom 3 share 2 features, no padding.
    assert (author["n_high"], author["n_overlap"], author["n_padding_per_side"]) == (3, 2, 0)
    # Top 3 by group median (850, 550, 250 with feature 1 before 3): held out 1000, 600, 100.
    assert author["hhm"] == 600.0
    # Bottom 3 (250 feature 1, 250 feature 3, 550): held out 100, 500, 600.
    assert author["lhm"] == 500.0
    assert s["warnings"] == [author["note"]]
    assert any("author's code would take 3 per side" in r.getMessage() for r in caplog.records)
    padded = run_feature_study(latents, table, cfg(n_side=6)).summary["author_sides"]
    assert (padded["n_overlap"], padded["n_padding_per_side"], padded["hhm"]) == (4, 2, None)
    assert run_feature_study(latents, table, cfg(n_side=2)).summary["author_sides"] is None


def test_ties_keep_the_earlier_row_and_the_lower_feature_id():
    latents, table = fixture()
    dense = latents.toarray()
    dense[2, 1] = dense[1, 1]  # feature 1: rows 1 and 2 tie at .8; row 1 stays first
    fg = run_feature_study(sp.csr_matrix(dense), table, cfg(n_side=2)).feature_groups.set_index("feature")
    assert fg.loc[1, "members"] == "v0;v1;v2"
    # Features 1 and 3 tie at a group median of 250: feature 1 is the lowest, feature 3 next.
    assert fg.loc[[1, 3], "side_rank"].tolist() == [1, 2] and fg.loc[[1, 3], "side"].tolist() == ["low", "low"]


@pytest.mark.parametrize(
    "key, value, message",
    [("median", "upper", "eval.median='upper'"), ("strict_p", "yes", "eval.strict_p='yes'"),
     ("drop_zero_median", 1, "eval.drop_zero_median=1")],
)
def test_new_settings_are_validated(key, value, message):
    with pytest.raises(ThumbsaeError, match=message):
        EvalConfig(**{key: value})


@pytest.mark.parametrize("option", ["default", "study", "channel"])
def test_every_eval_option_instantiates(repo_root, option):
    with initialize_config_dir(config_dir=str(repo_root / "conf"), version_base="1.3"):
        cfg_ = compose(config_name="evaluate", overrides=[f"eval={option}"])
    built = instantiate(cfg_.eval)
    assert isinstance(built, EvalConfig)
    assert built == EvalConfig.from_mapping(OmegaConf.to_container(cfg_.eval, resolve=True))


def test_study_and_channel_inherit_default_and_change_only_their_keys(repo_root):
    import yaml

    default = yaml.safe_load((repo_root / "conf/eval/default.yaml").read_text())
    for option, own in {
        "study": {"group_size": 400, "n_side": 100, "n_null": 100_000, "median": "lower", "strict_p": True,
                  "drop_zero_median": True},
        "channel": {"group_size": 11, "n_side": 10, "statistic": "mean"},
    }.items():
        text = yaml.safe_load((repo_root / f"conf/eval/{option}.yaml").read_text())
        assert text.pop("defaults") == ["default", "_self_"]
        assert text == own
        assert all(default[k] != v for k, v in own.items())  # only keys that differ
        built = instantiate({**default, **own})
        assert all(getattr(built, k) == v for k, v in own.items())
