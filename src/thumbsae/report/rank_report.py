"""The HTML report of `thumbsae rank`: stills best first, with scores, intervals and reasons.

One static page beside its images (relative links, no scripts, no external resources), so the
folder can be zipped, mailed or opened offline. Every text that came from data (file names,
feature names, channel ids) is escaped.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from urllib.parse import quote

from thumbsae.files import atomic_write_text

REPORT_FILE = "report.html"
_DOT = " \u00b7 "
SCORE_UNITS = {
    "channel_relative": "log views relative to the channel's typical video",
    "channel_date_relative": "log views relative to the channel's videos of the same age",
    "raw": "log views",
}

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.5rem; } h2 { font-size: 1.2rem; margin-top: 2rem; }
.meta { color: #555; font-size: 0.9rem; }
.still { display: grid; grid-template-columns: 360px 1fr; gap: 1rem; border-top: 1px solid #ddd;
         padding: 1rem 0; }
.still img.frame, .side img.frame { width: 100%; height: auto; border: 1px solid #ccc; }
.rank { font-size: 1.4rem; font-weight: bold; }
.score { font-size: 1.1rem; }
table { border-collapse: collapse; font-size: 0.9rem; margin: 0.3rem 0 0.8rem; }
td, th { padding: 0.2rem 0.5rem; text-align: left; vertical-align: middle; }
th { border-bottom: 1px solid #ccc; }
.up { color: #176b2c; } .down { color: #9b1c1c; }
.bar { display: inline-block; height: 0.7rem; }
.bar.up { background: #4caf50; } .bar.down { background: #e57373; }
img.example { height: 48px; width: auto; margin-right: 2px; border: 1px solid #ddd; }
.side { display: grid; grid-template-columns: 1fr 1fr; gap: 1rem; }
"""


def _e(value: object) -> str:
    """Escaped text of any value (None as an em dash)."""
    return "\u2014" if value is None else html.escape(str(value), quote=True)


def _src(rel_path: str) -> str:
    """A relative link to a file beside the report, URL-quoted then escaped for an attribute."""
    return html.escape(quote(rel_path, safe="/"), quote=True)


def _fmt(value: float | None, digits: int = 3) -> str:
    return "\u2014" if value is None else f"{value:+.{digits}f}"


def _views_phrase(score: float, score_kind: str) -> str:
    """The score in words: a multiple of the channel's typical views, or a view count."""
    if not math.isfinite(score):
        return ""
    if score_kind == "raw":
        return f"about {math.expm1(min(score, 50.0)):,.0f} views"
    return f"about \u00d7{math.exp(min(score, 50.0)):.2f} the channel's typical views"


def _feature_label(entry: Mapping) -> str:
    name = entry.get("name")
    return f"#{int(entry['feature'])}" + (f" {name}" if name else "")


def _reasons_table(features: Sequence[Mapping], direction: str, scale: float) -> str:
    rows = [f for f in features if f.get("direction") == direction]
    if not rows:
        return f'<p class="meta">No feature pushes this still {"up" if direction == "up" else "down"}.</p>'
    title = "Pushing the score up" if direction == "up" else "Pushing the score down"
    parts = [
        f'<table class="reasons {direction}"><caption class="{direction}">{title}</caption>',
        "<tr><th>feature</th><th>contribution</th><th></th><th>examples from the evaluated set</th></tr>",
    ]
    for f in rows:
        width = 0 if scale <= 0 else max(1, round(120 * abs(f["contribution"]) / scale))
        examples = "".join(
            f'<img class="example" src="{_src(p)}" alt="{_e(_feature_label(f))} example {k + 1}">'
            for k, p in enumerate(f.get("examples") or [])
        )
        parts.append(
            f'<tr data-feature="{int(f["feature"])}"><td>{_e(_feature_label(f))}</td>'
            f'<td class="{direction}">{_fmt(f["contribution"])}</td>'
            f'<td><span class="bar {direction}" style="width:{width}px"></span></td>'
            f"<td>{examples}</td></tr>"
        )
    parts.append("</table>")
    return "\n".join(parts)


def _still_heading(record: Mapping) -> str:
    where = record.get("timecode") or record.get("source")
    return f"#{int(record['rank'])} \u00b7 {_e(where)}"


def _score_block(record: Mapping, score_kind: str) -> str:
    return (
        f'<div class="score">score <b>{_fmt(record["score"])}</b> '
        f"(interval {_fmt(record.get('score_lo'))} to {_fmt(record.get('score_hi'))}, "
        f"{_e(round(100 * float(record.get('interval') or 0)))}% coverage)</div>"
        f'<div class="meta">{_e(_views_phrase(float(record["score"]), score_kind))}</div>'
    )


