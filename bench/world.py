"""Bench: world generation speed against its limit (10,000 thumbnails at 224 px in 60 s, 2 cores).

Prints, as its last line, {"ratio": limit_seconds / seconds, "target": 1.0, ...}; a ratio above 1
means faster than the limit. `--thumbnails` scales the run down; the limit scales with it.

    python bench/world.py [--thumbnails 10000] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

from thumbsae.world import WorldConfig, generate_world

LIMIT_SECONDS_PER_10K = 60.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--thumbnails", type=int, default=10_000)
    parser.add_argument(
        "--workers", type=int, default=2, help="drawing processes (the limit assumes 2 cores)"
    )
    parser.add_argument("--size", type=int, default=224)
    args = parser.parse_args()
    # The reference set is scaled with the thumbnails so it stays the default share of the work.
    per_class = max(1, round(150 * args.thumbnails / 4000))
    cfg = WorldConfig(
        n_thumbnails=args.thumbnails,
        width=args.size,
        height=args.size,
        n_reference_per_class=per_class,
        workers=args.workers,
    )
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        out = generate_world(cfg, Path(tmp) / "world")
        seconds = time.perf_counter() - start
        # CPU seconds of this process and its finished workers: what a contended machine hides.
        cpu = sum(
            resource.getrusage(who).ru_utime + resource.getrusage(who).ru_stime
            for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
        )
        n_images = sum(1 for _ in (out / "images").rglob("*.png"))
    limit = LIMIT_SECONDS_PER_10K * args.thumbnails / 10_000
    print(
        json.dumps(
            {
                "ratio": round(limit / seconds, 3),
                "target": 1.0,
                "seconds": round(seconds, 2),
                "cpu_seconds": round(cpu, 2),
                "limit_seconds": limit,
                "thumbnails": args.thumbnails,
                "images_written": n_images,
                "images_per_second": round(n_images / seconds, 1),
                "workers": args.workers,
                "size": args.size,
            }
        )
    )


if __name__ == "__main__":
    main()
