"""`thumbsae compare RUN... --out DIR`: SAE runs side by side, with what each one's evaluation found.

`write_comparison_report` writes, under DIR:

- `sae_comparison.csv`: one row per run, `thumbsae.sae.compare.COLUMNS` (FVU, L0, dead fraction,
  tokens/s, ...) followed by `EVALUATION_COLUMNS` (empty for a run without an evaluation);
- `sae_comparison.png`: FVU against L0, dead fraction and tokens/s by run;
- `evaluation_comparison.png` (when at least one run has an evaluation): mean planted-motif
  purity, held-out Spearman of the engagement model and features tested, by run;
- `index.html`: the dashboard (template `compare.html`), both figures and both tables, with the
  best run of each column marked.

A run's evaluation is an `evaluate.py` output folder (`summary.json`, and `recovery.json` on a
world). It is found two ways: folders given in `eval_dirs`, each matched to the run whose
`sae/` its `summary.json` names (`sae_dir`), and otherwise `RUN/eval/` or `RUN/evaluate/` when
it holds a `summary.json`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from thumbsae.errors import ThumbsaeError
from thumbsae.files import atomic_path, atomic_write_text, read_json_object
from thumbsae.report.html import render_page
from thumbsae.sae.compare import (
    CSV_NAME,
    PNG_NAME,
    comparison_table,
    plot_comparison,
    size_label,
    write_table,
)

HTML_NAME = "index.html"
EVAL_PNG_NAME = "evaluation_comparison.png"
NEXT_TO_RUN = ("eval", "evaluate")
EVALUATION_COLUMNS: tuple[str, ...] = (
    "eval_dir",
    "n_features_tested",
    "n_planted",
    "n_recovered",
    "mean_purity",
    "selection_null_p",
    "spearman_test",
    "spearman_baseline",
)


@dataclass(frozen=True)
class ComparisonFiles:
    """What `write_comparison_report` wrote (`evaluation_png` is None without any evaluation)."""

    csv: Path
    png: Path
    evaluation_png: Path | None
    html: Path


def _number(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


def read_evaluation(eval_dir: str | os.PathLike) -> dict[str, Any]:
    """The comparison numbers of one evaluation folder.

    Returns `EVALUATION_COLUMNS` (NaN where the evaluation has no such number, e.g. purity off a
    world) plus `purity`: planted motif -> purity of its best group, and `sae_dir` as written.
    Raises `ThumbsaeError` when `summary.json` is missing or unreadable.
    """
    folder = Path(eval_dir)
    summary_path = folder / "summary.json"
    if not summary_path.is_file():
        raise ThumbsaeError(f"{summary_path}: missing (an evaluation folder is evaluate.py's output)")
    summary = read_json_object(summary_path)
    predictor = summary.get("predictor") if isinstance(summary.get("predictor"), dict) else {}
    row: dict[str, Any] = {
        "eval_dir": str(folder),
        "sae_dir": summary.get("sae_dir"),
        "n_features_tested": _number(summary.get("n_features_tested")),
        "selection_null_p": _number(summary.get("selection_null_p")),
        "spearman_test": _number(predictor.get("spearman_test")),
        "spearman_baseline": _number(predictor.get("spearman_baseline")),
        "n_planted": math.nan,
        "n_recovered": math.nan,
        "mean_purity": math.nan,
        "purity": {},
    }
    recovery_path = folder / "recovery.json"
    if recovery_path.is_file():
        recovery = read_json_object(recovery_path)
        planted = [m for m in recovery.get("motifs", []) if isinstance(m, dict) and m.get("kind") != "confounded"]
        purity = {str(m.get("motif")): _number(m.get("purity")) for m in planted}
        finite = [p for p in purity.values() if math.isfinite(p)]
        row.update(
            n_planted=_number(recovery.get("n_planted")),
            n_recovered=_number(recovery.get("n_recovered")),
            mean_purity=sum(finite) / len(finite) if finite else math.nan,
            purity=purity,
        )
    return row


def _same_folder(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


def find_evaluations(
    run_dirs: Sequence[str | os.PathLike], eval_dirs: Sequence[str | os.PathLike] = ()
) -> dict[str, dict[str, Any] | None]:
    """Each run's evaluation (`read_evaluation`), keyed by `str(run_dir)`; None where none is found.

    `eval_dirs` are matched to runs by the `sae_dir` their summary names (resolved against the
    current folder, as evaluate.py wrote it); an evaluation folder that matches no run, or a run
    given two evaluations, is an error. Runs not matched that way use `RUN/eval/` or
    `RUN/evaluate/` when it holds a `summary.json`.
    """
    runs = {str(r): Path(r) for r in run_dirs}
    found: dict[str, dict[str, Any] | None] = {key: None for key in runs}
    for eval_dir in eval_dirs:
        evaluation = read_evaluation(eval_dir)
        sae_dir = evaluation.get("sae_dir")
        owner = next(
            (key for key, run in runs.items() if sae_dir and _same_folder(Path(str(sae_dir)), run / "sae")), None
        )
        if owner is None:
            raise ThumbsaeError(
                f"{eval_dir}: its summary.json evaluates sae_dir={sae_dir}, which is none of the runs given"
            )
        if found[owner] is not None:
            raise ThumbsaeError(f"{eval_dir}: run {owner} already has the evaluation {found[owner]['eval_dir']}")
        found[owner] = evaluation
    for key, run in runs.items():
        if found[key] is None:
            for name in NEXT_TO_RUN:
                if (run / name / "summary.json").is_file():
                    found[key] = read_evaluation(run / name)
                    break
    return found


def _best(values: list[float], higher: bool) -> list[int]:
    """Positions of the best finite value (all of them on a tie); none when fewer than two runs
    have the number or all are equal."""
    finite = [v for v in values if math.isfinite(v)]
    if len(finite) < 2 or min(finite) == max(finite):
        return []
    target = max(finite) if higher else min(finite)
    return [i for i, v in enumerate(values) if v == target]


def plot_evaluations(table: pd.DataFrame, png_path: Path) -> None:
    """Three panels by run: mean planted-motif purity, held-out Spearman (engagement model and the
    ridge baseline on CLIP embeddings), features tested. Bare `Figure`, no software tag."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    labels = [size_label(row) for _, row in table.iterrows()]
    positions = list(range(len(table)))
    fig = Figure(figsize=(15, 4.5))
    FigureCanvasAgg(fig)
    ax_purity, ax_rho, ax_tested = fig.subplots(1, 3)
    ax_purity.bar(positions, table["mean_purity"].fillna(0), color="tab:purple")
    ax_purity.set(ylabel="mean purity of the planted motifs' best groups", title="Planted effects found", ylim=(0, 1))
    width = 0.4
    ax_rho.bar([p - width / 2 for p in positions], table["spearman_test"].fillna(0), width, label="SAE features")
    ax_rho.bar([p + width / 2 for p in positions], table["spearman_baseline"].fillna(0), width, label="CLIP ridge")
    ax_rho.legend(fontsize=8)
    ax_rho.set(ylabel="Spearman (held-out videos)", title="Engagement model")
    ax_tested.bar(positions, table["n_features_tested"].fillna(0), color="tab:blue")
    ax_tested.set(ylabel="features tested", title="Features with a group")
    for ax in (ax_purity, ax_rho, ax_tested):
        ax.set_xticks(positions, labels, rotation=30, ha="right", fontsize=8)
    fig.tight_layout()
    with atomic_path(png_path) as tmp:
        fig.savefig(tmp, dpi=110, metadata={"Software": None})


