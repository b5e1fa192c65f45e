"""The on-disk activation store: fixed-size `.npy` shards plus `metadata.json` (docs/activation-store.md).

Reading is memory-mapped; a store is complete exactly when its `metadata.json` exists, because
extraction writes that file last (every file goes through a temporary name and a rename).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from thumbsae.files import atomic_path, atomic_write_text
from thumbsae.errors import ThumbsaeError

FORMAT_VERSION = 1
METADATA_FILE = "metadata.json"
ROW_IMAGE_FILE = "row_image.npy"
ROW_TOKEN_FILE = "row_token.npy"
DTYPES: tuple[str, ...] = ("float16", "bfloat16", "float32")
# Token position recorded for `mean` rows, which pool every patch token rather than sit at one.
POOLED_TOKEN = -1


def shard_name(index: int) -> str:
    """File name of shard `index` (`shard_00000.npy`); its record is the same stem with `.json`."""
    return f"shard_{index:05d}.npy"


def to_storage(acts_ND: torch.Tensor, dtype: str) -> np.ndarray:
    """float activations -> the array written to a shard (`bfloat16` as its raw `uint16` bits)."""
    if dtype not in DTYPES:
        raise ThumbsaeError(f"activations.dtype={dtype!r}: use one of {', '.join(DTYPES)}")
    acts_ND = acts_ND.detach().to("cpu")
    if dtype == "bfloat16":
        # numpy has no bfloat16: keep torch's round-to-nearest-even bits, read back by shifting.
        return acts_ND.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    return acts_ND.to(getattr(torch, dtype)).numpy()


def from_storage(raw_ND: np.ndarray, dtype: str) -> np.ndarray:
    """A shard slice (any storage dtype) -> float32 `[rows, D]`, always a fresh array."""
    if dtype == "bfloat16":
        return (np.asarray(raw_ND, dtype=np.uint32) << 16).view(np.float32)
    return np.array(raw_ND, dtype=np.float32)


def write_array(path: Path, array: np.ndarray) -> None:
    """Write `array` as `.npy` under a temporary name, then rename onto `path`."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.save(handle, np.ascontiguousarray(array), allow_pickle=False)


def cached_array(cache: Path | None, n_rows: int, compute: Callable[[], np.ndarray]) -> np.ndarray:
    """A float32 `[n_rows, E]` array kept in the `.npy` file `cache`: read from it when it holds one
    of that shape, else `compute()`d and written there (temporary name, then rename; an unreadable
    file is replaced). The caller names the file by everything the array depends on. None: no cache."""
    if cache is not None and cache.is_file():
        try:
            cached = np.load(cache, allow_pickle=False)
        except (OSError, ValueError):
            cached = None
        if cached is not None and cached.dtype == np.float32 and cached.ndim == 2 and len(cached) == n_rows:
            return cached
    array = np.asarray(compute()).astype(np.float32, copy=False)
    if cache is not None:
        write_array(cache, array)
    return array


def write_json(path: Path, obj: dict) -> None:
    """Write `obj` as stable, sorted, indented JSON (byte-identical for equal content), atomically."""
    atomic_write_text(path, json.dumps(obj, indent=1, sort_keys=True) + "\n")


def finish_store(
    out_dir: Path, *, header: dict, shards: list[dict], video_ids: list[str], extra: dict | None = None
) -> dict:
    """Write the per-row index files, then `metadata.json` (last: it marks the store finished).

    `header`: settings incl. `tokens`, `tokens_per_image`, `d`, `dtype`. `shards`: in order, each
    `{"file", "rows": [start, stop], "images": [start, stop], ...}`. Returns the metadata.
    """
    tokens, tokens_per_image = header["tokens"], int(header["tokens_per_image"])
    n_images = len(video_ids)
    row_image = np.repeat(np.arange(n_images, dtype=np.int32), tokens_per_image)
    if tokens == "all":
        row_token = np.tile(np.arange(tokens_per_image, dtype=np.int32), n_images)
    else:
        row_token = np.full(n_images, 0 if tokens == "cls" else POOLED_TOKEN, dtype=np.int32)
    write_array(out_dir / ROW_IMAGE_FILE, row_image)
    write_array(out_dir / ROW_TOKEN_FILE, row_token)
    metadata = {
        **header,
        **(extra or {}),
        "format_version": FORMAT_VERSION,
        "n": int(shards[-1]["rows"][1]) if shards else 0,
        "n_images": n_images,
        "video_ids": list(video_ids),
        "shards": shards,
        "row_index": {"row_image": ROW_IMAGE_FILE, "row_token": ROW_TOKEN_FILE},
    }
    write_json(out_dir / METADATA_FILE, metadata)
    return metadata


