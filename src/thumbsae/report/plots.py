"""The study's plots, each with the CSV of what it draws (for `dvc plots`).

`write_plots` writes, under `out_dir`:

- `group_stats_hist.png` / `.csv`: feature group statistics against random groups' statistics,
  with lines at the n_side-th highest and lowest feature (the high/low cut-offs).
- `heldout_null.png` / `heldout_null_hist.csv` / `heldout_markers.csv`: the null distribution of
  the statistic of n_side random videos, with HHM and LHM (the held-out videos of the high and of
  the low features) marked and their p-values.
- `magnitude.png` / `.csv`: every feature's group statistic, sorted, on a log scale, against the
  dataset median, high and low features coloured.

`write_pair_calibration` writes `pair_calibration.png` / `.csv`: the engagement model's pairwise
probabilities against how often the first of a pair truly wins (a reliability plot).

Figures are drawn on a bare `matplotlib.figure.Figure` with the Agg canvas (no pyplot, no global
backend switch) and saved without a date or software tag, so the same inputs give the same bytes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from thumbsae.files import atomic_write_text, write_atomic

SIDE_COLOURS = {"high": "#d62728", "low": "#1f77b4", "": "#b0b0b0"}
# Fixed salt and no metadata: matplotlib otherwise stamps a random SVG id salt and its version.
RC = {"svg.hashsalt": "thumbsae", "figure.dpi": 100, "savefig.dpi": 100}
PNG_METADATA = {"Software": None}
N_BINS = 50


def write_plots(out_dir: str | Path, feature_groups: pd.DataFrame, nulls: dict, summary: dict) -> dict[str, Path]:
    """Write the three study plots and their data as CSV.

    Inputs:
        out_dir: folder for the files (created).
        feature_groups: one row per tested feature: `feature`, `group_stat`, `side`, and `lift`
            where present.
        nulls: `StudyResult.nulls`: `random_group_stats` `[R]` (statistics of random groups),
            `heldout_null` `[S]` (statistics of n_high random videos), `heldout_null_low` `[S]`
            (of n_low, when it differs), `hhm`, `lhm`, `dataset_median`, `cutoff_high`,
            `cutoff_low` (the n_side-th group statistics), `log_scale` (True when the statistics
            are adjusted log views); any may be missing, its plot then says so.
        summary: the evaluation summary; `statistic`, `p_hhm`, `p_lhm`, `ks_statistic`,
            `ks_pvalue`, `dataset_median` are used where present.
    Returns:
        file name -> path, for every PNG and CSV written.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    nulls = nulls or {}
    summary = summary or {}
    scale = _Scale(
        statistic=str(nulls.get("statistic") or summary.get("statistic") or "median"),
        log_views=bool(nulls.get("log_scale", summary.get("scale") == "adjusted_log_views")),
    )
    dataset_median = _float(nulls.get("dataset_median", summary.get("dataset_median")))
    table = _feature_table(feature_groups)
    written: dict[str, Path] = {}
    with matplotlib.rc_context(RC):
        written.update(_group_stats_hist(out_dir, table, nulls, summary, scale))
        written.update(_heldout_null(out_dir, table, nulls, summary, scale))
        written.update(_magnitude(out_dir, table, dataset_median, scale))
    return written


@dataclass(frozen=True)
class _Scale:
    """What the plotted statistic is: its name, and whether it is in adjusted log views."""

    statistic: str
    log_views: bool

    @property
    def unit(self) -> str:
        return "adjusted log views" if self.log_views else "views"


def _feature_table(feature_groups: pd.DataFrame) -> pd.DataFrame:
    """feature, group_stat, side, lift as plain columns; rows with no group_stat dropped."""
    table = pd.DataFrame(
        {
            "feature": feature_groups["feature"].astype(int).to_numpy(),
            "group_stat": pd.to_numeric(feature_groups["group_stat"], errors="coerce").to_numpy(dtype=float),
            "side": feature_groups["side"].fillna("").astype(str).to_numpy()
            if "side" in feature_groups
            else np.full(len(feature_groups), ""),
            "lift": pd.to_numeric(feature_groups["lift"], errors="coerce").to_numpy(dtype=float)
            if "lift" in feature_groups
            else np.full(len(feature_groups), np.nan),
        }
    )
    return table[np.isfinite(table["group_stat"])].reset_index(drop=True)


