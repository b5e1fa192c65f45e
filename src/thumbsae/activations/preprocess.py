"""Fit a non-square thumbnail into CLIP's square input: crop, pad (letterbox) or squash.

open_clip's default centre crop cuts the sides of 16:9 and 4:3 thumbnails, where text overlays and
faces often sit. `pad` keeps the whole image and fills the borders with the normalisation mean
colour, which is (to rounding) zero after normalisation. `bench/fit.py` measures which fit keeps
motifs near the edges recognisable; the winner is `DEFAULT_FIT`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from PIL import Image

Fit = Literal["crop", "pad", "squash"]
FITS: tuple[str, ...] = ("crop", "pad", "squash")
# bench/fit.py, 600 4:3 world backgrounds, edge-motif retention (world CLIP / random tiny ViT):
# crop 0.77 / 0.50, pad 0.92 / 0.78, squash 0.93 / 0.78. pad and squash tie (the 95 % CI of their
# difference spans 0); the tie goes to pad, which does not distort shapes.
DEFAULT_FIT: Fit = "pad"


@dataclass(frozen=True)
class ImageTransform:
    """PIL image (any mode, any size) -> normalised float32 tensor `[3, H, W]`.

    Split in two so that DataLoader workers send compact uint8 pixels (`fit_pixels`, `fit_batch`) and the main
    process normalises whole batches (`normalize`, or folded into the patch embedding by
    `thumbsae.activations.pixels.PixelForward`); `__call__` does both. A picklable callable, so
    DataLoader workers can run it.
    """

    size_hw: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    fit: Fit = DEFAULT_FIT

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self.normalize(self.fit_pixels(image)[None])[0]

    def fit_pixels(self, image: Image.Image) -> torch.Tensor:
        """The fitted image as uint8 `[3, H, W]` (contiguous)."""
        return self.fit_batch([rgb_tensor(image)])[0].contiguous()

    @property
    def fill_rgb(self) -> tuple[int, int, int]:
        """The pad colour: the normalisation mean, in 0..255."""
        return _mean_rgb(self.mean)

    def fit_batch(self, images_HWC: Sequence[torch.Tensor], *, out: torch.Tensor | None = None) -> torch.Tensor:
        """Fitted uint8 `[B, 3, H, W]` of uint8 RGB images `[h_i, w_i, 3]` (see `rgb_tensor`); see `fit_batch`."""
        return fit_batch(images_HWC, self.size_hw, self.fit, fill=self.fill_rgb, out=out)

    def pad_margins(self, sizes_hw: Sequence[tuple[int, int]]) -> tuple[int, int, int, int]:
        """`(top, bottom, left, right)` pad rows and columns shared by images of these source sizes
        once fitted (see `pad_margins`); all 0 for no images."""
        margins = [pad_margins(size, self.size_hw, self.fit) for size in set(sizes_hw)]
        return tuple(min(m[k] for m in margins) for k in range(4)) if margins else (0, 0, 0, 0)

    def normalize(self, pixels_BCHW: torch.Tensor) -> torch.Tensor:
        """uint8 `[B, 3, H, W]` -> float32 `(pixels / 255 - mean) / std`: one conversion, then one
        in-place multiply-add."""
        scale_C, shift_C = pixel_affine(self.mean, self.std)
        x_BCHW = pixels_BCHW.to(torch.float32, copy=True)  # a new tensor even for float input: scaled in place
        return x_BCHW.mul_(scale_C.to(x_BCHW.device).view(1, 3, 1, 1)).add_(shift_C.to(x_BCHW.device).view(1, 3, 1, 1))


def rgb_tensor(image: Image.Image) -> torch.Tensor:
    """A PIL image's pixels as an RGB uint8 tensor `[H, W, 3]`."""
    return torch.from_numpy(np.array(image.convert("RGB") if image.mode != "RGB" else image, dtype=np.uint8))