def store_from_array(
    out_dir: str | os.PathLike,
    acts: np.ndarray,
    video_ids: list[str],
    *,
    tokens: str = "cls",
    dtype: str = "float32",
    shard_rows: int = 16384,
    layer: int = -1,
    model: dict | None = None,
) -> ActivationStore:
    """Write an in-memory array as a store: `[N, D]` (`cls`/`mean`) or `[N, T, D]` (`all`).

    For tests and benches of later stages that need a store without running CLIP; `model` and
    `layer` are recorded as given. The content hash is that of the array bytes and settings.
    """
    out_dir = Path(out_dir)
    acts = np.asarray(acts, dtype=np.float32)
    if acts.ndim != (3 if tokens == "all" else 2) or len(acts) != len(video_ids):
        raise ThumbsaeError(
            f"store_from_array: acts of shape {acts.shape} do not fit tokens={tokens} and {len(video_ids)} ids"
        )
    tokens_per_image, d = (acts.shape[1], acts.shape[2]) if tokens == "all" else (1, acts.shape[1])
    images_per_shard = max(1, shard_rows // tokens_per_image)
    rows_ND = torch.from_numpy(acts.reshape(-1, d))
    header = {"model": model, "layer": layer, "tokens": tokens, "dtype": dtype, "d": d,
              "tokens_per_image": tokens_per_image, "images_per_shard": images_per_shard}
    digest = hashlib.sha256(json.dumps(header, sort_keys=True).encode())
    digest.update(acts.tobytes())
    shards = []
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / METADATA_FILE).unlink(missing_ok=True)
    for s, first in enumerate(range(0, len(video_ids), images_per_shard)):
        last = min(len(video_ids), first + images_per_shard)
        rows = [first * tokens_per_image, last * tokens_per_image]
        write_array(out_dir / shard_name(s), to_storage(rows_ND[rows[0] : rows[1]], dtype))
        shards.append({"file": shard_name(s), "rows": rows, "images": [first, last], "inputs": [first, last]})
    finish_store(out_dir, header=header, shards=shards, video_ids=[str(v) for v in video_ids],
                 extra={"content_hash": digest.hexdigest()})
    return ActivationStore(out_dir)


class ActivationStore:
    """A finished activation store, opened read-only with memory maps.

    Rows are activations in image order (for `tokens=all`, an image's T tokens are consecutive).
    `.video_ids[i]` names image i; `.row_image[r]` / `.row_token[r]` are the image index and token
    position of row r (`-1` for `mean`). `.read(start, stop)` returns float32 `[rows, D]`.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        meta_path = self.path / METADATA_FILE
        if not meta_path.is_file():
            raise ThumbsaeError(f"{self.path}: not a finished activation store (no {METADATA_FILE}); run extraction")
        try:
            self.metadata: dict = json.loads(meta_path.read_text())
        except (OSError, ValueError) as exc:
            raise ThumbsaeError(f"{meta_path}: unreadable store metadata ({exc})") from exc
        if self.metadata.get("format_version") != FORMAT_VERSION:
            raise ThumbsaeError(
                f"{meta_path}: store format version {self.metadata.get('format_version')}, this thumbsae reads "
                f"{FORMAT_VERSION}; re-extract"
            )
        self.n: int = int(self.metadata["n"])
        self.d: int = int(self.metadata["d"])
        self.dtype: str = self.metadata["dtype"]
        self.tokens: str = self.metadata["tokens"]
        self.layer: int = int(self.metadata["layer"])
        self.tokens_per_image: int = int(self.metadata["tokens_per_image"])
        self.video_ids: list[str] = list(self.metadata["video_ids"])
        # [n_shards, 2] row ranges, so a row finds its shard by binary search.
        ranges = [s["rows"] for s in self.metadata["shards"]]
        self.shard_rows: np.ndarray = np.array(ranges, dtype=np.int64).reshape(-1, 2)
        self._row_starts = self.shard_rows[:, 0]

    def __repr__(self) -> str:
        return f"ActivationStore({str(self.path)!r}, n={self.n}, d={self.d}, tokens={self.tokens}, dtype={self.dtype})"

    def __len__(self) -> int:
        return self.n

    @property
    def n_images(self) -> int:
        """Number of images with rows in the store (rejected images have none)."""
        return len(self.video_ids)

    @cached_property
    def shards(self) -> list[np.ndarray]:
        """Memory maps of the shards, `[rows_s, D]` in the storage dtype (`uint16` bits for bfloat16)."""
        return [np.load(self.path / s["file"], mmap_mode="r") for s in self.metadata["shards"]]

    @cached_property
    def row_image(self) -> np.ndarray:
        """`[N]` int32: image index (into `.video_ids`) of each row."""
        return np.load(self.path / ROW_IMAGE_FILE, mmap_mode="r")

    @cached_property
    def row_token(self) -> np.ndarray:
        """`[N]` int32: token position of each row (0 = class token; -1 = mean of the patches)."""
        return np.load(self.path / ROW_TOKEN_FILE, mmap_mode="r")

    def image_rows(self, image: int) -> range:
        """The rows `range(start, stop)` of image index `image`."""
        if not 0 <= image < self.n_images:
            raise IndexError(f"image {image} out of range for a store of {self.n_images} images")
        start = int(np.searchsorted(self.row_image, image, side="left"))
        stop = int(np.searchsorted(self.row_image, image, side="right"))
        return range(start, stop)

    def read(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Rows `[start, stop)` as float32 `[stop - start, D]` (crosses shard boundaries)."""
        stop = self.n if stop is None else min(int(stop), self.n)
        start = max(0, int(start))
        if stop <= start:
            return np.zeros((0, self.d), dtype=np.float32)
        parts = []
        first = int(np.searchsorted(self._row_starts, start, side="right")) - 1
        for s in range(first, len(self.shards)):
            lo, hi = self.shard_rows[s]
            if lo >= stop:
                break
            a, b = max(start, lo) - lo, min(stop, hi) - lo
            if b > a:
                parts.append(from_storage(self.shards[s][a:b], self.dtype))
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)

    def read_rows(self, rows: np.ndarray) -> np.ndarray:
        """Arbitrary rows (int array, any order) as float32 `[len(rows), D]`."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), self.d), dtype=np.float32)
        shard_of = np.searchsorted(self._row_starts, rows, side="right") - 1
        for s in np.unique(shard_of):
            mask = shard_of == s
            out[mask] = from_storage(self.shards[s][rows[mask] - self.shard_rows[s, 0]], self.dtype)
        return out