def _array(values) -> np.ndarray:
    if values is None:
        return np.zeros(0)
    values_N = np.asarray(values, dtype=float).ravel()
    return values_N[np.isfinite(values_N)]


def _float(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _stat(value: float) -> str:
    """A statistic for a legend: view counts with thousands separators, small values to 3 digits."""
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def _bins(*samples: np.ndarray, allow_log: bool = True) -> tuple[np.ndarray, bool]:
    """Shared bin edges for the samples: log-spaced when allowed and every value is positive."""
    values = np.concatenate([s for s in samples if s.size]) if any(s.size for s in samples) else np.zeros(0)
    if values.size == 0:
        return np.linspace(0.0, 1.0, N_BINS + 1), False
    lo, hi = float(values.min()), float(values.max())
    if allow_log and lo > 0:
        if hi <= lo:
            lo, hi = lo / 1.1, hi * 1.1
        return np.geomspace(lo, hi, N_BINS + 1), True
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    return np.linspace(lo, hi, N_BINS + 1), False


def _new_figure(size=(8.0, 4.5)) -> Figure:
    fig = Figure(figsize=size)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: Path) -> Path:
    fig.tight_layout()
    return write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", metadata=PNG_METADATA))


def _save_csv(frame: pd.DataFrame, path: Path) -> Path:
    return atomic_write_text(path, frame.to_csv(index=False, float_format="%.10g", lineterminator="\n"))


def _group_stats_hist(out_dir: Path, table: pd.DataFrame, nulls: dict, summary: dict, scale: _Scale) -> dict[str, Path]:
    """Histogram of feature group statistics vs random groups, cut-off lines at the n_side-th."""
    stats_F = table["group_stat"].to_numpy()
    random_R = _array(nulls.get("random_group_stats"))
    edges, log_axis = _bins(stats_F, random_R, allow_log=not scale.log_views)
    features_counts, _ = np.histogram(stats_F, bins=edges)
    random_counts, _ = np.histogram(random_R, bins=edges)
    n_high, n_low = int((table["side"] == "high").sum()), int((table["side"] == "low").sum())
    ordered = np.sort(stats_F)
    cut_high = _float(nulls.get("cutoff_high", ordered[-n_high] if 0 < n_high <= ordered.size else math.nan))
    cut_low = _float(nulls.get("cutoff_low", ordered[n_low - 1] if 0 < n_low <= ordered.size else math.nan))

    fig = _new_figure()
    ax = fig.add_subplot()
    ax.hist(
        edges[:-1],
        bins=edges,
        weights=random_counts,
        alpha=0.55,
        color="#7f7f7f",
        label=f"random groups (n={random_R.size})",
    )
    ax.hist(
        edges[:-1],
        bins=edges,
        weights=features_counts,
        alpha=0.65,
        color="#2ca02c",
        label=f"feature groups (n={stats_F.size})",
    )
    if math.isfinite(cut_high):
        ax.axvline(cut_high, color=SIDE_COLOURS["high"], linestyle="--", label=f"#{n_high} highest: {_stat(cut_high)}")
    if math.isfinite(cut_low):
        ax.axvline(cut_low, color=SIDE_COLOURS["low"], linestyle="--", label=f"#{n_low} lowest: {_stat(cut_low)}")
    if log_axis:
        ax.set_xscale("log")
    ks = summary.get("ks_statistic")
    title = f"Group {scale.statistic} ({scale.unit}): features vs random groups"
    if ks is not None and np.isfinite(_float(ks)):
        title += f" (KS D={_float(ks):.3f}, p={_float(summary.get('ks_pvalue')):.3g})"
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(f"group {scale.statistic} ({scale.unit})")
    ax.set_ylabel("groups")
    if stats_F.size == 0 and random_R.size == 0:
        ax.text(0.5, 0.5, "no qualifying features", ha="center", va="center", transform=ax.transAxes)
    else:
        ax.legend(fontsize=8)
    data = pd.DataFrame(
        {"bin_low": edges[:-1], "bin_high": edges[1:], "features": features_counts, "random_groups": random_counts}
    )
    return {
        "group_stats_hist.png": _save(fig, out_dir / "group_stats_hist.png"),
        "group_stats_hist.csv": _save_csv(data, out_dir / "group_stats_hist.csv"),
    }


