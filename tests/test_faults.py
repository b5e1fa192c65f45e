"""Faults: SIGKILL at seeded random points during every command, then the same command again.

Each command runs as outside checks run it (a subprocess, the CONTRACT command line, the tiny
world, `model=tiny_random`), in a sandbox whose HOME, TMPDIR and working folder start empty.
For each command:

1. an uninterrupted reference run gives the expected outputs and the window in which it works;
2. the same command is started again in the same place (the reference outputs moved aside) and
   killed with SIGKILL (its whole process group) at a seeded random point of that window;
3. every file it left under a final name must be whole (parses or decodes): a later stage that
   reads it never sees half a file; only hidden temporaries may be partial;
4. the same command once more must succeed and write outputs byte-identical to the reference.

Afterwards nothing may have been written to HOME, TMPDIR or the working folder.
"""

from __future__ import annotations

import json
import os
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from serving import ScriptedServer

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
SEED = 2026
TRAIN = ["model=tiny_random", "trainer.max_steps=24", "trainer.val_check_interval=12", "sae.expansion_factor=2",
         "sae.k=4", "datamodule.batch_size=128", "logger=csv", "callbacks.model_checkpoint.every_n_train_steps=6"]
EVALUATE = ["eval.group_size=10", "eval.n_side=3", "eval.n_null=2000", "eval.n_permutations=10",
            "eval.n_bootstrap=50", "logger=csv"]
# Files that record how long something took, or a log: they differ between any two runs.
NOT_COMPARED = re.compile(r"(^|/)(timing\.json|train\.log|evaluate\.log|extract\.log|\.hydra/.*|csv/.*|checkpoints/.*)$")
TEMPORARY = re.compile(r"(^|/)\.[^/]*\.(tmp|old)-[^/]*(/|$)|\.part$")


class Sandbox:
    """Empty HOME, TMPDIR and working folder for every command, and the environment that uses them."""

    def __init__(self, root: Path):
        self.root = root
        self.home, self.tmp, self.cwd = root / "home", root / "tmp", root / "cwd"
        for folder in (self.home, self.tmp, self.cwd):
            folder.mkdir()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("XDG_", "MPLCONFIG", "WANDB_DIR", "TORCH_HOME", "HF_"))}
        env.update(
            HOME=str(self.home), TMPDIR=str(self.tmp), PYTHONPATH=str(REPO / "src"), OMP_NUM_THREADS="1",
            WANDB_MODE="offline", WANDB_SILENT="true", HYDRA_FULL_ERROR="1", PYTHONDONTWRITEBYTECODE="1",
        )
        self.env = env
        self.cpu_s = 0.0

    def start(self, args: list[str]) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, *args], cwd=self.cwd, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: SIGKILL reaches decoding workers too
        )

    def run(self, args: list[str], watch: Path) -> tuple[float, float]:
        """Run to the end; returns (seconds until `watch` changed, seconds in all)."""
        before = _entries(watch)
        started = time.monotonic()
        proc = self.start(args)
        first = None
        while proc.poll() is None:
            if first is None and _entries(watch) != before:
                first = time.monotonic() - started
            time.sleep(0.02)
        output = proc.stdout.read().decode(errors="replace")
        self._count_cpu()
        assert proc.returncode == 0, f"{args[0]} failed:\n{output[-4000:]}"
        total = time.monotonic() - started
        return (first if first is not None else total * 0.5), total

    def kill_during(self, args: list[str], watch: Path, at: float) -> bool:
        """Start the command, SIGKILL its process group `at` s after `watch` first changes; True if killed."""
        before = _entries(watch)
        proc = self.start(args)
        changed = None
        while proc.poll() is None:
            now = time.monotonic()
            if changed is None and _entries(watch) != before:
                changed = now
            if changed is not None and now - changed >= at:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                break
            time.sleep(0.01)
        proc.stdout.read()
        self._count_cpu()
        return proc.returncode == -signal.SIGKILL

    def _count_cpu(self) -> None:
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.cpu_s = usage.ru_utime + usage.ru_stime


def _entries(folder: Path) -> frozenset[str]:
    return frozenset(os.listdir(folder)) if folder.is_dir() else frozenset()


