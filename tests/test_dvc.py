"""The DVC pipeline file is valid and its `world` stage reproduces offline (on a tiny world)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml


def dvc(*args: str, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "dvc", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, f"dvc {' '.join(args)}:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    return proc


def test_world_stage_reproduces_and_is_then_up_to_date(tmp_path, repo_root):
    for item in ("dvc.yaml", "conf", "src/thumbsae/world", "src/thumbsae/resources"):
        src, dst = repo_root / item, tmp_path / item
        dst.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if src.is_dir() else shutil.copy)(src, dst)
    world_cfg = tmp_path / "conf" / "world" / "default.yaml"
    params = yaml.safe_load(world_cfg.read_text())
    params.update(thumbnails=48, reference_per_class=2, channels=4, width=32, height=32)
    world_cfg.write_text(yaml.safe_dump(params))
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    dvc("init", "--no-scm", "-q", cwd=tmp_path, env=env)
    stages = dvc("stage", "list", cwd=tmp_path, env=env).stdout
    for name in ("world", "world_clip", "extract_train", "train@8", "train@16", "train@32", "evaluate", "compare"):
        assert name in stages, name
    dvc("repro", "world", cwd=tmp_path, env=env)
    lines = (tmp_path / "data" / "world" / "thumbnails.csv").read_text().splitlines()
    assert len(lines) == 48 + 1
    lock = yaml.safe_load((tmp_path / "dvc.lock").read_text())
    assert lock["stages"]["world"]["params"]["conf/world/default.yaml"]["thumbnails"] == 48
    status = dvc("status", "world", cwd=tmp_path, env=env).stdout
    assert "up to date" in status.lower() or "everything is up to date" in status.lower()
