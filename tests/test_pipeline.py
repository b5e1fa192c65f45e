"""The public interface (the README's "What it writes" table), end to end on a tiny world: train.py,
evaluate.py, thumbsae rank, exactly as outside checks call them (subprocesses, Hydra overrides)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytestmark = pytest.mark.slow

FEATURE_GROUP_COLUMNS = {
    "feature", "n_active", "group_size", "group_stat", "lift", "heldout_video_id",
    "heldout_views", "side", "p_value", "q_value", "members",
}
SUMMARY_KEYS = {
    "n_thumbnails", "n_features_tested", "dataset_median", "ks_statistic", "ks_pvalue", "hhm", "lhm",
    "p_hhm", "p_lhm", "selection_null_p", "predictor",
}
# Small but real: the tiny world, the tiny random CLIP, a short TopK run.
TRAIN_OVERRIDES = [
    "model=tiny_random", "trainer.max_steps=40", "trainer.val_check_interval=20", "sae.expansion_factor=4", "sae.k=8",
    "datamodule.batch_size=256", "logger=csv",
]
EVAL_OVERRIDES = [
    "eval.group_size=20", "eval.n_side=5", "eval.n_null=20000", "eval.n_permutations=30",
    "eval.n_bootstrap=200", "logger=csv",
]


def run(repo: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{args[0]} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


@pytest.fixture(scope="module")
def trained(tmp_path_factory, repo_root, tiny_world) -> Path:
    work = tmp_path_factory.mktemp("pipeline")
    cache = work / "cache"
    proc = run(
        repo_root, str(repo_root / "train.py"), f"data.train={tiny_world / 'reference.csv'}",
        f"hydra.run.dir={work / 'run'}", f"activations.cache_dir={cache}", *TRAIN_OVERRIDES, cwd=work,
    )
    (work / "train.stdout").write_text(proc.stdout)
    return work


def test_train_says_where_the_sae_is_and_what_to_run_next(trained):
    assert (trained / "train.stdout").read_text().splitlines()[-2:] == [
        "wrote run/sae", "next: python evaluate.py sae_dir=run/sae"
    ]


def test_train_writes_a_self_describing_sae(trained):
    sae_dir = trained / "run" / "sae"
    assert (sae_dir / "sae.safetensors").stat().st_size > 0
    config = json.loads((sae_dir / "config.json").read_text())
    assert config["clip"]["name"] == "thumbsae-tiny-vit"
    assert config["hook"] == {"layer": -2, "tokens": "all", "fit": "pad"}
    assert config["normalisation"]["input_scale"] > 0
    assert config["sae"]["arch"] == "topk" and config["sae"]["d_in"] == 128
    metrics = json.loads((trained / "run" / "metrics.json").read_text())
    assert 0 <= metrics["fvu"] < 1.5 and metrics["l0"] == pytest.approx(8, abs=0.5)
    from thumbsae.sae import load_sae

    sae, _ = load_sae(sae_dir)
    assert sae.n_latents == 512


@pytest.fixture(scope="module")
def evaluated(trained, repo_root, tiny_world) -> Path:
    out = trained / "eval"
    proc = run(
        repo_root, str(repo_root / "evaluate.py"), f"sae_dir={trained / 'run' / 'sae'}",
        f"data.thumbnails={tiny_world / 'thumbnails.csv'}", f"data.reference={tiny_world / 'reference.csv'}",
        f"hydra.run.dir={out}", f"activations.cache_dir={trained / 'cache'}", *EVAL_OVERRIDES, cwd=trained,
    )
    (trained / "evaluate.stdout").write_text(proc.stdout)
    (trained / "evaluate.stderr").write_text(proc.stderr)
    return out


def test_evaluate_shows_its_steps_and_what_to_run_next(evaluated):
    stdout = (evaluated.parent / "evaluate.stdout").read_text().splitlines()
    assert stdout[-2].startswith("wrote eval: ") and "features tested" in stdout[-2]
    assert stdout[-1] == "next: thumbsae rank VIDEO --sae run/sae --model eval/engagement_model --out DIR"
    # One bar over the steps after extraction, ending at its total with the last step shown.
    stderr = (evaluated.parent / "evaluate.stderr").read_text().replace("\r", "\n")
    bar = [line for line in stderr.splitlines() if line.startswith("evaluate:")]
    assert bar and "6/6" in bar[-1] and "report" in bar[-1]
    # The ridge baseline's full-tower embeddings of the thumbnails are kept for the next evaluation.
    cached = list((evaluated.parent / "cache" / "embeddings").glob("*.npy"))
    assert len(cached) == 1
    summary = json.loads((evaluated / "summary.json").read_text())
    assert np.load(cached[0], allow_pickle=False).shape[0] == summary["n_thumbnails"]
    # So are the text embeddings of the naming vocabulary's prompts (the world CLIP has a text tower).
    from thumbsae.analysis.names import PROMPT_TEMPLATES, load_vocabulary

    text = list((evaluated.parent / "cache" / "text").glob("*.npy"))
    assert len(text) == 1 and summary["feature_names"] != ["none"]
    assert np.load(text[0], allow_pickle=False).shape[0] == len(PROMPT_TEMPLATES) * len(load_vocabulary(None))


def test_evaluate_writes_the_contract_files(evaluated, tiny_world):
    groups = pd.read_csv(evaluated / "feature_groups.csv", keep_default_na=False)
    assert FEATURE_GROUP_COLUMNS <= set(groups.columns)
    assert (groups["group_size"] == 20).all()
    assert set(groups["side"]) <= {"high", "low", ""}
    assert (groups["side"] == "high").sum() == 5 and (groups["side"] == "low").sum() == 5
    assert groups["q_value"].between(0, 1).all() and (groups["q_value"] >= groups["p_value"] - 1e-12).all()
    # lift is the group statistic over the dataset median, and members are the group's video ids.
    summary = json.loads((evaluated / "summary.json").read_text())
    assert SUMMARY_KEYS <= set(summary)
    assert {"spearman_test", "spearman_baseline"} <= set(summary["predictor"])
    assert groups["lift"].to_numpy() == pytest.approx(groups["group_stat"].to_numpy() / summary["dataset_median"])
    thumbnails = pd.read_csv(tiny_world / "thumbnails.csv", dtype={"video_id": str})
    assert summary["n_thumbnails"] == len(thumbnails)
    assert summary["dataset_median"] == pytest.approx(thumbnails["views"].median())
    ids = set(thumbnails["video_id"])
    first = groups.iloc[0]["members"].split(";")
    assert len(first) == 20 and set(first) <= ids and groups.iloc[0]["heldout_video_id"] == first[0]
    assert summary["n_features_tested"] == len(groups)
    panels = sorted(p.name for p in (evaluated / "panels").glob("*.png"))
    assert sum(name.startswith("high_") for name in panels) == 5
    assert sum(name.startswith("low_") for name in panels) == 5
    index = (evaluated / "panels" / "index.html").read_text()
    assert all(name in index for name in panels if name.startswith(("high_", "low_")))
    assert (evaluated / "engagement_model" / "model.safetensors").exists()
    assert (evaluated / "top_and_bottom_groups.csv").exists()
    recovery = json.loads((evaluated / "recovery.json").read_text())
    assert {m["motif"] for m in recovery["motifs"]} >= {"food", "sports_field"}
    assert pd.read_csv(evaluated / "rejects.csv").empty


def test_rank_uses_the_trained_sae_and_the_evaluated_model(trained, evaluated, repo_root):
    from thumbsae.video.synthetic import world_shot, write_video

    video = trained / "clip.mp4"
    shots = [
        world_shot(["food"], size=(480, 270), seconds=1.2, seed=1),
        world_shot(["sports_field"], size=(480, 270), seconds=1.2, seed=2, scene="studio"),
        world_shot(["car", "animal"], size=(480, 270), seconds=1.2, seed=3, scene="burst"),
    ]
    write_video(video, shots, size=(320, 180), fps=15)
    out = trained / "ranked"
    run(
        repo_root, "-m", "thumbsae.cli", "rank", str(video), "--sae", str(trained / "run" / "sae"),
        "--model", str(evaluated / "engagement_model"), "--out", str(out), "--no-progress", cwd=trained,
    )
    ranking = json.loads((out / "ranking.json").read_text())
    assert 1 <= len(ranking) <= 3
    scores = [r["score"] for r in ranking]
    assert scores == sorted(scores, reverse=True)
    for r in ranking:
        assert {"time_s", "score", "image", "features"} <= set(r)
        assert Path(r["image"]).exists()
        assert all({"feature", "contribution"} <= set(f) for f in r["features"])
    assert (out / "report.html").exists()