def _snapshot(folder: Path) -> dict[str, bytes]:
    """Every compared file under `folder`: relative path -> bytes."""
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not NOT_COMPARED.search(p.relative_to(folder).as_posix())
    }


def _check_whole(folder: Path) -> list[str]:
    """Paths of files under a final name that do not parse/decode (a half-written file), as problems."""
    import torch
    from safetensors.numpy import load_file

    problems = []
    for path in sorted(folder.rglob("*")) if folder.exists() else []:
        rel = path.relative_to(folder).as_posix()
        if not path.is_file() or TEMPORARY.search(rel):
            continue
        try:
            suffix = path.suffix.lower()
            if suffix == ".json":
                json.loads(path.read_text())
            elif suffix == ".csv":
                pd.read_csv(path)
            elif suffix == ".npy":
                np.load(path, allow_pickle=False)
            elif suffix == ".npz":
                with np.load(path, allow_pickle=False) as archive:
                    [archive[k] for k in archive.files]
            elif suffix == ".safetensors":
                load_file(str(path))
            elif suffix in (".png", ".jpg", ".jpeg"):
                with Image.open(path) as image:
                    image.load()
            elif suffix == ".ckpt":
                torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # any failure to read means a reader would see half a file
            problems.append(f"{rel}: {type(err).__name__}: {err}"[:300])
    return problems


def _fault(sandbox: Sandbox, args: list[str], output: Path, watch: Path, window: tuple[float, float],
           rng: random.Random, whole: list[Path] | None = None) -> None:
    """Kill `args` at a random point of its working window, check what it left, rerun, compare."""
    reference = output.with_name(output.name + ".reference")
    os.replace(output, reference)
    first, total = window
    killed = False
    fraction = rng.uniform(0.05, 0.95)
    for attempt in range(4):  # faster this time (a cache the reference run filled): kill earlier
        if output.exists():
            shutil.rmtree(output)  # a run that finished first: start again from nothing
        at = fraction * max(0.05, total - first) / (2 ** attempt)
        killed = sandbox.kill_during(args, watch, at)
        problems = [p for folder in (whole or [watch]) for p in _check_whole(folder)]
        assert problems == [], f"half-written files after SIGKILL at +{at:.2f} s: {problems}"
        if killed:
            print(f"\n{Path(args[0]).name} {' '.join(args[1:3])}...: SIGKILL +{at:.2f} s into its work")
            break
    assert killed, "the command always finished before the kill"
    sandbox.run(args, watch)
    expected, found = _snapshot(reference), _snapshot(output)
    assert sorted(found) == sorted(expected)
    differ = [name for name in expected if found[name] != expected[name]]
    assert differ == [], f"outputs differ from the uninterrupted run after a kill at +{at:.2f} s: {differ}"
    shutil.rmtree(reference)


