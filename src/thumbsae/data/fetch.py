"""`thumbsae fetch`: download a manifest's `http(s)` images into a local, resumable cache.

Each URL lands in `OUT/images/<sha1 of url>.<ext>`, written as `<sha1>.part` and renamed only
after it decodes as an image, so a file with a final name is always complete. A run after an
interruption skips finished files and resumes `.part` files with an HTTP Range request.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import requests
from tqdm import tqdm

from thumbsae.data.images import DEFAULT_MAX_PIXELS, ImageDecodeError, decode_image
from thumbsae.data.manifest import Reject, is_url, read_manifest, validate_image_set, write_manifest, write_rejects
from thumbsae.errors import ThumbsaeError

# 50 MB: a thumbnail is ~100 kB; anything this big is not one and would only fill the disk.
DEFAULT_MAX_BYTES = 50_000_000
_CHUNK = 1 << 16
_RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
_EXTENSIONS = {"JPEG": "jpg", "MPO": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp", "TIFF": "tif"}
_USER_AGENT = "thumbsae-fetch/0.1"
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-")


@dataclass(frozen=True)
class FetchOutcome:
    """One URL's result: the local file, or the reason it could not be used."""

    path: Path | None
    reason: str | None
    downloaded: bool


class _Failure(Exception):
    """A failed attempt; `retry` says whether trying again can help."""

    def __init__(self, reason: str, retry: bool):
        super().__init__(reason)
        self.reason = reason
        self.retry = retry


def url_key(url: str) -> str:
    """The cache name of `url`: its SHA-1 in hex."""
    return hashlib.sha1(url.encode("utf-8")).hexdigest()


