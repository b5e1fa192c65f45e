"""Recovery of a world's planted motifs by the feature-group study (no pixels: latents planted)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from thumbsae.analysis.recovery import recovery_report
from thumbsae.analysis.study import EvalConfig, run_feature_study
from thumbsae.errors import ThumbsaeError
from thumbsae.world import MOTIFS, WorldConfig, plan_world

N_NOISE = 30


def planted_latents(table: pd.DataFrame, seed: int = 0) -> sp.csr_matrix:
    """One latent per motif (active, 0.5..1.5, on the thumbnails showing it) + noise latents."""
    rng = np.random.default_rng(seed)
    n = len(table)
    shows = [set(str(m).split(";")) for m in table["motifs"]]
    dense = np.zeros((n, len(MOTIFS) + N_NOISE), dtype=np.float32)
    for j, motif in enumerate(MOTIFS):
        has = np.array([motif in s for s in shows])
        dense[has, j] = 0.5 + rng.random(int(has.sum()))
    dense[:, len(MOTIFS):] = rng.exponential(0.5, size=(n, N_NOISE)) * (rng.random((n, N_NOISE)) < 0.1)
    return sp.csr_matrix(dense)


@pytest.fixture(scope="module")
def world():
    plan = plan_world(WorldConfig(n_thumbnails=1500, n_channels=20, seed=1))
    return plan.thumbnails, plan.ground_truth


@pytest.fixture(scope="module")
def null_world():
    plan = plan_world(WorldConfig(n_thumbnails=1500, n_channels=20, seed=1, null=True))
    return plan.thumbnails, plan.ground_truth


def cfg(**overrides) -> EvalConfig:
    # Groups of 150 (of ~280 thumbnails per motif) give the raw confounder enough power to show.
    base = dict(group_size=150, n_side=5, n_null=20_000, n_permutations=50, n_bootstrap=200)
    return EvalConfig(**{**base, **overrides})


def test_planted_motifs_are_recovered_and_the_confounder_drops_out(world):
    table, truth = world
    latents = planted_latents(table)
    result = run_feature_study(latents, table, cfg(adjust="channel_date"))
    report = recovery_report(result.feature_groups, table, truth)
    json.dumps(report, allow_nan=False)
    by_motif = {m["motif"]: m for m in report["motifs"]}
    assert set(by_motif) == set(truth["positive"] + truth["negative"] + truth["confounded"])
    for motif in truth["positive"] + truth["negative"]:
        entry = by_motif[motif]
        assert entry["best_feature"] == MOTIFS.index(motif)
        assert entry["purity"] == 1.0 and entry["base_rate"] < 0.5
        assert entry["recovered"], entry
        assert entry["side"] == entry["expected_side"]
        assert entry["true_multiplier"] == pytest.approx(np.exp(truth["motif_effects"][motif]))
    confounded = by_motif[truth["confounded"][0]]
    assert confounded["raw"]["significant"] and confounded["raw"]["lift"] > 1
    assert not confounded["adjusted"]["significant"]
    assert confounded["drops_out_when_adjusted"] is True
    assert report["n_recovered"] == report["n_planted"] == 4


def test_raw_run_plus_adjusted_run_give_the_same_verdicts(world):
    table, truth = world
    latents = planted_latents(table)
    raw = run_feature_study(latents, table, cfg()).feature_groups
    adjusted = run_feature_study(latents, table, cfg(adjust="channel_date")).feature_groups
    separate = recovery_report(raw, table, truth, adjusted_feature_groups=adjusted)
    together = recovery_report(adjusted, table, truth)
    assert separate["motifs"] == together["motifs"]
    raw_only = recovery_report(raw, table, truth)
    confounded = [m for m in raw_only["motifs"] if m["kind"] == "confounded"][0]
    assert confounded["adjusted"] is None and confounded["drops_out_when_adjusted"] is None


def test_null_world_has_no_false_discoveries(null_world):
    table, truth = null_world
    result = run_feature_study(planted_latents(table), table, cfg(adjust="channel"))
    report = recovery_report(result.feature_groups, table, truth)
    assert report["null_world"] is True
    assert report["false_discoveries"] <= 1 and report["false_discoveries_raw"] <= 1
    assert all(m["true_multiplier"] == 1.0 for m in report["motifs"])
    assert report["n_recovered"] <= 1


def test_purity_by_hand():
    table = pd.DataFrame({"video_id": list("abcdef"), "motifs": ["food", "food;face", "", "face", np.nan, "food"]})
    fg = pd.DataFrame({
        "feature": [3, 7], "members": ["a;b;c;d", "b;d;e;f"], "lift": [2.0, 0.5], "q_value": [0.01, 0.2],
        "side": ["high", "low"],
    })
    truth = {"null": False, "positive": ["food"], "negative": ["face"], "confounded": [],
             "motif_effects": {"food": np.log(2.0), "face": -np.log(2.0)}}
    report = recovery_report(fg, table, truth)
    food, face = report["motifs"]
    assert (food["best_feature"], food["purity"], food["base_rate"]) == (3, 0.5, 0.5)  # a, b of a b c d
    assert food["lift_over_true"] == pytest.approx(1.0) and food["significant"] is True
    assert food["recovered"] is True  # purity 0.5 counts as pure, q < 0.05, lift > 1
    # face: feature 3 has b, d (0.5), feature 7 has b, d (0.5): the tie goes to the lower id.
    assert (face["best_feature"], face["purity"]) == (3, 0.5)
    assert face["recovered"] is False  # its best feature's lift is above 1


def test_recovery_needs_the_motifs_column(world):
    table, truth = world
    fg = pd.DataFrame({"feature": [0], "members": ["t000000"], "lift": [1.0], "q_value": [1.0], "side": [""]})
    with pytest.raises(ThumbsaeError, match="motifs"):
        recovery_report(fg, table.drop(columns=["motifs"]), truth)
    with pytest.raises(ThumbsaeError, match="not in the thumbnails table"):
        recovery_report(fg.assign(members="nope"), table, truth)
