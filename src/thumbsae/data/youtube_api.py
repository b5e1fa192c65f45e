"""`thumbsae import youtube-api`: YouTube Data API `videos.list` responses -> a manifest of thumbnail URLs.

A `videos.list` item (part `snippet,statistics`) carries everything a thumbnail manifest needs:
`id`, `statistics.viewCount`, `snippet.channelId`, `snippet.publishedAt`, `snippet.title` and
`snippet.thumbnails.high.url` (480x360, the size the published study used). The manifest's `image`
column holds the URLs; `thumbsae fetch` downloads them.

The record checks here (video id, counts, upload date, duplicates, "keep the first N") are shared
with the YouTube-8M importer (`thumbsae.data.youtube8m`), whose shards hold the same API fields.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from thumbsae.data.manifest import Reject, is_url, parse_upload_date, parse_views, write_manifest, write_rejects
from thumbsae.errors import ThumbsaeError, one_line

# The study kept a video only when the API returned all three counts (hidden likes or comments: dropped).
STUDY_COUNTS: tuple[str, ...] = ("viewCount", "likeCount", "commentCount")
COUNT_FIELDS: tuple[str, ...] = STUDY_COUNTS
MANIFEST_COLUMNS: tuple[str, ...] = ("video_id", "image", "views", "channel_id", "upload_date", "title")
THUMBNAIL_SIZES: tuple[str, ...] = ("default", "medium", "high", "standard", "maxres")
# YouTube video ids are 11 characters of [A-Za-z0-9_-]; any such token is accepted (it names a file).
_VIDEO_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass(frozen=True)
class YouTubeImportConfig:
    """What an import keeps.

    keep_first: keep only the first N usable videos, in input order (the study: 2**19 = 524,288 of
    734,619); later usable videos become rejects saying so. None keeps all.
    require_counts: API counts a video must have (the study: views, likes and comments).
    thumbnail: which `snippet.thumbnails` size to use (API import only; the study: `high`).
    """

    keep_first: int | None = None
    require_counts: tuple[str, ...] = STUDY_COUNTS
    thumbnail: str = "high"

    def __post_init__(self) -> None:
        if self.keep_first is not None and (isinstance(self.keep_first, bool) or int(self.keep_first) < 1):
            raise ThumbsaeError(f"importer.keep_first={self.keep_first}: use a positive number of videos, or null for all")
        object.__setattr__(self, "require_counts", tuple(self.require_counts))
        unknown = [c for c in self.require_counts if c not in COUNT_FIELDS]
        if "viewCount" not in self.require_counts or unknown:
            raise ThumbsaeError(
                f"importer.require_counts={list(self.require_counts)}: must include viewCount; "
                f"allowed: {', '.join(COUNT_FIELDS)}"
            )
        if self.thumbnail not in THUMBNAIL_SIZES:
            raise ThumbsaeError(f"importer.thumbnail={self.thumbnail!r}: use one of {', '.join(THUMBNAIL_SIZES)}")


@dataclass(frozen=True)
class VideoRecord:
    """One video as the Data API describes it; `where` names it in rejects (`FILE:ITEM`)."""

    where: str
    video_id: object
    counts: dict[str, object]  # API count name -> value as found (None when absent)
    channel_id: object = None
    published_at: object = None
    title: object = None
    image: str = ""


@dataclass
class Selection:
    """Records in input order -> manifest rows and rejects (every record ends in exactly one).

    Checks each record, then duplicates (the first record with an id claims it, usable or not),
    then `keep_first`.
    """

    config: YouTubeImportConfig
    rows: list[dict] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    first_seen: dict[str, str] = field(default_factory=dict)

    def accept(self, record: VideoRecord, *, media_reason: str | None = None) -> dict | None:
        """The record's manifest row if it is kept, else None (and a reject). `media_reason`: why its
        image is unusable (checked by the caller: a thumbnail of the wrong shape, no URL), or None."""
        row, reason = check_record(record, self.config.require_counts)
        video_id = str(record.video_id or "")
        if reason is None and media_reason is not None:
            reason = media_reason
        if reason is None:
            if video_id in self.first_seen:
                reason = f"duplicate video_id {video_id!r} (first at {self.first_seen[video_id]})"
            elif self.config.keep_first is not None and len(self.rows) >= self.config.keep_first:
                reason = f"after the first {self.config.keep_first} usable videos (keep_first)"
        if video_id and _VIDEO_ID.match(video_id) and video_id not in self.first_seen:
            self.first_seen[video_id] = record.where  # a rejected record still claims its id
        if reason is not None:
            self.rejects.append(Reject(record.where, video_id, record.image, reason))
            return None
        self.rows.append(row)
        return row

    @property
    def n_input(self) -> int:
        return len(self.rows) + len(self.rejects)

    def write(self, out_dir: Path, source: str) -> tuple[Path, Path]:
        """Write `out_dir/manifest.csv` and `out_dir/rejects.csv` (atomically), print the tally.

        Raises `ThumbsaeError` (after writing the rejects) when no record was usable.
        """
        out_dir.mkdir(parents=True, exist_ok=True)
        rejects_csv = write_rejects(self.rejects, out_dir / "rejects.csv")
        if not self.rows:
            first = f"; first: {self.rejects[0].row}: {self.rejects[0].reason}" if self.rejects else ""
            raise ThumbsaeError(f"{source}: no usable video among {self.n_input} records (see {rejects_csv}){first}")
        table = pd.DataFrame(self.rows, columns=list(MANIFEST_COLUMNS))
        manifest_csv = write_manifest(table, out_dir / "manifest.csv")
        print(f"{source}: {len(self.rows)} videos -> {manifest_csv}; {len(self.rejects)} of {self.n_input} "
              f"rejected -> {rejects_csv}", flush=True)
        return manifest_csv, rejects_csv


def check_record(record: VideoRecord, require_counts: Sequence[str] = STUDY_COUNTS) -> tuple[dict | None, str | None]:
    """`(manifest row, None)` for a usable record, else `(None, reason)`.

    `viewCount` is always required, `require_counts` too. The row has `MANIFEST_COLUMNS`: `views`
    an int >= 0, `upload_date` `YYYY-MM-DD` (or "").
    """
    video_id = "" if record.video_id is None else str(record.video_id).strip()
    if not video_id:
        return None, "empty video_id"
    if not _VIDEO_ID.match(video_id):
        return None, f"video_id {video_id[:80]!r} is not a YouTube id (letters, digits, - and _)"
    counts = {}
    for name in ("viewCount", *(c for c in require_counts if c != "viewCount")):  # views first: always needed
        value = record.counts.get(name)
        if value is None or (isinstance(value, str) and not value.strip()):
            return None, f"missing {name}"
        counts[name], reason = parse_views(value)
        if reason is not None:
            return None, f"bad {name}: {reason.removeprefix('views ')}"
    date, reason = parse_upload_date(record.published_at)
    if reason is not None:
        return None, f"bad publishedAt: {reason.split(': ', 1)[-1]}"
    return {
        "video_id": video_id,
        "image": record.image,
        "views": counts["viewCount"],
        "channel_id": _text(record.channel_id),
        "upload_date": date,
        "title": _text(record.title),
    }, None


def _text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def import_youtube_api(
    items_json: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    config: YouTubeImportConfig | None = None,
) -> tuple[Path, Path]:
    """YouTube Data API `videos.list` responses -> `out_dir/manifest.csv` (URLs) + `out_dir/rejects.csv`.

    Inputs: JSON files, each a `videos.list` response (`{"items": [...]}`), a list of responses, or
    a list of items; `.jsonl` files hold one response or item per line. Items are taken in file
    order, then item order. Output rows: `video_id, image` (the `snippet.thumbnails.<size>.url`),
    `views, channel_id, upload_date, title`; every item is in exactly one of the two files. Download
    the images with `thumbsae fetch out_dir/manifest.csv --out DIR`. A file that is not JSON of
    that shape is a one-line `ThumbsaeError` naming it; no usable item at all is one too.
    """
    config = config or YouTubeImportConfig()
    paths = [Path(p) for p in items_json]
    if not paths:
        raise ThumbsaeError("import youtube-api: no ITEMS.json files given")
    selection = Selection(config)
    for path in paths:
        for where, item in _items(path):
            record = api_record(item, where, config.thumbnail)
            selection.accept(record, media_reason=_check_url(record, config.thumbnail))
    return selection.write(Path(out_dir), ", ".join(p.name for p in paths[:3]) + (" ..." if len(paths) > 3 else ""))


def api_record(item: object, where: str, thumbnail: str = "high") -> VideoRecord:
    """A `videos.list` item (dict) -> `VideoRecord` with the thumbnail URL as `image`."""
    if not isinstance(item, dict):
        return VideoRecord(where, None, {}, image="")
    snippet = item.get("snippet") if isinstance(item.get("snippet"), dict) else {}
    statistics = item.get("statistics") if isinstance(item.get("statistics"), dict) else {}
    thumbs = snippet.get("thumbnails") if isinstance(snippet.get("thumbnails"), dict) else {}
    chosen = thumbs.get(thumbnail) if isinstance(thumbs.get(thumbnail), dict) else {}
    return VideoRecord(
        where=where,
        video_id=item.get("id"),
        counts={name: statistics.get(name) for name in COUNT_FIELDS},
        channel_id=snippet.get("channelId"),
        published_at=snippet.get("publishedAt"),
        title=snippet.get("title"),
        image=str(chosen.get("url") or ""),
    )


def _check_url(record: VideoRecord, thumbnail: str) -> str | None:
    if not record.image:
        return f"no snippet.thumbnails.{thumbnail}.url"
    if not is_url(record.image):
        return f"thumbnail URL {record.image[:80]!r} is not http(s)"
    return None


def _items(path: Path) -> Iterator[tuple[str, object]]:
    """`(where, item)` of every item in a response file, in order (`where` = `FILE:N`, N from 0)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ThumbsaeError(f"{path}: cannot read ({one_line(err)})") from err
    try:
        if path.suffix.lower() == ".jsonl":
            documents = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            document = json.loads(text)
            documents = document if isinstance(document, list) else [document]
    except ValueError as err:
        raise ThumbsaeError(f"{path}: not JSON ({one_line(err)})") from err
    n = 0
    for document in documents:
        if isinstance(document, dict) and "items" in document:
            if not isinstance(document["items"], list):
                raise ThumbsaeError(f"{path}: 'items' is not a list; expected a videos.list response")
            items = document["items"]
        elif isinstance(document, dict) and ("id" in document or "snippet" in document):
            items = [document]
        else:
            raise ThumbsaeError(
                f"{path}: expected a videos.list response ({{\"items\": [...]}}), a list of them, or a list of items"
            )
        for item in items:
            yield f"{path.name}:{n}", item
            n += 1
