"""Panels, index.html, plots and the W&B log on tiny generated images (no model, no world)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from markupsafe import escape
from PIL import Image

from thumbsae.errors import ThumbsaeError
from thumbsae.report.panels import write_panels
from thumbsae.report.plots import write_plots
from thumbsae.report.wandb_log import feature_table_frame, log_evaluation, summary_scalars

EVIL = '<script>alert("x")</script>'
N_THUMBS, N_REF, N_FEATURES = 30, 12, 8


def _solid(path: Path, rgb: tuple[int, int, int], size=(40, 30)) -> str:
    Image.new("RGB", size, rgb).save(path)
    return str(path)


@pytest.fixture
def inputs(tmp_path):
    """30 thumbnails, 12 reference images, 8 features: 2 high, 2 low, 4 untested-side."""
    rng = np.random.default_rng(0)
    img_dir = tmp_path / "img"
    img_dir.mkdir()
    thumbs = pd.DataFrame(
        {
            "video_id": [f"v{i:02d}" for i in range(N_THUMBS)],
            "image": [_solid(img_dir / f"t{i}.png", (8 * i, 255 - 8 * i, 100)) for i in range(N_THUMBS)],
            "views": rng.integers(10, 100_000, N_THUMBS),
            "title": [EVIL if i == 3 else f"video {i}" for i in range(N_THUMBS)],
        }
    )
    reference = pd.DataFrame(
        {
            "video_id": [f"r{i:02d}" for i in range(N_REF)],
            "image": [_solid(img_dir / f"r{i}.png", (20 * i, 0, 200), size=(32, 32)) for i in range(N_REF)],
            "label": [["dog", "cat", "car"][i % 3] for i in range(N_REF)],
        }
    )
    dense = np.zeros((N_REF, N_FEATURES))
    dense[[2, 5, 7], 1] = [0.5, 2.0, 1.0]  # feature 1's top reference rows: 5, 7, 2
    dense[:, 4] = np.linspace(0.1, 1.2, N_REF)
    groups = pd.DataFrame(
        {
            "feature": list(range(N_FEATURES)),
            "n_active": [20] * N_FEATURES,
            "group_size": [5] * N_FEATURES,
            "group_stat": [5000.0, 90000.0, 80000.0, 300.0, 200.0, 7000.0, 6000.0, 5500.0],
            "lift": [1.0, 18.0, 16.0, 0.06, 0.04, 1.4, 1.2, 1.1],
            "lift_ci_low": [0.8, 9.0, 8.0, 0.02, 0.01, 1.0, 0.9, 0.8],
            "lift_ci_high": [1.2, 30.0, 25.0, 0.1, 0.09, 1.8, 1.6, 1.5],
            "heldout_video_id": [f"v{(f * 3) % N_THUMBS:02d}" for f in range(N_FEATURES)],
            "heldout_views": [1000] * N_FEATURES,
            "side": ["", "high", "high", "low", "low", "", "", np.nan],
            "p_value": [0.5, 0.001, 0.002, 0.001, 0.003, 0.4, 0.6, 0.7],
            "q_value": [0.6, 0.004, 0.008, 0.004, 0.01, 0.5, 0.7, 0.7],
            "members": [";".join(f"v{(f * 3 + j) % N_THUMBS:02d}" for j in range(13)) for f in range(N_FEATURES)],
        }
    )
    names = {
        1: {"name": "food, dish", "source": "text"},
        2: {"name": EVIL, "source": "text"},
        3: {"name": "dog", "source": "reference_label", "share": 0.5},
    }
    return groups, thumbs, reference, sp.csr_matrix(dense), names


def _write(out, inputs, **kw):
    groups, thumbs, reference, latents, names = inputs
    return write_panels(out, groups, thumbs, reference, latents, names, thumb_size=(32, 24), **kw)


def test_one_panel_per_side_feature_and_escaped_index(tmp_path, inputs):
    index = _write(tmp_path / "panels", inputs)
    pngs = sorted(p.name for p in index.parent.glob("*.png"))
    assert pngs == [
        "high_001_feature_1.png",
        "high_002_feature_2.png",
        "low_001_feature_4.png",
        "low_002_feature_3.png",
    ]
    assert sorted(p.name for p in (index.parent / "overview").glob("*.png")) == ["high.png", "low.png"]
    with Image.open(index.parent / pngs[0]) as panel:
        assert panel.width >= 11 * 32 and panel.height > 2 * 24
    page = index.read_text(encoding="utf-8")
    for feature, png in [(1, pngs[0]), (2, pngs[1]), (4, pngs[2]), (3, pngs[3])]:
        assert f'href="{png}"' in page and f'id="feature-{feature}"' in page
    assert "<script>" not in page.lower()
    assert str(escape(EVIL)) in page  # the evil name (feature 2) and title (v03, top of feature 1)
    assert page.count(str(escape(EVIL))) >= 2
    assert page.index('id="high"') < page.index('id="low"')
    # every link and image source is relative and points at a written file
    for target in re.findall(r'(?:href|src)="([^"#]+)"', page):
        assert not target.startswith(("/", "http")) and (index.parent / target).is_file()
    # untested-side features get no panel
    assert "feature_0" not in page and "feature_5." not in page


def test_panel_bytes_are_deterministic_and_reruns_drop_stale_panels(tmp_path, inputs):
    first, second = _write(tmp_path / "a", inputs).parent, _write(tmp_path / "b", inputs).parent
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert files and all((first / f).read_bytes() == (second / f).read_bytes() for f in files)
    groups = inputs[0].copy()
    groups.loc[groups["feature"] == 2, "side"] = ""
    _write(tmp_path / "a", (groups, *inputs[1:]))
    assert not (first / "high_002_feature_2.png").exists() and (first / "high_001_feature_1.png").exists()
    assert not [p for p in first.rglob("*") if ".tmp-" in p.name]


def test_top_reference_images_follow_the_latent_column(tmp_path, inputs, monkeypatch):
    import thumbsae.report.panels as panels

    pasted: dict[int, list[str]] = {}
    real = panels._draw_panel

    def spy(entry, name, thumb_by_id, reference, top_reference, *args):
        pasted[entry.feature] = [reference.iloc[r]["video_id"] for r, _ in top_reference]
        return real(entry, name, thumb_by_id, reference, top_reference, *args)

    monkeypatch.setattr(panels, "_draw_panel", spy)
    _write(tmp_path / "p", inputs, n_images=3)
    assert pasted[1] == ["r05", "r07", "r02"]  # by activation, zeros never shown
    assert pasted[4] == ["r11", "r10", "r09"]
    assert pasted[2] == []


def test_bad_inputs_raise_one_clear_error(tmp_path, inputs):
    groups, thumbs, reference, latents, names = inputs
    with pytest.raises(ThumbsaeError, match="feature 1 member 'v05'"):
        write_panels(tmp_path / "x", groups, thumbs[thumbs.video_id != "v05"], reference, latents, names)
    with pytest.raises(ThumbsaeError, match="missing column"):
        write_panels(tmp_path / "x", groups.drop(columns="members"), thumbs, reference, latents, names)
    Path(thumbs.loc[4, "image"]).write_bytes(b"")
    with pytest.raises(ThumbsaeError, match="t4.png"):
        write_panels(tmp_path / "x", groups, thumbs, reference, latents, names)
    assert not (tmp_path / "x" / "index.html").exists()


def test_no_side_features_still_writes_an_index(tmp_path, inputs):
    groups = inputs[0].assign(side="")
    index = write_panels(tmp_path / "p", groups, inputs[1], None, None, None)
    assert "No high features" in index.read_text() and not list(index.parent.glob("*.png"))


def _nulls(groups):
    rng = np.random.default_rng(1)
    return {
        "random_group_stats": rng.lognormal(8.5, 0.3, 200),
        "heldout_null": rng.lognormal(8.5, 0.5, 5000),
        "hhm": 60000.0,
        "lhm": 250.0,
        "dataset_median": 5000.0,
        "statistic": "median",
    }


def test_plots_and_their_csvs_are_written_deterministically(tmp_path, inputs):
    groups = inputs[0]
    summary = {"p_hhm": 0.0, "p_lhm": 0.01, "ks_statistic": 0.8, "ks_pvalue": 1e-5}
    a = write_plots(tmp_path / "a", groups, _nulls(groups), summary)
    b = write_plots(tmp_path / "b", groups, _nulls(groups), summary)
    assert set(a) == {
        "group_stats_hist.png",
        "group_stats_hist.csv",
        "heldout_null.png",
        "heldout_null_hist.csv",
        "heldout_markers.csv",
        "magnitude.png",
        "magnitude.csv",
    }
    for name, path in a.items():
        assert path.read_bytes() == b[name].read_bytes(), name
    hist = pd.read_csv(a["group_stats_hist.csv"])
    assert hist["features"].sum() == len(groups) and hist["random_groups"].sum() == 200
    assert pd.read_csv(a["heldout_null_hist.csv"])["count"].sum() == 5000
    magnitude = pd.read_csv(a["magnitude.csv"], keep_default_na=False)
    assert magnitude["feature"].tolist()[:2] == [1, 2] and magnitude["side"].tolist()[-2:] == ["low", "low"]
    with Image.open(a["magnitude.png"]) as png:
        assert png.format == "PNG" and "Software" not in png.info


def test_plots_survive_empty_nulls(tmp_path, inputs):
    groups = inputs[0].iloc[:0]
    written = write_plots(tmp_path, groups, {}, {})
    assert all(p.stat().st_size > 0 for p in written.values())


class _Summary(dict):
    pass


class _FakeRun:
    """Records what would go to W&B."""

    def __init__(self):
        self.logged, self.summary = [], _Summary()

    def log(self, data):
        self.logged.append(data)


def test_log_evaluation_sends_panels_and_table(tmp_path, inputs):
    import wandb

    index = _write(tmp_path / "panels", inputs)
    run = _FakeRun()
    assert log_evaluation(run, index.parent, inputs[0], {"hhm": 60000.0, "predictor": {"spearman_test": 0.3}})
    (data,) = run.logged
    assert {"panels/high_001_feature_1", "panels/low_002_feature_3", "panels/overview_high"} <= set(data)
    assert isinstance(data["panels/high_001_feature_1"], wandb.Image)
    table = data["eval/feature_groups"]
    assert isinstance(table, wandb.Table) and len(table.data) == len(inputs[0])
    assert run.summary["eval/predictor.spearman_test"] == 0.3
    assert not log_evaluation(None, index.parent, inputs[0], {})


def test_feature_table_and_summary_flattening(inputs):
    frame = feature_table_frame(inputs[0])
    assert frame.loc[7, "side"] == "" and len(frame.loc[0, "members"].split(";")) == 11
    assert summary_scalars({"a": {"b": np.float64(1.5), "c": float("nan")}, "d": True, "e": [1]}) == {
        "eval/a.b": 1.5,
        "eval/d": 1,
    }


def test_study_side_rank_orders_panels_and_raw_views_are_shown(tmp_path, inputs):
    groups = inputs[0].copy()
    groups["side_rank"] = [np.nan, 2, 1, 1, 2, np.nan, np.nan, np.nan]
    groups["group_stat_raw"] = groups["group_stat"] * 10  # adjusted primary: views live in the raw column
    index = _write(tmp_path / "p", (groups, *inputs[1:]))
    high = sorted(p.name for p in index.parent.glob("high_*.png"))
    assert high == ["high_001_feature_2.png", "high_002_feature_1.png"]
    assert sorted(p.name for p in index.parent.glob("low_*.png")) == ["low_001_feature_3.png", "low_002_feature_4.png"]
    assert "900,000" in index.read_text()  # feature 1's raw group statistic, not the adjusted one


def test_plots_on_adjusted_log_views(tmp_path, inputs):
    groups = inputs[0].assign(group_stat=np.linspace(-1.0, 1.5, N_FEATURES))
    rng = np.random.default_rng(2)
    null = rng.normal(0, 0.3, 1000)
    nulls = {
        "random_group_stats": rng.normal(0, 0.2, 50),
        "heldout_null": null,
        "heldout_null_low": null[:500],
        "hhm": 1.2,
        "lhm": -0.8,
        "dataset_median": 0.0,
        "log_scale": True,
        "cutoff_high": 1.1,
        "cutoff_low": -0.6,
    }
    written = write_plots(tmp_path, groups, nulls, {"statistic": "mean"})
    hist = pd.read_csv(written["heldout_null_hist.csv"])
    assert hist["count"].sum() == 1000 and hist["count_low"].sum() == 500
    assert hist["bin_low"].min() <= -0.8 and hist["bin_high"].max() >= 1.2  # markers inside the range
    assert pd.read_csv(written["magnitude.csv"])["group_stat"].iloc[0] == pytest.approx(1.5)


def test_log_evaluation_to_an_offline_wandb_run_and_a_disabled_one(tmp_path, inputs):
    import wandb

    index = _write(tmp_path / "panels", inputs)
    disabled = wandb.init(mode="disabled")
    try:
        assert not log_evaluation(disabled, index.parent, inputs[0], {})
    finally:
        disabled.finish()

    class WandbLogger:  # what Lightning's logger looks like to us: the run is `.experiment`
        def __init__(self, run):
            self.experiment = run

    run = wandb.init(mode="offline", dir=tmp_path, project="thumbsae-test", reinit="finish_previous")
    try:
        assert log_evaluation([object(), WandbLogger(run)], index.parent, inputs[0], {"hhm": 1.0})
    finally:
        run.finish()
    (run_dir,) = (tmp_path / "wandb").glob("offline-run-*")
    media = list((run_dir / "files" / "media" / "images").rglob("*.png"))
    tables = list((run_dir / "files" / "media" / "table").rglob("*.table.json"))
    assert len(media) == 6 and len(tables) == 1  # 4 panels + 2 overviews


def test_index_loads_in_chromium_with_every_panel(tmp_path, inputs):
    from chromium import load_page, needs_chromium

    if needs_chromium.args[0]:
        pytest.skip(needs_chromium.kwargs["reason"])
    index = _write(tmp_path / "panels", inputs)
    # Panels load lazily: make every image load now, then look.
    facts, errors = load_page(index, tmp_path / "profile", """(async () => {
      const images = [...document.images];
      images.forEach(i => { i.loading = 'eager'; });
      await Promise.all(images.map(i => i.decode().catch(() => null)));
      return {
        broken: images.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.getAttribute('src')),
        images: images.length,
        scripts: document.scripts.length,
        rows: [...document.querySelectorAll('tr[data-feature]')].map(r => Number(r.dataset.feature)),
        text: document.body.innerText,
      };
    })()""")
    assert errors == [] and facts["broken"] == [] and facts["scripts"] == 0
    assert facts["images"] == 2 + 4  # two overviews, four panels
    assert facts["rows"] == [1, 2, 4, 3]  # high by group statistic, then low
    assert EVIL in facts["text"]  # shown as text, not run
