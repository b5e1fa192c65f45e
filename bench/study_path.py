"""Benchmark: the published study's path end to end with CLIP ViT-L/14 (random weights) on CPU.

Each stage runs as a user runs it, in a fresh process (`sys.executable`; time and peak RSS of that
process tree from `wait4`):

    world     thumbsae world --out W --thumbnails N --reference-per-class R --size 320 240
    extract   python extract.py model=vit_l14_openai model.pretrained=null activations=study
                  source=W/reference.csv out=<the store folder train.py looks up>
    train     python train.py experiment=study model.pretrained=null trainer=cpu trainer.max_steps=4
                  (65,536 latents, the study's ReLU recipe; validation with the splice metrics)
    evaluate  python evaluate.py experiment=study sae_dir=... (extracts thumbnails and reference
                  images, feature groups with small groups, panels, engagement model)
    rank      thumbsae rank VIDEO --candidates 8   (W/demo.mp4, or a 20 s video of world shots)

It prints each stage's seconds and peak RSS, the splice metrics' own cost from the run's
timing.json (their share of the training stage), and as its last line JSON with
`ratio` = time limit / total seconds and `target` 1. The limit, 15 minutes on 2 cores for ~100
training images, is the time the code before this bench took for the training step alone on 160
images (13.5 min: 3 min extraction, 10 min of splice validation).

    python bench/study_path.py [--thumbnails 100] [--reference-per-class 6] [--out bench/out/study_path]
    python bench/study_path.py --model tiny   # the same path with the tiny random CLIP (seconds)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TIME_LIMIT_S = 900.0
MODELS = {
    # overrides of train.py / evaluate.py, and of extract.py (which has no experiment group)
    "vit_l14": (["experiment=study", "model.pretrained=null"],
                ["model=vit_l14_openai", "model.pretrained=null", "activations=study"]),
    "tiny": (["experiment=study", "model=tiny_random"], ["model=tiny_random", "activations=study"]),
}


def run_stage(name: str, cmd: list[str], env: dict, log_dir: Path) -> dict:
    """Run `cmd` to completion; its wall seconds and peak RSS (largest process of its tree, GB)."""
    log = log_dir / f"{name}.log"
    started = time.perf_counter()
    with open(log, "w") as handle:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        tail = log.read_text()[-3000:]
        raise SystemExit(f"study_path.py: stage {name} failed (exit {proc.returncode}); {log}:\n{tail}")
    peak_gb = usage.ru_maxrss * 1024 / 1e9
    print(f"{name:9s} {seconds:8.1f} s   peak RSS {peak_gb:6.2f} GB", flush=True)
    return {"seconds": round(seconds, 2), "peak_gb": round(peak_gb, 3)}


def short_video(world: Path) -> Path:
    """The world's demo video, else a 20 s one of six world shots written here (not timed)."""
    if (world / "demo.mp4").is_file():
        return world / "demo.mp4"
    from thumbsae.video.synthetic import world_shot, write_video

    motifs = [["food"], ["face", "text_overlay"], ["sports_field"], ["car"], ["animal", "red_arrow"], ["night_scene"]]
    shots = [world_shot(m, size=(320, 180), seconds=20 / len(motifs), seed=i) for i, m in enumerate(motifs)]
    return write_video(world.parent / "short.mp4", shots, size=(320, 180), fps=15)


def train_store_folder(overrides: list[str]) -> Path:
    """The store folder `train.py` with these overrides looks up (so extract.py can fill it first)."""
    from thumbsae.config import build, compose
    from thumbsae.tasks.extract import store_folder

    cfg = compose("train", overrides)
    return store_folder(cfg.data.train, "images", build(cfg.activations, "activations"), build(cfg.model, "model"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--thumbnails", type=int, default=100)
    parser.add_argument("--reference-per-class", type=int, default=6, help="training/reference images per class")
    parser.add_argument("--model", choices=sorted(MODELS), default="vit_l14")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "study_path")
    parser.add_argument("--time-limit", type=float, default=TIME_LIMIT_S)
    args = parser.parse_args()

    out = args.out.resolve()
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    world, run, evaluated = out / "world", out / "train", out / "eval"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "WANDB_MODE": "offline", "HYDRA_FULL_ERROR": "1"}
    python = [sys.executable]
    common, extract_overrides = MODELS[args.model]
    data = [f"data.train={world / 'reference.csv'}", f"data.thumbnails={world / 'thumbnails.csv'}",
            f"data.reference={world / 'reference.csv'}", f"activations.cache_dir={out / 'cache'}"]
    max_steps, val_every = 4, 2
    train_overrides = [*common, *data, "trainer=cpu", f"trainer.max_steps={max_steps}",
                       f"trainer.val_check_interval={val_every}", "logger=csv"]
    stages: dict[str, dict] = {}

    stages["world"] = run_stage("world", [*python, "-m", "thumbsae.cli", "world", "--out", str(world),
                                          "--thumbnails", str(args.thumbnails), "--reference-per-class",
                                          str(args.reference_per_class), "--size", "320", "240"], env, out)
    store = train_store_folder(train_overrides)
    stages["extract"] = run_stage("extract", [*python, "extract.py", *extract_overrides, f"paths.world={world}",
                                              f"source={world / 'reference.csv'}", "kind=images",
                                              f"out={store}"], env, out)
    stages["train"] = run_stage("train", [*python, "train.py", *train_overrides, f"hydra.run.dir={run}"], env, out)
    stages["evaluate"] = run_stage("evaluate", [
        # The SAE names its CLIP and hook, so evaluate takes no model.* or training overrides.
        *python, "evaluate.py", "experiment=study", *data, f"sae_dir={run / 'sae'}", f"hydra.run.dir={evaluated}",
        "logger=csv", "eval.group_size=10", "eval.n_side=5", "eval.threshold=0.0",
        "eval.n_null=20000", "eval.n_permutations=20", "eval.n_bootstrap=100",
    ], env, out)
    video = short_video(world)
    stages["rank"] = run_stage("rank", [*python, "-m", "thumbsae.cli", "rank", str(video),
                                        "--sae", str(run / "sae"), "--model", str(evaluated / "engagement_model"),
                                        "--out", str(out / "rank"), "--candidates", "8", "--no-progress"], env, out)

    timing = json.loads((run / "timing.json").read_text())
    n_validations = max_steps // val_every + 1  # during training, then train.py's final validate
    splice_s = timing.get("splice_prepare_time_s", 0.0) + n_validations * timing.get("splice_time_s", 0.0)
    total = sum(stage["seconds"] for stage in stages.values())
    n_train = len((world / "reference.csv").read_text().splitlines()) - 1
    print(f"total {total:.1f} s for {n_train} training images and {args.thumbnails} thumbnails; splice metrics "
          f"{splice_s:.1f} s of the training stage's {stages['train']['seconds']:.1f} s "
          f"(one-off trunk pass {timing.get('splice_prepare_time_s', 0.0):.1f} s, "
          f"each evaluation {timing.get('splice_time_s', 0.0):.2f} s)")
    print(json.dumps({
        "ratio": round(args.time_limit / total, 4),
        "target": 1.0,
        "total_s": round(total, 1),
        "time_limit_s": args.time_limit,
        "model": args.model,
        "n_train_images": n_train,
        "n_thumbnails": args.thumbnails,
        "stages": stages,
        "splice_s": round(splice_s, 2),
        "splice_fraction_of_train_stage": round(splice_s / stages["train"]["seconds"], 4),
        "train_timing": timing,
    }))


if __name__ == "__main__":
    main()
