"""`thumbsae rank` end to end: a generated video with a planted high-view shot, drafts, bad folders.

The fixture's engagement model is a known-good one, because a random-weight tiny CLIP does not
separate the world's `food` motif from others in general (cross-validated accuracy about 0.6 on
96 world thumbnails): `write_demo_models` (tests/demo_models.py, the real SAE trainer) takes each shot's picture, makes 6 crops of it as
thumbnails whose views follow the world's planted effects (food x4 and face x2 on one shot,
sports x0.4, others x1), trains a small SAE for a few steps on their CLIP activations and fits
the real engagement model on their latents. The video's stills are then new crops of those pictures (a panning window),
so the test checks the whole path video -> stills -> CLIP -> SAE -> model -> ranking -> files.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from thumbsae.cli import main
from thumbsae.video import VideoConfig, run_rank
from thumbsae.video.synthetic import world_shot, write_video

SIZE = (320, 180)
FPS = 15
# (motifs, scene, log-effect on views): the world's food x4 and sports_field x0.4.
SHOTS = [
    (["sports_field"], "gradient", math.log(0.4)),
    (["car", "red_arrow"], "split", 0.0),
    (["food", "face"], "gradient", math.log(4.0) + math.log(2.0)),
    (["text_overlay", "animal"], "bokeh", 0.0),
    (["car"], "burst", 0.0),
]
FOOD_SHOT = 2
SPORTS_SHOT = 0


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """(video, sae_dir, model_dir, shot bounds) shared by the tests of this module."""
    from demo_models import write_demo_models

    folder = tmp_path_factory.mktemp("rank")
    shots = [world_shot(m, size=SIZE, seconds=2.0, seed=300 + i, scene=s) for i, (m, s, _) in enumerate(SHOTS)]
    video = write_video(folder / "clip.mp4", shots, size=SIZE, fps=FPS)
    sae_dir, model_dir = write_demo_models(
        folder / "models",
        [s.picture for s in shots],
        ["+".join(m) for m, _, _ in SHOTS],
        [e for _, _, e in SHOTS],
        crops_per_picture=6,
    )
    bounds = np.cumsum([s.seconds for s in shots])
    return video, sae_dir, model_dir, bounds


def _rank(demo, out: Path, *extra: str) -> int:
    video, sae_dir, model_dir, _ = demo
    return main(["rank", str(video), "--sae", str(sae_dir), "--model", str(model_dir), "--out", str(out), *extra])


def test_planted_shot_ranks_first_with_reasons(demo, tmp_path, capsys):
    out = tmp_path / "ranked"
    assert _rank(demo, out, "--no-progress") == 0
    ranking = json.loads((out / "ranking.json").read_text())
    bounds = demo[3]
    shots = [int(np.searchsorted(bounds, r["time_s"], side="right")) for r in ranking]
    assert sorted(shots) == list(range(len(SHOTS)))  # one still per shot
    assert shots[0] == FOOD_SHOT
    assert shots[-1] == SPORTS_SHOT  # the planted low-view motif ranks last
    scores = [r["score"] for r in ranking]
    assert scores == sorted(scores, reverse=True)
    best = ranking[0]
    assert best["score_lo"] <= best["score"] <= best["score_hi"]
    assert Path(best["image"]).is_file() and (out / best["image_file"]).is_file()
    assert best["features"] and {"feature", "contribution"} <= set(best["features"][0])
    top_up = [f for f in best["features"] if f["direction"] == "up"][0]
    assert "food" in top_up["name"]
    assert top_up["examples"] and all((out / p).is_file() for p in top_up["examples"])
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed == [(f"wrote {out / 'ranking.json'} and {out / 'report.html'}: {len(ranking)} stills ranked, "
                        f"the best at {best['timecode']} (score {best['score']:.3g})")]
    # Why #1 beats #2: the features adding most to the gap, largest first.
    diffs = [r["difference"] for r in best["beats_next"]]
    assert diffs and all(d > 0 for d in diffs) and diffs == sorted(diffs, reverse=True)
    assert all(abs(r["difference"] - (r["better"] - r["worse"])) < 1e-5 for r in best["beats_next"])
    page = (out / "report.html").read_text()
    assert page.index('data-rank="1"') < page.index('data-rank="2"')
    assert capsys.readouterr().out == ""


def test_same_input_same_bytes_and_old_output_replaced(demo, tmp_path):
    out = tmp_path / "ranked"
    assert _rank(demo, out, "--no-progress", "--candidates", "3") == 0
    first = {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    assert len(json.loads(first[Path("ranking.json")])) == 3
    (out / "stale.txt").write_text("left in the earlier ranking")
    assert _rank(demo, out, "--no-progress", "--candidates", "3") == 0
    second = {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    assert first == second  # byte-identical, and the stale file is gone with the old folder
    assert [p.name for p in tmp_path.iterdir()] == ["ranked"]  # no temporary left behind


def test_a_folder_that_is_not_a_ranking_is_never_replaced(demo, tmp_path, capsys):
    out = tmp_path / "project"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert _rank(demo, out, "--no-progress") != 0
    assert "not an earlier ranking" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_drafts_folder_ranked_with_names(demo, tmp_path):
    from thumbsae.video import candidate_stills

    video, sae_dir, model_dir, _ = demo
    drafts = tmp_path / "drafts"
    drafts.mkdir()
    stills = candidate_stills(video, VideoConfig())
    for i, still in enumerate(stills):
        still.image.save(drafts / f"draft {i}.png")
    records = run_rank(drafts, sae_dir=sae_dir, model_dir=model_dir, out_dir=tmp_path / "out", progress=False)
    assert sorted(r["source"] for r in records) == sorted(f"draft {i}.png" for i in range(len(stills)))
    assert all(r["time_s"] is None for r in records)
    assert records[0]["source"] == f"draft {FOOD_SHOT}.png"


def test_progress_bar_leaves_stderr_clean_on_success(demo, tmp_path, capsys):
    assert _rank(demo, tmp_path / "out", "--candidates", "2") == 0
    captured = capsys.readouterr()
    # stdout holds only the closing line (the bar is transient and on stderr)
    assert captured.out.count("\n") == 1 and captured.out.startswith("wrote ") and "error" not in captured.err


@pytest.mark.parametrize("case", ["sae missing", "sae corrupt", "model missing", "model of another sae"])
def test_bad_model_folders_one_line_error(demo, tmp_path, capsys, case):
    video, sae_dir, model_dir, _ = demo
    if case == "sae missing":
        sae_dir = tmp_path / "no_sae"
    elif case == "sae corrupt":
        bad = tmp_path / "bad_sae"
        bad.mkdir()
        (bad / "config.json").write_text((sae_dir / "config.json").read_text())
        (bad / "sae.safetensors").write_bytes(b"not safetensors")
        sae_dir = bad
    elif case == "model missing":
        model_dir = tmp_path / "no_model"
    else:
        import shutil

        other = tmp_path / "other_model"
        shutil.copytree(model_dir, other)
        config = json.loads((other / "config.json").read_text())
        config["n_latents"] = 999
        (other / "config.json").write_text(json.dumps(config))
        model_dir = other
    out = tmp_path / "ranked"
    code = main(["rank", str(video), "--sae", str(sae_dir), "--model", str(model_dir), "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and err[0].startswith("thumbsae rank: error:")
    assert not out.exists()


@pytest.mark.parametrize("case", ["under a file", "out is a file"])
def test_unwritable_output_one_line_error(demo, tmp_path, capsys, case):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a folder")
    out = blocker / "ranked" if case == "under a file" else blocker
    assert _rank(demo, out, "--no-progress") != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--out" in err[0]
    assert blocker.read_text() == "a file, not a folder"


def test_truncated_video_found_while_decoding_leaves_nothing(demo, tmp_path, capsys):
    video = demo[0]
    mkv = write_video(tmp_path / "long.mkv", [world_shot(["food"], size=SIZE, seconds=6.0, seed=1)], size=SIZE, fps=FPS)
    data = mkv.read_bytes()
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(data[: int(len(data) * 0.5)])
    out = tmp_path / "ranked"
    code = main(["rank", str(cut), "--sae", str(demo[1]), "--model", str(demo[2]), "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and "truncated" in err[0]
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["cut.mkv", "long.mkv"]
    assert video.exists()


def test_real_report_loads_in_chromium(demo, tmp_path):
    from test_rank_report import CHROMIUM, PAGE_FACTS, load_page

    if CHROMIUM is None:
        pytest.skip("headless Chromium not installed (Debian: apt-get install chromium)")
    out = tmp_path / "ranked"
    assert _rank(demo, out, "--no-progress") == 0
    ranking = json.loads((out / "ranking.json").read_text())
    facts, errors = load_page(out / "report.html", tmp_path / "profile", PAGE_FACTS)
    assert errors == []
    assert facts["ranks"] == [r["rank"] for r in ranking] == list(range(1, len(ranking) + 1))
    assert facts["broken"] == [] and facts["external"] == [] and facts["why"]


def test_pairwise_probabilities_and_verdicts_in_ranking(demo, tmp_path):
    from thumbsae.analysis.engagement import EngagementModel
    from thumbsae.video.rank import pair_verdict

    out = tmp_path / "ranked"
    assert _rank(demo, out, "--no-progress") == 0
    ranking = json.loads((out / "ranking.json").read_text())
    assert EngagementModel.load(demo[2]).pair_curve is not None
    last = len(ranking)
    assert ranking[-1]["p_better_than_next"] is None and ranking[0]["p_first_beats"] is None
    assert ranking[-1]["verdict_next"] is None and ranking[0]["verdict_first"] is None
    for r in ranking[:-1]:
        assert 0.0 <= r["p_better_than_next"] <= 1.0
        expected = pair_verdict(r["p_better_than_next"], VideoConfig().close_call, better=f"#{r['rank']}", worse=f"#{r['rank'] + 1}")
        assert r["verdict_next"] == expected
    for r in ranking[1:]:
        assert 0.0 <= r["p_first_beats"] <= 1.0
    # The first and the second carry the same probability from both ends.
    assert ranking[0]["p_better_than_next"] == ranking[1]["p_first_beats"]
    # The planted food shot against the planted sports shot (ranked last): clear.
    assert ranking[-1]["p_first_beats"] >= 0.9 and ranking[-1]["verdict_first"].startswith(f"#1 beats #{last} with probability")
    # A threshold of 1 makes every pair too close to call.
    video, sae_dir, model_dir, _ = demo
    strict = run_rank(video, sae_dir=sae_dir, model_dir=model_dir, out_dir=tmp_path / "strict", progress=False,
                      cfg=VideoConfig(close_call=1.0))
    assert [r["verdict_next"] for r in strict] == ["too close to call"] * (len(strict) - 1) + [None]