def _rel(target: str | None, out_dir: Path) -> str | None:
    """`target` relative to the page's folder (for a link), or None."""
    if not target:
        return None
    return os.path.relpath(Path(target).resolve(), out_dir.resolve()).replace(os.sep, "/")


def _page(table: pd.DataFrame, evaluations: dict[str, dict | None], out_dir: Path, has_eval_png: bool) -> str:
    motifs = sorted({m for e in evaluations.values() if e for m in e["purity"]})
    runs = []
    for _, row in table.iterrows():
        evaluation = evaluations.get(str(row["run"]))
        panels = None
        if evaluation and (Path(evaluation["eval_dir"]) / "panels" / "index.html").is_file():
            panels = _rel(str(Path(evaluation["eval_dir"]) / "panels" / "index.html"), out_dir)
        runs.append(
            {
                "run": str(row["run"]),
                "label": size_label(row),
                "row": {k: row[k] for k in table.columns},
                "evaluation": evaluation,
                "purity": [evaluation["purity"].get(m, math.nan) if evaluation else math.nan for m in motifs],
                "panels": panels,
            }
        )
    higher = {"explained_variance": True, "tokens_per_s": True, "mean_purity": True, "spearman_test": True,
              "n_recovered": True, "n_features_tested": True}
    lower = {"fvu": False, "dead_fraction": False, "selection_null_p": False}
    best = {key: _best([float(r["row"].get(key, math.nan)) for r in runs], up) for key, up in {**higher, **lower}.items()}
    return render_page(
        "compare.html",
        runs=runs,
        motifs=motifs,
        best=best,
        png=PNG_NAME,
        eval_png=EVAL_PNG_NAME if has_eval_png else None,
        n_evaluated=sum(1 for r in runs if r["evaluation"]),
        looked_for=", ".join(f"RUN/{n}/" for n in NEXT_TO_RUN),
    )


def write_comparison_report(
    run_dirs: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    eval_dirs: Sequence[str | os.PathLike] = (),
) -> ComparisonFiles:
    """Compare SAE runs and their evaluations; write the CSV, the figures and `index.html` in `out_dir`.

    run_dirs: training run folders (each with `sae/config.json` and `metrics.json`).
    eval_dirs: evaluation folders to match to the runs (see `find_evaluations`).
    Returns the paths written. Raises `ThumbsaeError` for a bad run or evaluation folder (nothing
    is written then).
    """
    table = comparison_table(run_dirs)
    evaluations = find_evaluations(list(table["run"]), eval_dirs)
    for column in EVALUATION_COLUMNS:
        table[column] = [
            (evaluations[run] or {}).get(column, "" if column == "eval_dir" else math.nan) for run in table["run"]
        ]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    csv_path = write_table(table, out / CSV_NAME)
    plot_comparison(table, out / PNG_NAME)
    eval_png = None
    if any(evaluations.values()):
        eval_png = out / EVAL_PNG_NAME
        plot_evaluations(table, eval_png)
    elif (out / EVAL_PNG_NAME).exists():
        (out / EVAL_PNG_NAME).unlink()  # an earlier comparison's figure would describe other runs
    html_path = atomic_write_text(out / HTML_NAME, _page(table, evaluations, out, eval_png is not None))
    return ComparisonFiles(csv=csv_path, png=out / PNG_NAME, evaluation_png=eval_png, html=html_path)
