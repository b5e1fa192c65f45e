"""Writing an extraction's store: the content hash, one file per shard with its record, then metadata.

Each finished shard is renamed into place with a small record (`shard_XXXXX.json`) of which
images it holds and the content hash it was computed for; `metadata.json` is written last, from
the records (docs/activation-store.md). A rerun keeps every shard whose record carries the same
hash, so a store resumes after a crash, and shards computed by different processes combine.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from thumbsae.activations.distributed import Ranks
from thumbsae.activations.store import (
    FORMAT_VERSION,
    METADATA_FILE,
    ROW_IMAGE_FILE,
    ROW_TOKEN_FILE,
    ActivationStore,
    finish_store,
    shard_name,
    write_array,
    write_json,
)
from thumbsae.data import Reject, write_rejects
from thumbsae.errors import ThumbsaeError


@dataclass(frozen=True)
class ShardWriter:
    """Where and how one extraction writes its shards: `dtype` (storage), width `d`, the content hash."""

    out_dir: Path
    dtype: str
    d: int
    content_hash: str


def content_hash(settings: dict, video_ids: Sequence[str], digests: Sequence[bytes]) -> str:
    """sha256 over the settings and, per image in order, its video_id and the sha256 of its bytes."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for video_id, file_digest in zip(video_ids, digests, strict=True):
        digest.update(json.dumps(video_id).encode())
        digest.update(file_digest)
    return digest.hexdigest()


def file_digests(paths: Sequence[str], ranks: Ranks = Ranks(), *, threads: int | None = None) -> list[bytes]:
    """The sha256 of every file of `paths` (in order, on every rank); each rank reads its part on
    `threads` threads (hashing and reading release the GIL). Unreadable files get a marker."""
    mine = [paths[i] for i in ranks.part(len(paths))]
    threads = threads or min(8, os.cpu_count() or 1)
    if threads > 1 and len(mine) > 1:
        with ThreadPoolExecutor(threads) as pool:
            digests = list(pool.map(file_digest, mine, chunksize=64))
    else:
        digests = [file_digest(p) for p in mine]
    return ranks.gather(digests)


def file_digest(path: str) -> bytes:
    """sha256 of a file's bytes, or `unreadable:<error type>` when it cannot be read."""
    try:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        return digest.digest()
    except OSError as exc:
        return f"unreadable:{type(exc).__name__}".encode()


def finished_store(out_dir: Path, content_hash: str) -> ActivationStore | None:
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


def prepare_folder(out_dir: Path) -> None:
    """Make `out_dir` ready for (re)writing: a store being rewritten must never look finished, and
    killed writes leave temporaries behind."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / METADATA_FILE).unlink(missing_ok=True)
    for leftover in out_dir.glob(".*.tmp-*"):
        leftover.unlink(missing_ok=True)


def shard_record(out_dir: Path, shard: int, content_hash: str) -> dict | None:
    """The record of a finished shard of this content, or None (missing, stale or unreadable)."""
    npy = out_dir / shard_name(shard)
    try:
        record = json.loads(npy.with_suffix(".json").read_text())
    except (OSError, ValueError):
        return None
    if record.get("content_hash") != content_hash or not npy.is_file():
        return None
    return record


def write_shard(
    writer: ShardWriter, shard: int, acts: list[np.ndarray], kept: list[int], rejects: list[tuple[int, str]]
) -> None:
    """Write shard `shard` (`[rows, D]` storage array), then its record; both atomically, in that order."""
    if acts:
        array = np.concatenate(acts, axis=0)
    else:
        # An all-rejected shard still exists, with zero rows, so row ranges stay contiguous.
        array = np.zeros((0, writer.d), dtype=np.uint16 if writer.dtype == "bfloat16" else np.dtype(writer.dtype))
    npy = writer.out_dir / shard_name(shard)
    write_array(npy, array)
    record = {
        "content_hash": writer.content_hash,
        "file": npy.name,
        "inputs": list(kept),
        "rejects": [[int(i), reason] for i, reason in sorted(rejects)],
        "rows": int(array.shape[0]),
    }
    write_json(npy.with_suffix(".json"), record)


def finish_extraction(
    out_dir: Path, shard_inputs: list[tuple[int, int]], content_hash: str, settings: dict, video_ids: list[str]
) -> dict:
    """Collect the shard records into `metadata.json` (written last, by `finish_store`); delete
    shards of an earlier, longer input beyond the last one. Returns the metadata."""
    shards, kept_inputs, rejects = [], [], []
    row = 0
    for s, inputs in enumerate(shard_inputs):
        record = shard_record(out_dir, s, content_hash)
        if record is None:
            raise ThumbsaeError(f"{out_dir / shard_name(s)}: shard missing after extraction; run it again")
        first_image = len(kept_inputs)
        kept_inputs.extend(record["inputs"])
        rejects.extend(record["rejects"])
        shards.append({
            "file": record["file"],
            "rows": [row, row + record["rows"]],
            "images": [first_image, len(kept_inputs)],
            "inputs": list(inputs),
        })
        row += record["rows"]
    for stale in sorted(out_dir.glob("shard_*.*")):
        if (index := _shard_index(stale)) is not None and index >= len(shard_inputs):
            stale.unlink(missing_ok=True)
    extra = {
        "content_hash": content_hash,
        "n_inputs": len(video_ids),
        "input_index": kept_inputs,
        "rejects": [{"input_index": i, "video_id": video_ids[i], "reason": reason} for i, reason in rejects],
    }
    return finish_store(out_dir, header=settings, shards=shards, video_ids=[video_ids[i] for i in kept_inputs],
                        extra=extra)


def _shard_index(path: Path) -> int | None:
    stem = path.name.split(".")[0]
    digits = stem.removeprefix("shard_")
    return int(digits) if stem.startswith("shard_") and digits.isdigit() else None


def write_extraction_rejects(rejects: list[dict], images_df: pd.DataFrame, rejects_path, out_dir: Path) -> None:
    """Print how many images could not be decoded; write them to `rejects_path` when given."""
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