def pixel_affine(mean, std) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel `(scale_C, shift_C)` with `normalised = pixel_uint8 * scale + shift` (float32)."""
    std_C = torch.tensor(std, dtype=torch.float32)
    return 1.0 / (255.0 * std_C), -torch.tensor(mean, dtype=torch.float32) / std_C


def make_transform(
    image_size: int | tuple[int, int],
    mean: tuple[float, float, float] | list[float],
    std: tuple[float, float, float] | list[float],
    fit: Fit = DEFAULT_FIT,
) -> ImageTransform:
    """A transform from a PIL image to a normalised `[3, H, W]` float32 tensor.

    `image_size`: the model's input side (or `(H, W)`). `fit`: `crop` (resize the short side,
    centre-crop; open_clip's default), `pad` (resize the long side, letterbox with the `mean`
    colour) or `squash` (resize to the target ignoring the aspect ratio).
    """
    if fit not in FITS:
        raise ValueError(f"activations.fit={fit!r}: use one of {', '.join(FITS)}")
    size_hw = (int(image_size), int(image_size)) if isinstance(image_size, int) else tuple(map(int, image_size))
    return ImageTransform(size_hw, tuple(map(float, mean)), tuple(map(float, std)), fit)


def fit_batch(
    images_HWC: Sequence[torch.Tensor],
    size_hw: tuple[int, int],
    fit: Fit,
    *,
    fill: tuple[int, int, int] = (0, 0, 0),
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Resize uint8 RGB images `[h_i, w_i, 3]` to exactly `size_hw` (H, W) by `fit`: uint8 `[B, 3, H, W]`.

    The resize is bicubic with antialiasing (torch's uint8 kernel, built to match PIL's BICUBIC,
    which open_clip's preprocessing uses: within 1 level on natural images), at 2-5x PIL's speed.
    Images of the same size are resized in one call; each image's result does not depend on the
    others. `fill` colours the pad borders. The result is written into `out` (`[B, 3, H, W]`, any
    strides) when given, else into a new channels-last tensor (memory `[B, H, W, 3]`: the resize
    kernel's layout, so that placing its output and gathering patches from it copy whole rows).
    """
    h, w = size_hw
    if out is None:
        out = torch.empty((len(images_HWC), h, w, 3), dtype=torch.uint8).permute(0, 3, 1, 2)
    elif tuple(out.shape) != (len(images_HWC), 3, h, w) or out.dtype != torch.uint8:
        expected = [len(images_HWC), 3, h, w]
        raise ValueError(f"fit_batch: out must be uint8 {expected}, got {out.dtype} {list(out.shape)}")
    fill = tuple(int(v) for v in fill)
    by_size: dict[tuple[int, int], list[int]] = {}
    for i, image in enumerate(images_HWC):
        by_size.setdefault((int(image.shape[0]), int(image.shape[1])), []).append(i)
    for (src_h, src_w), rows in by_size.items():
        (new_h, new_w), (crop_top, crop_left), (top, left), (win_h, win_w) = _layout(src_h, src_w, size_hw, fit)
        # Channels-last [G, 3, h, w] view: the layout of the fast uint8 kernel.
        resized_GCHW = _resize(torch.stack([images_HWC[i] for i in rows]).permute(0, 3, 1, 2), new_h, new_w)
        window_GCHW = resized_GCHW[:, :, crop_top : crop_top + win_h, crop_left : crop_left + win_w]
        _place(out, rows, top, left, window_GCHW, fill)
    return out


def pad_margins(src_hw: tuple[int, int], size_hw: tuple[int, int], fit: Fit) -> tuple[int, int, int, int]:
    """`(top, bottom, left, right)`: how many rows and columns at each border of an image of size
    `src_hw` fitted to `size_hw` are pad (fill colour only). All 0 except for `pad`."""
    _, _, (top, left), (win_h, win_w) = _layout(*src_hw, size_hw, fit)
    return top, size_hw[0] - top - win_h, left, size_hw[1] - left - win_w


def _layout(src_h: int, src_w: int, size_hw: tuple[int, int], fit: Fit):
    """How a `src_h x src_w` image is fitted: `(resize to (h, w), window's top-left in the resized image,
    window's top-left in the output, window (h, w))`."""
    h, w = size_hw
    if fit == "squash":
        return (h, w), (0, 0), (0, 0), (h, w)
    if fit == "crop":
        scale = max(w / src_w, h / src_h)
        new_w, new_h = max(w, round(src_w * scale)), max(h, round(src_h * scale))
        return (new_h, new_w), ((new_h - h) // 2, (new_w - w) // 2), (0, 0), (h, w)
    scale = min(w / src_w, h / src_h)
    new_w, new_h = min(w, max(1, round(src_w * scale))), min(h, max(1, round(src_h * scale)))
    return (new_h, new_w), (0, 0), ((h - new_h) // 2, (w - new_w) // 2), (new_h, new_w)


def _place(
    out_BCHW: torch.Tensor, rows: list[int], top: int, left: int, pixels_GCHW: torch.Tensor, fill: tuple[int, int, int]
) -> None:
    """Copy image g of `pixels_GCHW` into `out_BCHW[rows[g]]` at (top, left) and paint the borders
    around it with `fill`: strided copies over the whole batch when `rows` is the whole batch in
    order (the common case), else per image."""
    _, _, gh, gw = pixels_GCHW.shape
    targets = [(slice(None), pixels_GCHW)] if rows == list(range(len(out_BCHW))) else [
        (i, pixels_GCHW[g]) for g, i in enumerate(rows)
    ]
    for i, pixels in targets:
        image = out_BCHW[i]
        image[..., top : top + gh, left : left + gw].copy_(pixels)
        for band in (
            image[..., :top, :], image[..., top + gh :, :], image[..., top : top + gh, :left],
            image[..., top : top + gh, left + gw :],
        ):
            if band.numel():
                # As [.., h, w, 3] with a [w, 3] colour pattern: whole pixel rows per copy in channels-last memory.
                band_HWC = band.movedim(-3, -1)
                band_HWC.copy_(_fill_row(fill, band_HWC.shape[-2]).expand_as(band_HWC))


@functools.lru_cache(maxsize=64)
def _fill_row(fill: tuple[int, int, int], width: int) -> torch.Tensor:
    """A row of `width` pixels of colour `fill`, uint8 `[width, 3]` (read-only: shared between calls)."""
    return torch.tensor(fill, dtype=torch.uint8).repeat(width, 1)


def _resize(pixels_GCHW: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Bicubic, antialiased resize of uint8 `[G, 3, h0, w0]` to `[G, 3, h, w]` (a no-op at the same size)."""
    if tuple(pixels_GCHW.shape[2:]) == (h, w):
        return pixels_GCHW
    return torch.nn.functional.interpolate(pixels_GCHW, size=(h, w), mode="bicubic", antialias=True)


def _mean_rgb(mean: tuple[float, float, float]) -> tuple[int, int, int]:
    return tuple(int(round(255 * m)) for m in mean)
