"""The synthetic world: files, determinism, planted effects, confounding, null world, CLI."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from thumbsae.cli import main as cli_main
from thumbsae.errors import ThumbsaeError
from thumbsae.world import (
    DISTRACTORS,
    MOTIFS,
    SCENES,
    THUMBNAIL_COLUMNS,
    WorldConfig,
    caption_for,
    draw_thumbnail,
    generate_world,
    settings_differing,
)
from thumbsae.world import generate as generate_module

TINY = dict(n_thumbnails=400, width=64, height=64, n_channels=10, n_reference_per_class=4)
# Tolerance on log-effects for 400 thumbnails in 10 channels: about 3 standard errors.
EFFECT_TOLERANCE = 0.3


def _digest(folder: Path) -> str:
    """One hash over every file's relative path and bytes."""
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(folder)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def _ols(df: pd.DataFrame, *, channel: bool) -> tuple[dict[str, float], dict[str, float]]:
    """Regress log views on motif indicators (+ warmth, age, channel dummies): coef and SE."""
    y_N = np.log(df["views"].clip(lower=1).to_numpy(float))
    motif_sets = df["motifs"].str.split(";").apply(set)
    columns = {"const": np.ones(len(df))}
    columns |= {m: motif_sets.apply(lambda s, m=m: m in s).to_numpy(float) for m in MOTIFS}
    if channel:
        columns["warmth"] = df["warmth"].to_numpy(float)
        columns["age"] = (
            pd.Timestamp("2025-01-01") - pd.to_datetime(df["upload_date"])
        ).dt.days.to_numpy(float)
        dummies = pd.get_dummies(df["channel_id"], drop_first=True, dtype=float)
        columns |= {f"channel={c}": dummies[c].to_numpy() for c in dummies.columns}
    names = list(columns)
    X_NP = np.stack([columns[n] for n in names], axis=1)
    beta_P, *_ = np.linalg.lstsq(X_NP, y_N, rcond=None)
    resid_N = y_N - X_NP @ beta_P
    sigma2 = resid_N @ resid_N / (len(y_N) - X_NP.shape[1])
    se_P = np.sqrt(np.diag(sigma2 * np.linalg.pinv(X_NP.T @ X_NP)))
    return dict(zip(names, beta_P, strict=True)), dict(zip(names, se_P, strict=True))


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    return generate_world(WorldConfig(**TINY), tmp_path_factory.mktemp("world") / "w")


@pytest.fixture(scope="module")
def null_world(tmp_path_factory) -> Path:
    return generate_world(WorldConfig(**TINY, null=True), tmp_path_factory.mktemp("null") / "w")


def test_same_config_gives_identical_files_whatever_the_worker_count(tmp_path):
    cfg = dict(n_thumbnails=100, width=48, height=40, n_channels=5, n_reference_per_class=1)
    a = generate_world(WorldConfig(**cfg, workers=1), tmp_path / "a")
    b = generate_world(WorldConfig(**cfg, workers=2), tmp_path / "b")  # goes through the pool
    assert _digest(a) == _digest(b)
    c = generate_world(WorldConfig(**cfg, workers=1, seed=1), tmp_path / "c")
    assert _digest(a) != _digest(c)


def test_manifests_follow_the_contract(world):
    thumbs = pd.read_csv(world / "thumbnails.csv", keep_default_na=False)
    assert list(thumbs.columns) == THUMBNAIL_COLUMNS
    assert len(thumbs) == 400 and thumbs["video_id"].is_unique
    assert thumbs["views"].dtype.kind == "i" and (thumbs["views"] >= 0).all()
    assert thumbs["channel_id"].nunique() > 1
    dates = pd.to_datetime(thumbs["upload_date"], format="%Y-%m-%d")
    assert dates.dt.year.min() >= 2015 and dates.dt.year.max() <= 2024
    for motifs in thumbs["motifs"]:
        names = motifs.split(";")
        assert 1 <= len(names) <= 3 and set(names) <= set(MOTIFS)
    assert set(thumbs["scene"]) <= set(SCENES)
    assert thumbs["warmth"].between(-1, 1).all()
    ref = pd.read_csv(world / "reference.csv")
    assert list(ref.columns[:3]) == ["video_id", "image", "label"]
    assert set(ref["label"]) == set(MOTIFS) | set(DISTRACTORS)
    assert ref["video_id"].is_unique and not set(ref["video_id"]) & set(thumbs["video_id"])
    for rel in list(thumbs["image"][:20]) + list(ref["image"][:20]):
        assert not Path(rel).is_absolute()
        with Image.open(world / rel) as img:
            assert img.size == (64, 64) and img.mode == "RGB"
    n_png = sum(1 for _ in (world / "images").rglob("*.png"))
    assert n_png == len(thumbs) + len(ref)
    truth = json.loads((world / "ground_truth.json").read_text())
    assert truth["seed"] == 0 and "exp(" in truth["formula"]
    assert truth["positive"] == ["food", "face"] and truth["confounded"] == ["red_arrow"]
    assert set(truth["negative"]) == {"sports_field", "night_scene"}
    assert len(truth["channel_effects"]) == 10 and set(thumbs["channel_id"]) <= set(
        truth["channel_effects"]
    )


