"""Hooked activations and CLIP embeddings of small in-memory image sets (`thumbsae rank`, names, baselines).

The same preprocessing and hook as extraction (`thumbsae.activations.extract`), without a store.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from thumbsae.activations.clip import LoadedCLIP
from thumbsae.activations.hooks import Tokens, hooked_activations
from thumbsae.activations.pixels import PixelForward
from thumbsae.activations.preprocess import DEFAULT_FIT, Fit, ImageTransform, make_transform, rgb_tensor
from thumbsae.errors import ThumbsaeError


def probe_shape(clip: LoadedCLIP, transform: ImageTransform, layer: int, tokens: str) -> tuple[int, int]:
    """`(tokens per image, D)` of the hooked output, from one blank image."""
    h, w = transform.size_hw
    with torch.inference_mode():
        out = hooked_activations(clip.model, torch.zeros(1, 3, h, w, device=clip.device), layer, tokens)
    return (int(out.shape[1]) if tokens == "all" else 1), int(out.shape[-1])


def embed_images(
    clip: LoadedCLIP,
    images: Sequence[Image.Image],
    *,
    layer: int,
    tokens: Tokens,
    fit: Fit = DEFAULT_FIT,
    batch_size: int = 64,
) -> np.ndarray:
    """Hooked activations of in-memory PIL images: float32 `[N, D]` (`cls`/`mean`) or `[N, T, D]` (`all`).

    The same preprocessing and hook as `extract_to_store`, for small sets (`thumbsae rank`).
    """
    transform = make_transform(clip.image_size, clip.mean, clip.std, fit)
    forward = PixelForward(clip.model, transform, layer, tokens)
    parts = _forward_in_batches(images, transform, batch_size, forward, clip.device)
    if not parts:
        tokens_per_image, d = probe_shape(clip, transform, layer, tokens)
        return np.zeros((0, d) if tokens != "all" else (0, tokens_per_image, d), dtype=np.float32)
    return np.concatenate(parts, axis=0)


def _forward_in_batches(images, transform, batch_size: int, forward, device) -> list[np.ndarray]:
    """`forward(uint8 pixels [B, 3, H, W], pad margins) -> tensor` over `images` in batches, as float32 numpy."""
    parts = []
    for start in range(0, len(images), batch_size):
        images_HWC = [rgb_tensor(im) for im in images[start : start + batch_size]]
        pixels_BCHW = transform.fit_batch(images_HWC)
        margins = transform.pad_margins([tuple(x.shape[:2]) for x in images_HWC])
        with torch.inference_mode():
            parts.append(forward(pixels_BCHW.to(device), margins).float().cpu().numpy())
    return parts


def image_embeddings(
    clip: LoadedCLIP, images: Sequence[Image.Image], *, fit: Fit = DEFAULT_FIT, batch_size: int = 64
) -> np.ndarray:
    """Final CLIP image embeddings, L2-normalised: float32 `[N, E]` (ridge baseline, zero-shot)."""
    transform = make_transform(clip.image_size, clip.mean, clip.std, fit)
    parts = _forward_in_batches(
        images, transform, batch_size,
        lambda pixels, _: clip.model.encode_image(transform.normalize(pixels), normalize=True),
        clip.device,
    )
    embed_dim = int(getattr(clip.model.visual, "output_dim", 0) or 0)
    return np.concatenate(parts, axis=0) if parts else np.zeros((0, embed_dim), dtype=np.float32)


def encode_text(clip: LoadedCLIP, texts: Sequence[str], *, batch_size: int = 256) -> np.ndarray:
    """Text embeddings of `texts`, L2-normalised: float32 `[N, E]`, comparable with `image_embeddings`."""
    if not clip.has_text or clip.tokenizer is None:
        raise ThumbsaeError(f"CLIP model {clip.name} has no text tower; feature names and zero-shot need one")
    parts = []
    for start in range(0, len(texts), batch_size):
        tokens_BL = clip.tokenizer(list(texts[start : start + batch_size])).to(clip.device)
        with torch.inference_mode():
            parts.append(clip.model.encode_text(tokens_BL, normalize=True).float().cpu().numpy())
    embed_dim = int(getattr(clip.model, "text_projection", torch.zeros(0, 0)).shape[-1])
    return np.concatenate(parts, axis=0) if parts else np.zeros((0, embed_dim), dtype=np.float32)
