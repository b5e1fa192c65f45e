"""Feature panels: per high/low feature its top thumbnails above its top reference images.

`write_panels` writes, under `out_dir` (the evaluation's `panels/` folder):

- `high_001_feature_123.png`, ... `low_001_feature_45.png`: one PNG per side feature, ranked by
  group statistic (highest first for `high`, lowest first for `low`). Top row: the feature's first
  `n_images` members (highest activation first; the held-out video outlined in orange), each with
  its views. Bottom row: the `n_images` reference images with the highest latent activation for
  the feature, each with its label. Caption: feature id, name (and how it was named), lift with
  its 95 % CI, q-value, group statistic, n_active.
- `overview/high.png`, `overview/low.png`: the study's overview grids, the top thumbnail of each
  feature labelled with its rank, feature id and group statistic.
- `index.html`: a static page (template `panels_index.html`: relative links only, every text
  escaped) with a High and a Low section, each an overview, a table (feature, name, lift, CI, q,
  n_active, ...) and the panels.

The output is a pure function of the inputs: same inputs, byte-identical files.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
from PIL import Image, ImageDraw, ImageFont, ImageOps

from thumbsae.files import atomic_write_text, write_atomic
from thumbsae.data.images import load_rgb
from thumbsae.errors import ThumbsaeError
from thumbsae.report.html import render_page

SIDES = ("high", "low")
PANEL_NAME = re.compile(r"^(high|low)_\d{3,}_feature_\d+\.png$")
BACKGROUND = (255, 255, 255)
INK = (20, 20, 20)
MUTED = (110, 110, 110)
HELDOUT_OUTLINE = (235, 120, 0)
REQUIRED_COLUMNS = ("feature", "side", "members")


@dataclass(frozen=True)
class PanelLayout:
    """Sizes (pixels) of a panel: tiles, gaps, text heights, fonts."""

    thumb_size: tuple[int, int] = (128, 96)
    gap: int = 6
    margin: int = 12
    caption_font: int = 16
    small_font: int = 12
    overview_columns: int = 10


@dataclass(frozen=True)
class SideFeature:
    """One high or low feature as shown: its row of `feature_groups` plus its rank on its side."""

    side: str
    rank: int
    feature: int
    row: dict
    members: list[str]

    @property
    def panel_file(self) -> str:
        return f"{self.side}_{self.rank:03d}_feature_{self.feature}.png"


def write_panels(
    out_dir: str | Path,
    feature_groups: pd.DataFrame,
    thumbnails: pd.DataFrame,
    reference: pd.DataFrame | None,
    reference_latents: sp.spmatrix | None,
    names: dict[int, dict | str] | None,
    *,
    n_images: int = 11,
    thumb_size: tuple[int, int] = (128, 96),
    stat_label: str = "group median",
) -> Path:
    """Write one PNG per high and low feature, the overview grids and `index.html`.

    Inputs:
        out_dir: the panels folder (created; stale panels from an earlier run are removed).
        feature_groups: one row per tested feature, columns `feature`, `side` ("high"/"low"/""),
            `members` (`;`-joined video_ids, highest activation first), and where present
            `group_stat`, `lift`, `lift_ci_low`, `lift_ci_high`, `q_value`, `p_value`,
            `n_active`, `group_size`, `heldout_video_id`, `heldout_views`.
        thumbnails: `video_id`, `image` (absolute path), optional `views`, `title`.
        reference: `video_id`, `image`, optional `label`, rows in the order of
            `reference_latents`; None for no reference row.
        reference_latents: `[N_reference, F]` sparse latents of the reference images.
        names: feature -> `name_features` entry (or a plain name string).
        n_images: images per row.
        thumb_size: (width, height) of each tile.
        stat_label: what `group_stat` is, for captions ("group median", "group mean", ...).
    Returns:
        the path of `index.html`.
    Raises:
        ThumbsaeError when a column is missing, a member is not among the thumbnails, or an image
        cannot be read.
    """
    out_dir = Path(out_dir)
    layout = PanelLayout(thumb_size=(int(thumb_size[0]), int(thumb_size[1])))
    sides = _side_features(feature_groups)
    thumb_by_id = _thumbnail_lookup(thumbnails)
    for entries in sides.values():
        for entry in entries:
            for vid in entry.members[:n_images]:
                if vid not in thumb_by_id:
                    raise ThumbsaeError(
                        f"feature_groups: feature {entry.feature} member {vid!r} is not in the thumbnails manifest"
                    )
    top_reference = _top_reference_rows(
        [e.feature for entries in sides.values() for e in entries], reference, reference_latents, n_images
    )
    names = names or {}
    tiles = _TileCache(layout.thumb_size)
    fonts = _Fonts(layout)

    (out_dir / "overview").mkdir(parents=True, exist_ok=True)
    written: set[str] = set()
    for side, entries in sides.items():
        for entry in entries:
            panel = _draw_panel(
                entry,
                _name_of(names, entry.feature),
                thumb_by_id,
                reference,
                top_reference[entry.feature],
                n_images,
                layout,
                tiles,
                fonts,
                stat_label,
            )
            _save_png(panel, out_dir / entry.panel_file)
            written.add(entry.panel_file)
        grid = _draw_overview(side, entries, thumb_by_id, layout, tiles, fonts, stat_label)
        _save_png(grid, out_dir / "overview" / f"{side}.png")
    # A re-run with fewer side features must not leave old panels linked from nowhere.
    for stale in sorted(out_dir.iterdir()):
        if PANEL_NAME.match(stale.name) and stale.name not in written:
            stale.unlink()

    index = out_dir / "index.html"
    atomic_write_text(index, _index_html(sides, names, thumb_by_id, stat_label))
    return index


def _side_features(feature_groups: pd.DataFrame) -> dict[str, list[SideFeature]]:
    """Side features ranked from 1: by `side_rank` when given, else by group_stat (high descending,
    low ascending), ties by feature id."""
    missing = [c for c in REQUIRED_COLUMNS if c not in feature_groups.columns]
    if missing:
        raise ThumbsaeError(f"feature_groups: missing column(s) {', '.join(missing)}")
    table = feature_groups.copy()
    table["side"] = table["side"].fillna("").astype(str)
    if "group_stat" not in table.columns:
        table["group_stat"] = np.nan
    sides: dict[str, list[SideFeature]] = {}
    for side in SIDES:
        rows = table[table["side"] == side].copy()
        rows["feature"] = rows["feature"].astype(int)
        key = -rows["group_stat"].astype(float) if side == "high" else rows["group_stat"].astype(float)
        if "side_rank" in rows.columns and rows["side_rank"].notna().all():
            key = rows["side_rank"].astype(float)  # the study's own order, when it gives one
        rows = rows.assign(_key=key.fillna(np.inf)).sort_values(["_key", "feature"], kind="mergesort")
        sides[side] = [
            SideFeature(side, rank, int(rec["feature"]), rec, _split_members(rec["members"]))
            for rank, rec in enumerate(rows.drop(columns="_key").to_dict("records"), start=1)
        ]
    return sides


def _split_members(members) -> list[str]:
    if members is None or (isinstance(members, float) and math.isnan(members)):
        return []
    return [m for m in str(members).split(";") if m]


def _thumbnail_lookup(thumbnails: pd.DataFrame) -> dict[str, dict]:
    """video_id -> its thumbnails row (image, views, title, ...)."""
    for col in ("video_id", "image"):
        if col not in thumbnails.columns:
            raise ThumbsaeError(f"thumbnails: missing column {col}")
    return {str(rec["video_id"]): rec for rec in thumbnails.to_dict("records")}


def _top_reference_rows(
    features: list[int], reference: pd.DataFrame | None, latents: sp.spmatrix | None, n_images: int
) -> dict[int, list[tuple[int, float]]]:
    """feature -> [(reference row, activation)] of its `n_images` highest positive activations."""
    if reference is None or latents is None or not features:
        return {f: [] for f in features}
    latents_csc = sp.csc_matrix(latents)
    if latents_csc.shape[0] != len(reference):
        raise ThumbsaeError(
            f"reference latents have {latents_csc.shape[0]} rows but the reference set has {len(reference)} images"
        )
    top: dict[int, list[tuple[int, float]]] = {}
    for f in features:
        if f >= latents_csc.shape[1]:
            raise ThumbsaeError(f"feature {f} is outside the reference latents ({latents_csc.shape[1]} features)")
        start, stop = latents_csc.indptr[f], latents_csc.indptr[f + 1]
        rows_N, acts_N = latents_csc.indices[start:stop], latents_csc.data[start:stop]
        keep = acts_N > 0
        rows_N, acts_N = rows_N[keep], acts_N[keep]
        # Highest activation first; equal activations by reference order, for stable output.
        order = np.lexsort((rows_N, -acts_N))[:n_images]
        top[f] = [(int(rows_N[i]), float(acts_N[i])) for i in order]
    return top


def _name_of(names: dict, feature: int) -> dict:
    entry = names.get(feature, names.get(str(feature), ""))
    if isinstance(entry, dict):
        return entry
    return {"name": str(entry or ""), "source": "given" if entry else "none"}


class _Fonts:
    """PIL's built-in scalable font (works offline) at the layout's sizes."""

    def __init__(self, layout: PanelLayout):
        self.caption = ImageFont.load_default(size=layout.caption_font)
        self.small = ImageFont.load_default(size=layout.small_font)


class _TileCache:
    """Decoded, padded tiles by path: thumbnails shared by many features are read once."""

    def __init__(self, size: tuple[int, int]):
        self.size = size
        self._tiles: dict[str, Image.Image] = {}

    def get(self, path: str) -> Image.Image:
        if path not in self._tiles:
            try:
                image = load_rgb(path)
            except ThumbsaeError as err:
                raise ThumbsaeError(f"panels: {err}") from err
            self._tiles[path] = ImageOps.pad(image, self.size, method=Image.Resampling.BICUBIC, color=BACKGROUND)
        return self._tiles[path]


def _fit_text(text: str, font: ImageFont.FreeTypeFont, width: int) -> str:
    """`text` cut with an ellipsis so that it fits in `width` pixels."""
    text = " ".join(str(text).split())
    if font.getlength(text) <= width:
        return text
    while text and font.getlength(text + "…") > width:
        text = text[:-1]
    return text + "…"


def _count(value) -> str:
    """A view count (or any statistic) in a few characters: 38685 -> '38.7k'."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return "n/a"
    if not math.isfinite(v):
        return "n/a"
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= scale:
            return f"{v / scale:.1f}{suffix}"
    return f"{v:.0f}" if float(v).is_integer() else f"{v:.3g}"


