"""`thumbsae fetch`: download a manifest's `http(s)` images into a local, resumable cache.

Each URL lands in `OUT/images/<sha1 of url>.<ext>`, written as `<sha1>.part` and renamed only
after it decodes as an image, so a file with a final name is always complete. A run after an
interruption skips finished files and resumes `.part` files with an HTTP Range request.

Every request has a wall-clock deadline: a watchdog shuts the request's socket when it passes, so
a server that trickles bytes (in its headers or its body) cannot hold a worker.
"""

from __future__ import annotations

import contextlib
import email.utils
import hashlib
import math
import numbers
import os
import re
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import requests
import urllib3
from requests.adapters import HTTPAdapter

from thumbsae.console import progress_bar
from thumbsae.data.images import (
    DEFAULT_MAX_DECODE_BYTES,
    DEFAULT_MAX_PIXELS,
    ImageDecodeError,
    decode_image,
)
from thumbsae.data.manifest import Reject, is_url, read_manifest, validate_image_set, write_manifest, write_rejects
from thumbsae.errors import ThumbsaeError

# 50 MB: a thumbnail is ~100 kB; anything this big is not one and would only fill the disk.
DEFAULT_MAX_BYTES = 50_000_000
_CHUNK = 1 << 16
_RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
_EXTENSIONS = {"JPEG": "jpg", "MPO": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp", "TIFF": "tif"}
_USER_AGENT = "thumbsae-fetch/0.1"
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-")
OUTPUT_FILES = ("manifest.csv", "rejects.csv")


def _check_int(key: str, value: object, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not lo <= value <= hi:
        raise ThumbsaeError(f"fetch.{key}={value!r}: must be an integer in {lo}..{hi}")
    return int(value)


def _check_seconds(key: str, value: object, *, zero: bool = False) -> float:
    ok = not isinstance(value, bool) and isinstance(value, numbers.Real) and math.isfinite(value)
    if not ok or value < 0 or (value == 0 and not zero):
        raise ThumbsaeError(f"fetch.{key}={value!r}: must be a finite number {'>=' if zero else '>'} 0 (seconds)")
    return float(value)


@dataclass(frozen=True)
class FetchConfig:
    """How `thumbsae fetch` downloads; every field is checked on construction.

    workers: parallel downloads (1..256).
    timeout: seconds any one connect or read may wait (finite, > 0).
    deadline: wall-clock seconds one request may take in all, headers and body (finite, > 0;
        None: 10 x timeout).
    retries: extra attempts after a transient failure (timeout, dropped connection, 5xx, 429).
    retry_after_cap: the longest `Retry-After` (s) honoured; a server asking for more makes the
        row a reject for now (fetch again later).
    max_bytes: largest download; max_pixels / max_decode_bytes: the decoding limits of `load_rgb`.
    A bad value raises `ThumbsaeError("fetch.timeout=0: must be a finite number > 0 (seconds)")`.
    """

    workers: int = 8
    timeout: float = 30.0
    deadline: float | None = None
    retries: int = 2
    retry_after_cap: float = 60.0
    max_bytes: int = DEFAULT_MAX_BYTES
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_decode_bytes: int = DEFAULT_MAX_DECODE_BYTES

    def __post_init__(self) -> None:
        _check_int("workers", self.workers, 1, 256)
        object.__setattr__(self, "timeout", _check_seconds("timeout", self.timeout))
        deadline = 10 * self.timeout if self.deadline is None else self.deadline
        object.__setattr__(self, "deadline", _check_seconds("deadline", deadline))
        _check_int("retries", self.retries, 0, 100)
        object.__setattr__(self, "retry_after_cap", _check_seconds("retry_after_cap", self.retry_after_cap, zero=True))
        _check_int("max_bytes", self.max_bytes, 1, 2**63 - 1)
        _check_int("max_pixels", self.max_pixels, 1, 2**63 - 1)
        _check_int("max_decode_bytes", self.max_decode_bytes, 1, 2**63 - 1)


@dataclass(frozen=True)
class FetchOutcome:
    """One URL's result: the local file, or the reason it could not be used."""

    path: Path | None
    reason: str | None
    downloaded: bool


class _Failure(Exception):
    """A failed attempt; `retry` says whether trying again can help, `wait` what the server asked (s)."""

    def __init__(self, reason: str, retry: bool, wait: float | None = None):
        super().__init__(reason)
        self.reason = reason
        self.retry = retry
        self.wait = wait


def url_key(url: str) -> str:
    """The cache name of `url`: its SHA-1 in hex."""
    return hashlib.sha1(url.encode("utf-8")).hexdigest()


def fetch_manifest(
    manifest: str | os.PathLike,
    out_dir: str | os.PathLike,
    config: FetchConfig | None = None,
    *,
    kind: str | None = None,
    progress: bool = True,
    **settings,
) -> tuple[Path, Path]:
    """Download the `http(s)` images of `manifest` and write a local manifest beside them.

    Inputs: a CSV / Parquet manifest whose `image` may be URLs or paths; `config` (or its fields
    as keyword `settings`, e.g. `workers=4`); `kind` defaults to `"thumbnails"` when it has a
    `views` column, else `"reference"` (rows are validated as `load_image_set` does; local images
    are decoded). Outputs `(OUT/manifest.csv, OUT/rejects.csv)`: the usable rows with `image` a
    path relative to OUT (or absolute, for local images elsewhere), and every unusable row with
    its reason; every input row is in exactly one of them. Raises `ThumbsaeError` before any
    download when `--out` would write over the manifest or cannot be written, and after writing
    both files when every row is rejected.
    """
    if config is None:
        config = FetchConfig(**settings)
    elif settings:
        raise TypeError("fetch_manifest: pass a FetchConfig or its fields, not both")
    manifest, out_dir = Path(manifest), Path(out_dir)
    if not manifest.is_file():
        raise ThumbsaeError(f"{manifest}: no such manifest file (fetch reads a .csv or .parquet manifest)")
    _check_out_dir(manifest, out_dir)
    if kind is None:
        kind = "thumbnails" if "views" in read_manifest(manifest, kind="images").columns else "reference"
    checked = validate_image_set(
        manifest, kind=kind, check_images=True, allow_urls=True,
        max_pixels=config.max_pixels, max_decode_bytes=config.max_decode_bytes, workers=config.workers,
    )
    images_dir = out_dir / "images"
    try:
        images_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ThumbsaeError(f"--out {out_dir}: cannot create folder ({err.strerror or err})") from None

    urls = list(dict.fromkeys(image for image in checked.rows["image"] if is_url(image)))
    outcomes = _fetch_all(urls, images_dir, config=config, progress=progress)

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
    if len(fetched) == 0:
        first = f"first: row {rejects[0].row}: {rejects[0].reason}; " if rejects else ""
        raise ThumbsaeError(f"{manifest}: all {checked.n_input} rows rejected ({first}all reasons in {rejects_csv})")
    return manifest_csv, rejects_csv


def _check_out_dir(manifest: Path, out_dir: Path) -> None:
    """Refuse an `--out` whose outputs would replace the manifest, or that cannot be created or written."""
    for name in OUTPUT_FILES:
        target = out_dir / name
        same = os.path.realpath(target) == os.path.realpath(manifest)
        with contextlib.suppress(OSError):
            same = same or os.path.samefile(target, manifest)
        if same:
            raise ThumbsaeError(
                f"{manifest}: fetch --out {out_dir} would write over its input ({name}); choose another --out"
            )
    existing = out_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise ThumbsaeError(f"--out {out_dir}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ThumbsaeError(f"--out {out_dir}: {existing} is not writable")


def _all_rows(checked) -> list:
    """Every input row label in input order (valid and rejected), for sorting rejects."""
    rows = list(checked.row_numbers) + [r.row for r in checked.rejects]
    return sorted(rows, key=lambda r: (0, r, "") if isinstance(r, int) else (1, 0, str(r)))


def _fetch_all(urls: list[str], images_dir: Path, *, config: FetchConfig, progress: bool) -> dict[str, FetchOutcome]:
    """Fetch `urls` with a thread pool (one `requests.Session` per thread); url -> outcome."""
    local = threading.local()
    sessions: list[requests.Session] = []
    lock = threading.Lock()
    stop = threading.Event()

    def session() -> requests.Session:
        if not hasattr(local, "session"):
            local.session = new_session()
            with lock:
                sessions.append(local.session)
        return local.session

    outcomes: dict[str, FetchOutcome] = {}
    bar = progress_bar(len(urls), "fetch", unit="image", disable=not progress or not urls)
    pool = ThreadPoolExecutor(max_workers=config.workers)
    try:
        futures = {url: pool.submit(fetch_url, url, images_dir, session=session, config=config, stop=stop) for url in urls}
        for url, future in futures.items():
            outcomes[url] = future.result()
            bar.update(1)
    finally:
        # On Ctrl-C, drop what has not started and wake sleeping retries; finished files stay for the next run.
        stop.set()
        pool.shutdown(wait=True, cancel_futures=True)
        bar.close()
        for s in sessions:
            s.close()
    return outcomes


def new_session() -> requests.Session:
    """A `requests.Session` whose connections obey `_Deadline` (see `fetch_url`)."""
    s = requests.Session()
    s.headers.update({"User-Agent": _USER_AGENT, "Accept-Encoding": "identity"})
    adapter = _DeadlineAdapter()
    s.mount("http://", adapter)
    s.mount("https://", adapter)
    return s


def fetch_url(
    url: str,
    images_dir: Path,
    *,
    session=new_session,
    config: FetchConfig | None = None,
    stop: threading.Event | None = None,
) -> FetchOutcome:
    """Make `images_dir/<sha1>.<ext>` hold the image at `url`, downloading only what is missing.

    `session` is a callable returning the `requests.Session` to use (`new_session()` gives the
    deadline its teeth); `stop`, when set, ends waits between attempts.
    """
    config = config or FetchConfig()
    stop = stop or threading.Event()
    key = url_key(url)
    done = _finished(images_dir, key)
    if done is not None:
        try:
            decode_image(done, max_pixels=config.max_pixels, max_decode_bytes=config.max_decode_bytes)
            return FetchOutcome(done, None, False)
        except ImageDecodeError:
            done.unlink()  # damaged after the fact: fetch it again
    part = images_dir / f"{key}.part"
    failure = None
    for attempt in range(config.retries + 1):
        if attempt:
            delay = failure.wait if failure.wait is not None else min(0.25 * 2 ** (attempt - 1), 4.0)
            if stop.wait(delay):
                break
        try:
            content_type = _download(session(), url, part, config=config)
        except _Failure as err:
            failure = err
            if err.wait is not None and err.wait > config.retry_after_cap:
                reason = (
                    f"{err.reason}; the server asks to wait {err.wait:g} s, over fetch.retry_after_cap="
                    f"{config.retry_after_cap:g} s (fetch again later)"
                )
                return FetchOutcome(None, reason, False)  # any .part stays for the next run
            if not err.retry:
                break
            continue
        try:
            _, image_format = decode_image(part, max_pixels=config.max_pixels, max_decode_bytes=config.max_decode_bytes)
        except ImageDecodeError as err:
            part.unlink(missing_ok=True)
            what = f" (Content-Type {content_type})" if content_type else ""
            return FetchOutcome(None, f"downloaded file is unusable: {err.reason}{what}", False)
        final = images_dir / f"{key}.{_EXTENSIONS.get(image_format, image_format.lower() or 'img')}"
        os.replace(part, final)
        return FetchOutcome(final, None, True)
    attempts = f" ({config.retries + 1} attempts)" if failure.retry and config.retries else ""
    if not failure.retry:
        part.unlink(missing_ok=True)
    return FetchOutcome(None, failure.reason + attempts, False)


def _finished(images_dir: Path, key: str) -> Path | None:
    found = sorted(p for p in images_dir.glob(f"{key}.*") if p.suffix != ".part")
    return found[0] if found else None


def _retry_after(value: str | None) -> float | None:
    """Seconds from a `Retry-After` header (delta-seconds or an HTTP date), None when absent or bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None or when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - time.time())


def _download(session: requests.Session, url: str, part: Path, *, config: FetchConfig) -> str:
    """One attempt: append the rest of `url` to `part` (Range resume) or rewrite it; returns the Content-Type."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    too_slow = _Failure(f"too slow: not finished after {config.deadline:g} s", retry=True)
    with _Deadline(config.deadline) as deadline:
        try:
            with session.get(url, headers=headers, stream=True, timeout=config.timeout) as response:
                status = response.status_code
                content_type = response.headers.get("Content-Type", "")
                if status == 416 and offset:
                    return content_type  # the part already holds the whole file; decoding decides
                if status >= 400 or status not in (200, 206):
                    raise _Failure(
                        f"HTTP {status} {response.reason or ''}".strip(),
                        retry=status in _RETRY_STATUS,
                        wait=_retry_after(response.headers.get("Retry-After")) if status in (429, 503) else None,
                    )
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
                        if size > config.max_bytes:
                            raise _Failure(f"larger than {config.max_bytes} bytes", retry=False)
                        if deadline.expired:
                            raise too_slow
        except requests.Timeout:
            raise (too_slow if deadline.expired else _Failure(f"timed out after {config.timeout:g} s", retry=True)) from None
        except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as err:
            raise (too_slow if deadline.expired else _Failure(f"connection failed: {_short(err)}", retry=True)) from None
        except requests.RequestException as err:
            raise (too_slow if deadline.expired else _Failure(f"request failed: {_short(err)}", retry=False)) from None
    if deadline.expired:
        raise too_slow  # the watchdog cut the body short: what arrived may look complete
    if expected is not None and size < expected:
        raise _Failure(f"connection closed after {size} of {expected} bytes", retry=True)
    return content_type


def _short(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text[:200] or type(err).__name__


# ---------------------------------------------------------------- the per-request deadline

_current = threading.local()  # the _Deadline of the request this thread is making


class _Deadline:
    """A watchdog for one request: when `seconds` pass, it shuts down the request's socket.

    Socket timeouts bound each read, not the request: a server sending a byte every half second
    would hold it for ever. The connection classes below report their socket to the deadline of
    the request running in their thread; shutting the socket wakes any blocked read at once.
    """

    def __init__(self, seconds: float):
        self.expired = False
        self._socket: socket.socket | None = None
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def __enter__(self) -> _Deadline:
        _current.deadline = self
        self._timer.start()
        return self

    def __exit__(self, *exc) -> None:
        self._timer.cancel()
        _current.deadline = None

    def attach(self, sock: socket.socket) -> None:
        with self._lock:
            self._socket = sock
            if self.expired:
                _shut(sock)

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            if self._socket is not None:
                _shut(self._socket)


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def _report_socket(connection) -> None:
    # The socket itself: http.client drops `connection.sock` once a closing response owns it.
    deadline = getattr(_current, "deadline", None)
    sock = getattr(connection, "sock", None)
    if deadline is not None and sock is not None:
        deadline.attach(sock)


class _WatchedHTTPConnection(urllib3.connection.HTTPConnection):
    def connect(self) -> None:
        super().connect()
        _report_socket(self)

    def request(self, *args, **kwargs):
        _report_socket(self)  # a kept-alive connection is already connected
        return super().request(*args, **kwargs)


class _WatchedHTTPSConnection(urllib3.connection.HTTPSConnection):
    def connect(self) -> None:
        super().connect()
        _report_socket(self)

    def request(self, *args, **kwargs):
        _report_socket(self)
        return super().request(*args, **kwargs)


class _WatchedHTTPPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _WatchedHTTPSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


_WATCHED_POOLS = {"http": _WatchedHTTPPool, "https": _WatchedHTTPSPool}


class _DeadlineAdapter(HTTPAdapter):
    """requests' adapter with connection pools whose connections report to the running `_Deadline`."""

    def init_poolmanager(self, *args, **kwargs) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = dict(_WATCHED_POOLS)

    def proxy_manager_for(self, proxy, **proxy_kwargs):
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if type(manager) is urllib3.ProxyManager:  # SOCKS managers keep their own pools
            manager.pool_classes_by_scheme = dict(_WATCHED_POOLS)
        return manager
