"""Validating an image set: `load_image_set` (threaded full decode + row checks) vs a plain serial PIL loop.

The anchor is what a user would write without us: `Image.open(p).convert("RGB")` for every row, one
after the other, with no validation. ratio = anchor seconds / our seconds (higher is better); the
target is 1.0: all our checks, rejects and mode handling should cost no more than the bare loop.

    python bench/data_decode.py [--n 10000] [--size 224]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from thumbsae.data import load_image_set


def make_images(folder: Path, n: int, size: int) -> Path:
    """`n` thumbnail-like PNGs (gradient + shapes, so PNG compresses as it does for real art) and a manifest."""
    manifest = folder / f"manifest_{n}_{size}.csv"
    if manifest.exists():
        return manifest
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 255, size, dtype=np.float32)
    rows = []
    for i in range(n):
        base = np.stack([np.add.outer(ramp * rng.random(), ramp * rng.random()) / 2] * 3, axis=-1)
        image = Image.fromarray((base * rng.random(3)).clip(0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(image)
        for _ in range(3):
            x, y = rng.integers(0, size, 2)
            r = int(rng.integers(size // 16, size // 4))
            draw.ellipse((x - r, y - r, x + r, y + r), fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
        path = folder / f"{i:06d}.png"
        image.save(path)
        rows.append((f"v{i:06d}", path.name, int(rng.integers(0, 10**6))))
    pd.DataFrame(rows, columns=["video_id", "image", "views"]).to_csv(manifest, index=False)
    return manifest


def serial_pil(manifest: Path) -> int:
    table = pd.read_csv(manifest)
    for name in table["image"]:
        with Image.open(manifest.parent / name) as image:
            image.convert("RGB")
    return len(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--out", default=str(Path(__file__).parent / "out" / "data_decode"))
    args = parser.parse_args()

    manifest = make_images(Path(args.out), args.n, args.size)
    serial_pil(manifest)  # warm the page cache so both sides read from memory

    start = time.perf_counter()
    n_anchor = serial_pil(manifest)
    anchor_s = time.perf_counter() - start

    start = time.perf_counter()
    images = load_image_set(manifest, kind="thumbnails")
    ours_s = time.perf_counter() - start
    assert len(images) == n_anchor == args.n

    print(json.dumps({
        "bench": "data_decode",
        "n_images": args.n,
        "size": args.size,
        "ours_s": round(ours_s, 3),
        "anchor_serial_pil_s": round(anchor_s, 3),
        "ours_images_per_s": round(args.n / ours_s, 1),
        "ratio": round(anchor_s / ours_s, 3),
        "target": 1.0,
    }))


if __name__ == "__main__":
    main()
