"""thumbsae.data: decoding every image mode, rejecting every bad input, manifests, folders, atomic writes."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from thumbsae.data import (
    ImageDecodeError,
    RejectedRowsError,
    load_image_set,
    load_rgb,
    write_manifest,
)
from thumbsae.errors import ThumbsaeError
from thumbsae.files import atomic_dir, atomic_path, atomic_write_bytes, atomic_write_text, shown_path


def noise_png(path: Path, size: int = 48, seed: int = 0) -> Path:
    """A noisy RGB PNG (noise so that cutting the file in half really truncates pixel data)."""
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
    return path


def write_csv(path: Path, rows: list[dict]) -> Path:
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


# ---------------------------------------------------------------- load_rgb: every mode to RGB


def _save(image: Image.Image, path: Path, **kwargs) -> Path:
    image.save(path, **kwargs)
    return path


def test_rgba_and_la_composite_on_white(tmp_path):
    rgba = Image.new("RGBA", (4, 1))
    rgba.putdata([(255, 0, 0, 0), (0, 0, 255, 255), (0, 0, 0, 128), (10, 200, 30, 255)])
    out = load_rgb(_save(rgba, tmp_path / "a.png"))
    assert out.mode == "RGB" and out.size == (4, 1)
    assert out.getpixel((0, 0)) == (255, 255, 255)  # fully transparent red shows the white page
    assert out.getpixel((1, 0)) == (0, 0, 255)
    assert all(abs(c - 127) <= 1 for c in out.getpixel((2, 0)))
    assert out.getpixel((3, 0)) == (10, 200, 30)

    la = Image.new("LA", (2, 1))
    la.putdata([(0, 0), (40, 255)])
    out = load_rgb(_save(la, tmp_path / "la.png"))
    assert [out.getpixel((x, 0)) for x in range(2)] == [(255, 255, 255), (40, 40, 40)]


def test_palette_with_transparency_composites_on_white(tmp_path):
    p = Image.new("P", (2, 1))
    p.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    p.putdata([0, 1])
    path = _save(p, tmp_path / "p.png", transparency=0)
    assert Image.open(path).mode == "P" and "transparency" in Image.open(path).info
    out = load_rgb(path)
    assert [out.getpixel((x, 0)) for x in range(2)] == [(255, 255, 255), (255, 0, 0)]


def test_sixteen_bit_greyscale_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 128 * 257, 65535, 1000]], dtype=np.uint16)
    path = _save(Image.fromarray(values), tmp_path / "g16.png")
    assert Image.open(path).mode.startswith("I")
    out = load_rgb(path)
    assert [out.getpixel((x, 0))[0] for x in range(4)] == [0, 128, 255, 4]
    assert out.getpixel((1, 0)) == (128, 128, 128)


def test_cmyk_jpeg_one_bit_and_grey(tmp_path):
    cmyk = _save(Image.new("CMYK", (8, 8), (0, 255, 0, 0)), tmp_path / "c.jpg", quality=95)
    assert Image.open(cmyk).mode == "CMYK"
    r, g, b = load_rgb(cmyk).getpixel((4, 4))
    assert r > 240 and g < 15 and b > 240  # no magenta ink -> magenta

    bits = Image.new("1", (2, 1))
    bits.putdata([0, 1])
    out = load_rgb(_save(bits, tmp_path / "b.png"))
    assert [out.getpixel((x, 0)) for x in range(2)] == [(0, 0, 0), (255, 255, 255)]

    out = load_rgb(_save(Image.new("L", (3, 3), 77), tmp_path / "l.png"))
    assert out.mode == "RGB" and out.getpixel((1, 1)) == (77, 77, 77)


# ---------------------------------------------------------------- load_rgb: bad files, distinct reasons


def make_bad_images(folder: Path) -> dict[str, tuple[Path, str]]:
    """name -> (path, expected reason prefix). The bomb is 100x100 = 10,000 pixels (use max_pixels=5000)."""
    folder.mkdir(parents=True, exist_ok=True)
    good = noise_png(folder / "good.png")
    data = good.read_bytes()
    (folder / "truncated.png").write_bytes(data[: len(data) // 2])
    (folder / "empty.png").write_bytes(b"")
    (folder / "text.jpg").write_text("<html>not an image</html>\n")
    Image.new("RGB", (100, 100), (1, 2, 3)).save(folder / "bomb.png")
    return {
        "truncated": (folder / "truncated.png", "truncated image"),
        "empty": (folder / "empty.png", "empty file (0 bytes)"),
        "text": (folder / "text.jpg", "not an image"),
        "missing": (folder / "missing.png", "missing file"),
        "bomb": (folder / "bomb.png", "decompression bomb"),
    }


def test_load_rgb_bad_files_raise_distinct_reasons(tmp_path):
    bad = make_bad_images(tmp_path)
    reasons = set()
    for name, (path, prefix) in bad.items():
        with pytest.raises(ImageDecodeError) as info:
            load_rgb(path, max_pixels=5000)
        assert info.value.reason.startswith(prefix), (name, info.value.reason)
        assert str(path) in str(info.value) and "\n" not in str(info.value)
        reasons.add(info.value.reason.split(":")[0])
    assert len(reasons) == len(bad)
    assert load_rgb(bad["bomb"][0]).size == (100, 100)  # under the default limit it is fine
    with pytest.raises(ImageDecodeError, match="not a regular file"):
        load_rgb(tmp_path)


def test_truncated_jpeg_is_rejected(tmp_path):
    buf = io.BytesIO()
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    (tmp_path / "t.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ImageDecodeError, match="truncated image"):
        load_rgb(tmp_path / "t.jpg")


# ---------------------------------------------------------------- manifests: rejects


def test_every_bad_image_becomes_a_reject_with_its_reason(tmp_path, capsys, monkeypatch):
    bad = make_bad_images(tmp_path / "img")
    rows = [{"video_id": "ok", "image": "img/good.png", "views": 10}]
    rows += [{"video_id": name, "image": str(path), "views": 5} for name, (path, _) in bad.items()]
    manifest = write_csv(tmp_path / "thumbnails.csv", rows)
    rejects_csv = tmp_path / "out" / "rejects.csv"

    images = load_image_set(manifest, rejects_path=rejects_csv, max_pixels=5000)

    assert images["video_id"].tolist() == ["ok"]
    assert images["image"].tolist() == [str((tmp_path / "img" / "good.png").resolve())]
    rejects = pd.read_csv(rejects_csv, keep_default_na=False)
    assert list(rejects.columns) == ["row", "video_id", "image", "reason"]
    assert rejects["row"].tolist() == [2, 3, 4, 5, 6]  # 1-based data rows, input order
    by_id = dict(zip(rejects["video_id"], rejects["reason"]))
    for name, (_, prefix) in bad.items():
        assert by_id[name].startswith(prefix), (name, by_id[name])
    out = capsys.readouterr().out
    assert f"5 of 6 rows rejected -> {rejects_csv}" in out  # outside the working directory: absolute
    monkeypatch.chdir(tmp_path)  # inside it: as the user would type it
    load_image_set(manifest, rejects_path=rejects_csv, max_pixels=5000)
    assert "thumbnails.csv: 5 of 6 rows rejected -> out/rejects.csv\n" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("views", "reason"),
    [("-1", "views is negative: -1"), ("", "empty views"), ("3.5", "views is fractional: 3.5"),
     ("abc", "views is not a number: 'abc'"), ("nan", "views is not a finite number")],
)
def test_bad_views_are_rejects(tmp_path, views, reason):
    noise_png(tmp_path / "a.png")
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"video_id,image,views\ngood,a.png,7.0\nbad,a.png,{views}\n")
    images = load_image_set(manifest, rejects_path=tmp_path / "rejects.csv")
    assert images["video_id"].tolist() == ["good"]
    assert images["views"].dtype == np.int64 and images["views"].tolist() == [7]
    rejects = pd.read_csv(tmp_path / "rejects.csv", keep_default_na=False)
    assert rejects["video_id"].tolist() == ["bad"]
    assert rejects["reason"].iloc[0].startswith(reason)


def test_duplicate_ids_keep_the_first(tmp_path):
    noise_png(tmp_path / "a.png")
    noise_png(tmp_path / "b.png", seed=1)
    manifest = tmp_path / "m.csv"
    manifest.write_text("video_id,image,views\nx,a.png,1\ny,a.png,2\nx,b.png,3\n,a.png,4\n")
    images = load_image_set(manifest, rejects_path=tmp_path / "r.csv")
    assert images["video_id"].tolist() == ["x", "y"] and images["views"].tolist() == [1, 2]
    rejects = pd.read_csv(tmp_path / "r.csv", keep_default_na=False)
    assert rejects["row"].tolist() == [3, 4]
    assert rejects["reason"].tolist() == ["duplicate video_id 'x' (first at row 1)", "empty video_id"]


def test_strict_raises_one_line_after_writing_rejects(tmp_path):
    noise_png(tmp_path / "a.png")
    manifest = tmp_path / "thumbnails.csv"
    manifest.write_text("video_id,image,views\na,a.png,1\nb,a.png,-4\nc,nope.png,2\n")
    with pytest.raises(RejectedRowsError) as info:
        load_image_set(manifest, rejects_path=tmp_path / "r.csv", strict=True)
    message = str(info.value)
    assert "\n" not in message and str(manifest) in message and "2 of 3 rows rejected" in message
    assert "views is negative: -4" in message
    assert isinstance(info.value, ThumbsaeError)
    assert len(pd.read_csv(tmp_path / "r.csv")) == 2
    # Without strict the same manifest loads its one good row.
    assert load_image_set(manifest)["video_id"].tolist() == ["a"]


def test_empty_rejects_file_is_still_written(tmp_path, capsys):
    noise_png(tmp_path / "a.png")
    manifest = write_csv(tmp_path / "m.csv", [{"video_id": "a", "image": "a.png", "views": 3}])
    load_image_set(manifest, rejects_path=tmp_path / "r.csv")
    assert (tmp_path / "r.csv").read_text().strip() == "row,video_id,image,reason"
    assert "0 of 1 rows rejected" in capsys.readouterr().out


def test_all_rows_rejected_is_an_error(tmp_path):
    manifest = write_csv(tmp_path / "m.csv", [{"video_id": "a", "image": "gone.png", "views": 3}])
    with pytest.raises(ThumbsaeError, match="no usable rows"):
        load_image_set(manifest, rejects_path=tmp_path / "r.csv")
    assert len(pd.read_csv(tmp_path / "r.csv")) == 1


def test_upload_dates_normalised_or_rejected(tmp_path):
    noise_png(tmp_path / "a.png")
    manifest = tmp_path / "m.csv"
    manifest.write_text(
        "video_id,image,views,upload_date\n"
        "a,a.png,1,2021-03-04\nb,a.png,1,2021-03-04T10:00:00Z\nc,a.png,1,\nd,a.png,1,04/03/2021\n"
    )
    images = load_image_set(manifest, rejects_path=tmp_path / "r.csv")
    assert images["upload_date"].tolist() == ["2021-03-04", "2021-03-04", ""]
    assert pd.read_csv(tmp_path / "r.csv")["reason"].tolist() == ["upload_date is not an ISO-8601 date: '04/03/2021'"]


# ---------------------------------------------------------------- manifests: structure errors


def test_missing_column_unknown_suffix_and_urls_are_clear_errors(tmp_path):
    noise_png(tmp_path / "a.png")
    no_views = write_csv(tmp_path / "m.csv", [{"video_id": "a", "image": "a.png"}])
    with pytest.raises(ThumbsaeError, match=r"m\.csv: missing required column 'views'"):
        load_image_set(no_views)
    assert load_image_set(no_views, kind="reference")["video_id"].tolist() == ["a"]

    (tmp_path / "m.json").write_text("{}")
    with pytest.raises(ThumbsaeError, match="unknown manifest type '.json'"):
        load_image_set(tmp_path / "m.json")
    with pytest.raises(ThumbsaeError, match="no such manifest or folder"):
        load_image_set(tmp_path / "absent.csv")

    urls = write_csv(tmp_path / "u.csv", [{"video_id": "a", "image": "https://example.com/a.jpg", "views": 1}])
    with pytest.raises(ThumbsaeError, match="thumbsae fetch"):
        load_image_set(urls)
    kept = load_image_set(urls, allow_urls=True)
    assert kept["image"].tolist() == ["https://example.com/a.jpg"]


def test_relative_paths_resolve_against_the_manifest_folder(tmp_path, monkeypatch):
    (tmp_path / "data" / "img").mkdir(parents=True)
    noise_png(tmp_path / "data" / "img" / "a.png")
    write_csv(tmp_path / "data" / "m.csv", [{"video_id": "a", "image": "img/a.png", "views": 1}])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    images = load_image_set(Path("..") / "data" / "m.csv")
    assert images["image"].tolist() == [str(tmp_path / "data" / "img" / "a.png")]
    assert Path(images["image"].iloc[0]).is_absolute()


# ---------------------------------------------------------------- round trips and folders


def test_manifest_round_trips_csv_parquet_csv(tmp_path):
    for i in range(3):
        noise_png(tmp_path / f"{i}.png", seed=i)
    manifest = tmp_path / "thumbnails.csv"
    manifest.write_text(
        "video_id,image,views,channel_id,upload_date,title,motifs,warmth\n"
        "0007,0.png,12,ch1,2020-01-02,\"Hello, world\",face;car,0.5\n"
        "NA,1.png,0,ch2,,None,,-0.25\n"
        "x,2.png,9007199254740993,ch1,2019-12-31T23:00:00,,food,1.0\n"
    )
    first = load_image_set(manifest)
    # Ids and titles are read verbatim: no "NA" -> NaN, no "0007" -> 7, no float rounding of views.
    assert first["video_id"].tolist() == ["0007", "NA", "x"]
    assert first["title"].tolist() == ["Hello, world", "None", ""]
    assert first["views"].tolist() == [12, 0, 9007199254740993] and first["views"].dtype == np.int64
    assert first["warmth"].dtype == np.float64

    parquet = write_manifest(first, tmp_path / "copy" / "m.parquet")
    second = load_image_set(parquet)
    pd.testing.assert_frame_equal(first, second)
    csv_again = write_manifest(second, tmp_path / "copy" / "m.csv")
    third = load_image_set(csv_again)
    pd.testing.assert_frame_equal(first, third)

    relative = write_manifest(first, tmp_path / "rel.csv", relative_images=True)
    assert pd.read_csv(relative)["image"].tolist() == ["0.png", "1.png", "2.png"]
    pd.testing.assert_frame_equal(first, load_image_set(relative))


def test_parquet_with_typed_columns(tmp_path):
    noise_png(tmp_path / "a.png")
    table = pd.DataFrame(
        {"video_id": [1, 2, 3, 4], "image": ["a.png"] * 4, "views": [5.0, 3.5, np.nan, 8.0],
         "upload_date": pd.to_datetime(["2020-05-06", None, "2021-01-01", "2022-02-02"])}
    )
    table.to_parquet(tmp_path / "m.parquet")
    images = load_image_set(tmp_path / "m.parquet", rejects_path=tmp_path / "r.csv")
    assert images["video_id"].tolist() == ["1", "4"]
    assert images["views"].tolist() == [5, 8]
    assert images["upload_date"].tolist() == ["2020-05-06", "2022-02-02"]
    reasons = pd.read_csv(tmp_path / "r.csv")["reason"].tolist()
    assert reasons == ["views is fractional: 3.5", "empty views"]


def test_folder_of_images_with_labels(tmp_path):
    root = tmp_path / "ref"
    for rel in ["dog/b.png", "cat/a.png", "dog/puppies/c.png", "loose.png", ".hidden/h.png"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        noise_png(root / rel)
    (root / "cat" / "README.txt").write_text("not an image")
    (root / "cat" / "broken.jpg").write_bytes(b"")

    images = load_image_set(root, kind="reference", rejects_path=tmp_path / "r.csv")
    assert images["video_id"].tolist() == ["cat/a.png", "dog/b.png", "dog/puppies/c.png", "loose.png"]
    assert images["label"].tolist() == ["cat", "dog", "dog", ""]
    assert images["image"].tolist() == [str(root / v) for v in images["video_id"]]
    assert "views" not in images.columns
    rejects = pd.read_csv(tmp_path / "r.csv")
    assert rejects[["row", "reason"]].values.tolist() == [["cat/broken.jpg", "empty file (0 bytes)"]]

    with pytest.raises(ThumbsaeError, match="no view counts"):
        load_image_set(root, kind="thumbnails")


def test_decoding_is_skipped_when_asked(tmp_path):
    manifest = write_csv(tmp_path / "m.csv", [{"video_id": "a", "image": "gone.png", "views": 1}])
    assert load_image_set(manifest, check_images=False)["video_id"].tolist() == ["a"]


# ---------------------------------------------------------------- atomic writes


def test_atomic_path_renames_on_success_and_cleans_up_on_failure(tmp_path):
    target = tmp_path / "sub" / "out.parquet"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp.suffix == ".parquet" and not target.exists()
        pd.DataFrame({"a": [1]}).to_parquet(tmp)
    assert pd.read_parquet(target)["a"].tolist() == [1]

    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("crash mid-write")
    assert pd.read_parquet(target)["a"].tolist() == [1]  # the old file is untouched
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.parquet"]

    atomic_write_text(tmp_path / "t.txt", "é\nline\n")
    assert (tmp_path / "t.txt").read_bytes() == "é\nline\n".encode()
    atomic_write_bytes(tmp_path / "t.txt", b"\x00\x01", fsync=True)
    assert (tmp_path / "t.txt").read_bytes() == b"\x00\x01"


def test_atomic_dir_replaces_whole_folders(tmp_path):
    target = tmp_path / "panels"
    with atomic_dir(target) as tmp:
        (tmp / "a.png").write_bytes(b"1")
    with atomic_dir(target) as tmp:
        (tmp / "b.png").write_bytes(b"2")
    assert sorted(p.name for p in target.iterdir()) == ["b.png"]

    with pytest.raises(KeyError):
        with atomic_dir(target) as tmp:
            (tmp / "c.png").write_bytes(b"3")
            raise KeyError("crash")
    assert sorted(p.name for p in target.iterdir()) == ["b.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["panels"]


# ---------------------------------------------------------------- property: text survives CSV and Parquet
_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12)


@settings(max_examples=20, deadline=None)
@given(
    ids=st.lists(_text.filter(lambda s: s.strip() != ""), min_size=1, max_size=4, unique=True),
    titles=st.lists(_text, min_size=4, max_size=4),
    views=st.lists(st.integers(0, 2**63 - 1), min_size=4, max_size=4),
)
def test_ids_titles_and_views_survive_both_formats(tmp_path_factory, ids, titles, views):
    folder = tmp_path_factory.mktemp("prop")
    n = len(ids)
    table = pd.DataFrame({"video_id": ids, "image": ["a.png"] * n, "views": views[:n], "title": titles[:n]})
    write_manifest(table, folder / "m.csv")
    write_manifest(table, folder / "m.parquet")
    from_csv = load_image_set(folder / "m.csv", check_images=False)
    from_parquet = load_image_set(folder / "m.parquet", check_images=False)
    pd.testing.assert_frame_equal(from_csv, from_parquet)
    assert from_csv["video_id"].tolist() == ids
    assert from_csv["title"].tolist() == titles[:n]
    assert from_csv["views"].tolist() == views[:n]


def test_the_synthetic_world_loads_without_rejects(tiny_world, tmp_path):
    thumbnails = load_image_set(tiny_world / "thumbnails.csv", rejects_path=tmp_path / "r.csv", strict=True)
    raw = pd.read_csv(tiny_world / "thumbnails.csv")
    assert len(thumbnails) == len(raw) > 0
    assert thumbnails["views"].dtype == np.int64 and (thumbnails["views"] >= 0).all()
    assert thumbnails["views"].tolist() == raw["views"].tolist()
    assert {"motifs", "channel_id", "upload_date"} <= set(thumbnails.columns)
    reference = load_image_set(tiny_world / "reference.csv", kind="reference", strict=True)
    assert reference["label"].str.len().gt(0).all()
    assert all(Path(p).is_file() for p in reference["image"])


def test_exif_orientation_is_applied(tmp_path):
    """A phone JPEG stored landscape with EXIF orientation 6 (rotate 90 degrees clockwise) loads upright."""
    pixels = np.zeros((40, 60, 3), dtype=np.uint8)
    pixels[:, :10] = (255, 0, 0)  # red band on the stored image's left edge
    image = Image.fromarray(pixels)
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "phone.jpg"
    image.save(path, quality=95, exif=exif.tobytes())
    upright = np.asarray(load_rgb(path))
    assert upright.shape == (60, 40, 3)  # width and height swapped
    assert upright[:8, :, 0].mean() > 200 and upright[-8:, :, 0].mean() < 60  # the left edge is now the top



def test_shown_path_is_relative_inside_the_working_directory_else_absolute(tmp_path, monkeypatch):
    (tmp_path / "work" / "runs").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "work")
    assert shown_path(tmp_path / "work" / "runs" / "sae") == "runs/sae"
    assert shown_path("runs/../runs/sae") == "runs/sae"
    assert shown_path(tmp_path / "work") == "."
    assert shown_path(tmp_path / "elsewhere") == str((tmp_path / "elsewhere").resolve())
