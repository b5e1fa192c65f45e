"""Extract hooked CLIP activations of an image set into a resumable, content-addressed shard store.

Decoding workers (`thumbsae.activations.decoding`) decode and fit the images; this process runs
the truncated vision tower under `torch.inference_mode` one shard-aligned batch at a time, so a
shard's bytes never depend on where an earlier run stopped; `thumbsae.activations.store_writer`
writes each shard with its record, and `metadata.json` last. Under torchrun several processes
share the shards (`thumbsae.activations.distributed`) and the result reads the same.
"""

from __future__ import annotations

import contextlib
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from thumbsae.activations.clip import LoadedCLIP
from thumbsae.activations.decoding import batch_stream, resolve_num_workers
from thumbsae.activations.distributed import Ranks, current_ranks
from thumbsae.activations.embed import embed_images, encode_text, image_embeddings, probe_shape
from thumbsae.activations.hooks import TOKEN_MODES, Tokens, resolve_layer, vision_blocks
from thumbsae.activations.pixels import PixelForward
from thumbsae.activations.preprocess import DEFAULT_FIT, FITS, Fit, ImageTransform, make_transform
from thumbsae.activations.store import DTYPES, FORMAT_VERSION, ActivationStore, to_storage
from thumbsae.activations.store_writer import (
    ShardWriter,
    content_hash,
    file_digests,
    finish_extraction,
    finished_store,
    prepare_folder,
    shard_record,
    write_extraction_rejects,
    write_shard,
)
from thumbsae.console import progress_bar
from thumbsae.errors import ThumbsaeError

__all__ = [
    "DEFAULT_SHARD_ROWS",
    "PRECISIONS",
    "embed_images",
    "encode_text",
    "extract_to_store",
    "image_embeddings",
    "resolve_num_workers",
    "store_content_hash",
]

DEFAULT_SHARD_ROWS = 16384
# How images are resized (recorded in the store, so a change of method is a change of content).
RESIZE = "bicubic, antialiased (torch uint8 kernel)"
# Compute precision of the forward pass: float32, or autocast to a 16-bit type (GPUs).
PRECISIONS: tuple[str, ...] = ("float32", "bfloat16", "float16")


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
    precision: str = "float32",
    ranks: Ranks | None = None,
) -> ActivationStore:
    """Extract activations of every image of `images_df` (columns `video_id`, `image`) into `out_dir`.

    Rows: one per image (`cls`, `mean`; `[D]`) or T per image (`all`). Shards hold whole images,
    about `shard_rows` rows each. Unreadable images become rejects (`row` = position in
    `images_df`, `video_id`, `image`, `reason`), written to `rejects_path` when given; they get no
    rows. A finished store with the same content hash (image bytes + settings) is reused as is; an
    interrupted one is resumed, recomputing only unfinished shards. Returns the opened store.

    `num_workers`: decoding worker processes (`thumbsae.activations.decoding`): ahead of the forward
    pass for a model on a GPU, in lockstep with it for a model on the CPU; 0 decodes on this
    process's threads. None picks (see `resolve_num_workers`).
    `precision`: `float32`, or autocast to `bfloat16` / `float16` (recorded in the store's settings).
    `ranks`: this process's share of the work when several extract into the same folder (default:
    the initialised `torch.distributed` group, else one process); every rank must call this with
    the same arguments, and `out_dir` must be on a file system all of them see.
    """
    _check_settings(images_df, tokens, fit, dtype, shard_rows, batch_size, precision)
    num_workers = resolve_num_workers(num_workers, clip.device)
    ranks = ranks or current_ranks()
    out_dir = Path(out_dir)
    video_ids = [str(v) for v in images_df["video_id"]]
    paths = tuple(str(p) for p in images_df["image"])
    settings, transform = _settings(
        clip, layer=layer, tokens=tokens, fit=fit, dtype=dtype, shard_rows=shard_rows, precision=precision
    )
    images_per_shard = settings["images_per_shard"]
    store_hash = content_hash(settings, video_ids, file_digests(paths, ranks))

    if ranks.agree(finished_store(out_dir, store_hash) is not None):
        if ranks.is_main:
            write_extraction_rejects(ActivationStore(out_dir).metadata["rejects"], images_df, rejects_path, out_dir)
        return ActivationStore(out_dir)

    if ranks.is_main:
        prepare_folder(out_dir)
    ranks.barrier()  # nobody writes before the folder is ready

    n_shards = math.ceil(len(paths) / images_per_shard)
    shard_inputs = [(s * images_per_shard, min(len(paths), (s + 1) * images_per_shard)) for s in range(n_shards)]
    mine = [s for s in range(n_shards) if ranks.owns(s)]
    pending = [s for s in mine if shard_record(out_dir, s, store_hash) is None]
    total = sum(shard_inputs[s][1] - shard_inputs[s][0] for s in mine)
    done_images = total - sum(shard_inputs[s][1] - shard_inputs[s][0] for s in pending)
    rank_tag = f" rank {ranks.rank}/{ranks.world_size}" if ranks.world_size > 1 else ""
    with progress_bar(
        total, f"extract {out_dir.name}{rank_tag}", unit="img", initial=done_images, disable=not progress
    ) as bar:
        forward = PixelForward(clip.model, transform, layer, tokens)
        writer = ShardWriter(out_dir, dtype, settings["d"], store_hash)
        _extract_shards(
            clip, transform, forward, writer, pending, shard_inputs, paths,
            batch_size=batch_size, num_workers=num_workers, precision=precision, bar=bar,
        )

    ranks.barrier()  # every shard is written
    if ranks.is_main:
        metadata = finish_extraction(out_dir, shard_inputs, store_hash, settings, video_ids)
        write_extraction_rejects(metadata["rejects"], images_df, rejects_path, out_dir)
    ranks.barrier()  # metadata.json is written
    return ActivationStore(out_dir)


