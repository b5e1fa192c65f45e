"""Fuzzing the manifest reader: random bytes, CSV dialects and encodings.

Whatever the file holds, reading it either fails with one `ThumbsaeError` line or accounts for
every row: each lands in exactly one of the valid rows and the rejects, and so in exactly one of
the output manifest and the rejects file.
"""

from __future__ import annotations

import csv
import io
import itertools

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from PIL import Image

from thumbsae.data import fetch_manifest, validate_image_set, write_manifest, write_rejects
from thumbsae.errors import ThumbsaeError

_counter = itertools.count()
FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp(f"fuzz{next(_counter)}")
    Image.fromarray(np.full((8, 8, 3), 90, np.uint8)).save(folder / "a.png")
    return folder


def _accounted(checked) -> list:
    """Row labels of the valid rows and the rejects, sorted (each must appear once)."""
    return sorted([*checked.row_numbers, *(r.row for r in checked.rejects)])


def _assert_outputs_hold_every_row(checked, folder) -> None:
    manifest = write_manifest(checked.rows, folder / "out" / "manifest.csv", relative_images=True)
    rejects = write_rejects(checked.rejects, folder / "out" / "rejects.csv")
    n_kept = len(pd.read_csv(manifest, dtype=str, keep_default_na=False))
    n_rejected = len(pd.read_csv(rejects, dtype=str, keep_default_na=False))
    assert (n_kept, n_rejected) == (len(checked.rows), len(checked.rejects))
    assert n_kept + n_rejected == checked.n_input


@FUZZ
@given(
    data=st.binary(max_size=600),
    kind=st.sampled_from(["thumbnails", "reference", "images"]),
    suffix=st.sampled_from([".csv", ".csv", ".parquet"]),
)
def test_random_bytes_never_crash_and_never_lose_a_row(tmp_path_factory, data, kind, suffix):
    folder = _folder(tmp_path_factory)
    path = folder / f"m{suffix}"
    path.write_bytes(b"video_id,image,views\n" + data if data[:1] != b"\xff" else data)
    try:
        checked = validate_image_set(path, kind=kind, check_images=False)
    except ThumbsaeError as err:
        assert "\n" not in str(err) and str(path) in str(err)
        return
    assert _accounted(checked) == list(range(1, checked.n_input + 1))
    _assert_outputs_hold_every_row(checked, folder)


_FIELD = st.text(st.characters(blacklist_categories=("Cs",)), max_size=8)
_VIEWS = st.one_of(st.integers(-5, 10**12).map(str), _FIELD, st.just("1,500"))
_EXTRA_NAMES = ["title", "channel_id", "upload_date", "motifs", "warmth", "label", "note"]


@st.composite
def manifests(draw):
    """(bytes, number of data rows) of a CSV in a random dialect and encoding."""
    extras = draw(st.lists(st.sampled_from(_EXTRA_NAMES), unique=True, max_size=3))
    header = draw(st.permutations(["video_id", "image", "views", *extras]))
    rows = []
    for _ in range(draw(st.integers(0, 8))):
        values = {
            "video_id": draw(st.one_of(st.sampled_from(["a", "b", "c", ""]), _FIELD)),
            "image": draw(st.sampled_from(["a.png", "missing.png", "", "ftp://x/y.png", "sub/../a.png"])),
            "views": draw(_VIEWS),
        }
        row = [values.get(name, draw(_FIELD)) for name in header]
        width = draw(st.sampled_from([len(row), len(row), len(row), len(row) + 1, max(1, len(row) - 1)]))
        rows.append((row + [draw(_FIELD) for _ in range(width - len(row))])[:width])
    delimiter = draw(st.sampled_from([",", ";", "\t", "|"]))
    quoting = draw(st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL, csv.QUOTE_NONNUMERIC]))
    terminator = draw(st.sampled_from(["\r\n", "\n"]))
    if quoting == csv.QUOTE_MINIMAL and any("\r" in field for row in [header, *rows] for field in row):
        terminator = "\r\n"  # csv quotes only its terminator's characters: a lone \r would split the row
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter=delimiter, quoting=quoting, lineterminator=terminator)
    writer.writerow(header)
    writer.writerows(rows)
    if draw(st.booleans()):
        buffer.write(terminator)  # a trailing blank line is no row
    encoding = draw(st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "cp1252", "latin-1"]))
    try:
        data = buffer.getvalue().encode(encoding)
    except UnicodeEncodeError:
        assume(False)
    return data, len(rows), encoding


@FUZZ
@given(manifest=manifests())
def test_any_dialect_or_encoding_keeps_every_row_in_exactly_one_place(tmp_path_factory, manifest):
    data, n_rows, encoding = manifest
    folder = _folder(tmp_path_factory)
    path = folder / "m.csv"
    path.write_bytes(data)
    try:
        checked = validate_image_set(path, kind="thumbnails", check_images=False)
    except ThumbsaeError as err:
        assert "\n" not in str(err)
        # Only a file with no rows, or one in a legacy 8-bit encoding that is not UTF-8, may fail.
        assert n_rows == 0 or (encoding in ("cp1252", "latin-1") and "save the manifest as UTF-8" in str(err)), err
        return
    assert checked.n_input == n_rows
    assert _accounted(checked) == list(range(1, n_rows + 1))
    _assert_outputs_hold_every_row(checked, folder)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(manifest=manifests())
def test_fetch_puts_every_input_row_in_exactly_one_output_file(tmp_path_factory, manifest):
    data, n_rows, _ = manifest
    folder = _folder(tmp_path_factory)
    path = folder / "m.csv"
    path.write_bytes(data)
    out = folder / "fetched"
    try:
        manifest_csv, rejects_csv = fetch_manifest(path, out, progress=False, workers=2)
    except ThumbsaeError as err:
        assert "\n" not in str(err)
        if "rows rejected" not in str(err):
            assert not out.exists()  # refused before writing anything
            return
        manifest_csv, rejects_csv = out / "manifest.csv", out / "rejects.csv"  # written, then the error
    kept = pd.read_csv(manifest_csv, dtype=str, keep_default_na=False)
    rejects = pd.read_csv(rejects_csv, dtype=str, keep_default_na=False)
    assert len(kept) + len(rejects) == n_rows
    assert set(kept.columns) >= {"video_id", "image", "views"}
    assert (path.read_bytes() == data)  # the input is never touched
