"""All GPU benchmarks in one command, each in its own process with a time limit.

    python bench/gpu_all.py [--tiny] [--timeout 300]

Runs `bench/gpu_extract.py` (ViT-L/14 extraction in bf16 vs the bare forward) and
`bench/gpu_sae.py` (TopK SAE d=1024 x64 k=32 vs eai-sparsify), prints each one's result JSON as it
arrives, then as its last line a JSON with `ratio` = the smallest of (ratio / target) over the
benches (>= 1 when every target is met; null when any was skipped or failed), `target` 1.0 and
every result. `--tiny` passes the flag on: the same code, small, on the CPU.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

BENCHES = ("gpu_extract.py", "gpu_sae.py")
HERE = Path(__file__).resolve().parent


def run(script: str, tiny: bool, timeout: float) -> dict:
    """The last JSON line of `script`, or `{"ratio": None, "error": ...}` (one line) when it fails."""
    cmd = [sys.executable, str(HERE / script), *(["--tiny"] if tiny else [])]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"ratio": None, "error": f"timed out after {timeout:.0f} s"}
    sys.stderr.write(proc.stderr[-2000:])
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"ratio": None, "error": f"exit {proc.returncode}: {last[:300]}"}
    return json.loads(lines[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per benchmark")
    args = parser.parse_args()
    results = {}
    for script in BENCHES:
        results[script] = run(script, args.tiny, args.timeout)
        print(json.dumps({"bench": script, **results[script]}), flush=True)
    ratios = [r["ratio"] / r["target"] if r.get("ratio") is not None else None for r in results.values()]
    print(json.dumps({"ratio": None if None in ratios else min(ratios), "target": 1.0, "tiny": args.tiny,
                      "results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