def _heldout_null(out_dir: Path, table: pd.DataFrame, nulls: dict, summary: dict, scale: _Scale) -> dict[str, Path]:
    """The null of random held-out statistics with HHM and LHM marked."""
    null_S = _array(nulls.get("heldout_null"))
    low_null = nulls.get("heldout_null_low")
    # The low side has its own null only when it has a different number of features.
    null_low_S = _array(low_null) if low_null is not None and low_null is not nulls.get("heldout_null") else np.zeros(0)
    hhm, lhm = _float(nulls.get("hhm", summary.get("hhm"))), _float(nulls.get("lhm", summary.get("lhm")))
    p_hhm, p_lhm = _float(summary.get("p_hhm")), _float(summary.get("p_lhm"))
    markers = np.asarray([v for v in (hhm, lhm) if math.isfinite(v)], dtype=float)
    edges, log_axis = _bins(null_S, null_low_S, markers, allow_log=not scale.log_views)
    counts, _ = np.histogram(null_S, bins=edges)
    counts_low, _ = np.histogram(null_low_S, bins=edges)
    n_high, n_low = int((table["side"] == "high").sum()), int((table["side"] == "low").sum())

    fig = _new_figure()
    ax = fig.add_subplot()
    ax.hist(
        edges[:-1],
        bins=edges,
        weights=counts,
        color="#7f7f7f",
        alpha=0.7,
        label=f"{scale.statistic} of {n_high} random videos (n={null_S.size:,})",
    )
    if null_low_S.size:
        ax.hist(
            edges[:-1],
            bins=edges,
            weights=counts_low,
            histtype="step",
            color=SIDE_COLOURS["low"],
            label=f"{scale.statistic} of {n_low} random videos (n={null_low_S.size:,})",
        )
    if math.isfinite(hhm):
        ax.axvline(hhm, color=SIDE_COLOURS["high"], linewidth=2, label=f"HHM {_stat(hhm)} (p={p_hhm:.3g})")
    if math.isfinite(lhm):
        ax.axvline(lhm, color=SIDE_COLOURS["low"], linewidth=2, label=f"LHM {_stat(lhm)} (p={p_lhm:.3g})")
    if log_axis:
        ax.set_xscale("log")
    ax.set_title(
        f"Held-out test: {scale.statistic} of the held-out videos vs random videos ({scale.unit})", fontsize=10
    )
    ax.set_xlabel(f"{scale.statistic} ({scale.unit})")
    ax.set_ylabel("draws")
    if null_S.size == 0 and not markers.size:
        ax.text(0.5, 0.5, "no held-out null (no side features)", ha="center", va="center", transform=ax.transAxes)
    else:
        ax.legend(fontsize=8)
    hist = pd.DataFrame({"bin_low": edges[:-1], "bin_high": edges[1:], "count": counts, "count_low": counts_low})
    marker_rows = pd.DataFrame({"marker": ["hhm", "lhm"], "value": [hhm, lhm], "p_value": [p_hhm, p_lhm]})
    return {
        "heldout_null.png": _save(fig, out_dir / "heldout_null.png"),
        "heldout_null_hist.csv": _save_csv(hist, out_dir / "heldout_null_hist.csv"),
        "heldout_markers.csv": _save_csv(marker_rows, out_dir / "heldout_markers.csv"),
    }


