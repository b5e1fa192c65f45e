"""How well calibrated are the engagement model's pairwise probabilities ("#1 beats #2 with p")?

On worlds with known truth: the model is fitted (bootstrap refits over training channels, the
out-of-fold win curve) and, on the thumbnails of its held-out channels, every pair within a
channel is oriented as a ranking shows it (the model's pick first). Pairs are binned by their
stated probability p (deciles); in each bin the share of pairs whose first thumbnail truly wins is
compared with the mean p. Truth: the realised views (what p promises, and the only truth real
data has); the world's noise-free expected log views (motif effects + warmth: channel, upload
date and the video's own luck held fixed, as for two stills of one video) are reported beside it,
where p is conservative by design. Anchor: the 0.05 limit per decile. `ratio` = 0.05 / max gap
over deciles with >= 200 pairs (>= 1 meets the target); `ece` (pair-weighted mean |gap|) beside it.

Two sources of latents:
- default: `--worlds` planned worlds (`plan_world`: the world's real generative model of views,
  no pixels) with simulated SAE latents: every motif has three latents that fire on it 70 % of
  the time (exponential activations) and 3 % of the time without it, scenes two, warmth two
  (signed, noisy), and 200 latents fire at random. Seconds per world.
- `--run OUT --world DIR`: a finished `evaluate.py` run on a world: OUT/latents_thumbnails.npz
  (the real SAE latents) and the world's thumbnails.csv and ground_truth.json; the model is
  refitted on them as evaluate fits it (same target, `--seed`, split), so the current code is
  what is measured.

    python bench/rank_calibration.py [--worlds 4] [--thumbnails 4000] [--bootstrap 100]
    python bench/rank_calibration.py --run OUT --world DIR [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from thumbsae.analysis.engagement import (
    EngagementConfig,
        engagement_target,
    fit_engagement_model,
    held_out_pair_calibration,
)
from thumbsae.analysis.latents import load_latents
from thumbsae.world.config import WorldConfig
from thumbsae.world.drawing import MOTIFS, SCENES
from thumbsae.world.population import plan_world

TARGET = 0.05


def simulated_latents(table: pd.DataFrame, seed: int) -> sp.csr_matrix:
    """Sparse SAE-like latents `[N, 3 M + 2 S + 2 + 200]` of planned world thumbnails (see module doc)."""
    rng = np.random.default_rng([seed, 99])
    n = len(table)
    blocks = []
    has_NM = np.array([[m in str(s).split(";") for m in MOTIFS] for s in table["motifs"]], dtype=bool)
    for j in range(len(MOTIFS)):
        fire = np.where(has_NM[:, j, None], rng.random((n, 3)) < 0.7, rng.random((n, 3)) < 0.03)
        blocks.append(fire * rng.exponential(1.0, (n, 3)))
    scene_N = table["scene"].to_numpy()
    for scene in SCENES:
        blocks.append((scene_N == scene)[:, None] * (rng.random((n, 2)) < 0.8) * rng.exponential(1.0, (n, 2)))
    warmth_N = table["warmth"].to_numpy(dtype=np.float64)
    noisy = warmth_N[:, None] + rng.normal(0.0, 0.3, (n, 2))
    blocks.append(np.maximum(0.0, noisy * np.array([1.0, -1.0])))
    blocks.append((rng.random((n, 200)) < 0.03) * rng.exponential(1.0, (n, 200)))
    return sp.csr_matrix(np.concatenate(blocks, axis=1).astype(np.float32))


def planned_worlds(n_worlds: int, n_thumbnails: int, n_bootstrap: int) -> tuple[dict, dict]:
    """Stated p and outcomes of every within-channel pair of the held-out channels of each world."""
    stated: dict[str, list] = {"views": [], "expected": []}
    info = {"fit_seconds": 0.0, "spearman_test": []}
    cfg = EngagementConfig(n_bootstrap=n_bootstrap)
    for w in range(n_worlds):
        plan = plan_world(WorldConfig(n_thumbnails=n_thumbnails, seed=100 + w))
        table = plan.thumbnails
        latents = simulated_latents(table, seed=w)
        target = engagement_target(table)
        start = time.perf_counter()
        model, metrics = fit_engagement_model(latents, target.values, groups=target.groups, seed=w, config=cfg)
        info["fit_seconds"] += time.perf_counter() - start
        info["spearman_test"].append(round(float(metrics["spearman_test"]), 4))
        for truth, calibs in stated.items():
            calibs.append(held_out_pair_calibration(
                model, latents, table, seed=w, config=cfg, ground_truth=plan.ground_truth, truth=truth
            ))
    return stated, info


def finished_run(run: Path, world: Path, seed: int, n_bootstrap: int) -> tuple[dict, dict]:
    """The same on an evaluate.py run on a world: its real SAE latents, the model refitted as
    evaluate fits it (same target, seed and split), so any run folder measures the current code."""
    matrix = load_latents(run / "latents_thumbnails.npz")
    table = pd.read_csv(world / "thumbnails.csv", dtype={"video_id": str, "channel_id": str})
    table = table.set_index("video_id").loc[matrix.video_ids].reset_index()
    ground_truth = json.loads((world / "ground_truth.json").read_text())
    cfg = EngagementConfig(n_bootstrap=n_bootstrap)
    target = engagement_target(table)
    start = time.perf_counter()
    model, metrics = fit_engagement_model(matrix.csr, target.values, groups=target.groups, seed=seed, config=cfg)
    info = {"fit_seconds": time.perf_counter() - start, "spearman_test": round(float(metrics["spearman_test"]), 4),
            "n_latents": int(matrix.csr.shape[1]), "n_features_used": metrics["n_features_used"]}
    stated = {
        truth: [held_out_pair_calibration(model, matrix.csr, table, seed=seed, config=cfg,
                                          ground_truth=ground_truth, truth=truth)]
        for truth in ("views", "expected")
    }
    return stated, info


def pooled(calibs: list) -> tuple[float, float, int, pd.DataFrame]:
    """(ECE, max gap over counted bins, pairs, table) of several worlds' pairs taken together."""
    n_K = sum(c.table["n_pairs"].to_numpy() for c in calibs)
    p_sum_K = sum((c.table["mean_p"].fillna(0) * c.table["n_pairs"]).to_numpy() for c in calibs)
    win_sum_K = sum((c.table["win_rate"].fillna(0) * c.table["n_pairs"]).to_numpy() for c in calibs)
    filled = n_K > 0
    table = calibs[0].table[["bin_lo", "bin_hi"]].assign(
        n_pairs=n_K,
        mean_p=np.where(filled, p_sum_K / np.maximum(n_K, 1), np.nan),
        win_rate=np.where(filled, win_sum_K / np.maximum(n_K, 1), np.nan),
    )
    table["gap"] = table["win_rate"] - table["mean_p"]
    table["counted"] = n_K >= calibs[0].min_pairs
    total = int(n_K.sum())
    ece = float(np.nansum(np.abs(table["gap"]) * n_K) / total)
    return ece, float(table.loc[table["counted"], "gap"].abs().max()), total, table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--worlds", type=int, default=4)
    parser.add_argument("--thumbnails", type=int, default=4000)
    parser.add_argument("--bootstrap", type=int, default=100)
    parser.add_argument("--run", type=Path, default=None, help="an evaluate.py output folder on a world")
    parser.add_argument(
        "--world", type=Path, default=None, help="the world folder of --run (thumbnails.csv, ground_truth.json)"
    )
    parser.add_argument("--seed", type=int, default=0, help="the seed evaluate used (--run)")
    args = parser.parse_args()

    if args.run is not None:
        if args.world is None:
            raise SystemExit("--run needs --world DIR (the world the run evaluated)")
        stated, info = finished_run(args.run, args.world, args.seed, args.bootstrap)
        source = f"evaluate run {args.run} (real SAE latents)"
    else:
        stated, info = planned_worlds(args.worlds, args.thumbnails, args.bootstrap)
        source = f"{args.worlds} planned worlds x {args.thumbnails} thumbnails (simulated SAE latents)"
    print(f"source: {source}")
    results = {}
    for truth, calibs in stated.items():
        ece, max_gap, n_pairs, table = pooled(calibs)
        results[truth] = (ece, max_gap, n_pairs)
        print(f"\ntruth: {calibs[0].truth}")
        print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
        print(f"pairs {n_pairs}, ECE {ece:.4f}, max gap over deciles with >= {calibs[0].min_pairs} pairs {max_gap:.4f}")
    ece, max_gap, n_pairs = results["views"]
    print(json.dumps({
        "ratio": round(TARGET / max(max_gap, 1e-9), 4),
        "target": 1.0,
        "truth": "realised views, pairs within held-out channels",
        "max_gap": round(max_gap, 5),
        "max_gap_limit": TARGET,
        "ece": round(ece, 5),
        "n_pairs": n_pairs,
        "expected_truth_max_gap": round(results["expected"][1], 5),
        "expected_truth_ece": round(results["expected"][0], 5),
        "source": source,
        **{k: (round(v, 2) if isinstance(v, float) else v) for k, v in info.items()},
    }))


if __name__ == "__main__":
    main()
