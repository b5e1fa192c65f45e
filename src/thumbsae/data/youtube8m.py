"""`thumbsae import yt8m`: YouTube-8M thumbnail shards (the published study's `.h5` files) -> a manifest.

The study's builder (github.com/Lewington-pitsos/yt8m, `thumbnails.py`) wrote one HDF5 file per
YouTube-8M record file, with one dataset per field, all of length N:

| dataset | type |
| --- | --- |
| `videoId`, `title`, `tags`, `description`, `channelId`, `channelTitle`, `publishedAt` | variable-length UTF-8 strings |
| `viewCount`, `likeCount`, `commentCount` | int64 (older builds: strings, "0" when absent) |
| `duration_seconds` | float64 |
| `thumbnailStandard` | uint8 `[N, 360, 480, 3]`: the decoded 480x360 "high" thumbnail |

Its filters are the reject reasons here: a thumbnail that is not 360x480x3, a missing view, like
or comment count. Pixels are read a chunk of rows at a time (a shard is gigabytes) and written
as `images/<first two characters of the id>/<id>.png` (lossless: the study's pixels exactly) or
`.jpg`. Every file is written under a temporary name and renamed, and an image already on disk is
never written again, so a killed import run again continues where it stopped; the manifest and
rejects (re-derived from the shards' metadata, which is cheap) are written last.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from thumbsae.console import progress_bar
from thumbsae.data.youtube_api import COUNT_FIELDS, Selection, VideoRecord, YouTubeImportConfig
from thumbsae.errors import ThumbsaeError, one_line
from thumbsae.files import atomic_path

THUMBNAIL_SHAPE: tuple[int, int, int] = (360, 480, 3)
IMAGE_FORMATS: dict[str, str] = {"png": ".png", "jpeg": ".jpg"}
THUMBNAIL_DATASET = "thumbnailStandard"
# Rows of pixels read at once: 256 x 518 kB = 133 MB.
DEFAULT_CHUNK_ROWS = 256


@dataclass(frozen=True)
class YT8MImportConfig(YouTubeImportConfig):
    """`YouTubeImportConfig` plus how images are written.

    image_format: `png` (lossless, ~0.2-0.35 MB a thumbnail) or `jpeg` (`jpeg_quality`, ~0.07 MB).
    chunk_rows: shard rows read at once (memory: chunk_rows x 518 kB). workers: encoding threads
    (None: one per CPU; PIL releases the GIL while it encodes into a file).
    """

    image_format: str = "png"
    jpeg_quality: int = 95
    chunk_rows: int = DEFAULT_CHUNK_ROWS
    workers: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.image_format not in IMAGE_FORMATS:
            raise ThumbsaeError(f"importer.image_format={self.image_format!r}: use one of {', '.join(IMAGE_FORMATS)}")
        if not 1 <= int(self.jpeg_quality) <= 100:
            raise ThumbsaeError(f"importer.jpeg_quality={self.jpeg_quality}: use 1..100")
        if int(self.chunk_rows) < 1:
            raise ThumbsaeError(f"importer.chunk_rows={self.chunk_rows}: use a positive number of rows")
        if self.workers is not None and int(self.workers) < 1:
            raise ThumbsaeError(f"importer.workers={self.workers}: use a positive number, or null for one per CPU")


def image_name(video_id: str, image_format: str = "png") -> str:
    """Path of a video's thumbnail relative to the import folder: `images/ab/abXXXXXXXXX.png`."""
    return f"images/{video_id[:2]}/{video_id}{IMAGE_FORMATS[image_format]}"


def import_yt8m(
    shards: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    config: YT8MImportConfig | None = None,
    *,
    progress: bool = True,
) -> tuple[Path, Path]:
    """YouTube-8M thumbnail shards -> `out_dir/manifest.csv`, `out_dir/images/`, `out_dir/rejects.csv`.

    Inputs: the builder's `.h5` files, taken in the order given (rows in file order), and what to
    keep (`config.keep_first`: the study kept the first 2**19). Outputs the manifest
    (`video_id, image, views, channel_id, upload_date, title`; `image` relative to `out_dir`) and
    the rejects (`row` = `SHARD:ROW`, `video_id`, `image` empty, `reason`); every shard row is in
    exactly one of them. Only the kept videos' thumbnails are read and written. Resumable (see the
    module docstring). A missing or unreadable shard, or one without `videoId`/`viewCount`/
    `thumbnailStandard`, is a one-line `ThumbsaeError` naming it, raised before anything is written.
    """
    import h5py

    config = config or YT8MImportConfig()
    paths = [Path(p) for p in shards]
    if not paths:
        raise ThumbsaeError("import yt8m: no SHARD.h5 files given")
    for path in paths:
        _check_shard(path, h5py)
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    for leftover in (out_dir / "images").glob("*/.*.tmp-*"):
        leftover.unlink(missing_ok=True)  # a killed run's half-written temporaries

    selection = Selection(config)
    workers = config.workers or os.cpu_count() or 1
    written = 0
    with ThreadPoolExecutor(workers) as pool, progress_bar(
        sum(_rows(p, h5py) for p in paths), "import yt8m", unit="video", disable=not progress
    ) as bar:
        for path in paths:
            written += _import_shard(path, out_dir, selection, config, pool, bar, h5py)
    source = ", ".join(p.name for p in paths[:3]) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")
    print(f"{source}: {written} thumbnails written, {len(selection.rows) - written} already present", flush=True)
    return selection.write(out_dir, source)