def store_content_hash(
    images_df: pd.DataFrame,
    clip: LoadedCLIP,
    *,
    layer: int,
    tokens: Tokens,
    fit: Fit = DEFAULT_FIT,
    dtype: str = "float16",
    shard_rows: int = DEFAULT_SHARD_ROWS,
    precision: str = "float32",
) -> str:
    """The content hash `extract_to_store` would give these inputs (sha256 hex), e.g. to name a cache folder."""
    settings, _ = _settings(
        clip, layer=layer, tokens=tokens, fit=fit, dtype=dtype, shard_rows=shard_rows, precision=precision
    )
    paths = tuple(str(p) for p in images_df["image"])
    return content_hash(settings, [str(v) for v in images_df["video_id"]], file_digests(paths))


def _settings(
    clip: LoadedCLIP, *, layer: int, tokens: str, fit: str, dtype: str, shard_rows: int, precision: str
) -> tuple[dict, ImageTransform]:
    """Everything besides the images that decides a store's bytes (hashed, and kept in its metadata)."""
    transform = make_transform(clip.image_size, clip.mean, clip.std, fit)
    tokens_per_image, d = probe_shape(clip, transform, layer, tokens)
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
    if precision != "float32":  # absent for float32, so stores made before the key existed keep their hash
        settings["precision"] = precision
    return settings, transform


def _check_settings(
    images_df: pd.DataFrame, tokens: str, fit: str, dtype: str, shard_rows: int, batch_size: int, precision: str
) -> None:
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
    if precision not in PRECISIONS:
        raise ThumbsaeError(f"activations.precision={precision!r}: use one of {', '.join(PRECISIONS)}")
    if shard_rows < 1 or batch_size < 1:
        raise ThumbsaeError(f"activations.shard_rows={shard_rows} and batch_size={batch_size} must be >= 1")


def _extract_shards(
    clip: LoadedCLIP,
    transform: ImageTransform,
    forward: PixelForward,
    writer: ShardWriter,
    pending: list[int],
    shard_inputs: list[tuple[int, int]],
    paths: tuple[str, ...],
    *,
    batch_size: int,
    num_workers: int,
    precision: str,
    bar: Any,
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
    device = torch.device(clip.device)
    autocast = torch.autocast(device.type, dtype=getattr(torch, precision), enabled=precision != "float32")
    stream = batch_stream(transform, paths, batches, device=device, batch_size=batch_size, num_workers=num_workers)
    acts: list[np.ndarray] = []
    kept: list[int] = []
    rejects: list[tuple[int, str]] = []
    with contextlib.closing(stream):
        for n, (shard, batch) in enumerate(zip(batch_shard, stream)):
            if batch.pixels_BCHW is not None:
                with torch.inference_mode(), autocast:
                    out = forward(batch.pixels_BCHW.to(device, non_blocking=True), batch.margins)
                acts.append(to_storage(out.reshape(-1, out.shape[-1]), writer.dtype))
                kept.extend(batch.kept)
            rejects.extend(batch.rejects)
            bar.update(len(batch.kept) + len(batch.rejects))
            if n + 1 == len(batches) or batch_shard[n + 1] != shard:
                write_shard(writer, shard, acts, kept, rejects)
                acts, kept, rejects = [], [], []
