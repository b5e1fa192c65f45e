"""Writing a world to disk: draw every image in a process pool, then swap the folder into place.

Each image's pixels come from its own random stream keyed by (seed, kind, index), so the files do
not depend on the number of workers. Everything is written into a hidden temporary folder beside
`out_dir` and renamed into place at the end: an interrupted run leaves no half-written world.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from thumbsae.errors import ThumbsaeError
from thumbsae.world.config import WorldConfig
from thumbsae.world.demo_video import DEMO_FILE, write_demo_video
from thumbsae.world.drawing import draw_thumbnail
from thumbsae.world.population import STREAM_DRAW_REFERENCE, STREAM_DRAW_THUMBNAIL, plan_world

THUMBNAIL_COLUMNS = [
    "video_id",
    "image",
    "views",
    "channel_id",
    "upload_date",
    "title",
    "motifs",
    "scene",
    "warmth",
]
REFERENCE_COLUMNS = ["video_id", "image", "label", "scene", "warmth"]
WORLD_FILES = ("thumbnails.csv", "reference.csv", "ground_truth.json")
# Written into every world: only a folder holding it (as written) is ever replaced by a new world.
WORLD_MARKER = ".thumbsae-world"
_MARKER_TEXT = '{"written_by": "thumbsae world", "format": 1}\n'
_CHUNK = 64  # images per pool task: enough to hide the inter-process overhead
_POOL_FROM_PIXELS = 20_000_000  # below this (~400 images at 224 px) starting a pool costs more

# (relative path, motifs, scene, warmth, stream key)
DrawJob = tuple[str, tuple[str, ...], str, float, tuple[int, int, int]]


def _draw_jobs(root: str, jobs: list[DrawJob], size: tuple[int, int], compress_level: int) -> int:
    """Draw and save `jobs` under `root`; returns how many were written (runs in a worker)."""
    for rel_path, motifs, scene, warmth, key in jobs:
        image = draw_thumbnail(
            motifs, scene=scene, warmth=warmth, size=size, rng=np.random.default_rng(list(key))
        )
        image.save(os.path.join(root, rel_path), format="PNG", compress_level=compress_level)
    return len(jobs)


def _jobs(cfg: WorldConfig, thumbnails: pd.DataFrame, reference: pd.DataFrame) -> list[DrawJob]:
    jobs: list[DrawJob] = []
    for i, row in enumerate(thumbnails.itertuples(index=False)):
        motifs = tuple(row.motifs.split(";")) if row.motifs else ()
        jobs.append(
            (row.image, motifs, row.scene, float(row.warmth), (cfg.seed, STREAM_DRAW_THUMBNAIL, i))
        )
    for i, row in enumerate(reference.itertuples(index=False)):
        jobs.append(
            (
                row.image,
                (row.label,),
                row.scene,
                float(row.warmth),
                (cfg.seed, STREAM_DRAW_REFERENCE, i),
            )
        )
    return jobs


def _run_jobs(cfg: WorldConfig, root: Path, jobs: list[DrawJob]) -> None:
    """Draw every job under `root`: in this process for small worlds or `workers=1`, else a pool."""
    chunks = [jobs[i : i + _CHUNK] for i in range(0, len(jobs), _CHUNK)]
    if cfg.workers is None:
        small = len(jobs) * cfg.width * cfg.height < _POOL_FROM_PIXELS
        workers = 1 if small else min(os.cpu_count() or 1, 8)
    else:
        workers = cfg.workers
    if workers <= 1 or len(chunks) == 1:
        for chunk in chunks:
            _draw_jobs(str(root), chunk, cfg.size, cfg.png_compress_level)
        return
    # spawn: workers import only PIL and numpy, and never inherit a parent's threads or locks.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        futures = [
            pool.submit(_draw_jobs, str(root), chunk, cfg.size, cfg.png_compress_level)
            for chunk in chunks
        ]
        for future in futures:
            future.result()


def _write_csv(frame: pd.DataFrame, path: Path) -> None:
    # Fixed float format and line ending: the same world gives the same bytes everywhere.
    frame.to_csv(path, index=False, lineterminator="\n", float_format="%.3f")


def is_generated_world(folder: Path) -> bool:
    """True when `folder` holds the marker `generate_world` writes (a regular file, as written)."""
    marker = Path(folder) / WORLD_MARKER
    try:
        return marker.is_file() and not marker.is_symlink() and marker.read_text() == _MARKER_TEXT
    except (OSError, UnicodeDecodeError):
        return False


def _remove_stale_temporaries(out_dir: Path) -> None:
    """Delete temporary folders left by killed runs (their process no longer exists)."""
    leftovers = [
        *out_dir.parent.glob(f".{out_dir.name}.tmp-*"),
        *out_dir.parent.glob(f".{out_dir.name}.old-*"),
    ]
    for stale in leftovers:
        try:
            pid = int(stale.name.rsplit("-", 1)[1])
            os.kill(pid, 0)
        except (ValueError, ProcessLookupError):
            shutil.rmtree(stale, ignore_errors=True)
        except PermissionError:
            pass  # another user's live process


def generate_world(cfg: WorldConfig, out_dir: Path) -> Path:
    """Write the world of `cfg` to `out_dir` and return `out_dir`.

    Writes `thumbnails.csv` (video_id, image, views, channel_id, upload_date, title, motifs
    `;`-joined, scene, warmth), `reference.csv` (video_id, image, label, scene, warmth),
    `images/thumbnails/*.png`, `images/reference/*.png` and `ground_truth.json`; image paths are
    relative to `out_dir`, and the marker `.thumbsae-world`. `out_dir` is replaced as a whole only
    when it is empty or holds that marker (a world this function wrote); any other folder, or a
    file, is refused with a `ThumbsaeError` and left untouched.
    """
    out_dir = Path(os.path.abspath(out_dir))
    if out_dir.is_symlink() or (out_dir.exists() and not out_dir.is_dir()):
        raise ThumbsaeError(f"{out_dir}: exists and is not a folder; choose an empty or new --out")
    try:
        occupied = out_dir.is_dir() and any(out_dir.iterdir())
    except OSError as err:
        raise ThumbsaeError(f"{out_dir}: cannot list folder ({err.strerror})") from None
    if occupied and not is_generated_world(out_dir):
        raise ThumbsaeError(
            f"{out_dir}: folder is not empty and is not a world written by `thumbsae world` "
            f"(no {WORLD_MARKER} marker); nothing was changed, choose an empty or new --out"
        )
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ThumbsaeError(f"{out_dir.parent}: cannot create folder ({err.strerror})") from err
    _remove_stale_temporaries(out_dir)

    plan = plan_world(cfg)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        (tmp / "images" / "thumbnails").mkdir(parents=True)
        (tmp / "images" / "reference").mkdir(parents=True)
        _run_jobs(cfg, tmp, _jobs(cfg, plan.thumbnails, plan.reference))
        _write_csv(plan.thumbnails[THUMBNAIL_COLUMNS], tmp / "thumbnails.csv")
        _write_csv(plan.reference[REFERENCE_COLUMNS], tmp / "reference.csv")
        (tmp / "ground_truth.json").write_text(
            json.dumps(plan.ground_truth, indent=2, sort_keys=True) + "\n"
        )
        write_demo_video(cfg, tmp / DEMO_FILE)
        (tmp / WORLD_MARKER).write_text(_MARKER_TEXT)
        old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
        if out_dir.exists():
            os.replace(out_dir, old)  # two renames: out_dir is never a half-written world
        os.replace(tmp, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    except OSError as err:
        raise ThumbsaeError(f"{out_dir}: could not write the world ({err})") from err
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir
