"""YouTube-8M shard and YouTube Data API imports: study filters as rejects, keep-first-N, resume."""

from __future__ import annotations

import json
import os
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from thumbsae.data import load_image_set, validate_image_set
from thumbsae.data import youtube8m
from thumbsae.data.youtube8m import YT8MImportConfig, import_yt8m
from thumbsae.data.youtube_api import YouTubeImportConfig, import_youtube_api
from thumbsae.errors import ThumbsaeError

TEXT = h5py.special_dtype(vlen=str)


def write_shard(path: Path, rows: list[dict], *, shape=(360, 480, 3), counts_as_text=False, seed=0) -> np.ndarray:
    """A shard in the study builder's layout; returns its thumbnails [N, H, W, 3]."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (len(rows), *shape), dtype=np.uint8)
    with h5py.File(path, "w") as f:
        for name in ("videoId", "title", "tags", "description", "channelId", "channelTitle", "publishedAt"):
            f.create_dataset(name, (len(rows),), dtype=TEXT, data=[str(r.get(name, "")) for r in rows])
        for name in ("viewCount", "likeCount", "commentCount"):
            if counts_as_text:
                f.create_dataset(name, (len(rows),), dtype=TEXT, data=[str(r.get(name, "")) for r in rows])
            else:
                f.create_dataset(name, data=np.array([r.get(name, 0) for r in rows], dtype=np.int64))
        f.create_dataset("duration_seconds", data=np.full(len(rows), 61.0))
        f.create_dataset("thumbnailStandard", data=pixels, dtype=np.uint8)
    return pixels


def video(vid: str, views=1000, **kw) -> dict:
    return {"videoId": vid, "viewCount": views, "likeCount": 10, "commentCount": 2, "channelId": "UCx",
            "publishedAt": "2017-03-04T10:00:00Z", "title": f"title {vid}", **kw}


@pytest.fixture()
def shards(tmp_path):
    a = [video("aaaaaaaaaa1"), video("aaaaaaaaaa2", views=-5), video("aaaaaaaaaa3"), video("bad/id"),
         video("aaaaaaaaaa4", publishedAt="not a date")]
    b = [video("aaaaaaaaaa1", views=7), video("bbbbbbbbbb1", title="two\nlines, \"quoted\""), video("bbbbbbbbbb2"),
         video("bbbbbbbbbb3")]
    pa = write_shard(tmp_path / "train0001.h5", a, seed=1)
    pb = write_shard(tmp_path / "train0002.h5", b, seed=2)
    return [tmp_path / "train0001.h5", tmp_path / "train0002.h5"], {"a": pa, "b": pb}


def test_yt8m_import_keeps_usable_rows_in_file_order_with_exact_pixels(shards, tmp_path):
    paths, pixels = shards
    out = tmp_path / "out"
    manifest_csv, rejects_csv = import_yt8m(paths, out, YT8MImportConfig(keep_first=3), progress=False)
    manifest = pd.read_csv(manifest_csv, keep_default_na=False)
    assert manifest.columns.tolist() == ["video_id", "image", "views", "channel_id", "upload_date", "title"]
    assert manifest["video_id"].tolist() == ["aaaaaaaaaa1", "aaaaaaaaaa3", "bbbbbbbbbb1"]
    assert manifest["upload_date"].tolist() == ["2017-03-04"] * 3
    assert manifest["title"].iloc[2] == 'two\nlines, "quoted"'
    rejects = pd.read_csv(rejects_csv, keep_default_na=False)
    reasons = dict(zip(rejects["row"], rejects["reason"]))
    assert reasons["train0001.h5:1"] == "bad viewCount: is negative: -5"
    assert reasons["train0001.h5:3"].startswith("video_id 'bad/id' is not a YouTube id")
    assert reasons["train0001.h5:4"].startswith("bad publishedAt")
    assert reasons["train0002.h5:0"] == "duplicate video_id 'aaaaaaaaaa1' (first at train0001.h5:0)"
    assert reasons["train0002.h5:2"] == reasons["train0002.h5:3"] == "after the first 3 usable videos (keep_first)"
    assert len(manifest) + len(rejects) == 9  # every shard row in exactly one file
    # thumbnails are the shard's pixels exactly; only the kept ones were written
    for vid, expected in [("aaaaaaaaaa1", pixels["a"][0]), ("bbbbbbbbbb1", pixels["b"][1])]:
        image = manifest.loc[manifest["video_id"] == vid, "image"].item()
        np.testing.assert_array_equal(np.asarray(Image.open(out / image)), expected)
    assert len(list((out / "images").rglob("*.png"))) == 3
    # the manifest is a valid thumbnail set as it stands
    loaded = load_image_set(manifest_csv, kind="thumbnails", rejects_path=tmp_path / "r.csv")
    assert len(loaded) == 3 and loaded["views"].tolist() == [1000, 1000, 1000]


def test_yt8m_rerun_after_a_kill_continues_and_never_rewrites_an_image(shards, tmp_path, monkeypatch):
    paths, _ = shards
    out = tmp_path / "out"
    real = youtube8m._write_image
    calls = []

    def dies_on_the_third(pixels, target, config):
        if len(calls) == 2:
            raise KeyboardInterrupt  # the run is interrupted here
        calls.append(target.name)
        real(pixels, target, config)

    monkeypatch.setattr(youtube8m, "_write_image", dies_on_the_third)
    with pytest.raises(KeyboardInterrupt):
        import_yt8m(paths, out, YT8MImportConfig(workers=1), progress=False)
    assert not (out / "manifest.csv").exists() and not list(out.rglob(".*.tmp-*"))
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (out / "images").rglob("*.png")}
    assert len(before) == 2

    monkeypatch.setattr(youtube8m, "_write_image", lambda *a: calls.append(a[1].name) or real(*a))
    manifest_csv, _ = import_yt8m(paths, out, YT8MImportConfig(workers=1), progress=False)
    assert len(calls) == 5 and len(set(calls)) == 5  # each image written exactly once over both runs
    after = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (out / "images").rglob("*.png")}
    assert all(after[name] == stamp for name, stamp in before.items())
    first = manifest_csv.read_bytes()
    import_yt8m(paths, out, YT8MImportConfig(workers=1), progress=False)  # a third run writes no image
    assert len(calls) == 5 and manifest_csv.read_bytes() == first


def test_yt8m_study_filters_wrong_shape_and_missing_counts(tmp_path):
    small = write_shard(tmp_path / "small.h5", [video("cccccccccc1"), video("cccccccccc2")], shape=(90, 120, 3))
    assert small.shape[1:] == (90, 120, 3)
    old = [video("dddddddddd1"), video("dddddddddd2", likeCount=""), video("dddddddddd3", viewCount="12.5")]
    write_shard(tmp_path / "old.h5", old, counts_as_text=True)
    manifest_csv, rejects_csv = import_yt8m([tmp_path / "small.h5", tmp_path / "old.h5"], tmp_path / "out",
                                            progress=False)
    rejects = pd.read_csv(rejects_csv, keep_default_na=False)
    assert rejects["reason"].tolist() == [
        "thumbnail not 360x480x3 uint8 (this shard stores 90x120x3 uint8)",
        "thumbnail not 360x480x3 uint8 (this shard stores 90x120x3 uint8)",
        "missing likeCount",
        "bad viewCount: is fractional: 12.5",
    ]
    assert pd.read_csv(manifest_csv)["video_id"].tolist() == ["dddddddddd1"]
    # relaxing the counts keeps the video without likes
    _, rejects_csv = import_yt8m([tmp_path / "old.h5"], tmp_path / "relaxed",
                                 YT8MImportConfig(require_counts=("viewCount",)), progress=False)
    assert pd.read_csv(rejects_csv)["video_id"].tolist() == ["dddddddddd3"]


def test_yt8m_bad_inputs_are_one_line_errors(tmp_path):
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    with pytest.raises(ThumbsaeError, match=r"junk.h5: not a readable HDF5 file"):
        import_yt8m([tmp_path / "junk.h5"], tmp_path / "out", progress=False)
    with pytest.raises(ThumbsaeError, match="no such shard"):
        import_yt8m([tmp_path / "missing.h5"], tmp_path / "out", progress=False)
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f.create_dataset("videoId", (1,), dtype=TEXT, data=["x"])
    with pytest.raises(ThumbsaeError, match="no viewCount, thumbnailStandard dataset"):
        import_yt8m([tmp_path / "other.h5"], tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
    write_shard(tmp_path / "allbad.h5", [video("eeeeeeeeee1", viewCount=-1)])
    with pytest.raises(ThumbsaeError, match="no usable video among 1 records"):
        import_yt8m([tmp_path / "allbad.h5"], tmp_path / "out2", progress=False)
    assert pd.read_csv(tmp_path / "out2" / "rejects.csv")["video_id"].tolist() == ["eeeeeeeeee1"]
    for bad, match in [(dict(keep_first=0), "importer.keep_first=0"), (dict(image_format="gif"), "importer.image_format"),
                       (dict(require_counts=("likeCount",)), "must include viewCount"),
                       (dict(chunk_rows=0), "importer.chunk_rows=0")]:
        with pytest.raises(ThumbsaeError, match=match):
            YT8MImportConfig(**bad)


def test_yt8m_jpeg_images_and_small_chunks(shards, tmp_path):
    paths, pixels = shards
    manifest_csv, _ = import_yt8m(paths, tmp_path / "out", YT8MImportConfig(image_format="jpeg", chunk_rows=2),
                                  progress=False)
    manifest = pd.read_csv(manifest_csv)
    assert manifest["image"].str.endswith(".jpg").all() and len(manifest) == 5
    decoded = np.asarray(Image.open(tmp_path / "out" / manifest["image"].iloc[0]), dtype=np.float32)
    # lossy (and noise is JPEG's worst case), yet far closer to its own thumbnail than to another
    assert np.abs(decoded - pixels["a"][0]).mean() < 0.7 * np.abs(decoded - pixels["a"][2]).mean()


def api_item(vid: str, views: str | None = "1200", **snippet) -> dict:
    item = {
        "kind": "youtube#video",
        "id": vid,
        "snippet": {"channelId": "UCy", "publishedAt": "2020-01-02T03:04:05Z", "title": f"t {vid}",
                    "thumbnails": {"high": {"url": f"https://i.ytimg.com/vi/{vid}/hqdefault.jpg", "width": 480,
                                            "height": 360}}, **snippet},
        "statistics": {"likeCount": "5", "commentCount": "1"},
    }
    if views is not None:
        item["statistics"]["viewCount"] = views
    return item


def test_api_import_writes_url_manifest_and_rejects(tmp_path):
    first = {"kind": "youtube#videoListResponse", "items": [api_item("vvvvvvvvvv1"), api_item("vvvvvvvvvv2", views=None),
                                                            api_item("vvvvvvvvvv3", thumbnails={})]}
    no_likes = api_item("vvvvvvvvvv5")
    del no_likes["statistics"]["likeCount"]
    second = [{"items": [api_item("vvvvvvvvvv1", views="3"), api_item("vvvvvvvvvv4", views="77")]}, {"items": [no_likes]}]
    (tmp_path / "a.json").write_text(json.dumps(first))
    (tmp_path / "b.json").write_text(json.dumps(second))
    (tmp_path / "c.jsonl").write_text(json.dumps(api_item("vvvvvvvvvv6")) + "\n\n" + json.dumps(api_item("vvvvvvvvvv7")))
    files = [tmp_path / "a.json", tmp_path / "b.json", tmp_path / "c.jsonl"]
    manifest_csv, rejects_csv = import_youtube_api(files, tmp_path / "out", YouTubeImportConfig(keep_first=3))
    manifest = pd.read_csv(manifest_csv)
    assert manifest["video_id"].tolist() == ["vvvvvvvvvv1", "vvvvvvvvvv4", "vvvvvvvvvv6"]
    assert manifest["image"].iloc[1] == "https://i.ytimg.com/vi/vvvvvvvvvv4/hqdefault.jpg"
    assert manifest["views"].tolist() == [1200, 77, 1200] and manifest["upload_date"].iloc[0] == "2020-01-02"
    rejects = pd.read_csv(rejects_csv)
    assert dict(zip(rejects["row"], rejects["reason"])) == {
        "a.json:1": "missing viewCount",
        "a.json:2": "no snippet.thumbnails.high.url",
        "b.json:0": "duplicate video_id 'vvvvvvvvvv1' (first at a.json:0)",
        "b.json:2": "missing likeCount",
        "c.jsonl:1": "after the first 3 usable videos (keep_first)",
    }
    checked = validate_image_set(manifest_csv, kind="thumbnails", allow_urls=True, check_images=False)
    assert len(checked.rows) == 3 and not checked.rejects
    # views-only, as a plain list of items
    (tmp_path / "items.json").write_text(json.dumps([no_likes]))
    manifest_csv, _ = import_youtube_api([tmp_path / "items.json"], tmp_path / "out2",
                                         YouTubeImportConfig(require_counts=("viewCount",)))
    assert pd.read_csv(manifest_csv)["video_id"].tolist() == ["vvvvvvvvvv5"]


def test_api_import_bad_files_are_one_line_errors(tmp_path):
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ThumbsaeError, match=r"broken.json: not JSON"):
        import_youtube_api([tmp_path / "broken.json"], tmp_path / "out")
    (tmp_path / "odd.json").write_text(json.dumps({"kind": "youtube#searchListResponse", "nextPageToken": "x"}))
    with pytest.raises(ThumbsaeError, match=r"odd.json: expected a videos.list response"):
        import_youtube_api([tmp_path / "odd.json"], tmp_path / "out")
    (tmp_path / "ftp.json").write_text(json.dumps({"items": [api_item("vvvvvvvvvv1")]}).replace("https://", "ftp://"))
    with pytest.raises(ThumbsaeError, match="no usable video"):
        import_youtube_api([tmp_path / "ftp.json"], tmp_path / "out")
    assert "is not http(s)" in pd.read_csv(tmp_path / "out" / "rejects.csv")["reason"].item()
    assert not os.path.exists(tmp_path / "out" / "manifest.csv")
