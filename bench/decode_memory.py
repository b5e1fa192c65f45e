"""Decoding memory: the peak memory `load_rgb` really uses vs the bound it holds from the budget.

`decode_cost(mode, W, H)` is what a decode holds from `DECODE_BUDGET` and what the per-image
limit (`max_decode_bytes`) is checked against, so it must never be below what decoding uses.
Each image decodes in a fresh process (peak RSS growth over the process before decoding).
ratio = min over modes of (bound / measured peak): the bound's worst-case margin (higher is
safer); the target is 1.0 (the bound holds).

    python bench/decode_memory.py [--side 3000]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

MODES = {
    "RGB": lambda rng, s: rng.integers(0, 256, (s, s, 3), dtype=np.uint8),
    "RGBA": lambda rng, s: rng.integers(0, 256, (s, s, 4), dtype=np.uint8),
    "I;16": lambda rng, s: rng.integers(0, 65536, (s, s), dtype=np.uint16),
    "L": lambda rng, s: rng.integers(0, 256, (s, s), dtype=np.uint8),
}


def _measure(path: str) -> None:
    """Child: decode `path` once, print the peak RSS growth in bytes and the bound."""
    from thumbsae.data.images import _ALPHA_MODES, decode_cost, load_rgb

    with Image.open(path) as image:
        mode, (width, height) = image.mode, image.size
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    load_rgb(path)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"measured": after - before, "bound": decode_cost(mode, width, height, has_alpha=mode in _ALPHA_MODES)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=3000, help="image side in pixels")
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        _measure(args.measure)
        return
    rng = np.random.default_rng(0)
    margins = {}
    with tempfile.TemporaryDirectory() as folder:
        for mode, make in MODES.items():
            path = Path(folder) / f"{mode.replace(';', '')}.png"
            Image.fromarray(make(rng, args.side)).save(path, compress_level=1)
            out = subprocess.run([sys.executable, __file__, "--measure", str(path)], capture_output=True, text=True, check=True)
            result = json.loads(out.stdout.strip().splitlines()[-1])
            margins[mode] = result["bound"] / max(1, result["measured"])
            pixels = args.side**2
            print(f"{mode:5s} measured {result['measured'] / pixels:5.1f} B/px  bound {result['bound'] / pixels:5.1f} B/px")
    print(json.dumps({"ratio": round(min(margins.values()), 3), "target": 1.0, "side": args.side,
                      "margins": {m: round(v, 3) for m, v in margins.items()}}))


if __name__ == "__main__":
    main()
