"""Hooked activations straight from uint8 pixels, with the normalisation folded into the patch embedding.

CLIP's first layer is linear (a patch convolution, stride = kernel) and its preprocessing ends with
an affine map per channel, `x = pixel * scale_c + shift_c`. Folding that map into the patch
weights, `W'[o, c] = W[o, c] * scale_c` and `b'[o] = b[o] + sum W[o, c] * shift_c`, gives the same
patch embeddings (to float rounding) without a normalised float copy of every image; the patches
are gathered from the uint8 batch and converted in one pass, then embedded by one matrix product.
Towers without such a first layer (timm trunks) are fed normalised pixels instead.
"""

from __future__ import annotations

import copy
import threading

import torch
from torch import nn

from thumbsae.activations.hooks import Tokens, hooked_activations, vision_tower
from thumbsae.activations.preprocess import ImageTransform, pixel_affine


class FoldedPatchEmbed(nn.Module):
    """A stride = kernel, unpadded `Conv2d` on normalised input, re-expressed on raw pixel values.

    Input: `[B, C, H, W]` pixels (uint8 or float, 0..255). Output: `[B, D, H // p, W // q]`, as the
    convolution would give on `(pixels * scale + shift)`.
    """

    def __init__(self, conv: nn.Conv2d, scale_C: torch.Tensor, shift_C: torch.Tensor):
        super().__init__()
        W_OCPQ = conv.weight.detach()
        scale = scale_C.to(W_OCPQ).view(1, -1, 1, 1)
        shift = shift_C.to(W_OCPQ).view(1, -1, 1, 1)
        bias_O = (W_OCPQ * shift).sum(dim=(1, 2, 3))
        if conv.bias is not None:
            bias_O = bias_O + conv.bias.detach()
        self.register_buffer("weight_KO", (W_OCPQ * scale).reshape(W_OCPQ.shape[0], -1).t().contiguous())
        self.register_buffer("bias_O", bias_O)
        self.patch = tuple(conv.kernel_size)
        self._local = threading.local()

    def _buffer(self, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
        """A float patch buffer kept between calls (one per thread): a fresh one of this size (tens of
        MB) would be new pages from the OS every batch, and faulting them in costs twice the copy."""
        key = (shape, device)
        if getattr(self._local, "key", None) != key:
            self._local.key = key
            self._local.buffer = torch.empty(shape, dtype=self.weight_KO.dtype, device=device)
        return self._local.buffer

    def forward(self, pixels_BCHW: torch.Tensor) -> torch.Tensor:  # noqa: D102
        p, q = self.patch
        B, C, H, W = pixels_BCHW.shape
        gh, gw = H // p, W // q
        patches = pixels_BCHW[:, :, : gh * p, : gw * q].reshape(B, C, gh, p, gw, q).permute(0, 2, 4, 1, 3, 5)
        flat_BGCPQ = self._buffer((B, gh, gw, C, p, q), pixels_BCHW.device)
        flat_BGCPQ.copy_(patches)  # gather and convert in one pass
        out_NO = torch.addmm(self.bias_O, flat_BGCPQ.view(B * gh * gw, C * p * q), self.weight_KO)
        return out_NO.view(B, gh, gw, -1).permute(0, 3, 1, 2)


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
            self.visual._modules["conv1"] = FoldedPatchEmbed(conv, *pixel_affine(transform.mean, transform.std))
        else:
            self.visual = visual

    def __call__(self, pixels_BCHW: torch.Tensor) -> torch.Tensor:
        x_BCHW = pixels_BCHW if self.folded else self.transform.normalize(pixels_BCHW)
        return hooked_activations(self.visual, x_BCHW, self.layer, self.tokens)