def _magnitude(out_dir: Path, table: pd.DataFrame, dataset_median: float, scale: _Scale) -> dict[str, Path]:
    """Every group statistic sorted high to low (log scale), sides coloured, dataset median line."""
    ordered = table.sort_values(["group_stat", "feature"], ascending=[False, True], kind="mergesort")
    ordered = ordered.reset_index(drop=True)
    ordered.insert(0, "rank", np.arange(1, len(ordered) + 1))
    fig = _new_figure()
    ax = fig.add_subplot()
    for side, label in (("", "other features"), ("high", "high"), ("low", "low")):
        part = ordered[ordered["side"] == side]
        if len(part):
            ax.scatter(part["rank"], part["group_stat"], s=8, color=SIDE_COLOURS[side], label=label, linewidths=0)
    if math.isfinite(dataset_median):
        ax.axhline(dataset_median, color="black", linestyle=":", label=f"dataset median {_stat(dataset_median)}")
    # Adjusted log views are already a log scale (and may be negative).
    if not scale.log_views and len(ordered) and (ordered["group_stat"] > 0).all():
        ax.set_yscale("log")
    ax.set_title(
        f"Group {scale.statistic} of every tested feature against the dataset median ({scale.unit})", fontsize=10
    )
    ax.set_xlabel("feature rank by group statistic")
    ax.set_ylabel(f"group {scale.statistic} ({scale.unit})")
    if len(ordered):
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no qualifying features", ha="center", va="center", transform=ax.transAxes)
    return {
        "magnitude.png": _save(fig, out_dir / "magnitude.png"),
        "magnitude.csv": _save_csv(
            ordered[["rank", "feature", "group_stat", "lift", "side"]], out_dir / "magnitude.csv"
        ),
    }


def write_pair_calibration(
    out_dir: str | Path, table: pd.DataFrame, *, ece: float, max_gap: float, truth: str = ""
) -> dict[str, Path]:
    """Reliability plot of the engagement model's pairwise probabilities, and its CSV.

    table: `PairCalibration.table` (thumbsae.analysis.engagement.pairs): per bin of stated p,
    `bin_lo`, `bin_hi`, `n_pairs`, `mean_p`, `win_rate`, `counted` (enough pairs to judge).
    ece, max_gap, truth: shown in the title. Writes `pair_calibration.png` (win rate against
    stated p, the diagonal and its +-0.05 band, pairs per bin as bars) and `pair_calibration.csv`.
    Returns file name -> path.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with matplotlib.rc_context(RC):
        fig = _new_figure((6.5, 6.0))
        ax, bars = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
        ax.fill_between([0, 1], [-0.05, 0.95], [0.05, 1.05], color="#2ca02c", alpha=0.12, label="within 0.05")
        ax.plot([0, 1], [0, 1], color="#555555", linewidth=1, label="perfect calibration")
        filled = table[table["n_pairs"] > 0]
        counted = filled[filled["counted"].astype(bool)]
        thin = filled[~filled["counted"].astype(bool)]
        ax.plot(counted["mean_p"], counted["win_rate"], "o-", color="#1f77b4", label="bins with enough pairs")
        if len(thin):
            ax.plot(thin["mean_p"], thin["win_rate"], "o", mfc="none", color="#1f77b4", label="too few pairs")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_ylabel("share of pairs the first truly wins")
        title = f"Pairwise probabilities: ECE {_float(ece):.3f}, max gap {_float(max_gap):.3f}"
        ax.set_title(title + (f"\ntruth: {truth}" if truth else ""), fontsize=9)
        ax.legend(fontsize=8, loc="upper left")
        width = (table["bin_hi"] - table["bin_lo"]).to_numpy()
        bars.bar(table["bin_lo"], table["n_pairs"], width=width, align="edge", color="#7f7f7f", edgecolor="white")
        bars.set_yscale("symlog")
        bars.set_xlabel("stated probability that the model's pick beats the other")
        bars.set_ylabel("pairs")
        return {
            "pair_calibration.png": _save(fig, out_dir / "pair_calibration.png"),
            "pair_calibration.csv": _save_csv(table, out_dir / "pair_calibration.csv"),
        }