def test_planted_effects_are_recovered_by_regression(world):
    thumbs = pd.read_csv(world / "thumbnails.csv", keep_default_na=False)
    truth = json.loads((world / "ground_truth.json").read_text())
    coef, _ = _ols(thumbs, channel=True)
    for motif in MOTIFS:
        assert abs(coef[motif] - truth["motif_effects"][motif]) < EFFECT_TOLERANCE, motif
    assert (
        coef["food"] > coef["face"] > 0.3
        and coef["sports_field"] < -0.5
        and coef["night_scene"] < -0.5
    )


def test_confounded_motif_goes_with_views_only_through_its_channels(world):
    thumbs = pd.read_csv(world / "thumbnails.csv", keep_default_na=False)
    has_arrow = thumbs["motifs"].str.split(";").apply(lambda s: "red_arrow" in s)
    log_views = np.log(thumbs["views"].clip(lower=1))
    raw_gap = log_views[has_arrow].mean() - log_views[~has_arrow].mean()
    assert raw_gap > 0.4  # red-arrow thumbnails get more views ...
    coef, se = _ols(thumbs, channel=True)
    assert abs(coef["red_arrow"]) < 2.5 * se["red_arrow"]  # ... but not within a channel
    assert abs(coef["red_arrow"]) < EFFECT_TOLERANCE


def test_null_world_permutes_views_and_has_no_effects(world, null_world):
    thumbs = pd.read_csv(world / "thumbnails.csv", keep_default_na=False)
    null = pd.read_csv(null_world / "thumbnails.csv", keep_default_na=False)
    assert _digest(world / "images") == _digest(null_world / "images")
    pd.testing.assert_frame_equal(thumbs.drop(columns="views"), null.drop(columns="views"))
    assert sorted(thumbs["views"]) == sorted(null["views"]) and not thumbs["views"].equals(
        null["views"]
    )
    coef, se = _ols(null, channel=True)
    for motif in MOTIFS:
        assert abs(coef[motif]) < 3.5 * se[motif], motif
    for motif in ("food", "face", "sports_field", "night_scene"):
        assert abs(coef[motif]) < EFFECT_TOLERANCE, motif
    truth = json.loads((null_world / "ground_truth.json").read_text())
    assert (
        truth["null"] is True
        and truth["positive"] == truth["negative"] == truth["confounded"] == []
    )
    assert set(truth["motif_effects"].values()) == {0.0}


def test_existing_world_is_replaced_and_other_folders_are_refused(tmp_path):
    small = dict(n_thumbnails=20, width=32, height=32, n_channels=3, n_reference_per_class=1)
    out = generate_world(WorldConfig(**small), tmp_path / "w")
    first = (out / "thumbnails.csv").read_text()
    generate_world(WorldConfig(**small, seed=5), out)
    assert (out / "thumbnails.csv").read_text() != first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w"]  # no temporaries left behind
    assert (out / ".thumbsae-world").is_file()  # the marker that lets a later run replace it
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(ThumbsaeError, match="not empty"):
        generate_world(WorldConfig(**small), other)
    assert [p.name for p in other.iterdir()] == ["keep.txt"]


