"""`thumbsae compare`'s dashboard: runs matched to their evaluations, CSV, figures, index.html in Chromium."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
from chromium import load_page, needs_chromium

from thumbsae.errors import ThumbsaeError
from thumbsae.report.compare_report import (
    EVALUATION_COLUMNS,
    find_evaluations,
    write_comparison_report,
)
from thumbsae.sae import SparseAutoencoder, TopKConfig, save_sae
from thumbsae.sae.compare import COLUMNS

META = {
    "clip": {"name": "thumbsae-tiny-vit", "pretrained": None},
    "hook": {"layer": -2, "tokens": "all", "fit": "pad"},
    "normalisation": {"input_scale": 1.0, "method": "none"},
    "training": {},
}
HOSTILE = '<img src=x onerror="alert(1)">'


def _run(root: Path, name: str, expansion: int, fvu: float, dead: float) -> Path:
    run = root / name
    save_sae(SparseAutoencoder(TopKConfig(d_in=8, expansion_factor=expansion, k=4)), run / "sae", META)
    metrics = {"name": name, "fvu": fvu, "explained_variance": 1 - fvu, "l0": 4.0, "dead_fraction": dead,
               "dense_fraction": 0.01}
    (run / "metrics.json").write_text(json.dumps(metrics))
    (run / "timing.json").write_text(json.dumps({"tokens_per_s": 1000.0 * expansion, "train_seconds": 2.0}))
    return run


def _evaluation(folder: Path, sae_dir: Path, *, tested: int, purity: dict[str, float], rho: float) -> Path:
    folder.mkdir(parents=True)
    summary = {"sae_dir": str(sae_dir), "n_features_tested": tested, "selection_null_p": 0.005,
               "predictor": {"spearman_test": rho, "spearman_baseline": 0.5}}
    (folder / "summary.json").write_text(json.dumps(summary))
    motifs = [{"motif": m, "kind": "positive", "purity": p, "recovered": p > 0.8} for m, p in purity.items()]
    motifs.append({"motif": "red_arrow", "kind": "confounded", "purity": 0.1, "recovered": False})
    recovery = {"n_planted": len(purity), "n_recovered": sum(p > 0.8 for p in purity.values()), "motifs": motifs}
    (folder / "recovery.json").write_text(json.dumps(recovery))
    (folder / "panels").mkdir()
    (folder / "panels" / "index.html").write_text("<!DOCTYPE html><title>panels</title>")
    return folder


@pytest.fixture
def runs(tmp_path):
    """Three sizes: x8 evaluated next to the run (RUN/eval), x16 by an --eval folder, x32 not at all."""
    x8 = _run(tmp_path / "train", "x8", 8, 0.30, 0.1)
    x16 = _run(tmp_path / "train", "x16", 16, 0.20, 0.3)
    x32 = _run(tmp_path / "train", HOSTILE, 32, 0.25, 0.5)
    _evaluation(x8 / "eval", x8 / "sae", tested=40, purity={"food": 0.6, "face": 0.9}, rho=0.4)
    elsewhere = _evaluation(tmp_path / "evaluate" / "x16", x16 / "sae", tested=55, purity={"food": 0.9, "face": 1.0},
                            rho=0.55)
    return [x32, x8, x16], [elsewhere]


def test_evaluations_are_matched_by_sae_dir_or_found_next_to_the_run(runs):
    run_dirs, eval_dirs = runs
    found = find_evaluations(run_dirs, eval_dirs)
    x32, x8, x16 = (str(r) for r in run_dirs)
    assert found[x32] is None
    assert found[x8]["eval_dir"] == str(run_dirs[1] / "eval") and found[x8]["mean_purity"] == pytest.approx(0.75)
    assert found[x16]["eval_dir"] == str(eval_dirs[0]) and found[x16]["purity"] == {"food": 0.9, "face": 1.0}
    assert found[x16]["n_recovered"] == 2 and found[x16]["spearman_test"] == 0.55


def test_an_evaluation_of_another_sae_is_refused(runs, tmp_path):
    run_dirs, _ = runs
    stray = _evaluation(tmp_path / "stray", tmp_path / "other" / "sae", tested=1, purity={}, rho=0.0)
    with pytest.raises(ThumbsaeError, match=r"stray: its summary.json evaluates sae_dir=.*none of the runs"):
        write_comparison_report(run_dirs, tmp_path / "out", [stray])
    assert not (tmp_path / "out").exists()


def test_csv_and_figures_hold_every_run_and_its_evaluation(runs, tmp_path):
    run_dirs, eval_dirs = runs
    files = write_comparison_report(run_dirs, tmp_path / "out", eval_dirs)
    table = pd.read_csv(files.csv, keep_default_na=False, na_values=[""])
    assert list(table.columns) == [*COLUMNS, *EVALUATION_COLUMNS]
    assert table["n_latents"].tolist() == [64, 128, 256]  # sorted by size
    assert table["n_features_tested"].tolist()[:2] == [40, 55] and math.isnan(table["n_features_tested"][2])
    assert table["mean_purity"].tolist()[:2] == pytest.approx([0.75, 0.95])
    for png in (files.png, files.evaluation_png):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    again = write_comparison_report(run_dirs, tmp_path / "again", eval_dirs)
    for a, b in [(files.evaluation_png, again.evaluation_png), (files.html, again.html), (files.csv, again.csv)]:
        assert a.read_bytes() == b.read_bytes()  # same inputs, same bytes


def test_without_evaluations_the_page_says_where_it_looked(tmp_path):
    run = _run(tmp_path, "x8", 8, 0.3, 0.1)
    files = write_comparison_report([run], tmp_path / "out")
    page = files.html.read_text()
    assert files.evaluation_png is None and not (tmp_path / "out" / "evaluation_comparison.png").exists()
    assert 'id="eval-table"' not in page and "RUN/eval/" in page and "--eval" in page


DASHBOARD_FACTS = """({
  saeRows: [...document.querySelectorAll('#sae-table tbody tr')].map(r => r.dataset.run),
  evalRows: [...document.querySelectorAll('#eval-table tbody tr')].map(r => r.innerText),
  best: [...document.querySelectorAll('td.best')].map(td => td.innerText),
  broken: [...document.images].filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.getAttribute('src')),
  images: document.images.length,
  scripts: document.scripts.length,
  css: [...document.querySelectorAll('style')].map(s => s.textContent.length),
  external: [...document.querySelectorAll('[src],[href]')].map(e => e.getAttribute('src') || e.getAttribute('href')).filter(u => /^[a-z]+:/i.test(u)),
  text: document.body.innerText,
})"""


@needs_chromium
def test_dashboard_loads_in_chromium_with_both_figures_and_tables(runs, tmp_path):
    run_dirs, eval_dirs = runs
    files = write_comparison_report(run_dirs, tmp_path / "out", eval_dirs)
    facts, errors = load_page(files.html, tmp_path / "profile", DASHBOARD_FACTS)
    assert errors == []
    assert facts["saeRows"] == [str(run_dirs[1]), str(run_dirs[2]), str(run_dirs[0])]  # x8, x16, x32
    assert facts["images"] == 2 and facts["broken"] == []
    assert facts["scripts"] == 0 and facts["external"] == [] and facts["css"] and facts["css"][0] > 500
    assert "no evaluation found" in facts["evalRows"][2]
    assert "0.95" in facts["best"] and "0.2000" in facts["best"]  # best purity (x16), lowest FVU (x16)
    assert "0.005" not in facts["best"]  # a tie (both selection null p 0.005) marks no run
    assert HOSTILE in facts["text"]  # a hostile run folder name is text, not markup


def test_all_pages_share_the_one_stylesheet(runs, tmp_path):
    from thumbsae.report.html import environment

    css = environment().loader.get_source(environment(), "thumbsae.css")[0].strip()
    run_dirs, eval_dirs = runs
    compare_page = write_comparison_report(run_dirs, tmp_path / "out", eval_dirs).html.read_text()

    from test_rank_report import fake_ranking

    from thumbsae.report.panels import write_panels
    from thumbsae.report.rank_report import write_rank_report

    rank_page = write_rank_report(tmp_path / "rank", fake_ranking(tmp_path / "rank"), source_name="v.mp4").read_text()
    groups = pd.DataFrame({"feature": [0], "side": [""], "members": ["a"]})
    thumbs = pd.DataFrame({"video_id": ["a"], "image": ["a.png"]})
    panels_page = write_panels(tmp_path / "panels", groups, thumbs, None, None, None).read_text()
    for page in (compare_page, rank_page, panels_page):
        assert page.count("<style>") == 1 and css in page


def test_a_training_run_logs_its_comparison_row_to_wandb(runs, tmp_path):
    import wandb

    from thumbsae.report.wandb_log import log_comparison_row
    from thumbsae.sae.compare import run_summary

    row = run_summary(runs[0][1])
    assert not log_comparison_row(None, row)
    run = wandb.init(mode="offline", dir=tmp_path, project="thumbsae-test", group="embedded-topk",
                     reinit="finish_previous")
    try:
        assert log_comparison_row(run, row)
        assert run.summary["compare/fvu"] == 0.30 and run.summary["compare/n_latents"] == 64
        assert run.summary["compare/name"] == "x8"
    finally:
        run.finish()
    (run_dir,) = (tmp_path / "wandb").glob("offline-run-*")
    (table,) = (run_dir / "files" / "media" / "table").rglob("*.table.json")
    data = json.loads(table.read_text())
    assert data["columns"] == list(row) and len(data["data"]) == 1
