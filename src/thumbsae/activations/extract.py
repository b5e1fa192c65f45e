"""Extract hooked CLIP activations of an image set into a resumable, content-addressed shard store.

DataLoader workers decode and fit the images; the main process runs the truncated vision tower
under `torch.inference_mode` one shard-aligned batch at a time, so a shard's bytes never depend on
where an earlier run stopped. Each finished shard is renamed into place with a small record
(`shard_XXXXX.json`) of which images it holds; `metadata.json` is written last.

Where the forward pass runs decides how the workers run. On a GPU they decode ahead, as usual. On
the CPU the forward pass already keeps every core busy, and workers decoding at the same time
would only slow it down, so they work in lockstep with it: a worker starts on a batch only when
the main process opens its gate (between two forward passes), the workers claim chunks of it from a
shared counter, and write the fitted pixels straight into a shared-memory batch buffer. Decoding
then uses every core without the GIL, and never overlaps the forward pass.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import multiprocessing
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, get_worker_info
from tqdm.auto import tqdm

from thumbsae.activations.clip import LoadedCLIP
from thumbsae.activations.hooks import TOKEN_MODES, Tokens, hooked_activations, resolve_layer, vision_blocks
from thumbsae.activations.pixels import PixelForward
from thumbsae.activations.preprocess import DEFAULT_FIT, FITS, Fit, ImageTransform, make_transform, rgb_tensor
from thumbsae.activations.store import (
    DTYPES,
    FORMAT_VERSION,
    METADATA_FILE,
    ROW_IMAGE_FILE,
    ROW_TOKEN_FILE,
    ActivationStore,
    finish_store,
    shard_name,
    to_storage,
    write_array,
    write_json,
)
from thumbsae.data import ImageDecodeError, Reject, load_rgb, write_rejects
from thumbsae.errors import ThumbsaeError

DEFAULT_SHARD_ROWS = 16384
# How images are resized (recorded in the store, so a change of method is a change of content).
RESIZE = "bicubic, antialiased (torch uint8 kernel)"


@dataclass(frozen=True)
class _DecodedImages(Dataset):
    """Image i of `paths` -> `(i, uint8 RGB pixels [h, w, 3] or None, reject reason or None)`.

    Fetched a batch at a time: in DataLoader worker processes one image after another, in the main
    process (`num_workers=0`) on `threads` threads (decoding releases the GIL), so that decoding
    uses every core between two forward passes instead of competing with them.
    """

    paths: tuple[str, ...]
    threads: int = 1

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None, str | None]:
        try:
            return i, rgb_tensor(load_rgb(self.paths[i])), None
        except ImageDecodeError as exc:
            return i, None, exc.reason
        except Exception as exc:  # a decoder bug on one file must not stop extraction
            return i, None, f"unusable image: {' '.join(str(exc).split())[:200]}"

    def __getitems__(self, indices: list[int]) -> list[tuple[int, torch.Tensor | None, str | None]]:
        if self.threads <= 1 or len(indices) < 2 or get_worker_info() is not None:
            return [self[i] for i in indices]
        with ThreadPoolExecutor(min(self.threads, len(indices))) as pool:
            return list(pool.map(self.__getitem__, indices))


@dataclass(frozen=True)
class Batch:
    """One batch for the forward pass."""

    kept: list[int]  # input indices of the decoded images, in order
    pixels_BCHW: torch.Tensor | None  # their fitted uint8 pixels (None: every image was rejected)
    rejects: list[tuple[int, str]]  # (input index, reason)
    margins: tuple[int, int, int, int]  # pad rows/columns every image has (top, bottom, left, right)


@dataclass(frozen=True)
class _SharedBatch(Dataset):
    """Worker side of lockstep decoding. A task is a whole batch (its input indices); every worker
    gets each batch, waits for its gate, then claims chunks of the batch from a shared counter until
    none is left, decoding and fitting each chunk straight into `pixels_BHWC` at its slots. Claiming
    balances the work when one worker starts late or runs slower. Only `(slot, input index, decoded
    size (h, w) or None, reject reason)` per image goes back to the main process.
    """

    images: _DecodedImages
    transform: ImageTransform
    pixels_BHWC: torch.Tensor  # shared memory: one batch of fitted pixels
    gates: tuple  # one multiprocessing semaphore per worker
    next_slot: Any  # multiprocessing Value("q"): the first slot of the batch nobody has claimed yet
    parent_pid: int

    def __len__(self) -> int:
        return len(self.images)

    def __getitems__(self, batch: list[int]) -> list[tuple]:
        gate = self.gates[get_worker_info().id]
        while not gate.acquire(timeout=1.0):
            if os.getppid() != self.parent_pid:  # the main process is gone (killed): nobody will open the gate
                os._exit(0)
        done = []
        while True:
            # Guided chunks: a share of what is left, so that the last ones are small and the
            # workers finish together even when one started late.
            with self.next_slot.get_lock():
                first = self.next_slot.value
                end = min(len(batch), first + max(2, (len(batch) - first) // (2 * len(self.gates))))
                self.next_slot.value = end
            if first >= end:
                return done
            done.extend(self._decode_and_fit(batch, first, end))

    def _decode_and_fit(self, batch: list[int], first: int, end: int) -> list[tuple]:
        decoded = [self.images[batch[slot]] for slot in range(first, end)]
        good = [slot for slot, (_, x, _) in zip(range(first, end), decoded) if x is not None]
        images = [x for _, x, _ in decoded if x is not None]
        if good and good == list(range(good[0], good[0] + len(good))):
            self.transform.fit_batch(images, out=self.pixels_BHWC[good[0] : good[-1] + 1].permute(0, 3, 1, 2))
        elif good:
            self.pixels_BHWC[good] = self.transform.fit_batch(images).permute(0, 2, 3, 1)
        return [
            (slot, i, None if x is None else tuple(x.shape[:2]), reason)
            for slot, (i, x, reason) in zip(range(first, end), decoded)
        ]


def _as_list(items: list) -> list:
    """DataLoader collate for `_SharedBatch`: its results are already lists."""
    return items


@dataclass(frozen=True)
class _PinToCore:
    """DataLoader `worker_init_fn`: worker w runs on core `cores[w]`. In lockstep each worker has a
    core to itself; left to the scheduler, two would now and then share one, or start on a cold cache."""

    cores: tuple[int, ...]

    def __call__(self, worker_id: int) -> None:
        try:
            os.sched_setaffinity(0, {self.cores[worker_id]})
        except (AttributeError, OSError, IndexError):  # no affinity on this OS, or a core went away: run unpinned
            pass


@dataclass(frozen=True)
class _FitBatch:
    """DataLoader collate: decoded images -> a `Batch`."""

    transform: ImageTransform

    def __call__(self, items: list[tuple[int, torch.Tensor | None, str | None]]) -> Batch:
        images = [x for _, x, _ in items if x is not None]
        return Batch(
            kept=[i for i, x, _ in items if x is not None],
            pixels_BCHW=self.transform.fit_batch(images) if images else None,
            rejects=[(i, reason) for i, x, reason in items if x is None],
            margins=self.transform.pad_margins([tuple(x.shape[:2]) for x in images]),
        )


def extract_to_store(
    images_df: pd.DataFrame,
    clip: LoadedCLIP,
    *,
    layer: int,
    tokens: Tokens,
    fit: Fit = DEFAULT_FIT,
    out_dir: str | os.PathLike,
    dtype: str = "float16",
    shard_rows: int = DEFAULT_SHARD_ROWS,
    batch_size: int = 64,
    num_workers: int | None = None,
    rejects_path: str | os.PathLike | None = None,
    progress: bool = True,
) -> ActivationStore:
    """Extract activations of every image of `images_df` (columns `video_id`, `image`) into `out_dir`.

    Rows: one per image (`cls`, `mean`; `[D]`) or T per image (`all`). Shards hold whole images,
    about `shard_rows` rows each. Unreadable images become rejects (`row` = position in
    `images_df`, `video_id`, `image`, `reason`), written to `rejects_path` when given; they get no
    rows. A finished store with the same content hash (image bytes + settings) is reused as is; an
    interrupted one is resumed, recomputing only unfinished shards. Returns the opened store.

    `num_workers`: DataLoader worker processes that decode and fit the images: ahead of the forward
    pass for a model on a GPU, in lockstep with it (see the module docstring) for a model on the
    CPU. 0 decodes each batch on this process's threads between forward passes. None picks one
    lockstep worker per torch thread on the CPU (0 with a single thread) and min(8, CPUs) on a GPU.
    """
    _check_settings(images_df, tokens, fit, dtype, shard_rows, batch_size)
    num_workers = resolve_num_workers(num_workers, clip.device)
    out_dir = Path(out_dir)
    video_ids = [str(v) for v in images_df["video_id"]]
    paths = tuple(str(p) for p in images_df["image"])
    settings, transform = _settings(clip, layer=layer, tokens=tokens, fit=fit, dtype=dtype, shard_rows=shard_rows)
    images_per_shard = settings["images_per_shard"]
    content_hash = _content_hash(settings, video_ids, paths)

    finished = _finished_store(out_dir, content_hash)
    if finished is not None:
        _write_rejects(finished.metadata["rejects"], images_df, rejects_path, out_dir)
        return finished

    out_dir.mkdir(parents=True, exist_ok=True)
    # A store being rewritten must never look finished, and killed writes leave temporaries behind.
    (out_dir / METADATA_FILE).unlink(missing_ok=True)
    for leftover in out_dir.glob(".*.tmp-*"):
        leftover.unlink(missing_ok=True)

    n_shards = math.ceil(len(paths) / images_per_shard)
    shard_inputs = [(s * images_per_shard, min(len(paths), (s + 1) * images_per_shard)) for s in range(n_shards)]
    pending = [s for s in range(n_shards) if _shard_record(out_dir, s, content_hash) is None]
    done_images = len(paths) - sum(shard_inputs[s][1] - shard_inputs[s][0] for s in pending)
    with tqdm(
        total=len(paths), initial=done_images, unit="img", desc=f"extract {out_dir.name}", disable=not progress
    ) as bar:
        forward = PixelForward(clip.model, transform, layer, tokens)
        job = _ShardJob(clip, transform, forward, dtype, settings["d"], out_dir, content_hash)
        _extract_shards(job, pending, shard_inputs, paths, batch_size=batch_size, num_workers=num_workers, bar=bar)

    metadata = _finish(out_dir, n_shards, shard_inputs, content_hash, settings, video_ids)
    _write_rejects(metadata["rejects"], images_df, rejects_path, out_dir)
    return ActivationStore(out_dir)


def resolve_num_workers(num_workers: int | None, device: str | torch.device) -> int:
    """`extract_to_store`'s decoding workers for a model on `device` (see there); None -> the default."""
    if num_workers is None:
        if torch.device(device).type == "cpu":
            return torch.get_num_threads() if torch.get_num_threads() > 1 else 0
        return min(8, os.cpu_count() or 1)
    if num_workers < 0:
        raise ThumbsaeError(f"activations.num_workers={num_workers} must be >= 0 (or null for the default)")
    return int(num_workers)


