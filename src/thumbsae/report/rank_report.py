"""The HTML report of `thumbsae rank`: stills best first, with scores, intervals and reasons.

One static page beside its images (relative links, no scripts, no external resources), so the
folder can be zipped, mailed or opened offline. It is rendered from `templates/rank_report.html`
with autoescape, so every text that came from data (file names, feature names, channel ids) is
escaped.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from thumbsae.files import atomic_write_text
from thumbsae.report.html import number, render_page

REPORT_FILE = "report.html"
SCORE_UNITS = {
    "channel_relative": "log views relative to the channel's typical video",
    "channel_date_relative": "log views relative to the channel's videos of the same age",
    "raw": "log views",
}
BAR_MAX_PX = 120


def _views_phrase(score: float, score_kind: str) -> str:
    """The score in words: a multiple of the channel's typical views, or a view count."""
    if not math.isfinite(score):
        return ""
    if score_kind == "raw":
        return f"about {math.expm1(min(score, 50.0)):,.0f} views"
    return f"about \u00d7{math.exp(min(score, 50.0)):.2f} the channel's typical views"


def _probability(value: object) -> float | None:
    """A probability from the ranking data, or None when absent or not a finite number."""
    try:
        p = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return p if math.isfinite(p) else None


def _pairwise(record: Mapping, p_next: float | None, p_first: float | None) -> list[str]:
    parts = []
    if p_next is not None:
        parts.append(f"beats #{int(record['rank']) + 1} with probability {number(p_next, '.2f')}")
    if p_first is not None:
        parts.append(f"#1 beats it with probability {number(p_first, '.2f')}")
    if record.get("verdict"):
        parts.append(str(record["verdict"]))
    return parts


def _still(record: Mapping, score_kind: str) -> dict:
    """A ranking record as the template shows it (every key present)."""
    features = list(record.get("features") or [])
    scale = max((abs(float(f["contribution"])) for f in features), default=0.0)
    details = []
    if record.get("time_s") is not None:
        details.append(f"at {record.get('timecode')} ({record['time_s']} s)")
        details.append(f"shot {record.get('shot_index')}, frame {record.get('frame_index')}")
    else:
        details.append(f"draft {record.get('source')}")
    details.append(f"image quality {float(record.get('quality') or 0):.2f}")
    p_next = _probability(record.get("p_better_than_next"))
    p_first = _probability(record.get("p_first_beats"))
    return {
        "rank": int(record["rank"]),
        "timecode": record.get("timecode"),
        "source": record.get("source"),
        "image_file": record["image_file"],
        "score": record["score"],
        "score_lo": record.get("score_lo"),
        "score_hi": record.get("score_hi"),
        "coverage": round(100 * float(record.get("interval") or 0)),
        "views_phrase": _views_phrase(float(record["score"]), score_kind),
        "details": details,
        "p_better_than_next": p_next,
        "p_first_beats": p_first,
        "verdict": str(record.get("verdict") or ""),
        "pairwise": _pairwise(record, p_next, p_first),
        "features": [
            {
                "feature": int(f["feature"]),
                "name": f.get("name") or "",
                "direction": f.get("direction"),
                "contribution": f["contribution"],
                "bar_px": 0 if scale <= 0 else max(1, round(BAR_MAX_PX * abs(float(f["contribution"])) / scale)),
                "examples": list(f.get("examples") or []),
            }
            for f in features
        ],
    }


def _comparison(comparison: Mapping | None, score_kind: str) -> dict | None:
    if not comparison:
        return None
    better = _still(comparison["better"], score_kind)
    worse = _still(comparison["worse"], score_kind)
    return {
        "better": better,
        "worse": worse,
        "score_gap": comparison.get("score_gap"),
        "verdict": str(comparison.get("verdict") or better["verdict"] or ""),
        "p_better": better["p_better_than_next"],
        "reasons": [
            {
                "feature": int(r["feature"]),
                "name": r.get("name") or "",
                "difference": r["difference"],
                "better": r["better"],
                "worse": r["worse"],
            }
            for r in comparison.get("reasons", [])
        ],
    }


def _stats(stats: Mapping | None) -> dict | None:
    if not stats:
        return None
    rejected = stats.get("rejected") or {}
    return {
        "kind": stats.get("kind"),
        "n_images": stats.get("n_images"),
        "duration_s": stats.get("duration_s"),
        "n_frames": stats.get("n_frames"),
        "n_sampled": stats.get("n_sampled"),
        "n_shots": stats.get("n_shots"),
        "n_duplicates": stats.get("n_duplicates"),
        "n_candidates": stats.get("n_candidates"),
        "dropped": ", ".join(f"{n} {reason.replace('_', ' ')}" for reason, n in rejected.items() if n),
    }


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
    `reasons`: the features separating #1 from #2; optionally `verdict`) are optional. Where a
    record has them, its `p_better_than_next`, `p_first_beats` (floats or None) and `verdict`
    (text) are shown beside it and in "Why #1 beats #2". Returns the report's path.
    """
    page = render_page(
        "rank_report.html",
        source_name=source_name,
        units=SCORE_UNITS.get(score_kind, score_kind),
        channel_id=channel_id,
        stats=_stats(stats),
        comparison=_comparison(comparison, score_kind),
        ranking=[_still(r, score_kind) for r in ranking],
    )
    path = Path(out_dir) / REPORT_FILE
    atomic_write_text(path, page)
    return path