def fetch_manifest(
    manifest: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    workers: int = 8,
    timeout: float = 30.0,
    retries: int = 2,
    kind: str | None = None,
    progress: bool = True,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> tuple[Path, Path]:
    """Download the `http(s)` images of `manifest` and write a local manifest beside them.

    Inputs: a CSV / Parquet manifest whose `image` may be URLs or paths; `kind` defaults to
    `"thumbnails"` when it has a `views` column, else `"reference"` (rows are validated as
    `load_image_set` does; local images are decoded). `timeout` bounds each connect and read (s);
    transient failures (timeouts, dropped connections, 5xx, 429) are retried `retries` times.
    Outputs `(OUT/manifest.csv, OUT/rejects.csv)`: the usable rows with `image` a path relative to
    OUT (or absolute, for local images elsewhere), and every unusable row with its reason.
    """
    manifest, out_dir = Path(manifest), Path(out_dir)
    if not manifest.is_file():
        raise ThumbsaeError(f"{manifest}: no such manifest file (fetch reads a .csv or .parquet manifest)")
    if kind is None:
        kind = "thumbnails" if "views" in read_manifest(manifest, kind="images").columns else "reference"
    checked = validate_image_set(manifest, kind=kind, check_images=True, allow_urls=True, max_pixels=max_pixels)
    images_dir = out_dir / "images"
    images_dir.mkdir(parents=True, exist_ok=True)

    urls = list(dict.fromkeys(image for image in checked.rows["image"] if is_url(image)))
    outcomes = _fetch_all(
        urls, images_dir, workers=workers, timeout=timeout, retries=retries,
        progress=progress, max_bytes=max_bytes, max_pixels=max_pixels,
    )

    keep, images, fetch_rejects = [], [], []
    for i, (row, image) in enumerate(zip(checked.row_numbers, checked.rows["image"])):
        outcome = outcomes.get(image) if is_url(image) else None
        if outcome is not None and outcome.path is None:
            fetch_rejects.append(Reject(row, str(checked.rows["video_id"].iat[i]), image, outcome.reason or "failed"))
            continue
        keep.append(i)
        images.append(str(outcome.path) if outcome is not None else image)
    fetched = checked.rows.iloc[keep].reset_index(drop=True)
    fetched["image"] = images

    order = {row: n for n, row in enumerate(_all_rows(checked))}
    rejects = sorted([*checked.rejects, *fetch_rejects], key=lambda r: order.get(r.row, len(order)))
    manifest_csv = write_manifest(fetched, out_dir / "manifest.csv", relative_images=True)
    rejects_csv = write_rejects(rejects, out_dir / "rejects.csv")
    n_new = sum(o.downloaded for o in outcomes.values())
    n_cached = sum(o.path is not None and not o.downloaded for o in outcomes.values())
    print(
        f"{manifest}: {n_new} downloaded, {n_cached} already present; "
        f"{len(rejects)} of {checked.n_input} rows rejected -> {rejects_csv}",
        flush=True,
    )
    return manifest_csv, rejects_csv


def _all_rows(checked) -> list:
    """Every input row label in input order (valid and rejected), for sorting rejects."""
    rows = list(checked.row_numbers) + [r.row for r in checked.rejects]
    return sorted(rows, key=lambda r: (0, r, "") if isinstance(r, int) else (1, 0, str(r)))


def _fetch_all(
    urls: list[str], images_dir: Path, *, workers: int, progress: bool, **options
) -> dict[str, FetchOutcome]:
    """Fetch `urls` with a thread pool (one `requests.Session` per thread); url -> outcome."""
    local = threading.local()
    sessions: list[requests.Session] = []
    lock = threading.Lock()

    def session() -> requests.Session:
        if not hasattr(local, "session"):
            local.session = requests.Session()
            local.session.headers.update({"User-Agent": _USER_AGENT, "Accept-Encoding": "identity"})
            with lock:
                sessions.append(local.session)
        return local.session

    outcomes: dict[str, FetchOutcome] = {}
    bar = tqdm(total=len(urls), unit="image", desc="fetch", file=sys.stderr, disable=None if progress else True)
    pool = ThreadPoolExecutor(max_workers=max(1, workers))
    try:
        futures = {url: pool.submit(fetch_url, url, images_dir, session=session, **options) for url in urls}
        for url, future in futures.items():
            outcomes[url] = future.result()
            bar.update(1)
    finally:
        # On Ctrl-C, drop what has not started; finished files are already in place for the next run.
        pool.shutdown(wait=True, cancel_futures=True)
        bar.close()
        for s in sessions:
            s.close()
    return outcomes


def fetch_url(
    url: str,
    images_dir: Path,
    *,
    session=requests.Session,
    timeout: float = 30.0,
    retries: int = 2,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> FetchOutcome:
    """Make `images_dir/<sha1>.<ext>` hold the image at `url`, downloading only what is missing.

    `session` is a callable returning the `requests.Session` to use.
    """
    if retries < 0:
        raise ValueError(f"retries must be >= 0, got {retries}")
    key = url_key(url)
    done = _finished(images_dir, key)
    if done is not None:
        try:
            decode_image(done, max_pixels=max_pixels)
            return FetchOutcome(done, None, False)
        except ImageDecodeError:
            done.unlink()  # damaged after the fact: fetch it again
    part = images_dir / f"{key}.part"
    failure = None
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(min(0.25 * 2 ** (attempt - 1), 4.0))
        try:
            content_type = _download(session(), url, part, timeout=timeout, max_bytes=max_bytes)
        except _Failure as err:
            failure = err
            if not err.retry:
                break
            continue
        try:
            _, image_format = decode_image(part, max_pixels=max_pixels)
        except ImageDecodeError as err:
            part.unlink(missing_ok=True)
            what = f" (Content-Type {content_type})" if content_type else ""
            return FetchOutcome(None, f"downloaded file is unusable: {err.reason}{what}", False)
        final = images_dir / f"{key}.{_EXTENSIONS.get(image_format, image_format.lower() or 'img')}"
        os.replace(part, final)
        return FetchOutcome(final, None, True)
    attempts = f" ({retries + 1} attempts)" if failure.retry and retries else ""
    if not failure.retry:
        part.unlink(missing_ok=True)
    return FetchOutcome(None, failure.reason + attempts, False)


def _finished(images_dir: Path, key: str) -> Path | None:
    found = sorted(p for p in images_dir.glob(f"{key}.*") if p.suffix != ".part")
    return found[0] if found else None


def _download(session: requests.Session, url: str, part: Path, *, timeout: float, max_bytes: int) -> str:
    """One attempt: append the rest of `url` to `part` (Range resume) or rewrite it; returns the Content-Type."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    # Per-socket timeouts do not stop a server that trickles bytes forever; this does.
    deadline = time.monotonic() + 10 * timeout
    try:
        with session.get(url, headers=headers, stream=True, timeout=timeout) as response:
            status = response.status_code
            content_type = response.headers.get("Content-Type", "")
            if status == 416 and offset:
                return content_type  # the part already holds the whole file; decoding decides
            if status >= 400 or status not in (200, 206):
                raise _Failure(f"HTTP {status} {response.reason or ''}".strip(), retry=status in _RETRY_STATUS)
            if status == 206:
                match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
                if not offset or match is None or int(match.group(1)) != offset:
                    part.unlink(missing_ok=True)
                    raise _Failure("server sent an unexpected byte range", retry=True)
                mode = "ab"
            else:
                mode, offset = "wb", 0  # the server ignored Range: start again
            length = response.headers.get("Content-Length")
            expected = offset + int(length) if length and length.isdigit() else None
            size = offset
            # Keep the bytes of a dropped connection (urllib3 would discard its last buffer); the
            # length check below turns the short body into a retry that resumes with Range.
            response.raw.enforce_content_length = False
            with open(part, mode) as handle:
                for chunk in response.iter_content(_CHUNK):
                    handle.write(chunk)
                    size += len(chunk)
                    if size > max_bytes:
                        raise _Failure(f"larger than {max_bytes} bytes", retry=False)
                    if time.monotonic() > deadline:
                        raise _Failure(f"too slow: not finished after {10 * timeout:g} s", retry=True)
    except requests.Timeout:
        raise _Failure(f"timed out after {timeout:g} s", retry=True) from None
    except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as err:
        raise _Failure(f"connection failed: {_short(err)}", retry=True) from None
    except requests.RequestException as err:
        raise _Failure(f"request failed: {_short(err)}", retry=False) from None
    if expected is not None and size < expected:
        raise _Failure(f"connection closed after {size} of {expected} bytes", retry=True)
    return content_type


def _short(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text[:200] or type(err).__name__