def store_content_hash(
    images_df: pd.DataFrame,
    clip: LoadedCLIP,
    *,
    layer: int,
    tokens: Tokens,
    fit: Fit = DEFAULT_FIT,
    dtype: str = "float16",
    shard_rows: int = DEFAULT_SHARD_ROWS,
) -> str:
    """The content hash `extract_to_store` would give these inputs (sha256 hex), e.g. to name a cache folder."""
    settings, _ = _settings(clip, layer=layer, tokens=tokens, fit=fit, dtype=dtype, shard_rows=shard_rows)
    return _content_hash(settings, [str(v) for v in images_df["video_id"]], tuple(str(p) for p in images_df["image"]))


def _settings(
    clip: LoadedCLIP, *, layer: int, tokens: str, fit: str, dtype: str, shard_rows: int
) -> tuple[dict, ImageTransform]:
    """Everything besides the images that decides a store's bytes (hashed, and kept in its metadata)."""
    transform = make_transform(clip.image_size, clip.mean, clip.std, fit)
    tokens_per_image, d = _probe_shape(clip, transform, layer, tokens)
    settings = {
        "format_version": FORMAT_VERSION,
        "model": {**clip.to_config(), "seed": clip.seed},
        "layer": int(layer),
        "layer_index": resolve_layer(clip.model, layer),
        "n_blocks": len(vision_blocks(clip.model)),
        "tokens": tokens,
        "dtype": dtype,
        "d": d,
        "tokens_per_image": tokens_per_image,
        "images_per_shard": max(1, shard_rows // tokens_per_image),
        "preprocessing": {
            "fit": fit,
            "mean": list(clip.mean),
            "std": list(clip.std),
            "image_size": clip.to_config()["image_size"],
            "resize": RESIZE,
        },
    }
    return settings, transform


def embed_images(
    clip: LoadedCLIP,
    images: Sequence[Image.Image],
    *,
    layer: int,
    tokens: Tokens,
    fit: Fit = DEFAULT_FIT,
    batch_size: int = 64,
) -> np.ndarray:
    """Hooked activations of in-memory PIL images: float32 `[N, D]` (`cls`/`mean`) or `[N, T, D]` (`all`).

    The same preprocessing and hook as `extract_to_store`, for small sets (`thumbsae rank`).
    """
    transform = make_transform(clip.image_size, clip.mean, clip.std, fit)
    forward = PixelForward(clip.model, transform, layer, tokens)
    parts = _forward_in_batches(images, transform, batch_size, forward, clip.device)
    if not parts:
        tokens_per_image, d = _probe_shape(clip, transform, layer, tokens)
        return np.zeros((0, d) if tokens != "all" else (0, tokens_per_image, d), dtype=np.float32)
    return np.concatenate(parts, axis=0)


def _forward_in_batches(images, transform, batch_size: int, forward, device) -> list[np.ndarray]:
    """`forward(uint8 pixels [B, 3, H, W], pad margins) -> tensor` over `images` in batches, as float32 numpy."""
    parts = []
    for start in range(0, len(images), batch_size):
        images_HWC = [rgb_tensor(im) for im in images[start : start + batch_size]]
        pixels_BCHW = transform.fit_batch(images_HWC)
        margins = transform.pad_margins([tuple(x.shape[:2]) for x in images_HWC])
        with torch.inference_mode():
            parts.append(forward(pixels_BCHW.to(device), margins).float().cpu().numpy())
    return parts


def image_embeddings(
    clip: LoadedCLIP, images: Sequence[Image.Image], *, fit: Fit = DEFAULT_FIT, batch_size: int = 64
) -> np.ndarray:
    """Final CLIP image embeddings, L2-normalised: float32 `[N, E]` (ridge baseline, zero-shot)."""
    transform = make_transform(clip.image_size, clip.mean, clip.std, fit)
    parts = _forward_in_batches(
        images, transform, batch_size,
        lambda pixels, _: clip.model.encode_image(transform.normalize(pixels), normalize=True),
        clip.device,
    )
    embed_dim = int(getattr(clip.model.visual, "output_dim", 0) or 0)
    return np.concatenate(parts, axis=0) if parts else np.zeros((0, embed_dim), dtype=np.float32)


def encode_text(clip: LoadedCLIP, texts: Sequence[str], *, batch_size: int = 256) -> np.ndarray:
    """Text embeddings of `texts`, L2-normalised: float32 `[N, E]`, comparable with `image_embeddings`."""
    if not clip.has_text or clip.tokenizer is None:
        raise ThumbsaeError(f"CLIP model {clip.name} has no text tower; feature names and zero-shot need one")
    parts = []
    for start in range(0, len(texts), batch_size):
        tokens_BL = clip.tokenizer(list(texts[start : start + batch_size])).to(clip.device)
        with torch.inference_mode():
            parts.append(clip.model.encode_text(tokens_BL, normalize=True).float().cpu().numpy())
    embed_dim = int(getattr(clip.model, "text_projection", torch.zeros(0, 0)).shape[-1])
    return np.concatenate(parts, axis=0) if parts else np.zeros((0, embed_dim), dtype=np.float32)


def _check_settings(images_df: pd.DataFrame, tokens: str, fit: str, dtype: str, shard_rows: int, batch_size: int):
    missing = [c for c in ("video_id", "image") if c not in images_df.columns]
    if missing:
        raise ThumbsaeError(
            f"image table lacks column(s) {', '.join(missing)}; load it with thumbsae.data.load_image_set"
        )
    if tokens not in TOKEN_MODES:
        raise ThumbsaeError(f"activations.tokens={tokens!r}: use one of {', '.join(TOKEN_MODES)}")
    if fit not in FITS:
        raise ThumbsaeError(f"activations.fit={fit!r}: use one of {', '.join(FITS)}")
    if dtype not in DTYPES:
        raise ThumbsaeError(f"activations.dtype={dtype!r}: use one of {', '.join(DTYPES)}")
    if shard_rows < 1 or batch_size < 1:
        raise ThumbsaeError(f"activations.shard_rows={shard_rows} and batch_size={batch_size} must be >= 1")


def _probe_shape(clip: LoadedCLIP, transform: ImageTransform, layer: int, tokens: str) -> tuple[int, int]:
    """`(tokens per image, D)` of the hooked output, from one blank image."""
    h, w = transform.size_hw
    with torch.inference_mode():
        out = hooked_activations(clip.model, torch.zeros(1, 3, h, w, device=clip.device), layer, tokens)
    return (int(out.shape[1]) if tokens == "all" else 1), int(out.shape[-1])


def _content_hash(settings: dict, video_ids: list[str], paths: tuple[str, ...]) -> str:
    """sha256 over the settings and, per image in order, its video_id and the sha256 of its bytes."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for video_id, path in zip(video_ids, paths):
        digest.update(json.dumps(video_id).encode())
        digest.update(_file_digest(path))
    return digest.hexdigest()


def _file_digest(path: str) -> bytes:
    try:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        return digest.digest()
    except OSError as exc:
        return f"unreadable:{type(exc).__name__}".encode()


def _finished_store(out_dir: Path, content_hash: str) -> ActivationStore | None:
    """The store in `out_dir` if it is finished, built from the same content, with all its files."""
    try:
        meta = json.loads((out_dir / METADATA_FILE).read_text())
    except (OSError, ValueError):
        return None
    if meta.get("content_hash") != content_hash or meta.get("format_version") != FORMAT_VERSION:
        return None
    files = [s["file"] for s in meta.get("shards", [])] + [ROW_IMAGE_FILE, ROW_TOKEN_FILE]
    if not all((out_dir / f).is_file() for f in files):
        return None
    return ActivationStore(out_dir)


def _shard_record(out_dir: Path, shard: int, content_hash: str) -> dict | None:
    """The record of a finished shard of this content, or None (missing, stale or unreadable)."""
    npy = out_dir / shard_name(shard)
    try:
        record = json.loads(npy.with_suffix(".json").read_text())
    except (OSError, ValueError):
        return None
    if record.get("content_hash") != content_hash or not npy.is_file():
        return None
    return record


def _shard_index(path: Path) -> int | None:
    stem = path.name.split(".")[0]
    digits = stem.removeprefix("shard_")
    return int(digits) if stem.startswith("shard_") and digits.isdigit() else None


@dataclass(frozen=True)
class _ShardJob:
    """What every shard of one extraction shares."""

    clip: LoadedCLIP
    transform: ImageTransform
    forward: PixelForward
    dtype: str
    d: int
    out_dir: Path
    content_hash: str


def _extract_shards(
    job: _ShardJob,
    pending: list[int],
    shard_inputs: list[tuple[int, int]],
    paths: tuple[str, ...],
    *,
    batch_size: int,
    num_workers: int,
    bar: tqdm,
) -> None:
    """Compute and write every pending shard; batches never straddle two shards."""
    batches: list[list[int]] = []
    batch_shard: list[int] = []
    for s in pending:
        a, b = shard_inputs[s]
        for start in range(a, b, batch_size):
            batches.append(list(range(start, min(b, start + batch_size))))
            batch_shard.append(s)
    if not batches:
        return
    stream = _batch_stream(job, paths, batches, batch_size=batch_size, num_workers=num_workers)
    acts: list[np.ndarray] = []
    kept: list[int] = []
    rejects: list[tuple[int, str]] = []
    with contextlib.closing(stream):
        for n, (shard, batch) in enumerate(zip(batch_shard, stream)):
            if batch.pixels_BCHW is not None:
                with torch.inference_mode():
                    out = job.forward(batch.pixels_BCHW.to(job.clip.device), batch.margins)
                acts.append(to_storage(out.reshape(-1, out.shape[-1]), job.dtype))
                kept.extend(batch.kept)
            rejects.extend(batch.rejects)
            bar.update(len(batch.kept) + len(batch.rejects))
            if n + 1 == len(batches) or batch_shard[n + 1] != shard:
                write_shard(job, shard, acts, kept, rejects)
                acts, kept, rejects = [], [], []


def _batch_stream(
    job: _ShardJob, paths: tuple[str, ...], batches: list[list[int]], *, batch_size: int, num_workers: int
) -> Iterator[Batch]:
    """The `Batch`es, in order. Their pixels may be overwritten by the next batch once it is asked for."""
    if num_workers > 0 and _in_lockstep(job.clip.device):
        yield from _lockstep_stream(job.transform, paths, batches, batch_size=batch_size, num_workers=num_workers)
        return
    yield from DataLoader(
        _DecodedImages(paths, threads=torch.get_num_threads() if num_workers == 0 else 1),
        batch_sampler=batches,
        collate_fn=_FitBatch(job.transform),
        num_workers=num_workers,
    )


def _in_lockstep(device: str | torch.device) -> bool:
    """Whether decoding workers must wait for the forward pass: it runs on the same (CPU) cores."""
    return torch.device(device).type == "cpu"


def _lockstep_stream(
    transform: ImageTransform, paths: tuple[str, ...], batches: list[list[int]], *, batch_size: int, num_workers: int
) -> Iterator[Batch]:
    """`_batch_stream` with workers that decode only while the main process waits for them."""
    context = multiprocessing.get_context()
    gates = tuple(context.Semaphore(0) for _ in range(num_workers))
    next_slot = context.Value("q", 0)
    h, w = transform.size_hw
    pixels_BHWC = torch.empty((batch_size, h, w, 3), dtype=torch.uint8).share_memory_()
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    loader = DataLoader(
        _SharedBatch(_DecodedImages(paths), transform, pixels_BHWC, gates, next_slot, os.getpid()),
        # Every worker gets every batch (DataLoader hands out tasks round-robin) and claims chunks of it.
        batch_sampler=[batch for batch in batches for _ in range(num_workers)],
        collate_fn=_as_list,
        num_workers=num_workers,
        prefetch_factor=1,
        worker_init_fn=_PinToCore(tuple(cores)) if len(cores) >= num_workers else None,
        multiprocessing_context=context,
    )
    results = iter(loader)
    try:
        for _ in batches:
            next_slot.value = 0  # no worker touches it now: all of them wait at their gates
            for gate in gates:
                gate.release()
            items = sorted(item for _ in gates for item in next(results))
            kept = [(slot, i, size) for slot, i, size, _ in items if size is not None]
            slots = [slot for slot, _, _ in kept]
            pixels_BCHW = pixels_BHWC.permute(0, 3, 1, 2)
            if not kept:
                pixels_BCHW = None
            elif slots == list(range(len(slots))):
                pixels_BCHW = pixels_BCHW[: len(slots)]
            else:  # rejects left holes in the batch
                pixels_BCHW = pixels_BCHW[torch.tensor(slots)]
            yield Batch(
                kept=[i for _, i, _ in kept],
                pixels_BCHW=pixels_BCHW,
                rejects=[(i, reason) for _, i, size, reason in items if size is None],
                margins=transform.pad_margins([size for _, _, size in kept]),
            )
    finally:
        for gate in gates:  # a worker waiting at its gate must get past it to see the loader shut down
            gate.release()
        del results  # shuts the workers down


def write_shard(
    job: _ShardJob, shard: int, acts: list[np.ndarray], kept: list[int], rejects: list[tuple[int, str]]
) -> None:
    """Write shard `shard` (`[rows, D]` storage array), then its record; both atomically, in that order."""
    if acts:
        array = np.concatenate(acts, axis=0)
    else:
        # An all-rejected shard still exists, with zero rows, so row ranges stay contiguous.
        array = np.zeros((0, job.d), dtype=np.uint16 if job.dtype == "bfloat16" else np.dtype(job.dtype))
    npy = job.out_dir / shard_name(shard)
    write_array(npy, array)
    record = {
        "content_hash": job.content_hash,
        "file": npy.name,
        "inputs": list(kept),
        "rejects": [[int(i), reason] for i, reason in sorted(rejects)],
        "rows": int(array.shape[0]),
    }
    write_json(npy.with_suffix(".json"), record)


def _finish(
    out_dir: Path, n_shards: int, shard_inputs: list[tuple[int, int]], content_hash: str, settings: dict,
    video_ids: list[str],
) -> dict:
    """Collect the shard records into `metadata.json` (written last, by `finish_store`)."""
    shards, kept_inputs, rejects = [], [], []
    row = 0
    for s in range(n_shards):
        record = _shard_record(out_dir, s, content_hash)
        if record is None:
            raise ThumbsaeError(f"{out_dir / shard_name(s)}: shard missing after extraction; run it again")
        first_image = len(kept_inputs)
        kept_inputs.extend(record["inputs"])
        rejects.extend(record["rejects"])
        shards.append({
            "file": record["file"],
            "rows": [row, row + record["rows"]],
            "images": [first_image, len(kept_inputs)],
            "inputs": list(shard_inputs[s]),
        })
        row += record["rows"]
    for stale in sorted(out_dir.glob("shard_*.*")):
        if (index := _shard_index(stale)) is not None and index >= n_shards:
            stale.unlink(missing_ok=True)
    extra = {
        "content_hash": content_hash,
        "n_inputs": len(video_ids),
        "input_index": kept_inputs,
        "rejects": [{"input_index": i, "video_id": video_ids[i], "reason": reason} for i, reason in rejects],
    }
    return finish_store(out_dir, header=settings, shards=shards, video_ids=[video_ids[i] for i in kept_inputs],
                        extra=extra)


def _write_rejects(rejects: list[dict], images_df: pd.DataFrame, rejects_path, out_dir: Path) -> None:
    if rejects:
        where = f" -> {rejects_path}" if rejects_path is not None else f" (listed in {out_dir / METADATA_FILE})"
        print(f"{out_dir}: {len(rejects)} of {len(images_df)} images could not be decoded{where}", flush=True)
    if rejects_path is None:
        return
    table = [
        Reject(row=r["input_index"], video_id=r["video_id"], image=str(images_df["image"].iloc[r["input_index"]]),
               reason=r["reason"])
        for r in rejects
    ]
    write_rejects(table, rejects_path)
