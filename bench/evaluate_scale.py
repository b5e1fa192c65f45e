"""Benchmark: the feature-group study at the published scale (and 8x it), against time and memory limits.

Synthetic sparse latents for 524,288 thumbnails x 65,536 latents with exactly k = 32 non-zeros per
row (feature popularity log-normal, so thousands of features qualify, more than the study's 952),
views log-normal around the study's median 5,918 with 20 planted features (10 raising, 10 lowering
views). The study runs with the published settings (group 400, 100 per side, 1,000,000-median
held-out null) plus the rigorous additions (B = 200 permutations of the whole selection, BH
q-values, bootstrap CIs of the sides) and writes its CSVs.

The inputs are generated first and saved; a fresh child process loads them and runs the study, so
its peak RSS is the study's (inputs included) and not the generator's (which works in chunks).
Limits on 2 cores: the study's size <= 120 s and <= 6 GB peak RSS; the full YouTube-8M-sized
4,194,304 thumbnails (`--thumbnails 4194304`) <= 600 s and <= 24 GB. Last line: JSON with
ratio = min(time limit / seconds, memory limit / peak GB).

    python bench/evaluate_scale.py                        # 524,288 x 65,536
    python bench/evaluate_scale.py --thumbnails 4194304   # 4,194,304 x 65,536
    python bench/evaluate_scale.py --scale 0.125          # 1/8 of the thumbnails and latents
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

STUDY_THUMBNAILS = 524_288
STUDY_LATENTS = 65_536
# (seconds, GB) on 2 cores: at the study's size, and for anything larger (the YouTube-8M-sized run).
LIMITS = {STUDY_THUMBNAILS: (120.0, 6.0)}
LARGE_LIMITS = (600.0, 24.0)
K = 32
N_PLANTED = 20
CHUNK_ROWS = 262_144


def generate(n_rows: int, n_features: int, out: Path, seed: int = 0) -> dict:
    """Write `latents.npz` (CSR float32 [n_rows, n_features], K distinct per row) and `table.parquet`.

    Rows are drawn a chunk at a time (one seeded stream per chunk), so memory stays near the
    output's size whatever `n_rows` is.
    """
    import pandas as pd
    import scipy.sparse as sp

    seeds = np.random.SeedSequence(seed).spawn(2)
    rng = np.random.default_rng(seeds[0])
    popularity_F = rng.lognormal(0.0, 0.7, size=n_features)
    cdf_F = np.cumsum(popularity_F / popularity_F.sum())
    # Planted features among the popular ones: activation moves log views up or down.
    planted = rng.choice(np.argsort(popularity_F)[-n_features // 20 :], size=N_PLANTED, replace=False)
    effect_F = np.zeros(n_features)
    effect_F[planted] = np.r_[np.full(N_PLANTED // 2, 1.2), np.full(N_PLANTED - N_PLANTED // 2, -1.2)]
    indices = np.empty(n_rows * K, dtype=np.int32)
    data = np.empty(n_rows * K, dtype=np.float32)
    log_views_N = np.empty(n_rows)
    chunk_seeds = seeds[1].spawn(-(-n_rows // CHUNK_ROWS))
    for c, start in enumerate(range(0, n_rows, CHUNK_ROWS)):
        crng = np.random.default_rng(chunk_seeds[c])
        m = min(CHUNK_ROWS, n_rows - start)
        cols_MK = np.searchsorted(cdf_F, crng.random((m, K)), side="right").clip(0, n_features - 1)
        # Redraw repeated features within a row (uniformly) until every row has K distinct ones.
        while True:
            cols_MK.sort(axis=1)
            dup_MK = np.zeros_like(cols_MK, dtype=bool)
            dup_MK[:, 1:] = cols_MK[:, 1:] == cols_MK[:, :-1]
            n_dup = int(dup_MK.sum())
            if n_dup == 0:
                break
            cols_MK[dup_MK] = crng.integers(0, n_features, size=n_dup)
        acts_MK = crng.exponential(0.5, size=(m, K)).astype(np.float32)
        indices[start * K : (start + m) * K] = cols_MK.ravel()
        data[start * K : (start + m) * K] = acts_MK.ravel()
        shift_M = (effect_F[cols_MK] * np.minimum(acts_MK, 2.0)).sum(axis=1)
        log_views_N[start : start + m] = np.log(5918.0) + 1.8 * crng.standard_normal(m) + shift_M
        del cols_MK, acts_MK, dup_MK
    latents = sp.csr_matrix((data, indices, np.arange(0, n_rows * K + 1, K, dtype=np.int64)),
                            shape=(n_rows, n_features))
    views_N = np.round(np.exp(log_views_N)).astype(np.int64)
    sp.save_npz(out / "latents.npz", latents, compressed=False)
    pd.DataFrame({"video_id": [f"v{i:07d}" for i in range(n_rows)], "views": views_N}).to_parquet(
        out / "table.parquet", index=False
    )
    return {"nnz": int(latents.nnz), "planted": sorted(int(f) for f in planted)}


def run_study(folder: Path) -> dict:
    """Child process: load the inputs, run and write the study, report time and peak RSS."""
    import pandas as pd
    import scipy.sparse as sp

    from thumbsae.analysis.study import EvalConfig, run_feature_study, write_study

    latents = sp.load_npz(folder / "latents.npz").tocsr()
    table = pd.read_parquet(folder / "table.parquet")
    cfg = EvalConfig(group_size=400, n_side=100, threshold=0.05, n_null=1_000_000, n_permutations=200, seed=0)
    start = time.perf_counter()
    result = run_feature_study(latents, table, cfg)
    summary = write_study(result, folder / "out")
    seconds = time.perf_counter() - start
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9
    sides = result.feature_groups[result.feature_groups["side"] != ""]
    return {
        "seconds": seconds,
        "peak_gb": peak_gb,
        "n_qualifying": summary["n_qualifying"],
        "selection_null_p": summary["selection_null_p"],
        "p_hhm": summary["p_hhm"],
        "p_lhm": summary["p_lhm"],
        "ks_statistic": summary["ks_statistic"],
        "ks_study_statistic": summary["ks_study_statistic"],
        "n_significant": summary["n_significant"],
        "side_features": sorted(int(f) for f in sides["feature"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--thumbnails", type=int, default=STUDY_THUMBNAILS, help="rows (default: the study's 2^19)")
    parser.add_argument("--latents", type=int, default=STUDY_LATENTS, help="SAE latents (default 65,536)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply both sizes (quick runs)")
    parser.add_argument("--time-limit", type=float, help="seconds (default: 120 at the study's size, else 600)")
    parser.add_argument("--memory-limit", type=float, help="GB of peak RSS (default: 6 at the study's size, else 24)")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(run_study(args.child)))
        return

    n_rows, n_features = int(args.thumbnails * args.scale), int(args.latents * args.scale)
    time_limit, memory_limit = LIMITS.get(args.thumbnails, LARGE_LIMITS)
    time_limit = args.time_limit or time_limit
    memory_limit = args.memory_limit or memory_limit
    with tempfile.TemporaryDirectory(prefix="thumbsae-bench-") as tmp:
        folder = Path(tmp)
        t0 = time.perf_counter()
        made = generate(n_rows, n_features, folder)
        gen_s = time.perf_counter() - t0
        # Two threads at most, like the 2-core target machine.
        env = {**os.environ, "OMP_NUM_THREADS": "2", "OPENBLAS_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}
        child = subprocess.run(
            [sys.executable, __file__, "--child", str(folder)], env=env, capture_output=True, text=True
        )
        if child.returncode != 0:
            sys.stderr.write(child.stderr)
            raise SystemExit(child.returncode)
        got = json.loads(child.stdout.strip().splitlines()[-1])
    found = len(set(made["planted"]) & set(got.pop("side_features")))
    seconds, peak_gb = got["seconds"], got["peak_gb"]
    print(f"generated {n_rows:,} x {n_features:,} (nnz {made['nnz']:,}) in {gen_s:.1f} s")
    print(f"study: {seconds:.1f} s, peak RSS {peak_gb:.2f} GB, {got['n_qualifying']} qualifying features,"
          f" {found}/{N_PLANTED} planted features on a side")
    print(json.dumps({
        "ratio": round(min(time_limit / seconds, memory_limit / peak_gb), 4),
        "target": 1.0,
        "seconds": round(seconds, 2),
        "peak_gb": round(peak_gb, 3),
        "time_limit_s": time_limit,
        "memory_limit_gb": memory_limit,
        "scale": args.scale,
        "n_thumbnails": n_rows,
        "n_latents": n_features,
        "nnz": made["nnz"],
        "planted_on_a_side": found,
        **got,
    }))


if __name__ == "__main__":
    main()
