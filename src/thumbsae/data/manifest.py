"""Reading image sets (CSV / Parquet manifests and folders), validating every row, writing rejects.

A bad row is never dropped silently: it becomes a `Reject` (row, video_id, image, reason) written
to a rejects CSV, its count is printed, and `strict=True` turns any reject into an error.
"""

from __future__ import annotations

import codecs
import csv
import datetime as dt
import errno
import io
import math
import os
import re
import stat
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path

import numpy as np
import pandas as pd

from thumbsae.data.images import (
    DEFAULT_MAX_DECODE_BYTES,
    DEFAULT_MAX_PIXELS,
    REASON_NOT_FILE,
    REASON_UNREADABLE,
    ImageDecodeError,
    load_rgb,
)
from thumbsae.errors import ThumbsaeError, one_line
from thumbsae.files import atomic_path, shown_path

KINDS = ("thumbnails", "reference", "images")
REQUIRED_COLUMNS = ("video_id", "image")
TEXT_COLUMNS = ("video_id", "image", "channel_id", "upload_date", "title", "label")
REJECT_COLUMNS = ("row", "video_id", "image", "reason")
MANIFEST_SUFFIXES = (".csv", ".parquet", ".pq")
# Raster formats a folder of images may hold; other files (README, .DS_Store) are not images.
IMAGE_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".webp", ".gif", ".bmp", ".tif", ".tiff",
     ".ppm", ".pgm", ".pbm", ".pnm", ".tga", ".qoi", ".avif"}
)
_INT64_MAX = np.iinfo(np.int64).max
_HTTP_URL = re.compile(r"^https?://", re.IGNORECASE)
_ANY_URL = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")
# CSV delimiters tried on the header, in order; the name goes into reject reasons.
_DELIMITER_NAMES = {",": "comma", ";": "semicolon", "\t": "tab", "|": "bar"}


class RejectedRowsError(ThumbsaeError):
    """`strict=True` and at least one row was rejected."""


@dataclass(frozen=True)
class Reject:
    """One unusable row: `row` is the 1-based data row of a manifest, or the path within a folder."""

    row: int | str
    video_id: str
    image: str
    reason: str


@dataclass(frozen=True)
class ValidatedSet:
    """Rows that passed validation (`rows`, input order) and those that did not (`rejects`).

    `row_numbers[i]` is the manifest row (or folder path) of `rows.iloc[i]`, for later rejects.
    """

    rows: pd.DataFrame
    rejects: tuple[Reject, ...]
    row_numbers: tuple[int | str, ...]
    n_input: int
    source: str


def is_url(image: str) -> bool:
    """True when `image` is an `http(s)://` URL (fetched by `thumbsae fetch`, not read directly)."""
    return bool(_HTTP_URL.match(image))


def load_image_set(
    source: str | os.PathLike,
    *,
    kind: str = "thumbnails",
    rejects_path: str | os.PathLike | None = None,
    strict: bool = False,
    check_images: bool = True,
    allow_urls: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_decode_bytes: int = DEFAULT_MAX_DECODE_BYTES,
    workers: int | None = None,
) -> pd.DataFrame:
    """Read and validate an image set: a CSV / Parquet manifest, or a folder of images.

    Inputs: `source` a `.csv` / `.parquet` manifest (relative `image` paths resolve against its
    folder) or a folder searched recursively (first sub-folder -> `label`, relative posix path ->
    `video_id`, sorted); `kind` `"thumbnails"` (needs `views`), `"reference"` or `"images"`;
    `check_images` decodes every image (`load_rgb`, `workers` threads); `allow_urls` keeps
    `http(s)` images as they are instead of failing (they are then not decoded).
    Output: the N valid rows, input order, index 0..N-1, all columns kept; `image` absolute path
    strings, `views` int64 (thumbnails), `upload_date` `YYYY-MM-DD` strings ("" when absent).
    Rejects (`row, video_id, image, reason`) go to `rejects_path` (always written when given) and
    their count is printed; `strict=True` with any reject raises `RejectedRowsError`; a set with
    no usable row raises `ThumbsaeError`.
    """
    checked = validate_image_set(
        source, kind=kind, check_images=check_images, allow_urls=allow_urls, max_pixels=max_pixels,
        max_decode_bytes=max_decode_bytes, workers=workers,
    )
    report_rejects(checked, rejects_path=rejects_path, strict=strict)
    return checked.rows


