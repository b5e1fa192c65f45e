"""The engagement package beyond the fit: its config, its target, its folder against tampering,
and how sure "A beats B" is (pairwise probabilities, their calibration, the reliability plot)."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from hydra.utils import instantiate
from omegaconf import OmegaConf
from safetensors.numpy import load_file, save_file
from test_predictor import synthetic_thumbnails

from thumbsae.analysis.engagement import (
    EngagementConfig,
    EngagementModel,
    beat_probabilities,
    beat_probability,
    engagement_target,
    fit_engagement_model,
    held_out_pair_calibration,
    reliability,
    split_by_channel,
    world_expected_log_views,
)
from thumbsae.errors import ThumbsaeError


@pytest.fixture(scope="module")
def fitted():
    """A model on 1,200 synthetic thumbnails of 40 channels, with its pairwise uncertainty."""
    x, y, channels = synthetic_thumbnails(1200, seed=21, n_channels=40)
    model, metrics = fit_engagement_model(x, y, groups=channels, seed=2, config=EngagementConfig(n_bootstrap=40))
    return model, metrics, x, y, channels


def test_config_yaml_builds_the_defaults(repo_root):
    node = OmegaConf.load(repo_root / "conf/engagement/default.yaml")
    built = instantiate(node)
    assert isinstance(built, EngagementConfig) and built == EngagementConfig()
    assert built.l1_ratio == (0.5, 1.0)  # a YAML list becomes the tuple
    assert EngagementConfig.from_mapping(OmegaConf.to_container(node)) == built


@pytest.mark.parametrize(
    "key, value",
    [("test_fraction", 1.0), ("interval", 0.0), ("l1_ratio", []), ("l1_ratio", (0.5, 2.0)), ("n_alphas", 1),
     ("eps", 0.0), ("alpha_rule", "max"), ("cv_folds", 1), ("min_active", 0), ("scaling", "minmax"),
     ("log1p", "no"), ("max_iter", 0), ("n_bootstrap", -1), ("n_bootstrap", 2.5)],
)
def test_config_refuses_bad_values_in_one_line(key, value):
    with pytest.raises(ThumbsaeError, match=rf"^engagement\.{key}=") as err:
        EngagementConfig(**{key: value})
    assert "\n" not in str(err.value)


def test_target_is_channel_relative_with_channels_and_raw_without():
    table = pd.DataFrame({"views": [10, 100, 1000, 5, 50], "channel_id": ["a", "a", "a", "b", "b"]})
    target = engagement_target(table)
    log = np.log1p(table["views"].to_numpy(float))
    np.testing.assert_allclose(target.values, log - np.array([log[1]] * 3 + [np.median(log[3:])] * 2))
    assert target.kind == "channel_relative" and target.groups.tolist() == ["a", "a", "a", "b", "b"]
    raw = engagement_target(table.drop(columns="channel_id"))
    np.testing.assert_allclose(raw.values, log)
    assert raw.kind == "raw" and raw.groups is None
    with pytest.raises(ThumbsaeError, match="views"):
        engagement_target(table.drop(columns="views"))


def _tamper_config(folder, change):
    config = json.loads((folder / "config.json").read_text())
    change(config)
    (folder / "config.json").write_text(json.dumps(config))


def _write_weights(folder, data: bytes):
    (folder / "model.safetensors").write_bytes(data)


def _tamper_tensors(folder, change):
    tensors = load_file(str(folder / "model.safetensors"))
    change(tensors)
    save_file(tensors, str(folder / "model.safetensors"))


TAMPERING = {
    "features a list": ("config.json", "'features'", lambda f: _tamper_config(f, lambda c: c.update(features=[1, 2]))),
    "a feature a string": ("config.json", "'features.", lambda f: _tamper_config(
        f, lambda c: c.update(features={"3": "food"}))),
    "examples a string": ("config.json", ".examples'", lambda f: _tamper_config(
        f, lambda c: c.update(features={"3": {"name": "x", "examples": "a.jpg"}}))),
    "examples of numbers": ("config.json", ".examples'", lambda f: _tamper_config(
        f, lambda c: c.update(features={"3": {"examples": [1, 2]}}))),
    "n_latents text": ("config.json", "'n_latents'", lambda f: _tamper_config(f, lambda c: c.update(n_latents="120"))),
    "interval gone": ("config.json", "'interval.level'", lambda f: _tamper_config(f, lambda c: c.pop("interval"))),
    "target kind": ("config.json", "'target_kind'", lambda f: _tamper_config(
        f, lambda c: c.update(target_kind="views"))),
    "weights missing": ("model.safetensors missing", "", lambda f: (f / "model.safetensors").unlink()),
    "weights truncated": ("model.safetensors", "not a readable safetensors", lambda f: _write_weights(
        f, (f / "model.safetensors").read_bytes()[:100])),
    "weights a pickle": ("model.safetensors", "not a readable safetensors", lambda f: _write_weights(
        f, pickle.dumps({"coef": [1.0]}))),
    "coef missing": ("model.safetensors", "tensor 'coef'", lambda f: _tamper_tensors(f, lambda t: t.pop("coef"))),
    "coef wrong type": ("model.safetensors", "tensor 'coef'", lambda f: _tamper_tensors(
        f, lambda t: t.update(coef=t["coef"].astype(np.int64)))),
    "coef NaN": ("model.safetensors", "tensor 'coef'", lambda f: _tamper_tensors(
        f, lambda t: t.update(coef=np.full_like(t["coef"], np.nan)))),
    "half the bootstrap": ("model.safetensors", "'bootstrap_intercept'", lambda f: _tamper_tensors(
        f, lambda t: t.pop("bootstrap_intercept"))),
    "curve not sorted": ("model.safetensors", "'pair_curve_d'", lambda f: _tamper_tensors(
        f, lambda t: t.update(pair_curve_d=t["pair_curve_d"][::-1].copy()))),
}


@pytest.mark.parametrize("case", sorted(TAMPERING))
def test_tampered_model_folder_fails_naming_file_and_key(fitted, tmp_path, case):
    file, key, tamper = TAMPERING[case]
    folder = fitted[0].save(tmp_path / "model")
    tamper(folder)
    with pytest.raises(ThumbsaeError) as err:
        EngagementModel.load(folder)
    message = str(err.value)
    assert "\n" not in message and file in message and key in message, message


def test_save_load_keeps_the_pairwise_uncertainty(fitted, tmp_path):
    model, _, x, *_ = fitted
    back = EngagementModel.load(model.save(tmp_path / "model"))
    np.testing.assert_array_equal(back.score_samples(x[:30]), model.score_samples(x[:30]))
    np.testing.assert_array_equal(back.pair_curve[0], model.pair_curve[0])
    np.testing.assert_array_equal(beat_probabilities(back, x[:30]), beat_probabilities(model, x[:30]))
    assert back.metrics["n_bootstrap"] == 40 and back.bootstrap.coef.shape[0] == 40


def test_beat_probability_by_hand():
    diff = np.array([[1.0, -1.0, 0.0, 2.0], [0.0, 0.0, 0.0, 0.0]])
    # Without a curve: the share of refits with a positive difference, ties half.
    np.testing.assert_allclose(beat_probability(diff, None), [0.625, 0.5])
    # A curve from 0.2 at d = -1 to 0.8 at d = 1, flat beyond: mean of 0.8, 0.2, 0.5, 0.8.
    curve = (np.array([-1.0, 1.0]), np.array([0.2, 0.8]))
    np.testing.assert_allclose(beat_probability(diff, curve), [0.575, 0.5])


def test_probabilities_are_consistent_and_follow_the_scores(fitted):
    model, _, x, *_ = fitted
    p = beat_probabilities(model, x[:40])
    np.testing.assert_allclose(np.diag(p), 0.5)
    np.testing.assert_allclose(p + p.T, 1.0)
    score = model.predict(x[:40])[0]
    i, j = np.triu_indices(40, k=1)
    agree = np.sign(p[i, j] - 0.5) == np.sign(score[i] - score[j])
    assert agree[score[i] != score[j]].mean() > 0.95  # the refits are centred on the fit
    # Far apart in score: sure; near: not.
    gap = np.abs(score[i] - score[j])
    sure = np.maximum(p[i, j], 1 - p[i, j])
    assert sure[gap > np.quantile(gap, 0.9)].mean() > sure[gap < np.quantile(gap, 0.1)].mean() + 0.2
    assert sure.max() < 1.0  # never certain


def test_difference_is_surer_than_two_intervals_say(fitted):
    # The complaint: intervals about 1.9 wide, a gap of 0.18. The difference's own
    # uncertainty (shared channel and intercept cancel) still gives p > 0.5 for such a gap.
    model, _, x, *_ = fitted
    score, lo, hi = model.predict(x[:200])
    i, j = np.triu_indices(200, k=1)
    first = np.where(score[i] >= score[j], i, j)
    second = np.where(score[i] >= score[j], j, i)
    overlapping = (lo[first] < hi[second]) & (score[first] - score[second] > 0.3)
    p = beat_probabilities(model, x[:200])[first[overlapping], second[overlapping]]
    assert overlapping.sum() > 100 and np.median(p) > 0.6


def test_reliability_table_by_hand():
    p = np.array([0.55, 0.55, 0.95, 0.95, 0.95, 0.95, 0.15])
    win = np.array([1.0, 0.0, 1.0, 1.0, 1.0, 0.5, 0.0])
    calib = reliability(p, win, n_bins=10, min_pairs=2, truth="hand")
    table = calib.table.set_index("bin_lo")
    assert table.loc[0.5, "n_pairs"] == 2 and table.loc[0.5, "win_rate"] == 0.5
    assert table.loc[0.9, "win_rate"] == pytest.approx(0.875) and table.loc[0.9, "mean_p"] == pytest.approx(0.95)
    assert not table.loc[0.1, "counted"] and table.loc[0.9, "counted"]
    # ECE: (2 x |0.5 - 0.55| + 4 x |0.875 - 0.95| + 1 x |0 - 0.15|) / 7
    assert calib.ece == pytest.approx((2 * 0.05 + 4 * 0.075 + 0.15) / 7)
    assert calib.max_gap == pytest.approx(0.075)  # the 0.1 bin has too few pairs to count
    summary = calib.summary()
    json.dumps(summary, allow_nan=False)
    assert summary["truth"] == "hand" and len(summary["bins"]) == 10


def test_stated_probabilities_are_calibrated_on_held_out_channels():
    # Fresh synthetic channels: among held-out pairs of one channel, the model's pick wins at
    # the rate it states, within 0.05 per decile with at least 300 pairs.
    x, y, channels = synthetic_thumbnails(2000, seed=33, n_channels=25)
    table = pd.DataFrame({"views": np.expm1(y - y.min()), "channel_id": channels})
    target = engagement_target(table)
    cfg = EngagementConfig(n_bootstrap=30)
    model, _ = fit_engagement_model(x, target.values, groups=target.groups, seed=5, config=cfg)
    calib = held_out_pair_calibration(model, x, table, seed=5, config=cfg, min_pairs=300)
    counted = calib.table[calib.table["counted"]]
    assert len(counted) >= 4 and calib.n_pairs > 5000
    assert calib.max_gap <= 0.05, calib.table
    _, test, _ = split_by_channel(channels, test_fraction=cfg.test_fraction, seed=5)
    assert calib.n_pairs == sum(k * (k - 1) // 2 for k in pd.Series(channels[test]).value_counts())


def test_world_truth_is_the_pictures_share_of_expected_log_views():
    from thumbsae.world import WorldConfig
    from thumbsae.world.population import plan_world

    plan = plan_world(WorldConfig(n_thumbnails=60, seed=4))
    truth = world_expected_log_views(plan.thumbnails, plan.ground_truth)
    effects = plan.ground_truth["motif_effects"]
    for k in (0, 7, 33):
        row = plan.thumbnails.iloc[k]
        warmth = plan.ground_truth["warmth_effect"] * row["warmth"]
        expected = sum(effects[m] for m in row["motifs"].split(";")) + warmth
        assert truth[k] == pytest.approx(expected)
    null = plan_world(WorldConfig(n_thumbnails=60, seed=4, null=True))
    assert not world_expected_log_views(null.thumbnails, null.ground_truth).any()
    with pytest.raises(ThumbsaeError, match="motifs"):
        world_expected_log_views(plan.thumbnails.drop(columns="motifs"), plan.ground_truth)


def test_reliability_plot_and_csv_are_written_the_same_twice(tmp_path):
    from thumbsae.report.plots import write_pair_calibration

    rng = np.random.default_rng(0)
    p = rng.uniform(0.5, 1.0, 3000)
    calib = reliability(p, (rng.random(3000) < p).astype(float), truth="synthetic")
    numbers = {"ece": calib.ece, "max_gap": calib.max_gap, "truth": calib.truth}
    first = write_pair_calibration(tmp_path / "a", calib.table, **numbers)
    second = write_pair_calibration(tmp_path / "b", calib.table, **numbers)
    assert sorted(first) == ["pair_calibration.csv", "pair_calibration.png"]
    assert first["pair_calibration.png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for name in first:
        assert first[name].read_bytes() == second[name].read_bytes()
    back = pd.read_csv(first["pair_calibration.csv"])
    assert back["n_pairs"].sum() == 3000


def test_rank_pair_verdict_words():
    from thumbsae.video import pair_verdict

    assert pair_verdict(0.714, 0.6) == "#1 beats #2 with probability 0.71"
    assert pair_verdict(0.55, 0.6) == "too close to call"
    assert pair_verdict(0.9, 0.7, better="#1", worse="#4") == "#1 beats #4 with probability 0.90"
    with pytest.raises(ThumbsaeError, match="close_call"):
        pair_verdict(0.9, 0.3)
    with pytest.raises(ThumbsaeError, match="probability"):
        pair_verdict(1.5, 0.7)
    from thumbsae.video import VideoConfig

    with pytest.raises(ThumbsaeError, match="video.close_call"):
        VideoConfig(close_call=0.4)


def test_score_samples_without_refits_is_none(tmp_path):
    x, y, channels = synthetic_thumbnails(200, seed=1)
    model, metrics = fit_engagement_model(x, y, groups=channels, config=EngagementConfig(n_bootstrap=0))
    assert model.score_samples(x[:3]) is None and metrics["n_bootstrap"] == 0
    back = EngagementModel.load(model.save(tmp_path / "m"))
    assert back.bootstrap is None and back.pair_curve is not None
    p = beat_probabilities(back, x[:5])  # the win curve alone still gives probabilities
    np.testing.assert_allclose(p + p.T, 1.0)
    assert sp.issparse(x)
