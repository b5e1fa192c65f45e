"""The DVC pipeline: valid, CPU-independent inputs, metrics in git, offline plots, and its `world`
stage reproduces offline (on a tiny world)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image

SIZES = (8, 16, 32)
CONF = "src/thumbsae/conf"


def dvc(*args: str, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "dvc", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, f"dvc {' '.join(args)}:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    return proc


def _env() -> dict:
    return {**os.environ, "DVC_NO_ANALYTICS": "1", "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


def _project(tmp_path: Path, repo_root: Path, items: tuple[str, ...], *, scm: bool = False) -> Path:
    """A copy of the repository's `items` in `tmp_path`, with `conf` a link to the copied
    `src/thumbsae/conf` as in the repository, and DVC initialised (with git when `scm`)."""
    for item in (*items, CONF):
        src, dst = repo_root / item, tmp_path / item
        if dst.exists():
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if src.is_dir() else shutil.copy)(src, dst)
    (tmp_path / "conf").symlink_to(CONF, target_is_directory=True)
    if scm:
        subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    dvc("init", "-q", *(() if scm else ("--no-scm",)), cwd=tmp_path, env=_env())
    return tmp_path


def test_world_stage_reproduces_and_is_then_up_to_date(tmp_path, repo_root):
    _project(tmp_path, repo_root, ("dvc.yaml", "src/thumbsae/world", "src/thumbsae/resources"))
    env = _env()
    world_cfg = tmp_path / CONF / "world" / "default.yaml"
    params = yaml.safe_load(world_cfg.read_text())
    params.update(n_thumbnails=48, n_reference_per_class=2, n_channels=4, width=32, height=32)
    world_cfg.write_text(yaml.safe_dump(params))
    stages = dvc("stage", "list", cwd=tmp_path, env=env).stdout
    names = [line.split()[0] for line in stages.splitlines() if line.strip()]
    expected = ["world", "extract_train", "extract_thumbnails", "extract_reference"]
    expected += [f"train@{s}" for s in SIZES] + [f"evaluate@{s}" for s in SIZES] + ["compare"]
    assert names == expected
    dvc("repro", "world", cwd=tmp_path, env=env)
    lines = (tmp_path / "data" / "world" / "thumbnails.csv").read_text().splitlines()
    assert len(lines) == 48 + 1
    assert (tmp_path / "data" / "world" / "demo.mp4").stat().st_size > 1000
    lock = yaml.safe_load((tmp_path / "dvc.lock").read_text())
    assert lock["stages"]["world"]["params"][f"{CONF}/world/default.yaml"]["n_thumbnails"] == 48
    status = dvc("status", "world", cwd=tmp_path, env=env).stdout
    assert "up to date" in status.lower() or "everything is up to date" in status.lower()


def test_no_default_stage_reads_a_cpu_dependent_clip(repo_root):
    """The default pipeline reads the shipped CLIP; the retrain is its own pipeline."""
    stages = yaml.safe_load((repo_root / "dvc.yaml").read_text())["stages"]
    deps = [d for stage in stages.values() for d in stage.get("deps", [])]
    assert not [d for d in deps if str(d).startswith("data/world_clip")]
    assert "src/thumbsae/resources/world_clip" in stages["extract_train"]["deps"]
    model = yaml.safe_load((repo_root / "conf" / "model" / "tiny_world.yaml").read_text())
    assert model["pretrained"] == "thumbsae:world_clip"
    retrain = yaml.safe_load((repo_root / "pipelines" / "world_clip" / "dvc.yaml").read_text())["stages"]
    assert retrain["world_clip"]["outs"][0] == "data/world_clip/model.safetensors"
    assert "metrics" not in retrain["world_clip"]  # optional: its absence must not trouble `dvc metrics diff`


def test_plots_render_offline(tmp_path, repo_root):
    """Every declared plot is an image: `dvc plots show` writes a page with no script and no URL."""
    _project(tmp_path, repo_root, ("dvc.yaml",))
    stages = yaml.safe_load((repo_root / "dvc.yaml").read_text())["stages"]
    plots = [next(iter(p)) for p in stages["evaluate"]["plots"]]
    assert plots and all(p.endswith(".png") for p in plots)
    for size in SIZES:
        for plot in plots:
            path = tmp_path / plot.replace("${item.size}", str(size))
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (40, 30), (size * 7, 80, 120)).save(path)
    dvc("plots", "show", "-o", "dvc_plots", cwd=tmp_path, env=_env())
    page = (tmp_path / "dvc_plots" / "index.html").read_text()
    assert "<script" not in page and "http" not in page
    images = [line.split('src="')[1].split('"')[0] for line in page.splitlines() if "<img" in line]
    assert len(images) == len(plots) * len(SIZES)
    assert all((tmp_path / "dvc_plots" / src).is_file() for src in images)


def test_metrics_and_plot_images_are_committed_not_ignored(repo_root):
    if not (repo_root / ".git").exists():
        pytest.skip("not a git checkout")
    tracked = ["runs/train/x8/metrics.json", "runs/evaluate/x16/summary.json", "runs/evaluate/x16/recovery.json",
               "runs/evaluate/x32/plots/magnitude.png"]
    ignored = ["runs/train/x8/timing.json", "runs/train/x8/sae/sae.safetensors", "runs/train/x8/checkpoints/last.ckpt",
               "runs/evaluate/x8/feature_groups.csv", "runs/evaluate/x8/plots/magnitude.csv", "runs/compare/index.html",
               "data/world/demo.mp4"]
    for path in tracked + ignored:
        proc = subprocess.run(["git", "check-ignore", "-q", "--no-index", path], cwd=repo_root)
        assert proc.returncode == (0 if path in ignored else 1), path


def test_metrics_diff_reads_the_committed_revision(tmp_path, repo_root):
    """`dvc metrics diff` compares the workspace with HEAD: dvc.yaml must be readable from git's
    tree, where `conf` is only a link (so every path in it names src/thumbsae/conf)."""
    _project(tmp_path, repo_root, ("dvc.yaml",), scm=True)
    env = {**_env(), "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    stages = yaml.safe_load((repo_root / "dvc.yaml").read_text())["stages"]
    declared = [next(iter(m)).replace("${item.size}", str(size))
                for name in ("train", "evaluate") for m in stages[name]["metrics"] for size in SIZES]
    for path in declared:
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text('{"fvu": 0.03}\n')
    metrics = tmp_path / "runs" / "train" / "x8" / "metrics.json"
    subprocess.run(["git", "add", "-A"], cwd=tmp_path, check=True, env=env)
    subprocess.run(["git", "commit", "-qm", "baseline"], cwd=tmp_path, check=True, env=env)
    metrics.write_text('{"fvu": 0.02}\n')
    proc = dvc("metrics", "diff", "HEAD", "--json", cwd=tmp_path, env=env)
    assert "failed" not in proc.stderr.lower(), proc.stderr
    diff = json.loads(proc.stdout)
    assert diff["runs/train/x8/metrics.json"]["fvu"] == {"old": 0.03, "new": 0.02, "diff": pytest.approx(-0.01)}