def report_rejects(
    checked: ValidatedSet, *, rejects_path: str | os.PathLike | None = None, strict: bool = False, unit: str = "rows"
) -> None:
    """Write `checked.rejects` to `rejects_path` (atomic), print their count, enforce `strict`."""
    rejects = checked.rejects
    if rejects_path is not None:
        write_rejects(rejects, rejects_path)
        rejects_path = shown_path(rejects_path)
    if rejects or rejects_path is not None:
        where = f" -> {rejects_path}" if rejects_path is not None else ""
        first = f" (first: {_describe(rejects[0])})" if rejects and rejects_path is None else ""
        print(f"{checked.source}: {len(rejects)} of {checked.n_input} {unit} rejected{where}{first}", flush=True)
    if strict and rejects:
        see = f"; all in {rejects_path}" if rejects_path is not None else ""
        raise RejectedRowsError(
            f"{checked.source}: {len(rejects)} of {checked.n_input} {unit} rejected (strict); "
            f"first: {_describe(rejects[0])}{see}"
        )
    if len(checked.rows) == 0:
        see = f" (see {rejects_path})" if rejects_path is not None else ""
        raise ThumbsaeError(f"{checked.source}: no usable {unit}: all {checked.n_input} rejected{see}")


def _describe(reject: Reject) -> str:
    return f"row {reject.row} (video_id {reject.video_id!r}): {reject.reason}"


def write_rejects(rejects: tuple[Reject, ...] | list[Reject], path: str | os.PathLike) -> Path:
    """Write rejects as CSV (`row, video_id, image, reason`; header only when there are none)."""
    table = pd.DataFrame([(r.row, r.video_id, r.image, r.reason) for r in rejects], columns=list(REJECT_COLUMNS))
    with atomic_path(path) as tmp:
        _to_csv(table, tmp)
    return Path(path)


def _to_csv(table: pd.DataFrame, path: Path) -> None:
    """`to_csv`, quoting every field when some text holds a lone `\\r`.

    The csv module quotes only the characters of its `\\n` line terminator, and pandas' reader
    would split an unquoted `\\r` into a new row.
    """
    has_cr = any(
        table[c].map(lambda v: isinstance(v, str) and "\r" in v).any()
        for c in table.columns if not pd.api.types.is_numeric_dtype(table[c])
    )
    table.to_csv(path, index=False, quoting=csv.QUOTE_ALL if has_cr else csv.QUOTE_MINIMAL)


def validate_image_set(
    source: str | os.PathLike,
    *,
    kind: str = "thumbnails",
    check_images: bool = True,
    allow_urls: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_decode_bytes: int = DEFAULT_MAX_DECODE_BYTES,
    workers: int | None = None,
) -> ValidatedSet:
    """`load_image_set` without side effects: returns the valid rows and the rejects."""
    if kind not in KINDS:
        raise ThumbsaeError(f"unknown image set kind {kind!r}; expected one of {', '.join(KINDS)}")
    path = Path(source)
    if path.is_dir():
        if kind == "thumbnails":
            raise ThumbsaeError(
                f"{source}: a folder has no view counts; a thumbnail set must be a manifest with a 'views' column"
            )
        table, row_numbers, problems = _scan_folder(path)
        base_dir = path
    elif path.is_file():
        table, problems = _read_table(path, kind=kind)
        row_numbers = list(range(1, len(table) + 1))
        base_dir = path.parent
    else:
        raise ThumbsaeError(f"{source}: no such manifest or folder")
    if len(table) == 0:
        raise ThumbsaeError(f"{source}: no rows" if path.is_file() else f"{source}: no images found")
    rows, reasons = _check_rows(table, kind=kind, base_dir=base_dir, row_numbers=row_numbers,
                                allow_urls=allow_urls, source=str(source))
    for i, problem in problems.items():
        reasons[i].insert(0, problem)
    if check_images:
        _check_decodable(rows, reasons, max_pixels=max_pixels, max_decode_bytes=max_decode_bytes, workers=workers)
    keep = [not r for r in reasons]
    rejects = tuple(
        Reject(row_numbers[i], str(rows["video_id"].iat[i]), _as_text(table["image"].iat[i]), "; ".join(reasons[i]))
        for i in range(len(rows)) if reasons[i]
    )
    valid = rows.loc[keep].reset_index(drop=True)
    kept_rows = tuple(n for n, k in zip(row_numbers, keep) if k)
    return ValidatedSet(valid, rejects, kept_rows, len(table), str(source))


