"""`thumbsae compare RUN...`: one table and one figure comparing SAE runs (typically sizes).

Each run folder holds `sae/config.json` (from `save_sae`) and `metrics.json` (the final
validation metrics written by training: `fvu`, `explained_variance`, `l0`, `dead_fraction`,
`dense_fraction`, `max_decoder_cos`, and optionally `name`, `n_latents`, `expansion_factor`,
`k`); throughput `tokens_per_s` / `train_seconds` come from `metrics.json` or, when training
keeps timings apart, `timing.json`. `compare_runs` writes `OUT/sae_comparison.csv` and
`OUT/sae_comparison.png` (FVU vs L0, dead fraction and tokens/s by size);
`thumbsae.report.compare_report.write_comparison_report` adds each run's evaluation and the HTML
dashboard around them.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from thumbsae.errors import ThumbsaeError
from thumbsae.files import atomic_path, atomic_write_text, read_json_object
from thumbsae.sae.config import sae_config_from_dict
from thumbsae.sae.io import read_sae_config

CSV_NAME = "sae_comparison.csv"
PNG_NAME = "sae_comparison.png"
METRICS_FILE = "metrics.json"
TIMING_FILE = "timing.json"
COLUMNS: tuple[str, ...] = (
    "run",
    "name",
    "arch",
    "d_in",
    "expansion_factor",
    "n_latents",
    "k",
    "fvu",
    "explained_variance",
    "l0",
    "dead_fraction",
    "dense_fraction",
    "max_decoder_cos",
    "tokens_per_s",
    "train_seconds",
)


def _read_json(path: Path, *, required: bool) -> dict[str, Any]:
    if not path.is_file():
        if required:
            raise ThumbsaeError(f"{path}: missing (each run folder needs sae/config.json and {METRICS_FILE})")
        return {}
    return read_json_object(path)


def run_summary(run_dir: str | os.PathLike) -> dict[str, Any]:
    """One comparison row for a run folder (see the module docstring for what it reads)."""
    run = Path(run_dir)
    if not run.is_dir():
        raise ThumbsaeError(f"{run}: no such run folder")
    config = read_sae_config(run)
    cfg = sae_config_from_dict(config["sae"])
    metrics = _read_json(run / METRICS_FILE, required=True)
    timing = _read_json(run / TIMING_FILE, required=False)
    missing = [key for key in ("fvu", "l0") if key not in metrics]
    if missing:
        raise ThumbsaeError(f"{run / METRICS_FILE}: missing {', '.join(missing)}")
    row: dict[str, Any] = {
        "run": str(run),
        "name": metrics.get("name", run.name),
        "arch": cfg.arch,
        "d_in": cfg.d_in,
        "expansion_factor": cfg.latents / cfg.d_in,
        "n_latents": cfg.latents,
        "k": cfg.to_dict().get("k"),  # architectures without a fixed k have none
    }
    for key in COLUMNS[len(row) :]:
        value = metrics.get(key, timing.get(key))
        row[key] = float(value) if isinstance(value, (int, float)) else math.nan
    return row


def size_label(row: pd.Series) -> str:
    """A run's short label: `topk x16 k32`, or `F=N` for a non-integer expansion."""
    expansion = row["expansion_factor"]
    size = f"x{expansion:g}" if float(expansion).is_integer() else f"F={row['n_latents']}"
    return f"{row['arch']} {size}" + (f" k{int(row['k'])}" if pd.notna(row["k"]) else "")


def plot_comparison(table: pd.DataFrame, png_path: Path) -> None:
    """Three panels: FVU against L0 (one point per run), dead fraction and tokens/s per run.

    Drawn on a bare matplotlib `Figure` (no pyplot state) and saved without a software tag.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    labels = [size_label(row) for _, row in table.iterrows()]
    fig = Figure(figsize=(15, 4.5))
    FigureCanvasAgg(fig)
    ax_fvu, ax_dead, ax_speed = fig.subplots(1, 3)
    for arch, group in table.groupby("arch", sort=True):
        ax_fvu.plot(group["l0"], group["fvu"], "o", label=arch)
    ax_fvu.legend(fontsize=8)
    for label, l0, fvu in zip(labels, table["l0"], table["fvu"]):
        ax_fvu.annotate(label, (l0, fvu), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax_fvu.set(xlabel="L0 (active latents per row)", ylabel="FVU (validation)", title="Reconstruction vs sparsity")
    positions = list(range(len(table)))
    ax_dead.bar(positions, table["dead_fraction"].fillna(0), color="tab:red")
    ax_dead.set(ylabel="dead fraction", title="Dead latents", ylim=(0, 1))
    ax_speed.bar(positions, table["tokens_per_s"].fillna(0), color="tab:green")
    ax_speed.set(ylabel="tokens / s (training)", title="Throughput")
    for ax in (ax_dead, ax_speed):
        ax.set_xticks(positions, labels, rotation=30, ha="right", fontsize=8)
    fig.tight_layout()
    with atomic_path(png_path) as tmp:
        fig.savefig(tmp, dpi=110, metadata={"Software": None})


def comparison_table(run_dirs: Sequence[str | os.PathLike]) -> pd.DataFrame:
    """One row per run (`run_summary`), columns `COLUMNS`, sorted by number of latents, arch, run."""
    if not run_dirs:
        raise ThumbsaeError("compare: give at least one run folder")
    table = pd.DataFrame([run_summary(r) for r in run_dirs], columns=list(COLUMNS))
    return table.sort_values(["n_latents", "arch", "run"], kind="stable").reset_index(drop=True)


def write_table(table: pd.DataFrame, csv_path: Path) -> Path:
    """Write a comparison table as CSV (6 significant digits, `\n` line ends); returns the path."""
    return atomic_write_text(csv_path, table.to_csv(index=False, float_format="%.6g", lineterminator="\n"))


def compare_runs(run_dirs: Sequence[str | os.PathLike], out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """Compare SAE runs: writes `out_dir/sae_comparison.csv` (one row per run, sorted by number of
    latents, columns `COLUMNS`) and `out_dir/sae_comparison.png`; returns both paths."""
    table = comparison_table(run_dirs)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    csv_path, png_path = out / CSV_NAME, out / PNG_NAME
    write_table(table, csv_path)
    plot_comparison(table, png_path)
    return csv_path, png_path