def _still_article(record: Mapping, score_kind: str) -> str:
    scale = max((abs(f["contribution"]) for f in record.get("features", [])), default=0.0)
    details = []
    if record.get("time_s") is not None:
        details.append(f"at {_e(record.get('timecode'))} ({_e(record['time_s'])} s)")
        details.append(f"shot {_e(record.get('shot_index'))}, frame {_e(record.get('frame_index'))}")
    else:
        details.append(f"draft {_e(record.get('source'))}")
    details.append(f"image quality {float(record.get('quality') or 0):.2f}")
    rank = int(record["rank"])
    return f"""<article class="still" id="rank-{rank}" data-rank="{rank}" data-score="{_e(record['score'])}">
<div><div class="rank">{_still_heading(record)}</div>
<img class="frame" src="{_src(record['image_file'])}" alt="still ranked {rank}">
<div class="meta">{_DOT.join(details)}</div></div>
<div>{_score_block(record, score_kind)}
{_reasons_table(record.get('features', []), 'up', scale)}
{_reasons_table(record.get('features', []), 'down', scale)}</div>
</article>"""


def _comparison_section(comparison: Mapping | None, score_kind: str) -> str:
    if not comparison:
        return ""
    better, worse = comparison["better"], comparison["worse"]
    rows = "".join(
        f'<tr data-feature="{int(r["feature"])}"><td>{_e(_feature_label(r))}</td>'
        f'<td class="up">{_fmt(r["difference"])}</td><td>{_fmt(r["better"])}</td>'
        f"<td>{_fmt(r['worse'])}</td></tr>"
        for r in comparison.get("reasons", [])
    )
    table = (
        "<table><tr><th>feature</th><th>difference</th><th>#1 contribution</th>"
        f"<th>#2 contribution</th></tr>{rows}</table>"
        if rows
        else '<p class="meta">No single feature separates them.</p>'
    )
    sides = "".join(
        f'<figure><figcaption>{_still_heading(r)}</figcaption>'
        f'<img class="frame" src="{_src(r["image_file"])}" alt="still ranked {int(r["rank"])}">'
        f"{_score_block(r, score_kind)}</figure>"
        for r in (better, worse)
    )
    return f"""<section id="why-first">
<h2>Why #1 beats #2</h2>
<div class="side">{sides}</div>
<p>Score gap {_fmt(comparison['score_gap'])}: the sum over features of (#1's contribution
&minus; #2's). The features adding most to the gap:</p>
{table}
</section>"""


def _stats_paragraph(stats: Mapping | None) -> str:
    if not stats:
        return ""
    if stats.get("kind") == "drafts":
        return f'<p class="meta">{_e(stats.get("n_images"))} draft images ranked.</p>'
    rejected = stats.get("rejected") or {}
    dropped = ", ".join(f"{_e(n)} {_e(reason.replace('_', ' '))}" for reason, n in rejected.items() if n)
    return (
        f'<p class="meta">{_e(stats.get("duration_s"))} s of video, {_e(stats.get("n_frames"))} '
        f'frames decoded, {_e(stats.get("n_sampled"))} sampled, {_e(stats.get("n_shots"))} shots; '
        f"frames dropped: {dropped or 'none'}; {_e(stats.get('n_duplicates'))} near-duplicate "
        f"shots merged; {_e(stats.get('n_candidates'))} candidate stills ranked.</p>"
    )


def write_rank_report(
    out_dir: Path,
    ranking: Sequence[Mapping],
    *,
    source_name: str,
    score_kind: str = "channel_relative",
    channel_id: str | None = None,
    stats: Mapping | None = None,
    comparison: Mapping | None = None,
) -> Path:
    """Write `out_dir/report.html` for `ranking` (the `ranking.json` records, best first).

    Images are linked by the records' `image_file` and features' `examples` paths, relative to
    `out_dir`. `stats` (decoding counts) and `comparison` (`better`, `worse`, `score_gap`,
    `reasons`: the features separating #1 from #2) are optional. Returns the report's path.
    """
    units = SCORE_UNITS.get(score_kind, score_kind)
    channel = f" for channel {_e(channel_id)}" if channel_id else ""
    articles = "\n".join(_still_article(r, score_kind) for r in ranking)
    page = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>thumbsae rank: {_e(source_name)}</title>
<style>{_CSS}</style>
</head>
<body>
<h1>Candidate thumbnails of {_e(source_name)}, best first</h1>
<p>Scores are predicted {_e(units)}{channel} (natural log of views + 1), from the SAE features
of each still; the interval is the model's prediction interval. Each feature's contribution is
its share of the score; the examples are thumbnails of the evaluated set where it is strongest.</p>
{_stats_paragraph(stats)}
{_comparison_section(comparison, score_kind)}
<h2>Ranking</h2>
<div id="ranking">
{articles}
</div>
</body>
</html>
"""
    path = Path(out_dir) / REPORT_FILE
    atomic_write_text(path, page)
    return path