def read_manifest(path: str | os.PathLike, *, kind: str = "thumbnails") -> pd.DataFrame:
    """Read a manifest as it is on disk (no validation), one row per data row.

    The contract's text columns (and `views` for thumbnails) come back as strings exactly as
    written ("" when empty) so validation sees what the user wrote; other columns keep pandas'
    inferred types. A CSV row with more fields than the header keeps its first fields here (and
    is a reject in `validate_image_set`). Raises `ThumbsaeError` for an unknown suffix, an
    unreadable file, or a missing required column.
    """
    return _read_table(path, kind=kind)[0]


def _read_table(path: str | os.PathLike, *, kind: str) -> tuple[pd.DataFrame, dict[int, str]]:
    """`read_manifest`, plus the problems found while splitting rows: {0-based row: reason}."""
    path = Path(path)
    suffix = path.suffix.lower()
    raw_columns = TEXT_COLUMNS + (("views",) if kind == "thumbnails" else ())
    problems: dict[int, str] = {}
    if suffix == ".csv":
        table, problems = _read_csv(path, raw_columns)
    elif suffix in (".parquet", ".pq"):
        try:
            table = pd.read_parquet(path)
        except Exception as err:  # pyarrow raises its own types for a corrupt or non-Parquet file
            raise ThumbsaeError(f"{path}: cannot read Parquet: {one_line(err)}") from None
        table.columns = [str(c) for c in table.columns]
        table = table.reset_index(drop=True)
    else:
        raise ThumbsaeError(
            f"{path}: unknown manifest type {path.suffix or '(no suffix)'!r}; "
            "use .csv or .parquet, or a folder of images"
        )
    required = REQUIRED_COLUMNS + (("views",) if kind == "thumbnails" else ())
    for column in required:
        if column not in table.columns:
            found = ", ".join(map(repr, table.columns)) or "none"
            raise ThumbsaeError(f"{path}: missing required column {column!r} (found: {found})")
    return table, problems


