"""Hooked activations straight from uint8 pixels, with the normalisation folded into the patch embedding.

CLIP's first layer is linear (a patch convolution, stride = kernel) and its preprocessing ends with
an affine map per channel, `x = pixel * scale_c + shift_c`. Folding that map into the patch
weights, `W'[o, c] = W[o, c] * scale_c` and `b'[o] = b[o] + sum W[o, c] * shift_c`, gives the same
patch embeddings (to float rounding) without a normalised float copy of every image; the patches
are gathered from the uint8 batch and converted in one pass, then embedded by one matrix product.
Towers without such a first layer (timm trunks) are fed normalised pixels instead.

The same linearity lets letterboxed images (`fit=pad`) skip their borders: a border pixel always
holds the fill colour, so its share of a patch's product is a constant known in advance. With a
4:3 thumbnail in a square input, a quarter of the patch embedding's work goes away; with 16:9, more.
"""

from __future__ import annotations

import contextlib
import copy
import math
import threading

import torch
from torch import nn

from thumbsae.activations.hooks import Tokens, hooked_activations, vision_tower
from thumbsae.activations.preprocess import ImageTransform, pixel_affine


class FoldedPatchEmbed(nn.Module):
    """A stride = kernel, unpadded `Conv2d` on normalised input, re-expressed on raw pixel values.

    Input: `[B, C, H, W]` pixels (uint8 or float, 0..255). Output: `[B, D, H // p, W // q]`, as the
    convolution would give on `(pixels * scale + shift)`.

    Letterbox borders: when the caller says that the outer `margins` rows and columns of every
    image hold nothing but the `fill` colour (`with embed.borders(margins):`), their share of each
    patch product is a constant, computed once; only the pixels inside the borders are gathered and
    multiplied. Patches wholly in a border cost nothing. Same values up to float rounding.
    """

    def __init__(self, conv: nn.Conv2d, scale_C: torch.Tensor, shift_C: torch.Tensor, fill: tuple[int, ...] = ()):
        super().__init__()
        W_OCPQ = conv.weight.detach()
        scale = scale_C.to(W_OCPQ).view(1, -1, 1, 1)
        shift = shift_C.to(W_OCPQ).view(1, -1, 1, 1)
        bias_O = (W_OCPQ * shift).sum(dim=(1, 2, 3))
        if conv.bias is not None:
            bias_O = bias_O + conv.bias.detach()
        self.register_buffer("weight_OCPQ", W_OCPQ * scale)
        self.register_buffer("bias_O", bias_O)
        self.patch = tuple(conv.kernel_size)
        self.fill = tuple(fill)
        self._local = threading.local()
        self._parts: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    @contextlib.contextmanager
    def borders(self, margins: tuple[int, int, int, int] | None):
        """Within this block, calls may treat `margins = (top, bottom, left, right)` rows and columns
        as fill colour (None or all 0: no borders)."""
        self._local.margins = margins
        try:
            yield self
        finally:
            self._local.margins = None

    def _buffer(self, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
        """A float patch buffer kept between calls (one per thread): a fresh one of this size (tens of
        MB) would be new pages from the OS every batch, and faulting them in costs twice the copy."""
        numel = math.prod(shape)
        buffer = getattr(self._local, "buffer", None)
        if buffer is None or buffer.device != device or buffer.numel() < numel:
            buffer = self._local.buffer = torch.empty(numel, dtype=self.weight_OCPQ.dtype, device=device)
        return buffer[:numel].view(shape)

    def _part(self, channels_last: bool, y0: int, y1: int, x0: int, x1: int) -> tuple[torch.Tensor, torch.Tensor]:
        """`(weight_KO, bias_O)` for patches whose pixels outside rows y0:y1, columns x0:x1 are fill:
        the weight rows of the inside pixels (in gather order), and the bias plus the outside's
        constant product. Cached per shape."""
        W = self.weight_OCPQ
        key = (channels_last, y0, y1, x0, x1, W.device, W.dtype)
        if key not in self._parts:
            inside_OCPQ = W[:, :, y0:y1, x0:x1]
            order = (0, 2, 3, 1) if channels_last else (0, 1, 2, 3)
            weight_KO = inside_OCPQ.permute(*order).flatten(1).t().contiguous()
            bias_O = self.bias_O
            if self.fill and (y0, y1, x0, x1) != (0, self.patch[0], 0, self.patch[1]):
                fill_C = torch.tensor(self.fill, dtype=torch.float64, device=W.device)
                total_O = (W.double().sum(dim=(2, 3)) * fill_C).sum(dim=1)
                inside_O = (inside_OCPQ.double().sum(dim=(2, 3)) * fill_C).sum(dim=1)
                bias_O = (bias_O.double() + total_O - inside_O).to(W.dtype)
            self._parts[key] = (weight_KO, bias_O)
        return self._parts[key]

    def forward(self, pixels_BCHW: torch.Tensor) -> torch.Tensor:  # noqa: D102
        p, q = self.patch
        B, C, H, W = pixels_BCHW.shape
        gh, gw = H // p, W // q
        channels_last = pixels_BCHW.stride(1) == 1 and C > 1  # then each patch row is one run of q * C values
        margins = getattr(self._local, "margins", None) if self.fill else None
        top, bottom, left, right = margins or (0, 0, 0, 0)
        rows, cols = _segments(gh, p, top, H - bottom), _segments(gw, q, left, W - right)
        whole = len(rows) == len(cols) == 1 and rows[0][1][1] > rows[0][1][0] and cols[0][1][1] > cols[0][1][0]
        out_BGGO = None if whole else torch.empty(
            (B, gh, gw, self.bias_O.shape[0]), dtype=self.bias_O.dtype, device=pixels_BCHW.device
        )
        for (ra, rb), (y0, y1) in rows:
            for (ca, cb), (x0, x1) in cols:
                weight_KO, bias_O = self._part(channels_last, y0, y1, x0, x1)
                if y0 == y1 or x0 == x1:  # wholly border: a constant
                    out_BGGO[:, ra:rb, ca:cb] = bias_O
                    continue
                region = pixels_BCHW[:, :, ra * p : rb * p, ca * q : cb * q]
                if channels_last:
                    blocks = region.permute(0, 2, 3, 1).reshape(B, rb - ra, p, cb - ca, q, C)
                    patches = blocks[:, :, y0:y1, :, x0:x1].permute(0, 1, 3, 2, 4, 5)
                else:
                    blocks = region.reshape(B, C, rb - ra, p, cb - ca, q)
                    patches = blocks[:, :, :, y0:y1, :, x0:x1].permute(0, 2, 4, 1, 3, 5)
                flat = self._buffer(tuple(patches.shape), pixels_BCHW.device)
                flat.copy_(patches)  # gather and convert in one pass
                product_NO = torch.addmm(bias_O, flat.view(-1, weight_KO.shape[0]), weight_KO)
                if out_BGGO is None:
                    return product_NO.view(B, gh, gw, -1).permute(0, 3, 1, 2)
                out_BGGO[:, ra:rb, ca:cb] = product_NO.view(B, rb - ra, cb - ca, -1)
        return out_BGGO.permute(0, 3, 1, 2)


def _segments(n: int, size: int, start: int, stop: int) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """Patch rows (or columns) `0..n` of `size` pixels, grouped into runs that share the span of
    pixels inside `[start, stop)`: `[((first, end), (inside from, inside to)), ...]`, the span
    relative to the patch (empty: from == to)."""
    runs: list[tuple[tuple[int, int], tuple[int, int]]] = []
    for k in range(n):
        lo = min(max(start - k * size, 0), size)
        hi = max(min(stop - k * size, size), lo)
        span = (lo, hi) if hi > lo else (0, 0)
        if runs and runs[-1][1] == span:
            runs[-1] = ((runs[-1][0][0], k + 1), span)
        else:
            runs.append(((k, k + 1), span))
    return runs


def foldable(conv: object) -> bool:
    """True for a plain patch convolution: `Conv2d`, stride = kernel, no padding, dilation 1, one group."""
    return (
        isinstance(conv, nn.Conv2d)
        and tuple(conv.stride) == tuple(conv.kernel_size)
        and tuple(conv.padding) == (0, 0)
        and tuple(conv.dilation) == (1, 1)
        and conv.groups == 1
        and conv.padding_mode == "zeros"
    )


class PixelForward:
    """`pixels_BCHW (uint8) -> hooked activations`, as `hooked_activations(model, transform.normalize(pixels), ...)`.

    For open_clip ViTs the normalisation is folded into a copy of the patch embedding (the model
    itself is not modified); other towers get `transform.normalize` first.
    """

    def __init__(self, model: nn.Module, transform: ImageTransform, layer: int, tokens: Tokens):
        self.transform, self.layer, self.tokens = transform, layer, tokens
        visual = vision_tower(model)
        conv = getattr(visual, "conv1", None)
        self.folded = hasattr(visual, "forward_intermediates") and foldable(conv)
        if self.folded:
            # A shallow copy sharing every submodule but the patch embedding.
            self.visual = copy.copy(visual)
            self.visual._modules = dict(visual._modules)
            self.embed = FoldedPatchEmbed(conv, *pixel_affine(transform.mean, transform.std), fill=transform.fill_rgb)
            self.visual._modules["conv1"] = self.embed
        else:
            self.visual = visual

    def __call__(self, pixels_BCHW: torch.Tensor, margins: tuple[int, int, int, int] | None = None) -> torch.Tensor:
        """`margins`: `(top, bottom, left, right)` rows and columns of every image that hold only the
        transform's fill colour (`ImageTransform.pad_margins`); the patch embedding skips them."""
        if not self.folded:
            return hooked_activations(self.visual, self.transform.normalize(pixels_BCHW), self.layer, self.tokens)
        with self.embed.borders(margins):
            return hooked_activations(self.visual, pixels_BCHW, self.layer, self.tokens)