def _check_shard(path: Path, h5py) -> None:
    """Open `path` and check the datasets the import needs (one-line errors)."""
    if not path.is_file():
        raise ThumbsaeError(f"{path}: no such shard file")
    try:
        with h5py.File(path, "r") as f:
            missing = [name for name in ("videoId", "viewCount", THUMBNAIL_DATASET) if name not in f]
            if missing:
                raise ThumbsaeError(f"{path}: not a YouTube-8M thumbnail shard (no {', '.join(missing)} dataset)")
            lengths = {name: len(f[name]) for name in f if isinstance(f[name], h5py.Dataset) and f[name].shape}
            if len(set(lengths.values())) > 1:
                listed = ", ".join(f"{k} {v}" for k, v in sorted(lengths.items()))
                raise ThumbsaeError(f"{path}: datasets differ in length ({listed})")
    except OSError as err:
        raise ThumbsaeError(f"{path}: not a readable HDF5 file ({one_line(err)})") from err


def _rows(path: Path, h5py) -> int:
    with h5py.File(path, "r") as f:
        return len(f["videoId"])


def _import_shard(
    path: Path, out_dir: Path, selection: Selection, config: YT8MImportConfig, pool: ThreadPoolExecutor, bar, h5py
) -> int:
    """Select the shard's rows (in order) and write the kept ones' missing thumbnails; returns how many."""
    written = 0
    with h5py.File(path, "r") as f:
        thumbnails = f[THUMBNAIL_DATASET]
        shape = tuple(thumbnails.shape[1:])
        shape_reason = None
        if shape != THUMBNAIL_SHAPE or thumbnails.dtype != np.uint8:
            shape_reason = (
                f"thumbnail not {'x'.join(map(str, THUMBNAIL_SHAPE))} uint8 "
                f"(this shard stores {'x'.join(map(str, shape))} {thumbnails.dtype})"
            )
        n = len(f["videoId"])
        for start in range(0, n, config.chunk_rows):
            stop = min(n, start + config.chunk_rows)
            records = _records(f, path.name, start, stop)
            todo: list[tuple[int, Path]] = []
            for offset, record in enumerate(records):
                row = selection.accept(record, media_reason=shape_reason)
                if row is None:
                    continue
                row["image"] = image_name(row["video_id"], config.image_format)
                target = out_dir / row["image"]
                if not target.exists():
                    todo.append((offset, target))
            if todo:
                first, last = todo[0][0], todo[-1][0]
                try:
                    pixels_NHWC = thumbnails[start + first : start + last + 1]
                except OSError as err:
                    raise ThumbsaeError(
                        f"{path}: cannot read thumbnails of rows {start + first}..{start + last} ({one_line(err)})"
                    ) from err
                jobs = [pool.submit(_write_image, pixels_NHWC[offset - first], target, config) for offset, target in todo]
                for job in jobs:
                    job.result()
                written += len(todo)
            bar.update(stop - start)
    return written


def _records(f, shard: str, start: int, stop: int) -> list[VideoRecord]:
    """Rows `[start, stop)` of an open shard as `VideoRecord`s (absent datasets read as None)."""
    def column(name: str) -> list:
        if name not in f:
            return [None] * (stop - start)
        dataset = f[name]
        if dataset.dtype.kind in ("O", "S", "U"):
            return list(dataset.asstr(errors="replace")[start:stop])
        return dataset[start:stop].tolist()

    ids, channels, published, titles = (column(n) for n in ("videoId", "channelId", "publishedAt", "title"))
    counts = {name: column(name) for name in COUNT_FIELDS}
    return [
        VideoRecord(
            where=f"{shard}:{start + i}",
            video_id=ids[i],
            counts={name: values[i] for name, values in counts.items()},
            channel_id=channels[i],
            published_at=published[i],
            title=titles[i],
        )
        for i in range(stop - start)
    ]


def _write_image(pixels_HWC: np.ndarray, target: Path, config: YT8MImportConfig) -> None:
    """Encode one thumbnail and rename it into place (PIL releases the GIL while encoding)."""
    image = Image.fromarray(np.ascontiguousarray(pixels_HWC))
    with atomic_path(target) as tmp:
        if config.image_format == "png":
            image.save(tmp, format="PNG", compress_level=1)
        else:
            image.save(tmp, format="JPEG", quality=int(config.jpeg_quality))
