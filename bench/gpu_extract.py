"""Extraction throughput on one GPU: CLIP ViT-L/14 in bf16, JPEG thumbnails to a store, against the bare forward.

    python bench/gpu_extract.py [--images 4096] [--batch 256] [--workers N]
    python bench/gpu_extract.py --tiny          # the same code on the CPU with the tiny CLIP (a smoke test)

Writes `--images` 480x360 JPEG thumbnails (smooth random pictures) to a temporary folder, loads
ViT-L-14 with random weights (no download), then times on the same GPU in the same run:
- ours: `extract_to_store` end to end (content hash, decoding workers, bf16 autocast forward to
  the residual after block -2, CLS token, float16 shards written), images/s;
- anchor: the bare forward of the same truncated tower (`hooked_activations`, bf16 autocast) on
  random tensors already on the GPU, same batch size: what the GPU alone allows.
Both after a warm-up. Without CUDA it prints one line on stderr and a JSON line with `ratio: null`.

Last line: JSON with `ratio` (ours / bare images/s) and `target` (0.8: decoding keeps the GPU 80 % busy).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

TARGET = 0.8


def write_thumbnails(folder: Path, n: int, seed: int = 0) -> pd.DataFrame:
    """`n` 480x360 JPEGs (q90): random 12x16 colour fields upsampled bicubically, so they compress and
    decode like photos rather than noise."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        small = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8))
        path = folder / f"t{i:06d}.jpg"
        small.resize((480, 360), Image.BICUBIC).save(path, quality=90)
        rows.append({"video_id": f"v{i:06d}", "image": str(path)})
    return pd.DataFrame(rows)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--workers", type=int, default=None, help="decoding workers (default: min(8, CPUs))")
    parser.add_argument("--model", default="ViT-L-14")
    parser.add_argument("--precision", default="bfloat16", choices=("float32", "bfloat16", "float16"))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="CPU, tiny CLIP, 48 images: checks the code runs")
    args = parser.parse_args()
    if args.tiny:
        args.device, args.model, args.images, args.batch, args.precision = "cpu", "thumbsae-tiny-vit", 48, 16, "float32"
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_extract.py: no CUDA GPU here; run it on a GPU machine (or --tiny for a CPU smoke test)",
              file=sys.stderr)
        print(json.dumps({"ratio": None, "target": TARGET, "skipped": "no CUDA GPU"}))
        return 0

    from thumbsae.activations import extract_to_store, hooked_activations, load_clip, make_transform

    clip = load_clip(args.model, pretrained=None, device=str(device))
    dtype = getattr(torch, args.precision)
    autocast = torch.autocast(device.type, dtype=dtype, enabled=args.precision != "float32")
    h, w = make_transform(clip.image_size, clip.mean, clip.std, "crop").size_hw
    n_batches = -(-args.images // args.batch)

    x = torch.randn(args.batch, 3, h, w, device=device)
    with torch.inference_mode(), autocast:
        for _ in range(2):
            hooked_activations(clip.model, x, -2, "cls")
        synchronize(device)
        started = time.perf_counter()
        for _ in range(n_batches):
            hooked_activations(clip.model, x, -2, "cls")
        synchronize(device)
    bare_s = time.perf_counter() - started
    bare_ips = n_batches * args.batch / bare_s

    with tempfile.TemporaryDirectory(prefix="thumbsae-gpu-extract-") as tmp:
        folder = Path(tmp)
        (folder / "images").mkdir()
        table = write_thumbnails(folder / "images", args.images)
        settings = dict(layer=-2, tokens="cls", fit="crop", dtype="float16", batch_size=args.batch,
                        num_workers=args.workers, precision=args.precision, progress=False)
        extract_to_store(table.iloc[: 2 * args.batch], clip, out_dir=folder / "warmup", **settings)
        synchronize(device)
        started = time.perf_counter()
        store = extract_to_store(table, clip, out_dir=folder / "store", **settings)
        synchronize(device)
        ours_s = time.perf_counter() - started
        assert store.n_images == args.images
    ours_ips = args.images / ours_s

    print(f"extraction {ours_ips:,.0f} images/s end to end vs bare forward {bare_ips:,.0f} images/s", file=sys.stderr)
    print(json.dumps({
        "ratio": ours_ips / bare_ips,
        "target": TARGET,
        "ours_images_per_s": ours_ips,
        "bare_forward_images_per_s": bare_ips,
        "model": args.model,
        "precision": args.precision,
        "batch": args.batch,
        "images": args.images,
        "workers": args.workers,
        "cpus": os.cpu_count(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
