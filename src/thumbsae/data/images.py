"""Decoding one image file to RGB, whatever its mode, with a clear reason when it cannot be used.

Every stage reads pixels through `load_rgb`, so a thumbnail that passed validation decodes the
same way when its activations are extracted or its panel is drawn.
"""

from __future__ import annotations

import contextlib
import io
import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from thumbsae.errors import ThumbsaeError

# 64 megapixels: far above any thumbnail or photo we use, far below what exhausts memory.
DEFAULT_MAX_PIXELS = 64_000_000

# 1 GB per image: a 64-megapixel RGB photo needs about 770 MB (`decode_cost`).
DEFAULT_MAX_DECODE_BYTES = 1_000_000_000

_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})
_STORED_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2}
# value -> round(value * 255 / 65535), the 16-bit to 8-bit scaling as a lookup table
_GREY_OF_16_BIT = ((np.arange(65536, dtype=np.int64) * 255 + 32767) // 65535).astype(np.uint8)
_BAND_PIXELS = 1 << 20
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})

# Reason strings (stable: tests and rejects files match on their beginning).
REASON_MISSING = "missing file"
REASON_NOT_FILE = "not a regular file"
REASON_EMPTY = "empty file (0 bytes)"
REASON_NOT_IMAGE = "not an image (unrecognised format)"
REASON_BOMB = "decompression bomb"
REASON_TRUNCATED = "truncated image"
REASON_CORRUPT = "corrupt image data"
REASON_MODE = "unsupported colour mode"
REASON_UNREADABLE = "unreadable file"


