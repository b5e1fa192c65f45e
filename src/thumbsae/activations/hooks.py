"""The residual stream after one block of a CLIP vision tower, without running the blocks after it.

`layer` counts blocks from 0; negative values count from the end (-1 is the last block, -2 the
second to last: the study's setting). Tokens: `cls` (the class token), `mean` (mean of the patch
tokens, prefix tokens excluded) or `all` (every token, class token first, `[B, T, D]`).
"""

from __future__ import annotations

from typing import Literal

import torch
from open_clip.transformer import ResidualAttentionBlock

from thumbsae.errors import ThumbsaeError

Tokens = Literal["cls", "mean", "all"]
TOKEN_MODES: tuple[str, ...] = ("cls", "mean", "all")


def vision_tower(model: torch.nn.Module) -> torch.nn.Module:
    """The vision tower of an open_clip model (`model.visual`), or `model` if it already is one."""
    return getattr(model, "visual", model)


def vision_blocks(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The residual blocks of the vision tower, in order (open_clip ViT or timm ViT trunk)."""
    visual = vision_tower(model)
    if hasattr(visual, "transformer") and hasattr(visual.transformer, "resblocks"):
        return visual.transformer.resblocks
    trunk = getattr(visual, "trunk", None)
    if trunk is not None and hasattr(trunk, "blocks"):
        return trunk.blocks
    raise ThumbsaeError(
        f"cannot hook the vision tower {type(visual).__name__}: only transformer (ViT) towers are supported"
    )


def resolve_layer(model: torch.nn.Module, layer: int) -> int:
    """The non-negative block index of `layer` (negative counts from the end)."""
    n_blocks = len(vision_blocks(model))
    index = layer + n_blocks if layer < 0 else layer
    if not 0 <= index < n_blocks:
        raise ThumbsaeError(
            f"activations.layer={layer} is out of range for a {n_blocks}-block vision tower "
            f"(use {-n_blocks}..{n_blocks - 1})"
        )
    return index


def n_prefix_tokens(model: torch.nn.Module) -> int:
    """How many non-patch tokens (class token, registers) lead the token sequence."""
    visual = vision_tower(model)
    trunk = getattr(visual, "trunk", None)
    if trunk is not None:
        return int(getattr(trunk, "num_prefix_tokens", 1))
    return 1


def hooked_activations(
    model: torch.nn.Module, images_BCHW: torch.Tensor, layer: int, tokens: Tokens
) -> torch.Tensor:
    """Residual stream after block `layer` of the vision tower for a batch of preprocessed images.

    `model`: an open_clip model or its `.visual` tower (open_clip ViT or timm-backed ViT).
    `images_BCHW`: normalised float images. Returns `[B, D]` for `cls`/`mean`, `[B, T, D]` for
    `all` (T = prefix tokens + patches, class token at position 0). Blocks after `layer` are not run,
    and for `cls` on open_clip ViTs the hooked block itself runs for the class token only (same
    values up to float rounding: its other tokens are never read).
    """
    if tokens not in TOKEN_MODES:
        raise ThumbsaeError(f"activations.tokens={tokens!r}: use one of {', '.join(TOKEN_MODES)}")
    visual = vision_tower(model)
    index = resolve_layer(model, layer)
    last_block = vision_blocks(model)[index]
    if tokens == "cls" and index > 0 and supports_class_token_only(visual, last_block):
        # Only the class token leaves the hooked block, so its other tokens need no attention or MLP.
        prefix_BSD, patches_BPD = _tokens_after(visual, images_BCHW, index - 1)
        return class_token_through(last_block, torch.cat([prefix_BSD, patches_BPD], dim=1))
    prefix_BSD, patches_BPD = _tokens_after(visual, images_BCHW, index)
    if tokens == "mean":
        return patches_BPD.mean(dim=1)
    if tokens == "cls":
        if prefix_BSD.shape[1] == 0:
            raise ThumbsaeError(f"{type(visual).__name__} has no class token; use activations.tokens=mean or all")
        return prefix_BSD[:, 0]
    return torch.cat([prefix_BSD, patches_BPD], dim=1)


def _tokens_after(visual: torch.nn.Module, images_BCHW: torch.Tensor, index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`(prefix [B, S, D], patches [B, P, D])` after block `index`, running no later block."""
    out = visual.forward_intermediates(
        images_BCHW,
        indices=[index],
        stop_early=True,
        intermediates_only=True,
        output_fmt="NLC",
        output_extra_tokens=True,
    )
    patches_BPD = out["image_intermediates"][0]
    prefix = out.get("image_intermediates_prefix")
    return (prefix[0] if prefix else patches_BPD[:, :0]), patches_BPD


def supports_class_token_only(visual: torch.nn.Module, block: torch.nn.Module) -> bool:
    """True for open_clip's plain pre-norm self-attention block with a class token at position 0."""
    return (
        type(block) is ResidualAttentionBlock
        and not hasattr(block, "ln_1_kv")
        and bool(getattr(block.attn, "batch_first", False))
        and hasattr(visual, "class_embedding")
    )


def class_token_through(block: ResidualAttentionBlock, x_BTD: torch.Tensor) -> torch.Tensor:
    """Block output at the class token only, `[B, D]`: the token attends to all of `x_BTD` as usual."""
    h_BTD = block.ln_1(x_BTD)
    attended_B1D = block.attn(h_BTD[:, :1], h_BTD, h_BTD, need_weights=False)[0]
    y_B1D = x_BTD[:, :1] + block.ls_1(attended_B1D)
    y_B1D = y_B1D + block.ls_2(block.mlp(block.ln_2(y_B1D)))
    return y_B1D[:, 0]
