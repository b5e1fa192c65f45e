"""Bench: ActivationDataModule activations/s against a plain sequential memmap read of the same shards.

Ours: one epoch of `ActivationDataModule.train_dataloader()` (shard-order shuffle, shuffle buffer,
train/val split by image, scaling to mean norm sqrt(d), float32 torch batches). Anchor: reading
the same float16 shards front to back with `np.load(mmap_mode="r")`, converting each batch to a
float32 torch tensor. Same process, same batch size, warm page cache. ratio = ours / anchor;
target 0.8.

    python bench/datamodule.py [--rows 262144] [--d 512] [--batch-size 4096] [--workers 0]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from thumbsae.activations import ActivationDataModule
from thumbsae.activations.store import ActivationStore, store_from_array


def sequential_read_rate(store: ActivationStore, batch_size: int) -> float:
    """Rows/s of a front-to-back read of every shard into float32 torch batches."""
    start = time.perf_counter()
    n = 0
    for path in sorted(store.path.glob("shard_*.npy")):
        shard = np.load(path, mmap_mode="r")
        for i in range(0, len(shard), batch_size):
            x_BD = torch.from_numpy(np.asarray(shard[i : i + batch_size], dtype=np.float32))
            n += len(x_BD)
    return n / (time.perf_counter() - start)


def datamodule_rate(store: ActivationStore, args) -> tuple[float, int]:
    """Rows/s of one training epoch of the DataModule (scale estimation excluded: done once per run)."""
    dm = ActivationDataModule(store.path, batch_size=args.batch_size, val_fraction=0.05,
                              shuffle_buffer=args.shuffle_buffer, num_workers=args.workers, seed=0,
                              normalize=not args.no_normalize)
    dm.setup()
    _ = dm.scale
    loader = dm.train_dataloader()
    start = time.perf_counter()
    n = sum(len(x_BD) for x_BD in loader)
    return n / (time.perf_counter() - start), n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=262_144)
    parser.add_argument("--d", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--shuffle-buffer", type=int, default=32_768)
    parser.add_argument("--shard-rows", type=int, default=16_384)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-normalize", action="store_true", help="skip the scaling to mean norm sqrt(d)")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    acts_ND = rng.standard_normal((args.rows, args.d), dtype=np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        store = store_from_array(Path(tmp) / "store", acts_ND, [f"v{i}" for i in range(args.rows)],
                                 dtype="float16", shard_rows=args.shard_rows)
        del acts_ND
        sequential_read_rate(store, args.batch_size)  # warm the page cache for both
        anchor = max(sequential_read_rate(store, args.batch_size) for _ in range(args.repeats))
        runs = [datamodule_rate(store, args) for _ in range(args.repeats)]
        ours = max(rate for rate, _ in runs)
    print(json.dumps({
        "ratio": round(ours / anchor, 3),
        "target": 0.8,
        "datamodule_rows_per_s": round(ours),
        "sequential_memmap_rows_per_s": round(anchor),
        "rows": args.rows,
        "train_rows_per_epoch": runs[0][1],
        "d": args.d,
        "dtype": "float16",
        "batch_size": args.batch_size,
        "shuffle_buffer": args.shuffle_buffer,
        "workers": args.workers,
        "normalize": not args.no_normalize,
    }))


if __name__ == "__main__":
    main()
