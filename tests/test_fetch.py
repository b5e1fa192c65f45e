"""`thumbsae fetch` against a local HTTP server on 127.0.0.1: images, errors, hangs, resume, re-runs."""

from __future__ import annotations

import io
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from thumbsae.cli import main as cli_main
from thumbsae.data import fetch_manifest, load_image_set
from thumbsae.data.fetch import url_key
from thumbsae.errors import ThumbsaeError


def encoded(fmt: str, seed: int, size: int = 40) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, fmt)
    return buf.getvalue()


class ImageServer:
    """A tiny HTTP server: Range-capable images, a 404, an HTML page, a hang, a 503-once, a drop-once."""

    def __init__(self):
        self.files = {
            "/a.png": encoded("PNG", 0),
            "/b.jpg": encoded("JPEG", 1),
            "/c.png": encoded("PNG", 2),
            "/flaky.png": encoded("PNG", 3),
            "/drop.png": encoded("PNG", 4),
            "/norange.png": encoded("PNG", 5),
        }
        self.log: list[tuple[str, str | None]] = []
        self.release = threading.Event()
        self.failed_once: set[str] = set()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_GET(self):
                owner.log.append((self.path, self.headers.get("Range")))
                owner.handle(self)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def requests_for(self, path: str) -> list[str | None]:
        return [rng for p, rng in self.log if p == path]

    def handle(self, h: BaseHTTPRequestHandler) -> None:
        path = h.path
        if path == "/hang":
            self.release.wait(10)  # never answers within the client's timeout
            return
        if path == "/page":
            body = b"<html><body>Sign in to continue</body></html>"
            h.send_response(200)
            h.send_header("Content-Type", "text/html")
            h.send_header("Content-Length", str(len(body)))
            h.end_headers()
            h.wfile.write(body)
            return
        if path == "/flaky.png" and path not in self.failed_once:
            self.failed_once.add(path)
            h.send_error(503, "Service Unavailable")
            return
        if path not in self.files:
            h.send_error(404, "Not Found")
            return
        data = self.files[path]
        start = 0
        match = re.match(r"bytes=(\d+)-$", h.headers.get("Range") or "")
        if match and path != "/norange.png":
            start = int(match.group(1))
            h.send_response(206)
            h.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            h.send_response(200)
        h.send_header("Content-Type", "image/png" if path.endswith(".png") else "image/jpeg")
        h.send_header("Content-Length", str(len(data) - start))
        h.end_headers()
        if path == "/drop.png" and path not in self.failed_once:
            self.failed_once.add(path)
            h.wfile.write(data[start : start + len(data) // 3])  # then the connection drops
            h.wfile.flush()
            h.close_connection = True
            return
        h.wfile.write(data[start:])


@pytest.fixture
def server():
    srv = ImageServer()
    srv.thread.start()
    yield srv
    srv.release.set()
    srv.httpd.shutdown()
    srv.httpd.server_close()


def test_fetch_writes_manifest_rejects_and_reruns_without_downloading(server, tmp_path, capsys):
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "local.png")
    manifest = tmp_path / "thumbnails.csv"
    pd.DataFrame(
        [
            ("a", server.url("/a.png"), 10),
            ("b", server.url("/b.jpg"), 20),
            ("gone", server.url("/missing.png"), 30),
            ("html", server.url("/page"), 40),
            ("hang", server.url("/hang"), 50),
            ("local", "local.png", 60),
            ("neg", server.url("/c.png"), -1),
            ("a_again", server.url("/a.png"), 70),
            ("flaky", server.url("/flaky.png"), 80),
            ("drop", server.url("/drop.png"), 90),
        ],
        columns=["video_id", "image", "views"],
    ).to_csv(manifest, index=False)
    out = tmp_path / "fetched"

    manifest_csv, rejects_csv = fetch_manifest(manifest, out, workers=4, timeout=0.4, retries=1, progress=False)

    assert (manifest_csv, rejects_csv) == (out / "manifest.csv", out / "rejects.csv")
    fetched = pd.read_csv(manifest_csv, keep_default_na=False)
    assert fetched["video_id"].tolist() == ["a", "b", "local", "a_again", "flaky", "drop"]
    assert fetched["views"].tolist() == [10, 20, 60, 70, 80, 90]
    a_path = f"images/{url_key(server.url('/a.png'))}.png"
    assert fetched["image"].tolist()[:2] == [a_path, f"images/{url_key(server.url('/b.jpg'))}.jpg"]
    assert fetched["image"].iloc[2] == str(tmp_path / "local.png")  # local rows pass through, resolved
    assert fetched["image"].iloc[3] == a_path
    for name, video_id in [("/a.png", "a"), ("/b.jpg", "b"), ("/flaky.png", "flaky"), ("/drop.png", "drop")]:
        image = fetched.loc[fetched["video_id"] == video_id, "image"].iloc[0]
        assert (out / image).read_bytes() == server.files[name], name
    assert not list((out / "images").glob("*.part"))

    rejects = pd.read_csv(rejects_csv, keep_default_na=False)
    reasons = dict(zip(rejects["video_id"], rejects["reason"]))
    assert list(reasons) == ["gone", "html", "hang", "neg"]  # input order
    assert reasons["gone"] == "HTTP 404 Not Found"
    assert reasons["html"].startswith("downloaded file is unusable: not an image") and "text/html" in reasons["html"]
    assert reasons["hang"] == "timed out after 0.4 s (2 attempts)"
    assert reasons["neg"] == "views is negative: -1"
    assert server.requests_for("/c.png") == []  # an invalid row is never downloaded
    assert server.requests_for("/a.png") == [None]  # two rows, one URL, one download
    assert len(server.requests_for("/flaky.png")) == 2  # 503 retried
    assert server.requests_for("/drop.png")[1] is not None  # the dropped download resumed with Range
    assert "4 of 10 rows rejected" in capsys.readouterr().out

    # The result is a manifest load_image_set reads (paths relative to its folder).
    loaded = load_image_set(manifest_csv)
    assert loaded["image"].iloc[0] == str(out / a_path)

    # A second run downloads nothing that is already there, and writes the same manifest.
    first_bytes = manifest_csv.read_bytes()
    server.log.clear()
    fetch_manifest(manifest, out, workers=4, timeout=0.4, retries=0, progress=False)
    requested = {path for path, _ in server.log}
    assert requested <= {"/missing.png", "/page", "/hang"}
    assert manifest_csv.read_bytes() == first_bytes


def test_interrupted_download_resumes_from_its_part_file(server, tmp_path):
    url = server.url("/c.png")
    data = server.files["/c.png"]
    manifest = tmp_path / "m.csv"
    pd.DataFrame({"video_id": ["c", "n"], "image": [url, server.url("/norange.png")]}).to_csv(manifest, index=False)
    images = tmp_path / "out" / "images"
    images.mkdir(parents=True)
    cut = len(data) // 3
    (images / f"{url_key(url)}.part").write_bytes(data[:cut])
    norange_part = images / f"{url_key(server.url('/norange.png'))}.part"
    norange_part.write_bytes(b"garbage that must not stay at the front")

    manifest_csv, rejects_csv = fetch_manifest(manifest, tmp_path / "out", workers=2, timeout=2, progress=False)

    assert server.requests_for("/c.png") == [f"bytes={cut}-"]
    assert (images / f"{url_key(url)}.png").read_bytes() == data
    # A server that ignores Range sends the whole file, which replaces the stale part.
    assert (images / f"{url_key(server.url('/norange.png'))}.png").read_bytes() == server.files["/norange.png"]
    assert not list(images.glob("*.part"))
    assert pd.read_csv(manifest_csv)["video_id"].tolist() == ["c", "n"]  # no views column: a reference set
    assert len(pd.read_csv(rejects_csv)) == 0


def test_cli_fetch_and_its_errors(server, tmp_path, capsys):
    manifest = tmp_path / "m.csv"
    pd.DataFrame({"video_id": ["a"], "image": [server.url("/a.png")], "views": [1]}).to_csv(manifest, index=False)
    assert cli_main(["fetch", str(manifest), "--out", str(tmp_path / "o"), "--timeout", "2"]) == 0
    assert (tmp_path / "o" / "manifest.csv").is_file() and (tmp_path / "o" / "rejects.csv").is_file()
    assert "fetch: 100%" in capsys.readouterr().err  # its progress bar, finished

    assert cli_main(["fetch", str(tmp_path / "absent.csv"), "--out", str(tmp_path / "o2")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "absent.csv" in err[0]
    assert not (tmp_path / "o2").exists()


def test_local_file_urls_are_not_fetched(tmp_path):
    manifest = tmp_path / "m.csv"
    pd.DataFrame({"video_id": ["f"], "image": ["ftp://example.com/a.png"], "views": [1]}).to_csv(manifest, index=False)
    with pytest.raises(ThumbsaeError, match="all 1 rows rejected.*rejects.csv"):
        fetch_manifest(manifest, tmp_path / "o", progress=False)  # both files are written first
    rejects = pd.read_csv(tmp_path / "o" / "rejects.csv")
    assert rejects["reason"].tolist() == ["unsupported URL scheme 'ftp' (only http and https are fetched)"]
    assert Path(tmp_path / "o" / "manifest.csv").read_text().strip() == "video_id,image,views"