def _decode_text(path: Path) -> str:
    """The manifest's text: UTF-8 (with or without BOM), or UTF-16 when it starts with a UTF-16 BOM."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ThumbsaeError(f"{path}: cannot read ({err.strerror or err})") from None
    encoding = "utf-16" if data[:2] in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE) else "utf-8-sig"
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise ThumbsaeError(
            f"{path}: not {encoding.upper().replace('-SIG', '')} text (byte 0x{data[err.start]:02x} on line {line}); "
            "save the manifest as UTF-8 CSV"
        ) from None


def _read_csv(path: Path, raw_columns: tuple[str, ...]) -> tuple[pd.DataFrame, dict[int, str]]:
    """Split a CSV manifest with the csv module (every row, whatever its width), then build the frame.

    The delimiter is the first of `, ; tab |` that splits the header into both required columns
    (Excel writes `;` in some locales). Blank lines are not rows. A row with more fields than the
    header keeps its first ones and gets a problem; a shorter row is padded with empty fields.
    Contract text columns stay strings as written; pandas infers the types of the others.
    """
    text = _decode_text(path)
    delimiter = _delimiter(text)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        records = [record for record in reader if record]  # a blank line is no row
    except csv.Error as err:
        raise ThumbsaeError(f"{path}: cannot parse CSV on line {reader.line_num}: {one_line(err)}") from None
    if not records:
        raise ThumbsaeError(f"{path}: empty file (no header row)")
    header, rows = [name.strip() for name in records[0]], records[1:]
    duplicated = sorted({c for c in header if header.count(c) > 1})
    if duplicated:
        raise ThumbsaeError(f"{path}: duplicate column name(s) {', '.join(map(repr, duplicated))}")
    width = len(header)
    problems: dict[int, str] = {}
    if any(len(row) != width for row in rows):
        for i, row in enumerate(rows):
            if len(row) > width:
                problems[i] = (
                    f"{len(row)} fields, but the header has {width} "
                    f"(an unquoted {_DELIMITER_NAMES[delimiter]} inside a value?)"
                )
                rows[i] = row[:width]
            elif len(row) < width:
                rows[i] = row + [""] * (width - len(row))
    fields = list(zip(*rows)) if rows else [()] * width  # column j: the j-th field of every row
    other = [j for j, name in enumerate(header) if name not in raw_columns]
    inferred = _infer_types([fields[j] for j in other], len(rows)) if other else None
    columns = {}
    for j, name in enumerate(header):
        if name in raw_columns:
            columns[name] = pd.Series(fields[j], dtype=object, index=pd.RangeIndex(len(rows)))
        else:
            columns[name] = inferred.iloc[:, other.index(j)]
    return pd.DataFrame(columns, index=pd.RangeIndex(len(rows)), columns=header), problems


def _delimiter(text: str) -> str:
    for delimiter in _DELIMITER_NAMES:
        try:
            first = next((r for r in csv.reader(io.StringIO(text, newline=""), delimiter=delimiter) if r), [])
        except csv.Error:
            continue
        if set(REQUIRED_COLUMNS) <= {name.strip() for name in first}:
            return delimiter
    return ","


def _infer_types(columns: list[tuple[str, ...]], n_rows: int) -> pd.DataFrame:
    """pandas' own type inference on already-split columns of `n_rows` fields each, index 0..N-1."""
    buffer = io.StringIO()
    # Every field quoted: a \r or \n inside a value can never split a row (pandas infers the same types).
    writer = csv.writer(buffer, quoting=csv.QUOTE_ALL, lineterminator="\n")
    writer.writerow([f"c{j}" for j in range(len(columns))])
    writer.writerows(zip(*columns))
    buffer.seek(0)
    frame = pd.read_csv(buffer, skip_blank_lines=False, dtype=None)
    if len(frame) != n_rows:  # cannot happen with csv-written input; never misalign rows
        raise ThumbsaeError(f"internal: type inference gave {len(frame)} rows for {n_rows}")
    return frame


def _scan_folder(root: Path) -> tuple[pd.DataFrame, list[str], dict[int, str]]:
    """Images under `root` (recursive, hidden entries skipped) sorted by relative posix path.

    Every non-hidden entry with an image suffix is a row, and so is every folder that cannot be
    listed; what is not a readable regular file (a folder named `x.png`, a broken or looping
    symbolic link, a FIFO) comes back as a problem {row: reason} instead of being skipped.
    Folder links are followed once each (a loop is not walked twice).
    """
    entries: dict[str, str | None] = {}
    unreadable: list[OSError] = []
    seen: set[tuple[int, int]] = set()
    for dirpath, dirnames, filenames in os.walk(root, onerror=unreadable.append, followlinks=True):
        try:
            info = os.stat(dirpath)
        except OSError as err:
            unreadable.append(err)
            dirnames[:] = []
            continue
        if (info.st_dev, info.st_ino) in seen:
            dirnames[:] = []
            continue
        seen.add((info.st_dev, info.st_ino))
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        rel_dir = Path(os.path.relpath(dirpath, root))
        for name in [*dirnames, *filenames]:
            if name.startswith(".") or Path(name).suffix.lower() not in IMAGE_SUFFIXES:
                continue
            entries[(rel_dir / name).as_posix().removeprefix("./")] = _entry_problem(Path(dirpath) / name)
    for err in unreadable:
        rel = Path(os.path.relpath(err.filename, root)).as_posix() if err.filename else "."
        entries[rel] = f"cannot list folder: {err.strerror or err}"
    found = sorted(entries)
    root_abs = os.path.abspath(root)
    table = pd.DataFrame(
        {
            "video_id": found,
            "image": [os.path.join(root_abs, *rel.split("/")) for rel in found],
            # ImageNet layout: the class is the first folder below the root.
            "label": [rel.split("/")[0] if "/" in rel else "" for rel in found],
        },
        columns=["video_id", "image", "label"],
    )
    problems = {i: entries[rel] for i, rel in enumerate(found) if entries[rel] is not None}
    return table, found, problems


