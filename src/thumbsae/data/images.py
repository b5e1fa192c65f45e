"""Decoding one image file to RGB, whatever its mode, with a clear reason when it cannot be used.

Every stage reads pixels through `load_rgb`, so a thumbnail that passed validation decodes the
same way when its activations are extracted or its panel is drawn.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from thumbsae.errors import ThumbsaeError

# 64 megapixels: far above any thumbnail or photo we use, far below what exhausts memory.
DEFAULT_MAX_PIXELS = 64_000_000

_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})
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


def load_rgb(path: str | os.PathLike, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode the image at `path` fully and return it as an RGB `PIL.Image` (H x W x 3, uint8).

    Alpha (RGBA, LA, P or L with transparency) is composited on white; 16-bit greyscale is scaled
    from 0..65535 to 0..255; CMYK, 1-bit, palette and other modes are converted by PIL; EXIF
    orientation is applied. Raises `ImageDecodeError` for a missing, empty, non-image, truncated or
    corrupt file, and for one over `max_pixels` pixels (a decompression bomb).
    """
    return decode_image(path, max_pixels=max_pixels)[0]


def decode_image(path: str | os.PathLike, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[Image.Image, str]:
    """`load_rgb`, also returning the file's format as PIL names it (`"PNG"`, `"JPEG"`, ...)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ImageDecodeError(path, REASON_MISSING) from None
    except IsADirectoryError:
        raise ImageDecodeError(path, REASON_NOT_FILE) from None
    except OSError as err:
        raise ImageDecodeError(path, f"{REASON_UNREADABLE}: {err.strerror or err}") from None
    return decode_image_bytes(data, name=path, max_pixels=max_pixels)


def decode_image_bytes(
    data: bytes, *, name: str | os.PathLike = "<bytes>", max_pixels: int = DEFAULT_MAX_PIXELS
) -> tuple[Image.Image, str]:
    """Decode encoded image `data` to `(RGB image, format)`; errors name `name`."""
    if not data:
        raise ImageDecodeError(name, REASON_EMPTY)
    try:
        image = Image.open(io.BytesIO(data))
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
    image_format = image.format or ""
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
        # PIL's own conversion clips at 255, turning a 16-bit greyscale image almost white.
        values = np.clip(np.asarray(image).astype(np.int64), 0, 65535)
        grey = ((values * 255 + 32767) // 65535).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    has_alpha = mode in _ALPHA_MODES or "transparency" in image.info
    try:
        if has_alpha:
            rgba = image.convert("RGBA") if mode != "La" else image.convert("LA").convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(white, rgba).convert("RGB")
        return image.convert("RGB")
    except ValueError:
        raise ImageDecodeError(name, f"{REASON_MODE} {mode}") from None