def _number(value, fmt: str) -> str:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return "n/a"
    return format(v, fmt) if math.isfinite(v) else "n/a"


def _lift_text(row: dict) -> str:
    lift = _number(row.get("lift"), ".2f")
    low, high = _number(row.get("lift_ci_low"), ".2f"), _number(row.get("lift_ci_high"), ".2f")
    ci = f" (95% CI {low}-{high})" if "n/a" not in (low, high) else ""
    return f"lift {lift}x{ci}"


def _raw_stat(row: dict):
    """The group statistic in views: `group_stat_raw` when the primary analysis is adjusted."""
    return row.get("group_stat_raw", row.get("group_stat"))


def _group_views(row: dict) -> str:
    text = f"{_count(_raw_stat(row))} views"
    if "group_stat_raw" in row:
        text += f" (adjusted {_number(row.get('group_stat'), '.3g')})"
    return text


def _name_text(name: dict) -> str:
    text = name.get("name") or "(unnamed)"
    source = name.get("source", "none")
    if source == "reference_label" and name.get("share") is not None:
        return f"{text} ({name['share']:.0%} of top reference images)"
    if source == "text":
        return f"{text} (CLIP text)"
    return text


def _draw_panel(
    entry: SideFeature,
    name: dict,
    thumb_by_id: dict[str, dict],
    reference: pd.DataFrame | None,
    top_reference: list[tuple[int, float]],
    n_images: int,
    layout: PanelLayout,
    tiles: _TileCache,
    fonts: _Fonts,
    stat_label: str,
) -> Image.Image:
    """One feature's panel: caption, top thumbnails row, top reference images row."""
    tw, th = layout.thumb_size
    m, gap = layout.margin, layout.gap
    line_c, line_s = layout.caption_font + 6, layout.small_font + 4
    width = 2 * m + n_images * tw + (n_images - 1) * gap
    caption_h = 3 * line_c
    row_h = line_s + th + line_s
    height = m + caption_h + 2 * row_h + gap + m
    panel = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(panel)
    row = entry.row
    text_w = width - 2 * m

    lines = [
        f"feature {entry.feature} · {entry.side} #{entry.rank} · {_name_text(name)}",
        f"{_lift_text(row)} · q = {_number(row.get('q_value'), '.3g')} · p = {_number(row.get('p_value'), '.3g')}",
        f"{stat_label} {_group_views(row)} · n_active {_number(row.get('n_active'), '.0f')}"
        f" · group size {_number(row.get('group_size'), '.0f')} · held-out {row.get('heldout_video_id', '')}"
        f" ({_count(row.get('heldout_views'))} views)",
    ]
    y = m
    for i, line in enumerate(lines):
        draw.text((m, y), _fit_text(line, fonts.caption, text_w), fill=INK if i == 0 else MUTED, font=fonts.caption)
        y += line_c

    heldout = str(row.get("heldout_video_id", ""))
    draw.text((m, y), "top thumbnails (highest activation first; held-out outlined)", fill=MUTED, font=fonts.small)
    y += line_s
    for i, vid in enumerate(entry.members[:n_images]):
        x = m + i * (tw + gap)
        thumb = thumb_by_id[vid]
        panel.paste(tiles.get(str(thumb["image"])), (x, y))
        if vid == heldout:
            draw.rectangle([x, y, x + tw - 1, y + th - 1], outline=HELDOUT_OUTLINE, width=3)
        draw.text(
            (x, y + th + 1),
            _fit_text(f"{_count(thumb.get('views'))} views", fonts.small, tw),
            fill=INK,
            font=fonts.small,
        )
    y += th + line_s + gap

    draw.text((m, y), "top reference images", fill=MUTED, font=fonts.small)
    y += line_s
    if not top_reference:
        draw.text((m, y + th // 2), "(no reference image activates this feature)", fill=MUTED, font=fonts.small)
    for i, (ref_row, _act) in enumerate(top_reference):
        x = m + i * (tw + gap)
        ref = reference.iloc[ref_row]
        panel.paste(tiles.get(str(ref["image"])), (x, y))
        label = ref["label"] if "label" in reference.columns and pd.notna(ref["label"]) else ref["video_id"]
        draw.text((x, y + th + 1), _fit_text(str(label), fonts.small, tw), fill=INK, font=fonts.small)
    return panel


def _draw_overview(
    side: str,
    entries: list[SideFeature],
    thumb_by_id: dict[str, dict],
    layout: PanelLayout,
    tiles: _TileCache,
    fonts: _Fonts,
    stat_label: str,
) -> Image.Image:
    """The study's overview grid: each feature's top thumbnail labelled with its group statistic."""
    tw, th = layout.thumb_size
    m, gap, line_s = layout.margin, layout.gap, layout.small_font + 4
    cols = max(1, min(layout.overview_columns, len(entries)))
    rows = max(1, math.ceil(len(entries) / cols))
    cell_h = th + 2 * line_s
    width = 2 * m + cols * tw + (cols - 1) * gap
    title_h = layout.caption_font + 8
    height = m + title_h + rows * cell_h + (rows - 1) * gap + m
    grid = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(grid)
    title = f"{side} features: top thumbnail, {stat_label}" if entries else f"no {side} features"
    draw.text((m, m), _fit_text(title, fonts.caption, width - 2 * m), fill=INK, font=fonts.caption)
    for i, entry in enumerate(entries):
        x = m + (i % cols) * (tw + gap)
        y = m + title_h + (i // cols) * (cell_h + gap)
        if entry.members:
            grid.paste(tiles.get(str(thumb_by_id[entry.members[0]]["image"])), (x, y))
        draw.text(
            (x, y + th + 1),
            _fit_text(f"#{entry.rank} feature {entry.feature}", fonts.small, tw),
            fill=MUTED,
            font=fonts.small,
        )
        draw.text(
            (x, y + th + 1 + line_s),
            _fit_text(_number(_raw_stat(entry.row), ",.0f"), fonts.small, tw),
            fill=INK,
            font=fonts.small,
        )
    return grid


def _index_html(sides: dict[str, list[SideFeature]], names: dict, thumb_by_id: dict[str, dict], stat_label: str) -> str:
    """The static index page (template `panels_index.html`; autoescaped, relative links only)."""
    context_sides = []
    for side in SIDES:
        entries = []
        for entry in sides[side]:
            row, name = entry.row, _name_of(names, entry.feature)
            top_title = ""
            if entry.members:
                title = thumb_by_id.get(entry.members[0], {}).get("title", "")
                top_title = "" if title is None or (isinstance(title, float) and math.isnan(title)) else str(title)
            entries.append(
                {
                    "rank": entry.rank,
                    "feature": entry.feature,
                    "panel": entry.panel_file,
                    "name": str(name.get("name", "")),
                    "source": str(name.get("source", "none")),
                    "lift": row.get("lift"),
                    "ci_low": row.get("lift_ci_low"),
                    "ci_high": row.get("lift_ci_high"),
                    "q_value": row.get("q_value"),
                    "n_active": row.get("n_active"),
                    "raw_stat": _raw_stat(row),
                    "top_title": top_title,
                    "caption": f"{side} #{entry.rank}: feature {entry.feature} · {_name_text(name)} · {_lift_text(row)}",
                }
            )
        context_sides.append({"side": side, "overview": f"overview/{side}.png", "entries": entries})
    return render_page("panels_index.html", sides=context_sides, stat_label=stat_label)


def _save_png(image: Image.Image, path: Path) -> None:
    """Save `image` as PNG atomically (PIL writes no timestamp, so the bytes are reproducible)."""
    write_atomic(path, lambda tmp: image.save(tmp, format="PNG"))
