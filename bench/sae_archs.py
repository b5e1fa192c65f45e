"""Which SAE finds the effects: TopK, BatchTopK, JumpReLU and Matryoshka BatchTopK at the same L0
and two sizes, each trained and evaluated on a thumbnail world.

    nice -n 10 .venv/bin/python bench/sae_archs.py [--sizes 8,16] [--k 16] [--steps 1500]
        [--world data/world] [--out runs/sae_archs] [--smoke]

For every (architecture, size) it runs `train.py` (sae=<arch>, sae.expansion_factor=<size>, L0
matched at k: `sae.k=k` for the TopK family, `sae.target_l0=k sae.init_l0=k` for JumpReLU) and
`evaluate.py` on the world's thumbnails, then reads `metrics.json` (validation FVU, L0, dead
fraction), `recovery.json` (planted motifs recovered, significant features) and `summary.json`
(held-out tests, predictor). Without `--world`, the embedded world (`data/world`, generated on
first use, with its trained tiny CLIP) is used; `--smoke` makes a 300-thumbnail world with the
random tiny CLIP and short runs, to check the script in minutes.

Prints one row per run; last line: JSON with `ratio` (mean fraction of planted motifs the other
architectures recover / TopK's, same sizes), `target` (1.0: they find at least what TopK finds)
and the rows.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ARCHS = ("topk", "batchtopk", "jumprelu", "matryoshka")
TARGET = 1.0
# Short, cheap evaluation settings for --smoke (as tests/test_pipeline.py uses).
SMOKE_EVAL = ["eval.group_size=20", "eval.n_side=5", "eval.n_null=20000", "eval.n_permutations=30", "eval.n_bootstrap=200"]


def l0_overrides(arch: str, k: int) -> list[str]:
    """Hydra overrides that put `arch` at L0 = k."""
    if arch == "jumprelu":
        return [f"sae.target_l0={k}", f"sae.init_l0={k}"]
    return [f"sae.k={k}"]


def run(cmd: list[str], log: Path) -> None:
    """Run a pipeline command, its output into `log`; exit with its tail when it fails."""
    with open(log, "w") as handle:
        proc = subprocess.run(cmd, cwd=REPO, stdout=handle, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        print(f"{' '.join(cmd[:2])} failed ({log}):\n{log.read_text()[-3000:]}", file=sys.stderr)
        sys.exit(proc.returncode)


def read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", default=",".join(ARCHS))
    parser.add_argument("--sizes", default="8,16", help="expansion factors")
    parser.add_argument("--k", type=int, default=16, help="the matched L0")
    parser.add_argument("--steps", type=int, default=None, help="trainer.max_steps (default: the trainer config's)")
    parser.add_argument("--world", default=None, help="a world folder (thumbnails.csv, reference.csv, ground_truth.json)")
    parser.add_argument("--out", default="runs/sae_archs")
    parser.add_argument("--smoke", action="store_true", help="a small world, the random tiny CLIP, short runs")
    args = parser.parse_args()
    out = (REPO / args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    python = sys.executable
    common: list[str] = [f"activations.cache_dir={out / 'cache'}", "logger=csv"]
    train_extra: list[str] = []
    evaluate_extra: list[str] = []
    world = Path(args.world).resolve() if args.world else None
    if args.smoke:
        world = out / "world"
        if not (world / "ground_truth.json").exists():
            run([python, "-m", "thumbsae.cli", "world", "--out", str(world), "--thumbnails", "300", "--channels", "6",
                 "--reference-per-class", "6", "--size", "64", "64"], out / "world.log")
        train_extra = ["model=tiny_random", "datamodule.batch_size=256", "trainer.val_check_interval=50"]
        evaluate_extra = SMOKE_EVAL
        args.steps = args.steps or 100
    data = [f"data.train={world / 'reference.csv'}"] if world else []
    steps = [f"trainer.max_steps={args.steps}"] if args.steps else []

    rows = []
    for size in [int(s) for s in args.sizes.split(",")]:
        for arch in args.archs.split(","):
            name = f"{arch}-x{size}-l0{args.k}"
            run_dir = out / name
            started = time.perf_counter()
            if not (run_dir / "train" / "sae" / "config.json").exists():
                run([python, "train.py", f"sae={arch}", f"sae.expansion_factor={size}", *l0_overrides(arch, args.k),
                     *data, *steps, *common, *train_extra, f"hydra.run.dir={run_dir / 'train'}"], run_dir.with_suffix(".train.log"))
            thumbs = [f"data.thumbnails={world / 'thumbnails.csv'}", f"data.reference={world / 'reference.csv'}"] if world else []
            if not (run_dir / "eval" / "summary.json").exists():
                run([python, "evaluate.py", f"sae_dir={run_dir / 'train' / 'sae'}", *thumbs, *common, *evaluate_extra,
                     f"hydra.run.dir={run_dir / 'eval'}"], run_dir.with_suffix(".eval.log"))
            metrics = read_json(run_dir / "train" / "metrics.json")
            recovery = read_json(run_dir / "eval" / "recovery.json")
            summary = read_json(run_dir / "eval" / "summary.json")
            planted = recovery.get("n_planted") or 0
            row = {
                "arch": arch,
                "expansion_factor": size,
                "fvu": metrics.get("fvu"),
                "l0": metrics.get("l0"),
                "dead_fraction": metrics.get("dead_fraction"),
                "n_recovered": recovery.get("n_recovered"),
                "n_planted": planted,
                "recovered_fraction": (recovery.get("n_recovered", 0) / planted) if planted else None,
                "n_significant": recovery.get("n_significant"),
                "p_hhm": summary.get("p_hhm"),
                "p_lhm": summary.get("p_lhm"),
                "spearman_test": (summary.get("predictor") or {}).get("spearman_test"),
                "seconds": round(time.perf_counter() - started, 1),
            }
            rows.append(row)
            print(
                f"{arch:>11} x{size:<3} FVU {row['fvu']:.3f}  L0 {row['l0']:.1f}  dead {row['dead_fraction']:.3f}  "
                f"recovered {row['n_recovered']}/{planted}  significant {row['n_significant']}  "
                f"spearman {row['spearman_test']}",
                file=sys.stderr,
            )

    def mean_recovered(archs: set[str]) -> float | None:
        values = [r["recovered_fraction"] for r in rows if r["arch"] in archs and r["recovered_fraction"] is not None]
        return sum(values) / len(values) if values else None

    anchor, others = mean_recovered({"topk"}), mean_recovered(set(args.archs.split(",")) - {"topk"})
    ratio = others / anchor if anchor and others is not None else None
    print(json.dumps({"ratio": ratio, "target": TARGET, "anchor": "topk", "k": args.k, "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
