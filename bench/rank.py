"""`thumbsae rank` on a generated 10-minute 720p 30 fps video: total time, and decode throughput.

Two anchors, measured in the same run on the same file:
- total: seconds from `run_rank` start to written `ranking.json` + `report.html` (candidate stills,
  CLIP -> SAE -> engagement model, files), against the 60 s limit: total_ratio = 60 / seconds.
- decode: video seconds per wall second of `find_candidates` (decoding + shot detection + frame
  filters + still selection) divided by the same for a bare PyAV sequential decode of the file
  (`for frame in container.decode(stream): pass`, threads on): decode_ratio, target 0.8.

The video (x264 `veryfast`: CABAC, B-frames, 250-frame GOP, as a creator's export) and a tiny
model (`tests/demo_models.py`: random-weight tiny CLIP, small SAE trained by the real trainer,
engagement model) are cached under
bench/out/. Last line: JSON with `ratio` = min(total_ratio / 1, decode_ratio / 0.8) (>= 1 when both
targets are met), `target` 1.0, and both sub-ratios with their own targets.

    python bench/rank.py [--minutes 10] [--height 720] [--fps 30] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import av
import numpy as np

from thumbsae.video import VideoConfig, find_candidates, run_rank
from thumbsae.video.synthetic import Shot, world_shot, write_video

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from demo_models import write_demo_models  # noqa: E402  (the tests' builder, with the real trainer)

MOTIFS = ["food", "face", "sports_field", "car", "animal", "text_overlay", "red_arrow",
          "outdoor_long_shot", "indoor_room", "night_scene"]
SCENES = ["gradient", "split", "burst", "bokeh", "studio"]


def make_video(path: Path, minutes: float, size: tuple[int, int], fps: int) -> Path:
    """Shots of 2-8 s drawn from the synthetic world; some repeat earlier ones, some are dark."""
    if path.exists():
        return path
    rng = np.random.default_rng(0)
    shots: list[Shot] = []
    total = 0.0
    while total < minutes * 60:
        seconds = float(min(rng.uniform(2.0, 8.0), minutes * 60 - total))
        if shots and rng.random() < 0.1:  # a cut back to an earlier shot: a near-duplicate
            shots.append(Shot(shots[int(rng.integers(len(shots)))].picture, seconds))
        else:
            motifs = list(rng.choice(MOTIFS, size=int(rng.integers(1, 3)), replace=False))
            shot = world_shot(motifs, size=size, seconds=seconds, seed=int(rng.integers(1 << 30)),
                              scene=SCENES[int(rng.integers(len(SCENES)))], warmth=float(rng.uniform(-1, 1)))
            if rng.random() < 0.05:  # a dark shot
                shot = Shot(shot.picture.point(lambda v: v // 10), seconds)
            shots.append(shot)
        total += seconds
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    started = time.perf_counter()
    write_video(tmp, shots, size=size, fps=fps, options={"preset": "veryfast", "crf": "23"})
    os.replace(tmp, path)
    print(f"generated {path.name}: {len(shots)} shots in {time.perf_counter() - started:.0f} s")
    return path


def bare_decode(path: Path) -> tuple[float, int, float]:
    """(seconds, frames, video seconds) of a plain sequential PyAV decode with threads on."""
    started = time.perf_counter()
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        n, last = 0, 0.0
        for frame in container.decode(stream):
            n += 1
            last = frame.time or last
    return time.perf_counter() - started, n, last


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (PyAV picks its own)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "out" / "rank"))
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    size = (round(args.height * 16 / 9) // 2 * 2, args.height)
    video = make_video(out / f"video_{args.minutes:g}min_{args.height}p{args.fps}.mp4", args.minutes, size, args.fps)
    models = out / "models"
    if not (models / "engagement_model" / "config.json").is_file():
        shutil.rmtree(models, ignore_errors=True)
        pictures = [world_shot([m], size=(320, 180), seconds=1, seed=i).picture for i, m in enumerate(MOTIFS[:5])]
        effects = [np.log(4.0), np.log(2.0), np.log(0.4), 0.0, 0.0]
        write_demo_models(models, pictures, MOTIFS[:5], effects)

    bare_s, n_frames, video_s = bare_decode(video)
    started = time.perf_counter()
    search = find_candidates(video, VideoConfig())
    ours_s = time.perf_counter() - started
    started = time.perf_counter()
    records = run_rank(video, sae_dir=models / "sae", model_dir=models / "engagement_model",
                       out_dir=out / "ranked", progress=False)
    total_s = time.perf_counter() - started

    total_ratio = 60.0 / total_s
    decode_ratio = bare_s / ours_s  # same video seconds, so throughput ratio = time ratio
    print(f"bare decode: {n_frames} frames ({video_s:.0f} s of video) in {bare_s:.1f} s "
          f"({n_frames / bare_s:.0f} fps); candidate stills in {ours_s:.1f} s "
          f"({search.n_sampled} sampled, {search.n_shots} shots, {len(search.stills)} stills); "
          f"rank total {total_s:.1f} s, {len(records)} ranked")
    print(json.dumps({
        "bench": "rank",
        "ratio": round(min(total_ratio / 1.0, decode_ratio / 0.8), 4),
        "target": 1.0,
        "total_s": round(total_s, 2),
        "total_ratio": round(total_ratio, 4),
        "total_target": 1.0,
        "decode_ratio": round(decode_ratio, 4),
        "decode_target": 0.8,
        "bare_decode_s": round(bare_s, 2),
        "candidates_s": round(ours_s, 2),
        "frames": n_frames,
        "video_s": round(video_s, 1),
        "size": f"{size[0]}x{size[1]}@{args.fps}",
        "threads": args.threads,
    }))


if __name__ == "__main__":
    main()