class ImageDecodeError(ThumbsaeError):
    """An image file that cannot be used; `.reason` is the short reason without the path."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


def load_rgb(
    path: str | os.PathLike, *, max_pixels: int = DEFAULT_MAX_PIXELS, max_decode_bytes: int = DEFAULT_MAX_DECODE_BYTES
) -> Image.Image:
    """Decode the image at `path` fully and return it as an RGB `PIL.Image` (H x W x 3, uint8).

    Alpha (RGBA, LA, P or L with transparency) is composited on white; 16-bit greyscale is scaled
    from 0..65535 to 0..255; CMYK, 1-bit, palette and other modes are converted by PIL; EXIF
    orientation is applied. Raises `ImageDecodeError` for a missing, empty, non-image, truncated or
    corrupt file, for anything but a regular file (a folder, a FIFO, a device), and for a
    decompression bomb: over `max_pixels` pixels, or needing more than `max_decode_bytes` of
    memory to decode (`decode_cost`). Decodes in flight in this process together hold at most
    `DECODE_BUDGET.total` bytes (one at a time may exceed it).
    """
    return decode_image(path, max_pixels=max_pixels, max_decode_bytes=max_decode_bytes)[0]


def decode_image(
    path: str | os.PathLike, *, max_pixels: int = DEFAULT_MAX_PIXELS, max_decode_bytes: int = DEFAULT_MAX_DECODE_BYTES
) -> tuple[Image.Image, str]:
    """`load_rgb`, also returning the file's format as PIL names it (`"PNG"`, `"JPEG"`, ...)."""
    path = Path(path)
    try:
        # Non-blocking open: a FIFO or device named like an image must not hang the reader.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise ImageDecodeError(path, REASON_MISSING) from None
    except IsADirectoryError:
        raise ImageDecodeError(path, REASON_NOT_FILE) from None
    except OSError as err:
        raise ImageDecodeError(path, f"{REASON_UNREADABLE}: {err.strerror or err}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ImageDecodeError(path, REASON_NOT_FILE)
        if info.st_size == 0:
            raise ImageDecodeError(path, REASON_EMPTY)
    except BaseException:
        os.close(fd)
        raise
    with os.fdopen(fd, "rb") as handle:
        return _decode(handle, path, max_pixels=max_pixels, max_decode_bytes=max_decode_bytes)


def decode_image_bytes(
    data: bytes,
    *,
    name: str | os.PathLike = "<bytes>",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_decode_bytes: int = DEFAULT_MAX_DECODE_BYTES,
) -> tuple[Image.Image, str]:
    """Decode encoded image `data` to `(RGB image, format)`; errors name `name`."""
    if not data:
        raise ImageDecodeError(name, REASON_EMPTY)
    return _decode(io.BytesIO(data), name, max_pixels=max_pixels, max_decode_bytes=max_decode_bytes)


def decode_cost(mode: str, width: int, height: int, *, has_alpha: bool = False) -> int:
    """Bytes of memory that decoding a `width` x `height` image of PIL `mode` to RGB may hold at once.

    PIL stores 1, 2 or 4 bytes per pixel; the decoded image, an EXIF-rotated copy and the RGB
    result (4 bytes per pixel in PIL) can all be alive, and compositing alpha on white holds three
    more RGBA images.
    """
    stored = _STORED_BYTES.get(mode, 4)
    per_pixel = 2 * stored + 4 + (12 if has_alpha else 0)
    return width * height * per_pixel


class DecodeBudget:
    """Bytes that the decodes in flight in this process may hold together (`total`).

    `hold(n)` waits until `n` more bytes fit, except that a decode may always run alone; `peak`
    records the most ever held, for tests.
    """

    def __init__(self, total: int):
        self.total = int(total)
        self.peak = 0
        self._held = 0
        self._changed = threading.Condition()

    @contextlib.contextmanager
    def hold(self, nbytes: int) -> Iterator[None]:
        with self._changed:
            while self._held and self._held + nbytes > self.total:
                self._changed.wait()
            self._held += nbytes
            self.peak = max(self.peak, self._held)
        try:
            yield
        finally:
            with self._changed:
                self._held -= nbytes
                self._changed.notify_all()


def _memory_bytes() -> int | None:
    """The memory this process may use: the cgroup limit when there is one, else physical memory."""
    limits = []
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(limit_file).read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            limits.append(int(text))
    try:
        limits.append(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        pass
    return min(limits) if limits else None


# A quarter of the memory for decoding (2 GB when it cannot be read): 16 threads decoding huge
# images wait for each other instead of exhausting it.
DECODE_BUDGET = DecodeBudget((_memory_bytes() or 8_000_000_000) // 4)


def _decode(
    source: BinaryIO, name: str | os.PathLike, *, max_pixels: int, max_decode_bytes: int
) -> tuple[Image.Image, str]:
    """Open `source`, check its size and decode cost from the header, then decode under the budget."""
    try:
        image = Image.open(source)
    except UnidentifiedImageError:
        raise ImageDecodeError(name, REASON_NOT_IMAGE) from None
    except Image.DecompressionBombError as err:
        raise ImageDecodeError(name, f"{REASON_BOMB}: {err}") from None
    except Exception as err:  # PIL raises many types for broken headers (SyntaxError, struct.error, ...)
        raise ImageDecodeError(name, _classify(err)) from None
    width, height = image.size
    if width * height > max_pixels:
        raise ImageDecodeError(
            name, f"{REASON_BOMB}: {width} x {height} = {width * height} pixels, over the limit of {max_pixels}"
        )
    has_alpha = image.mode in _ALPHA_MODES or "transparency" in image.info
    cost = decode_cost(image.mode, width, height, has_alpha=has_alpha)
    if cost > max_decode_bytes:
        raise ImageDecodeError(
            name,
            f"{REASON_BOMB}: decoding {width} x {height} {image.mode} needs about {cost / 1e6:.0f} MB, "
            f"over the limit of {max_decode_bytes / 1e6:.0f} MB",
        )
    image_format = image.format or ""
    with DECODE_BUDGET.hold(cost):
        try:
            image.load()
            ImageOps.exif_transpose(image, in_place=True)  # no copy when there is nothing to rotate
        except Exception as err:  # any decoder failure means the pixels cannot be trusted
            raise ImageDecodeError(name, _classify(err)) from None
        return _to_rgb(image, name), image_format


def _classify(err: Exception) -> str:
    message = str(err) or type(err).__name__
    if "truncated" in message.lower() or isinstance(err, EOFError):
        return f"{REASON_TRUNCATED}: {message}"
    return f"{REASON_CORRUPT}: {message}"


def _to_rgb(image: Image.Image, name: str | os.PathLike) -> Image.Image:
    """Convert a loaded image of any mode to RGB (see `load_rgb`)."""
    mode = image.mode
    if mode == "RGB" and "transparency" not in image.info:
        return image
    if mode in _SIXTEEN_BIT_MODES:
        return _sixteen_bit_to_rgb(image)
    has_alpha = mode in _ALPHA_MODES or "transparency" in image.info
    try:
        if has_alpha:
            rgba = image.convert("RGBA") if mode != "La" else image.convert("LA").convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(white, rgba).convert("RGB")
        return image.convert("RGB")
    except ValueError:
        raise ImageDecodeError(name, f"{REASON_MODE} {mode}") from None


def _sixteen_bit_to_rgb(image: Image.Image) -> Image.Image:
    """Scale 0..65535 greyscale to 0..255 (rounded) band by band, so temporaries stay small.

    PIL's own conversion clips at 255, turning a 16-bit greyscale image almost white.
    """
    width, height = image.size
    grey_HW = np.empty((height, width), dtype=np.uint8)
    rows = max(1, _BAND_PIXELS // max(1, width))
    for top in range(0, height, rows):
        band = np.asarray(image.crop((0, top, width, min(height, top + rows))))
        grey_HW[top : top + band.shape[0]] = _GREY_OF_16_BIT[np.clip(band, 0, 65535)]
    return Image.fromarray(grey_HW, "L").convert("RGB")
