"""Benchmark: the feature-group study at the published scale, against its time and memory limits.

Synthetic sparse latents for 524,288 thumbnails x 65,536 latents with exactly k = 32 non-zeros per
row (feature popularity log-normal, so thousands of features qualify, more than the study's 952),
views log-normal around the study's median 5,918 with 20 planted features (10 raising, 10 lowering
views). The study runs with the published settings (group 400, 100 per side, 1,000,000-median
held-out null) plus the rigorous additions (B = 200 permutations of the whole selection, BH
q-values, bootstrap CIs of the sides) and writes its CSVs.

The inputs are generated first and saved; a fresh child process loads them and runs the study, so
its peak RSS is the study's (inputs included) and not the generator's. Limits: <= 120 s and
<= 6 GB peak RSS on 2 cores. Last line: JSON with ratio = min(120 / seconds, 6 / peak_GB).

    python bench/evaluate_scale.py              # full scale
    python bench/evaluate_scale.py --scale 0.125  # 1/8 of the thumbnails and latents
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

TIME_LIMIT_S = 120.0
MEMORY_LIMIT_GB = 6.0
K = 32
N_PLANTED = 20


def generate(n_rows: int, n_features: int, out: Path, seed: int = 0) -> dict:
    """Write `latents.npz` (CSR float32 [n_rows, n_features], K distinct per row) and `table.parquet`."""
    import pandas as pd
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    popularity_F = rng.lognormal(0.0, 0.7, size=n_features)
    cdf_F = np.cumsum(popularity_F / popularity_F.sum())
    cols_NK = np.searchsorted(cdf_F, rng.random((n_rows, K)), side="right").clip(0, n_features - 1)
    # Redraw repeated features within a row (uniformly) until every row has K distinct ones.
    while True:
        cols_NK.sort(axis=1)
        dup_NK = np.zeros_like(cols_NK, dtype=bool)
        dup_NK[:, 1:] = cols_NK[:, 1:] == cols_NK[:, :-1]
        n_dup = int(dup_NK.sum())
        if n_dup == 0:
            break
        cols_NK[dup_NK] = rng.integers(0, n_features, size=n_dup)
    acts_NK = rng.exponential(0.5, size=(n_rows, K)).astype(np.float32)
    latents = sp.csr_matrix(
        (acts_NK.ravel(), cols_NK.ravel().astype(np.int32), np.arange(0, n_rows * K + 1, K, dtype=np.int64)),
        shape=(n_rows, n_features),
    )
    # Planted features among the popular ones: activation moves log views up or down.
    planted = rng.choice(np.argsort(popularity_F)[-n_features // 20 :], size=N_PLANTED, replace=False)
    effect_P = np.r_[np.full(N_PLANTED // 2, 1.2), np.full(N_PLANTED - N_PLANTED // 2, -1.2)]
    log_views_N = np.log(5918.0) + 1.8 * rng.standard_normal(n_rows)
    csc = latents.tocsc()
    for f, e in zip(planted, effect_P):
        rows = csc.indices[csc.indptr[f] : csc.indptr[f + 1]]
        log_views_N[rows] += e * np.minimum(csc.data[csc.indptr[f] : csc.indptr[f + 1]], 2.0)
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
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of 524,288 x 65,536")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(run_study(args.child)))
        return

    n_rows, n_features = int(524_288 * args.scale), int(65_536 * args.scale)
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
        "ratio": round(min(TIME_LIMIT_S / seconds, MEMORY_LIMIT_GB / peak_gb), 4),
        "target": 1.0,
        "seconds": round(seconds, 2),
        "peak_gb": round(peak_gb, 3),
        "time_limit_s": TIME_LIMIT_S,
        "memory_limit_gb": MEMORY_LIMIT_GB,
        "scale": args.scale,
        "n_thumbnails": n_rows,
        "n_latents": n_features,
        "nnz": made["nnz"],
        "planted_on_a_side": found,
        **got,
    }))


if __name__ == "__main__":
    main()