def _entry_problem(path: Path) -> str | None:
    """None for a regular file (or a link to one), else why the entry is no image file."""
    try:
        info = path.stat()
    except FileNotFoundError:
        return "broken symbolic link (its target does not exist)"
    except OSError as err:
        if err.errno == errno.ELOOP:
            return "symbolic link loop"
        return f"{REASON_UNREADABLE}: {err.strerror or err}"
    if stat.S_ISDIR(info.st_mode):
        return f"{REASON_NOT_FILE} (a folder)"
    if not stat.S_ISREG(info.st_mode):
        return REASON_NOT_FILE
    return None


def _is_missing(value: object) -> bool:
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    return isinstance(value, (float, np.floating)) and math.isnan(value)


def _as_text(value: object) -> str:
    if _is_missing(value):
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))  # a Parquet id column that pandas turned into floats
    return str(value)


def parse_views(value: object) -> tuple[int | None, str | None]:
    """`(views, None)` for a count that is an integer >= 0, else `(None, reason)`."""
    if _is_missing(value):
        return None, "empty views"
    if isinstance(value, (bool, np.bool_)):
        return None, f"views is not a number: {value!r}"
    if isinstance(value, (int, np.integer)):
        count = int(value)
    else:
        text = str(value).strip()
        if not text:
            return None, "empty views"
        try:
            number = Decimal(text)
        except InvalidOperation:
            return None, f"views is not a number: {text!r}"
        if not number.is_finite():
            return None, f"views is not a finite number: {text!r}"
        if number != number.to_integral_value():
            return None, f"views is fractional: {text}"
        count = int(number)
    if count < 0:
        return None, f"views is negative: {count}"
    if count > _INT64_MAX:
        return None, f"views is too large: {count}"
    return count, None


def parse_upload_date(value: object) -> tuple[str, str | None]:
    """`("YYYY-MM-DD", None)` for an ISO-8601 date or timestamp, `("", None)` when absent, else a reason."""
    if _is_missing(value):
        return "", None
    if isinstance(value, (dt.datetime, pd.Timestamp)):
        return value.date().isoformat(), None
    if isinstance(value, dt.date):
        return value.isoformat(), None
    if isinstance(value, np.datetime64):
        return pd.Timestamp(value).date().isoformat(), None
    text = str(value).strip()
    if not text:
        return "", None
    try:
        return dt.date.fromisoformat(text).isoformat(), None
    except ValueError:
        pass
    try:
        return dt.datetime.fromisoformat(text).date().isoformat(), None
    except ValueError:
        return "", f"upload_date is not an ISO-8601 date: {text!r}"