def test_interrupted_run_leaves_the_old_world_whole(tmp_path, monkeypatch):
    small = dict(n_thumbnails=20, width=32, height=32, n_channels=3, n_reference_per_class=1)
    out = generate_world(WorldConfig(**small), tmp_path / "w")
    before = _digest(out)

    def crash(cfg, root, jobs):
        generate_module._draw_jobs(str(root), jobs[:5], cfg.size, cfg.png_compress_level)
        raise KeyboardInterrupt  # as if the user pressed Ctrl-C halfway

    monkeypatch.setattr(generate_module, "_run_jobs", crash)
    with pytest.raises(KeyboardInterrupt):
        generate_world(WorldConfig(**small, seed=9), out)
    assert _digest(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w"]


def test_bad_config_is_one_clear_error():
    with pytest.raises(ThumbsaeError, match="unknown motif"):
        WorldConfig(effects={"unicorn": 2.0})
    with pytest.raises(ThumbsaeError, match="world.n_thumbnails=0: must be an integer in 1"):
        WorldConfig(n_thumbnails=0)
    assert WorldConfig(effects={"food": 3.0}).effects == (("food", 3.0),)  # dicts from Hydra


def test_a_world_records_every_setting_that_changes_its_content(world):
    truth = json.loads((world / "ground_truth.json").read_text())
    assert settings_differing(WorldConfig(**TINY), truth) == {}
    # Only drawing speed differs: the same world.
    assert settings_differing(WorldConfig(**TINY, workers=2, png_compress_level=6), truth) == {}
    changed = {"seed": 3, "n_thumbnails": 401, "effects": {"food": 3.0}, "years": (2016, 2024), "noise_sd": 0.4,
               "null": True}
    for key, value in changed.items():
        differing = settings_differing(WorldConfig(**{**TINY, key: value}), truth)
        assert list(differing) == [key], key
        assert differing[key][0] == truth.get(key, truth["config"].get(key))


def test_draw_thumbnail_is_deterministic_and_motifs_reach_the_edges():
    def draw(seed, motifs=("car",), size=(96, 54)):
        return draw_thumbnail(
            list(motifs), scene="studio", warmth=0.0, size=size, rng=np.random.default_rng(seed)
        )

    assert draw(3).tobytes() == draw(3).tobytes()
    assert draw(3).size == (96, 54)
    assert draw(3, ("food",)).tobytes() != draw(3, ("car",)).tobytes()
    lefts, rights = [], []
    for seed in range(40):
        pixels_HW3 = np.asarray(draw(seed, ("red_arrow",), size=(160, 90))).astype(int)
        # A studio background is one flat colour; the motif is what differs from the corner.
        differs_W = (np.abs(pixels_HW3 - pixels_HW3[0, 0]).sum(axis=2) > 30).any(axis=0)
        columns = np.flatnonzero(differs_W)
        lefts.append(columns.min())
        rights.append(columns.max())
    assert min(lefts) <= 8 and max(rights) >= 160 - 9  # some arrows sit at each side edge
    assert np.ptp(lefts) > 60  # positions really vary
    with pytest.raises(ThumbsaeError, match="unknown motif"):
        draw(0, ("spaceship",))


def test_caption_for_names_the_content():
    caption = caption_for(["food", "red_arrow"], "burst", 0.8)
    assert caption == "a warm thumbnail of food on a plate and a red arrow on a sunburst background"
    assert caption_for(["night_scene"], "studio", -0.9).startswith(
        "a cool thumbnail of a city at night"
    )
    assert "neutral" in caption_for([], "bokeh", 0.0)


def test_cli_writes_a_world_and_a_null_world(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the paths it prints are relative to the working directory
    args = [
        "world",
        "--out",
        "w",
        "--thumbnails",
        "30",
        "--seed",
        "4",
        "--size",
        "48",
        "36",
        "--channels",
        "4",
        "--reference-per-class",
        "1",
    ]
    assert cli_main(args) == 0
    assert capsys.readouterr().out.endswith("wrote world to w\n")
    assert cli_main([*args[:2], str(tmp_path / "n"), *args[3:], "--null"]) == 0
    assert capsys.readouterr().out.endswith("wrote world to n\n")  # given absolute, inside it: shown relative
    thumbs = pd.read_csv(tmp_path / "w" / "thumbnails.csv")
    null = pd.read_csv(tmp_path / "n" / "thumbnails.csv")
    assert len(thumbs) == 30 and sorted(thumbs["views"]) == sorted(null["views"])
    assert json.loads((tmp_path / "n" / "ground_truth.json").read_text())["null"] is True
    with Image.open(tmp_path / "w" / thumbs["image"][0]) as img:
        assert img.size == (48, 36)
    (tmp_path / "file").write_text("x")
    assert cli_main(["world", "--out", str(tmp_path / "file"), "--thumbnails", "5"]) == 2
    assert "not a folder" in capsys.readouterr().err