def _serve_images(images: list[Path]):
    """Routes for the fetch test: each image, sent in two halves 30 ms apart (so downloads are in flight)."""

    def route_for(data: bytes):
        def route(h):
            h.send_response(200)
            h.send_header("Content-Type", "image/png")
            h.send_header("Content-Length", str(len(data)))
            h.end_headers()
            h.wfile.write(data[: len(data) // 2])
            h.wfile.flush()
            time.sleep(0.03)
            h.wfile.write(data[len(data) // 2 :])

        return route

    return {f"/{p.name}": route_for(p.read_bytes()) for p in images}


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """The sandbox, the inputs, and one uninterrupted run of every command (with its working window)."""
    from thumbsae.video.synthetic import world_shot, write_video
    from thumbsae.world import WorldConfig, generate_world

    sandbox = Sandbox(tmp_path_factory.mktemp("faults"))
    root = sandbox.root
    world = generate_world(
        WorldConfig(n_thumbnails=200, n_reference_per_class=8, n_channels=6, width=32, height=32, seed=3),
        root / "world",
    )
    video = root / "clip.mp4"
    write_video(
        video,
        [world_shot(["food"], size=(320, 180), seconds=1.0, seed=1),
         world_shot(["sports_field"], size=(320, 180), seconds=1.0, seed=2, scene="studio")],
        size=(192, 108), fps=10,
    )
    thumbnails = pd.read_csv(world / "thumbnails.csv", dtype=str, keep_default_na=False).head(40)
    server = ScriptedServer(_serve_images([world / image for image in thumbnails["image"]]))
    server.__enter__()
    remote = thumbnails[["video_id", "views"]].assign(image=[server.url("/" + Path(i).name) for i in thumbnails["image"]])
    remote.loc[len(remote)] = {"video_id": "gone", "views": "1", "image": server.url("/missing.png")}
    (root / "remote").mkdir()
    remote.to_csv(root / "remote" / "thumbnails.csv", index=False)

    out = root / "out"
    out.mkdir()
    commands = {
        "extract": ([str(REPO / "extract.py"), f"source={world / 'reference.csv'}", "kind=images",
                     f"out={out / 'store'}", "model=tiny_random"], out / "store", out),
        "train": ([str(REPO / "train.py"), f"data.train={world / 'reference.csv'}", f"hydra.run.dir={out / 'run'}",
                   f"activations.cache_dir={out / 'cache'}", *TRAIN], out / "run", out / "run"),
        "evaluate": ([str(REPO / "evaluate.py"), f"sae_dir={out / 'run' / 'sae'}",
                      f"data.thumbnails={world / 'thumbnails.csv'}", f"data.reference={world / 'reference.csv'}",
                      f"hydra.run.dir={out / 'eval'}", f"activations.cache_dir={out / 'cache'}", *EVALUATE],
                     out / "eval", out / "eval"),
        "fetch": (["-m", "thumbsae.cli", "fetch", str(root / "remote" / "thumbnails.csv"), "--out",
                   str(out / "fetched"), "--workers", "2"], out / "fetched", out / "fetched"),
        "rank": (["-m", "thumbsae.cli", "rank", str(video), "--sae", str(out / "run" / "sae"), "--model",
                  str(out / "eval" / "engagement_model"), "--out", str(out / "ranked")], out / "ranked", out),
    }
    windows = {name: sandbox.run(args, watch) for name, (args, _, watch) in commands.items()}
    sandbox.strays_after_reference = _strays(sandbox)
    yield sandbox, commands, windows
    server.__exit__(None, None, None)


@pytest.mark.parametrize("name", ["extract", "train", "evaluate", "fetch", "rank"])
def test_killed_command_reruns_to_identical_outputs(pipeline, name):
    sandbox, commands, windows = pipeline
    args, output, watch = commands[name]
    rng = random.Random(f"{SEED}-{name}")
    whole = [output.parent / "cache", output] if name == "train" else [watch]
    _fault(sandbox, args, output, watch, windows[name], rng, whole=whole)


# Library caches, not outputs: matplotlib's font cache and the empty folders that importing
# Lightning makes (~/.cache, ~/.config/matplotlib, $TMPDIR/torchinductor_<user>).
LIBRARY_CACHES = re.compile(
    r"^(home/\.cache(/matplotlib(/fontlist-v[\d.]+\.json)?)?|home/\.config(/matplotlib)?|tmp/torchinductor_[^/]+)$"
)
# Stray writes in code this suite does not own, each reported with its cause; when one is fixed,
# the strict xfail below fails and the entry goes.
def _strays(sandbox: Sandbox) -> list[str]:
    found = [p.relative_to(sandbox.root).as_posix() for folder in (sandbox.home, sandbox.tmp, sandbox.cwd)
             for p in folder.rglob("*")]
    return sorted(p for p in found if not LIBRARY_CACHES.match(p))


def test_no_command_writes_outside_the_folders_it_was_given(pipeline):
    sandbox, _, _ = pipeline
    # Uninterrupted runs leave HOME, TMPDIR and the working folder as they found them.
    unknown = [p for p in sandbox.strays_after_reference ]
    assert unknown == []
    # Killed runs too, but for TMPDIR: a SIGKILLed process cannot remove its libraries' temporaries.
    after_faults = [p for p in _strays(sandbox) if not p.startswith("tmp/")]
    assert after_faults == []
    print(f"fault suite: {sandbox.cpu_s:.0f} s of CPU in subprocesses")
