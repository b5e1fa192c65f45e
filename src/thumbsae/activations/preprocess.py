"""Fit a non-square thumbnail into CLIP's square input: crop, pad (letterbox) or squash.

open_clip's default centre crop cuts the sides of 16:9 and 4:3 thumbnails, where text overlays and
faces often sit. `pad` keeps the whole image and fills the borders with the normalisation mean
colour, which is (to rounding) zero after normalisation. `bench/fit.py` measures which fit keeps
motifs near the edges recognisable; the winner is `DEFAULT_FIT`.
"""

from __future__ import annotations

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
        """The fitted image as uint8 `[3, H, W]`."""
        return self.fit_batch([rgb_tensor(image)])[0]

    def fit_batch(self, images_HWC: Sequence[torch.Tensor]) -> torch.Tensor:
        """Fitted uint8 `[B, 3, H, W]` of uint8 RGB images `[h_i, w_i, 3]` (see `rgb_tensor`)."""
        return fit_batch(images_HWC, self.size_hw, self.fit, fill=_mean_rgb(self.mean))

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
    images_HWC: Sequence[torch.Tensor], size_hw: tuple[int, int], fit: Fit, *, fill: tuple[int, int, int] = (0, 0, 0)
) -> torch.Tensor:
    """Resize uint8 RGB images `[h_i, w_i, 3]` to exactly `size_hw` (H, W) by `fit`: uint8 `[B, 3, H, W]`.

    The resize is bicubic with antialiasing (torch's uint8 kernel, built to match PIL's BICUBIC,
    which open_clip's preprocessing uses: within 1 level on natural images), at 2-5x PIL's speed.
    Images of the same size are resized in one call; each image's result does not depend on the
    others. `fill` colours the pad borders.
    """
    h, w = size_hw
    out_BCHW = torch.tensor(fill, dtype=torch.uint8).view(1, 3, 1, 1).repeat(len(images_HWC), 1, h, w)
    by_size: dict[tuple[int, int], list[int]] = {}
    for i, image in enumerate(images_HWC):
        by_size.setdefault((int(image.shape[0]), int(image.shape[1])), []).append(i)
    for (src_h, src_w), rows in by_size.items():
        # Channels-last [G, 3, h, w] view: the layout of the fast uint8 kernel.
        group_GCHW = torch.stack([images_HWC[i] for i in rows]).permute(0, 3, 1, 2)
        if fit == "squash":
            _place(out_BCHW, rows, 0, 0, _resize(group_GCHW, h, w))
        elif fit == "crop":
            scale = max(w / src_w, h / src_h)
            new_w, new_h = max(w, round(src_w * scale)), max(h, round(src_h * scale))
            left, top = (new_w - w) // 2, (new_h - h) // 2
            _place(out_BCHW, rows, 0, 0, _resize(group_GCHW, new_h, new_w)[:, :, top : top + h, left : left + w])
        else:
            scale = min(w / src_w, h / src_h)
            new_w, new_h = min(w, max(1, round(src_w * scale))), min(h, max(1, round(src_h * scale)))
            _place(out_BCHW, rows, (h - new_h) // 2, (w - new_w) // 2, _resize(group_GCHW, new_h, new_w))
    return out_BCHW


def _place(out_BCHW: torch.Tensor, rows: list[int], top: int, left: int, pixels_GCHW: torch.Tensor) -> None:
    """Copy image g of `pixels_GCHW` into `out_BCHW[rows[g]]` at (top, left): one strided copy when
    `rows` is the whole batch in order (the common case), else one copy per image."""
    _, _, gh, gw = pixels_GCHW.shape
    if rows == list(range(len(out_BCHW))):
        out_BCHW[:, :, top : top + gh, left : left + gw].copy_(pixels_GCHW)
        return
    for g, i in enumerate(rows):
        out_BCHW[i, :, top : top + gh, left : left + gw].copy_(pixels_GCHW[g])


def _resize(pixels_GCHW: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Bicubic, antialiased resize of uint8 `[G, 3, h0, w0]` to `[G, 3, h, w]` (a no-op at the same size)."""
    if tuple(pixels_GCHW.shape[2:]) == (h, w):
        return pixels_GCHW
    return torch.nn.functional.interpolate(pixels_GCHW, size=(h, w), mode="bicubic", antialias=True)


def _mean_rgb(mean: tuple[float, float, float]) -> tuple[int, int, int]:
    return tuple(int(round(255 * m)) for m in mean)
