"""report.html of `thumbsae rank`: escaped, self-contained, and checked in headless Chromium."""

from __future__ import annotations

from pathlib import Path

from chromium import CHROMIUM, load_page, needs_chromium  # noqa: F401  (CHROMIUM: test_rank imports it from here)
from markupsafe import escape
from PIL import Image

from thumbsae.report.rank_report import write_rank_report

HOSTILE = '<script>alert("x")</script> & "quotes"'

PAGE_FACTS = """({
  ranks: [...document.querySelectorAll('#ranking [data-rank]')].map(e => Number(e.dataset.rank)),
  scores: [...document.querySelectorAll('#ranking [data-rank]')].map(e => Number(e.dataset.score)),
  broken: [...document.images].filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.getAttribute('src')),
  images: document.images.length,
  scripts: document.scripts.length,
  external: [...document.querySelectorAll('[src],[href]')].map(e => e.getAttribute('src') || e.getAttribute('href')).filter(u => /^[a-z]+:/i.test(u)),
  text: document.body.innerText,
  why: !!document.querySelector('#why-first'),
})"""


def fake_ranking(out: Path, n: int = 3) -> list[dict]:
    """Records shaped like `ranking.json`, with their stills and example images under `out`."""
    (out / "stills").mkdir(parents=True)
    (out / "examples").mkdir()
    Image.new("RGB", (40, 30), (200, 100, 50)).save(out / "examples" / "f7_0.jpg")
    Image.new("RGB", (40, 30), (20, 100, 150)).save(out / "examples" / "f3 odd name.png")
    records = []
    for rank in range(1, n + 1):
        Image.new("RGB", (64, 36), (rank * 60, 80, 120)).save(out / "stills" / f"rank{rank:02d}.jpg")
        records.append({
            "rank": rank, "time_s": 1.5 * rank, "timecode": f"0:0{rank}.50", "source": f"video #{rank}",
            "image": str(out / "stills" / f"rank{rank:02d}.jpg"), "image_file": f"stills/rank{rank:02d}.jpg",
            "frame_index": 10 * rank, "shot_index": rank, "quality": 0.5, "score": 1.0 - rank,
            "score_lo": 0.5 - rank, "score_hi": 1.5 - rank, "interval": 0.8, "score_kind": "channel_relative",
            "features": [
                {"feature": 7, "contribution": 0.4 / rank, "direction": "up", "name": HOSTILE,
                 "examples": ["examples/f7_0.jpg"]},
                {"feature": 3, "contribution": -0.2, "direction": "down", "name": None,
                 "examples": ["examples/f3 odd name.png"]},
            ],
        })
    return records


def test_report_escapes_text_and_links_only_local_files(tmp_path):
    records = fake_ranking(tmp_path)
    comparison = {"better": records[0], "worse": records[1], "score_gap": 1.0,
                  "reasons": [{"feature": 7, "difference": 0.2, "better": 0.4, "worse": 0.2, "name": HOSTILE}]}
    path = write_rank_report(tmp_path, records, source_name="my <video>.mp4", channel_id='chan"1',
                             comparison=comparison)
    page = path.read_text()
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert str(escape("my <video>.mp4")) in page and str(escape('chan"1')) in page
    assert "http://" not in page and "https://" not in page
    assert page.index('data-rank="1"') < page.index('data-rank="2"') < page.index('data-rank="3"')
    assert 'src="examples/f3%20odd%20name.png"' in page


@needs_chromium
def test_report_loads_in_chromium_in_ranked_order(tmp_path):
    out = tmp_path / "out"
    records = fake_ranking(out)
    comparison = {"better": records[0], "worse": records[1], "score_gap": 1.0, "reasons": []}
    report = write_rank_report(out, records, source_name="v.mp4", comparison=comparison)
    facts, errors = load_page(report, tmp_path / "profile", PAGE_FACTS)
    assert errors == []
    assert facts["ranks"] == [1, 2, 3]
    assert facts["scores"] == sorted(facts["scores"], reverse=True)
    assert facts["broken"] == [] and facts["images"] >= 3 + 2 * 3
    assert facts["scripts"] == 0 and facts["external"] == []
    assert HOSTILE in facts["text"]  # shown as text, not run
    assert facts["why"]


@needs_chromium
def test_chromium_check_sees_a_missing_image(tmp_path):
    # The browser check itself must be able to fail: a report whose still is gone.
    out = tmp_path / "out"
    records = fake_ranking(out, n=2)
    (out / "stills" / "rank02.jpg").unlink()
    report = write_rank_report(out, records, source_name="v.mp4")
    facts, errors = load_page(report, tmp_path / "profile", PAGE_FACTS)
    assert facts["broken"] == ["stills/rank02.jpg"]
    assert any("rank02" in e or "ERR_FILE_NOT_FOUND" in e for e in errors)


def test_pairwise_probabilities_and_verdict_are_shown_when_present(tmp_path):
    records = fake_ranking(tmp_path)
    records[0].update(p_better_than_next=0.71, p_first_beats=None, verdict="#1 beats #2 with probability 0.71")
    records[1].update(p_better_than_next=0.5, p_first_beats=0.71, verdict="too close to call")
    records[2].update(p_better_than_next=None, p_first_beats=0.9)
    comparison = {"better": records[0], "worse": records[1], "score_gap": 1.0, "reasons": []}
    page = write_rank_report(tmp_path, records, source_name="v.mp4", comparison=comparison).read_text()
    why = page[page.index('id="why-first"'):page.index('id="ranking"')]
    assert "#1 beats #2 with probability 0.71" in why and 'id="p-first-beats-second">0.71<' in why
    assert "too close to call" in why  # #2's own verdict beside it
    assert "beats #4" not in page  # the last still has no next one
    assert "#1 beats it with probability 0.90" in page


def test_report_without_pairwise_data_has_no_probability_lines(tmp_path):
    records = fake_ranking(tmp_path)
    comparison = {"better": records[0], "worse": records[1], "score_gap": 1.0, "reasons": []}
    page = write_rank_report(tmp_path, records, source_name="v.mp4", comparison=comparison).read_text()
    assert "probability" not in page and 'class="verdict"' not in page
    assert 'class="meta pairwise"' not in page
