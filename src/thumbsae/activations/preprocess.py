"""Fit a non-square thumbnail into CLIP's square input: crop, pad (letterbox) or squash.

open_clip's default centre crop cuts the sides of 16:9 and 4:3 thumbnails, where text overlays and
faces often sit. `pad` keeps the whole image and fills the borders with the normalisation mean
colour, which is (to rounding) zero after normalisation. `bench/fit.py` measures which fit keeps
motifs near the edges recognisable; the winner is `DEFAULT_FIT`.
"""

from __future__ import annotations

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

    Split in two so that DataLoader workers send compact uint8 pixels (`fit_pixels`) and the main
    process normalises whole batches (`normalize`); `__call__` does both, with identical results.
    A picklable callable, so DataLoader workers can run it.
    """

    size_hw: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    fit: Fit = DEFAULT_FIT

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self.normalize(self.fit_pixels(image)[None])[0]

    def fit_pixels(self, image: Image.Image) -> torch.Tensor:
        """The fitted image as uint8 `[3, H, W]`."""
        image = image.convert("RGB") if image.mode != "RGB" else image
        fitted = fit_image(image, self.size_hw, self.fit, fill=_mean_rgb(self.mean))
        return torch.from_numpy(np.asarray(fitted, dtype=np.uint8).copy()).permute(2, 0, 1)

    def normalize(self, pixels_BCHW: torch.Tensor) -> torch.Tensor:
        """uint8 `[B, 3, H, W]` -> float32 `(pixels / 255 - mean) / std`, as one multiply-add."""
        std = torch.tensor(self.std, dtype=torch.float32).view(1, 3, 1, 1)
        scale = (1.0 / (255.0 * std)).to(pixels_BCHW.device)
        shift = (-torch.tensor(self.mean, dtype=torch.float32).view(1, 3, 1, 1) / std).to(pixels_BCHW.device)
        return torch.addcmul(shift, pixels_BCHW.to(torch.float32), scale)


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


def fit_image(
    image: Image.Image, size_hw: tuple[int, int], fit: Fit, *, fill: tuple[int, int, int] = (0, 0, 0)
) -> Image.Image:
    """Resize an RGB `image` to exactly `size_hw` (H, W) by `fit`; `fill` colours the pad borders."""
    h, w = size_hw
    src_w, src_h = image.size
    if fit == "squash":
        return image.resize((w, h), Image.Resampling.BICUBIC)
    if fit == "crop":
        scale = max(w / src_w, h / src_h)
        new_w, new_h = max(w, round(src_w * scale)), max(h, round(src_h * scale))
        resized = image.resize((new_w, new_h), Image.Resampling.BICUBIC)
        left, top = (new_w - w) // 2, (new_h - h) // 2
        return resized.crop((left, top, left + w, top + h))
    scale = min(w / src_w, h / src_h)
    new_w, new_h = min(w, max(1, round(src_w * scale))), min(h, max(1, round(src_h * scale)))
    resized = image.resize((new_w, new_h), Image.Resampling.BICUBIC)
    canvas = Image.new("RGB", (w, h), fill)
    canvas.paste(resized, ((w - new_w) // 2, (h - new_h) // 2))
    return canvas


def _mean_rgb(mean: tuple[float, float, float]) -> tuple[int, int, int]:
    return tuple(int(round(255 * m)) for m in mean)
