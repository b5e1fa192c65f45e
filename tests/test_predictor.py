"""The engagement model: planted effects found, channel split, exact reasons, intervals, save/load."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import scipy.sparse as sp
from PIL import Image
from safetensors.numpy import load_file, save_file

from thumbsae.analysis.latents import LatentMatrix
from thumbsae.analysis.engagement import (
    EngagementConfig,
    EngagementModel,
    fit_engagement_model,
    pairwise_accuracy,
    split_by_channel,
)
from thumbsae.errors import ThumbsaeError

N_LATENTS = 120
PLANTED = np.array([3, 17, 40, 77, 101])
BETA = np.array([1.0, 0.8, -0.8, 0.6, -0.6])
NOISE_SD = 0.4


def synthetic_thumbnails(n: int, seed: int, n_channels: int = 24):
    """Sparse non-negative latents (8 random of 120 active, plus each planted one on 30 % of
    thumbnails); log views = planted effects + noise. Returns (csr [n, 120], y [n], channels [n])."""
    rng = np.random.default_rng(seed)
    x_NF = np.zeros((n, N_LATENTS))
    cols_NK = np.argsort(rng.random((n, N_LATENTS)), axis=1)[:, :8]
    np.put_along_axis(x_NF, cols_NK, rng.exponential(1.0, cols_NK.shape), axis=1)
    x_NF[:, PLANTED] = np.where(rng.random((n, PLANTED.size)) < 0.3, rng.exponential(1.0, (n, PLANTED.size)), 0.0)
    x = sp.csr_matrix(x_NF.astype(np.float32))
    y = x_NF[:, PLANTED] @ BETA + rng.normal(0, NOISE_SD, n)
    channels = np.array([f"ch{c:02d}" for c in rng.integers(0, n_channels, n)])
    return x, y, channels


@pytest.fixture(scope="module")
def fitted():
    x, y, channels = synthetic_thumbnails(700, seed=0)
    # The baseline sees embeddings that carry only a weak, noisy trace of the planted latents.
    rng = np.random.default_rng(1)
    emb = rng.normal(size=(700, 16)) + 0.2 * np.asarray(x[:, PLANTED[:2]].todense()) @ rng.normal(size=(2, 16))
    model, metrics = fit_engagement_model(x, y, groups=channels, baseline_embeddings=emb, seed=0)
    return model, metrics, x, y, channels


def test_recovers_a_planted_sparse_linear_effect(fitted):
    model, metrics, *_ = fitted
    assert metrics["split"] == "by channel"
    assert metrics["spearman_test"] > 0.7
    assert metrics["r2_test"] > 0.6
    assert set(PLANTED) <= set(model.feature_indices.tolist())
    assert metrics["n_features_used"] == model.n_features_used <= 20
    signs = {int(f): np.sign(c) for f, c in zip(model.feature_indices, model.coef)}
    assert [signs[int(f)] for f in PLANTED] == list(np.sign(BETA))
    assert metrics["spearman_baseline"] < metrics["spearman_test"]
    assert metrics["within_channel_pairwise_accuracy"] > 0.7
    assert 0.0 <= metrics["within_channel_pairwise_accuracy_baseline"] <= 1.0
    assert metrics["n_train"] + metrics["n_test"] == 700
    assert metrics["alpha"] > 0
    json.dumps(metrics, allow_nan=False)  # summary.json needs plain JSON


def test_split_holds_out_whole_channels(fitted):
    *_, channels = fitted
    train, test, how = split_by_channel(channels, test_fraction=0.2, seed=0)
    assert how == "by channel"
    assert not set(channels[train]) & set(channels[test])
    assert sorted(np.concatenate([train, test]).tolist()) == list(range(len(channels)))
    metrics = fitted[1]
    assert metrics["n_channels_train"] + metrics["n_channels_test"] == len(set(channels))
    assert metrics["n_test"] == len(test)


def test_without_channels_the_split_is_plain_and_said_so():
    x, y, _ = synthetic_thumbnails(300, seed=5)
    model, metrics = fit_engagement_model(x, y, groups=None, seed=3, target_kind="raw")
    assert metrics["split"] == "random (no channel)"
    assert metrics["within_channel_pairwise_accuracy"] is None
    assert metrics["spearman_baseline"] is None
    assert model.target_kind == "raw"


def test_contributions_and_intercept_sum_to_the_score(fitted):
    model, _, x, *_ = fitted
    scores, lo, hi = model.predict(x[:25])
    assert np.all(lo < scores) and np.all(scores < hi)
    for i in range(25):
        up, down = model.contributions(x[i], top=None)
        total = model.intercept + sum(e["contribution"] for e in up + down)
        assert total == pytest.approx(scores[i], abs=1e-9)
        assert all(e["contribution"] > 0 for e in up) and all(e["contribution"] < 0 for e in down)
        assert [e["contribution"] for e in up] == sorted((e["contribution"] for e in up), reverse=True)
        assert [e["contribution"] for e in down] == sorted(e["contribution"] for e in down)
        for e in up + down:
            assert e["activation"] == pytest.approx(x[i, e["feature"]], rel=1e-6)
    up5, down5 = model.contributions(np.asarray(x[0].todense()).ravel(), top=2)
    assert len(up5) <= 2 and len(down5) <= 2


def test_intervals_cover_about_eighty_percent_of_fresh_thumbnails(fitted):
    model, metrics, *_ = fitted
    x_new, y_new, _ = synthetic_thumbnails(3000, seed=11)
    _, lo, hi = model.predict(x_new)
    coverage = np.mean((y_new >= lo) & (y_new <= hi))
    assert model.interval == 0.8
    assert 0.74 <= coverage <= 0.88, coverage
    assert 0.6 <= metrics["interval_coverage_test"] <= 0.95


def test_save_load_reproduces_predictions_and_copies_examples(fitted, tmp_path):
    model, metrics, x, *_ = fitted
    images = []
    for j in range(8):
        path = tmp_path / "thumbs" / f"t{j}.png"
        path.parent.mkdir(exist_ok=True)
        Image.new("RGB", (320, 180), (30 * j, 100, 200)).save(path)
        images.append(str(path))
    used = int(model.feature_indices[0])
    unused = next(f for f in range(N_LATENTS) if f not in set(model.feature_indices.tolist()))
    info = {
        used: {"name": "red <arrow>", "lift": 2.5, "q_value": np.float64(0.01), "examples": images},
        unused: {"name": "never used", "lift": 1.0, "q_value": 0.9, "examples": images[:1]},
    }
    out = model.save(tmp_path / "engagement_model", feature_info=info)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "examples", "model.safetensors"]
    back = EngagementModel.load(out)
    for a, b in zip(model.predict(x), back.predict(x)):
        np.testing.assert_array_equal(a, b)
    assert back.contributions(x[3]) == model.contributions(x[3])
    assert back.metrics == metrics
    assert set(back.feature_info) == {used}
    saved = back.feature_info[used]
    assert saved["name"] == "red <arrow>" and saved["lift"] == 2.5 and saved["q_value"] == 0.01
    assert len(saved["examples"]) == 6 and all(not p.startswith("/") for p in saved["examples"])
    for path in back.examples(used):
        with Image.open(path) as im:
            assert max(im.size) == 160
    # The folder is self-contained: moved elsewhere it still loads with its examples.
    moved = out.rename(tmp_path / "moved")
    assert all(p.is_file() for p in EngagementModel.load(moved).examples(used))
    # A loaded model saves again (its relative examples resolved against its own folder).
    again = EngagementModel.load(moved).save(tmp_path / "again")
    assert len(EngagementModel.load(again).examples(used)) == 6


def test_fitting_and_saving_are_deterministic(tmp_path):
    x, y, channels = synthetic_thumbnails(300, seed=7)
    a, _ = fit_engagement_model(x, y, groups=channels, seed=4)
    b, _ = fit_engagement_model(LatentMatrix(x, [str(i) for i in range(300)]), y, groups=channels, seed=4)
    a.save(tmp_path / "a")
    b.save(tmp_path / "b")
    for name in ("model.safetensors", "config.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_bad_model_folders_raise_one_line_errors(fitted, tmp_path):
    model = fitted[0]
    with pytest.raises(ThumbsaeError, match="not found"):
        EngagementModel.load(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ThumbsaeError, match="missing"):
        EngagementModel.load(tmp_path / "empty")
    good = model.save(tmp_path / "good")

    bad_json = model.save(tmp_path / "bad_json")
    (bad_json / "config.json").write_text("{not json")
    bad_tensors = model.save(tmp_path / "bad_tensors")
    (bad_tensors / "model.safetensors").write_bytes(b"\x00" * 40)
    inconsistent = model.save(tmp_path / "inconsistent")
    tensors = load_file(str(good / "model.safetensors"))
    tensors["feature_indices"] = tensors["feature_indices"] + N_LATENTS  # out of range
    save_file(tensors, str(inconsistent / "model.safetensors"))
    not_ours = model.save(tmp_path / "not_ours")
    (not_ours / "config.json").write_text('{"format": "something else"}')
    for folder in (bad_json, bad_tensors, inconsistent, not_ours):
        with pytest.raises(ThumbsaeError) as err:
            EngagementModel.load(folder)
        assert str(folder) in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ThumbsaeError, match="latents per thumbnail"):
        model.predict(sp.csr_matrix((2, N_LATENTS + 1)))
    with pytest.raises(ThumbsaeError, match="missing file"):
        model.save(tmp_path / "x", feature_info={int(model.feature_indices[0]): {"examples": [str(tmp_path / "gone.png")]}})
    assert not (tmp_path / "x").exists()


def test_bad_training_input_raises():
    x, y, channels = synthetic_thumbnails(60, seed=2)
    with pytest.raises(ThumbsaeError, match="targets"):
        fit_engagement_model(x, y[:-1], groups=channels)
    y_nan = y.copy()
    y_nan[4] = np.nan
    with pytest.raises(ThumbsaeError, match="NaN"):
        fit_engagement_model(x, y_nan, groups=channels)
    with pytest.raises(ThumbsaeError, match="channel ids"):
        fit_engagement_model(x, y, groups=channels[:10])
    with pytest.raises(ThumbsaeError, match="target_kind"):
        fit_engagement_model(x, y, target_kind="views")


def test_pairwise_accuracy_matches_brute_force_with_ties():
    rng = np.random.default_rng(3)
    pred = rng.integers(0, 5, 80).astype(float)  # many ties in prediction
    y = rng.integers(0, 6, 80).astype(float)  # and in the truth
    groups = rng.integers(0, 4, 80)
    correct = pairs = 0.0
    for i, j in itertools.combinations(range(80), 2):
        if groups[i] != groups[j] or y[i] == y[j]:
            continue
        pairs += 1
        d = (pred[i] - pred[j]) * (y[i] - y[j])
        correct += 1.0 if d > 0 else 0.5 if d == 0 else 0.0
    assert pairwise_accuracy(pred, y, groups) == pytest.approx(correct / pairs, abs=1e-12)
    assert pairwise_accuracy(np.zeros(5), np.arange(5.0), np.zeros(5)) == 0.5
    assert pairwise_accuracy(np.arange(4.0), np.ones(4), np.zeros(4)) is None


def test_settings_change_the_fit_as_configured():
    x, y, channels = synthetic_thumbnails(300, seed=8)
    cfg = EngagementConfig(scaling="maxabs", log1p=True, l1_ratio=(1.0,), interval=0.5, min_active=400)
    model, metrics = fit_engagement_model(x, y, groups=channels, config=cfg)
    # No latent is active on 400 training thumbnails (there are fewer): the model is the training mean.
    assert metrics["n_candidate_features"] == 0 and model.n_features_used == 0
    scores, lo, hi = model.predict(x[:3])
    assert np.all(scores == model.intercept) and metrics["spearman_test"] == 0.0
    assert model.interval == 0.5 and np.all(hi - lo > 0)


def test_one_se_rule_keeps_fewer_features_than_the_best_fit(fitted):
    model, metrics, x, y, channels = fitted
    sparse, sparse_metrics = fit_engagement_model(x, y, groups=channels, config=EngagementConfig(alpha_rule="1se"))
    assert sparse_metrics["alpha"] >= metrics["alpha"]
    assert set(PLANTED) <= set(sparse.feature_indices.tolist())
    assert sparse.n_features_used <= model.n_features_used
    with pytest.raises(ThumbsaeError, match="alpha_rule"):
        fit_engagement_model(x, y, groups=channels, config=EngagementConfig(alpha_rule="max"))