def _check_rows(
    table: pd.DataFrame, *, kind: str, base_dir: Path, row_numbers: list, allow_urls: bool, source: str
) -> tuple[pd.DataFrame, list[list[str]]]:
    """Normalise every row's contract columns; returns the table and each row's reasons (empty = valid).

    Duplicates: the first row with a `video_id` claims it, whatever else is wrong with that row.
    """
    n = len(table)
    base = os.path.abspath(base_dir)
    reasons: list[list[str]] = [[] for _ in range(n)]
    out = table.copy()

    video_ids = [_as_text(v) for v in table["video_id"]]
    first_seen: dict[str, int | str] = {}
    for i, video_id in enumerate(video_ids):
        if not video_id.strip():
            reasons[i].append("empty video_id")
        elif video_id in first_seen:
            reasons[i].append(f"duplicate video_id {video_id!r} (first at row {first_seen[video_id]})")
        else:
            first_seen[video_id] = row_numbers[i]
    out["video_id"] = video_ids

    images = []
    for i, value in enumerate(table["image"]):
        image = _as_text(value).strip()
        url = _ANY_URL.match(image)
        if not image:
            reasons[i].append("empty image")
        elif is_url(image):
            if not allow_urls:
                raise ThumbsaeError(
                    f"{source} row {row_numbers[i]}: image {image!r} is a URL; download the images first with "
                    f"`thumbsae fetch {source} --out DIR` and use DIR/manifest.csv"
                )
        elif url:
            reasons[i].append(f"unsupported URL scheme {url.group(1)!r} (only http and https are fetched)")
        else:
            image = os.path.normpath(os.path.join(base, os.path.expanduser(image)))
        images.append(image)
    out["image"] = images

    if kind == "thumbnails":
        views = np.zeros(n, dtype=np.int64)
        for i, value in enumerate(table["views"]):
            count, reason = parse_views(value)
            if reason:
                reasons[i].append(reason)
            else:
                views[i] = count
        out["views"] = views

    if "upload_date" in table.columns:
        dates = []
        for i, value in enumerate(table["upload_date"]):
            date, reason = parse_upload_date(value)
            if reason:
                reasons[i].append(reason)
            dates.append(date)
        out["upload_date"] = dates

    for column in ("channel_id", "title", "label"):
        if column in table.columns:
            out[column] = [_as_text(v) for v in table[column]]
    return out, reasons


def _check_decodable(
    rows: pd.DataFrame, reasons: list[list[str]], *, max_pixels: int, max_decode_bytes: int, workers: int | None
) -> None:
    """Decode every still-valid local image in a thread pool (PIL releases the GIL while decoding).

    Memory stays bounded whatever `workers` is: each decode holds its cost from `DECODE_BUDGET`.
    """
    images = rows["image"].tolist()
    todo = [i for i, image in enumerate(images) if not reasons[i] and not is_url(image)]

    def failure(i: int) -> str | None:
        try:
            load_rgb(images[i], max_pixels=max_pixels, max_decode_bytes=max_decode_bytes)
        except ImageDecodeError as err:
            return err.reason
        return None

    n_workers = workers if workers is not None else min(16, (os.cpu_count() or 1) * 2)
    with ThreadPoolExecutor(max_workers=max(1, n_workers)) as pool:
        for i, reason in zip(todo, pool.map(failure, todo, chunksize=1)):
            if reason:
                reasons[i].append(reason)


def write_manifest(table: pd.DataFrame, path: str | os.PathLike, *, relative_images: bool = False) -> Path:
    """Write an image set as a `.csv` or `.parquet` manifest (by suffix), atomically.

    `relative_images=True` stores `image` paths inside the manifest's folder relative to it (a
    portable folder); paths elsewhere and URLs stay as they are. Reading it back with
    `load_image_set` gives the same frame.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in MANIFEST_SUFFIXES:
        raise ThumbsaeError(f"{path}: unknown manifest type {path.suffix!r}; use .csv or .parquet")
    table = table.reset_index(drop=True)
    if relative_images and "image" in table.columns:
        table = table.copy()
        table["image"] = [_relative_to(image, path.parent) for image in table["image"]]
    with atomic_path(path) as tmp:
        if suffix == ".csv":
            _to_csv(table, tmp)
        else:
            table.to_parquet(tmp, index=False)
    return path


def _relative_to(image: str, folder: Path) -> str:
    if is_url(image):
        return image
    folder_abs = os.path.abspath(folder)
    image_abs = os.path.abspath(image)
    if os.path.commonpath([folder_abs, image_abs]) != folder_abs:
        return image
    return Path(os.path.relpath(image_abs, folder_abs)).as_posix()

