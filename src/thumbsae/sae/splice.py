"""Does the CLIP model still work with the SAE's reconstruction in its residual stream?

For a labelled image batch and one text prompt per class, `SpliceEvaluator.evaluate(sae)` reports
zero-shot accuracy and contrastive loss of three variants of the vision tower:

- `original`: the model as is;
- `spliced`: the hooked token(s) at the output of block `layer` replaced by the SAE's
  reconstruction, the remaining blocks, `ln_post`, pooling and projection run as usual;
- `ablated`: the hooked token(s) set to zero there.

The contrastive loss is the image-to-text cross-entropy over the class prompts with the model's
own logit scale (and logit bias, if it has one); `loss_recovered` = (ablated - spliced) /
(ablated - original), 1 when the reconstruction loses nothing. Hugo Fry's ViT SAE code logged
the same three-way comparison.

Cost. Only `spliced` depends on the SAE. On the first evaluation (per device) the tower runs once
up to block `layer`; that residual stream `[N, T, D]` is kept, `original` and `ablated` are computed
from it and kept too. Every evaluation then runs only the blocks after `layer` (for the study's
block -2 of ViT-L/14: 1 of 24, and that last block only for the class token when the tower pools
it). Towers other than open_clip's `VisionTransformer` run whole, with a hook, for `spliced`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from thumbsae.activations.hooks import (
    class_token_through,
    hooked_activations,
    resolve_layer,
    supports_class_token_only,
    vision_blocks,
    vision_tower,
)
from thumbsae.errors import ThumbsaeError

SPLICE_TOKENS: tuple[str, ...] = ("cls", "all")
VARIANTS: tuple[str, ...] = ("original", "spliced", "ablated")
# Splice images: a twentieth of the training images (so the one-off trunk pass costs at most ~5 %
# of extraction), at least 32 (fewer would make the accuracy too coarse), at most 256.
MIN_SPLICE_IMAGES, MAX_SPLICE_IMAGES, SPLICE_FRACTION = 32, 256, 20


def splice_sample_size(n_images: int) -> int:
    """How many of `n_images` labelled training images the splice metrics use."""
    return min(n_images, MAX_SPLICE_IMAGES, max(MIN_SPLICE_IMAGES, n_images // SPLICE_FRACTION))


def edit_tokens(resid_BTD: Tensor, tokens: str, edit: Callable[[Tensor], Tensor]) -> Tensor:
    """A copy of a batch-first residual stream with its hooked token(s) replaced by `edit(rows)`:
    rows are [B, D] (`cls`, the class token) or [B*T, D] (`all`, every token)."""
    resid_BTD = resid_BTD.clone()
    if tokens == "cls":
        resid_BTD[:, 0] = edit(resid_BTD[:, 0]).to(resid_BTD.dtype)
        return resid_BTD
    B, T, D = resid_BTD.shape
    return edit(resid_BTD.reshape(B * T, D)).to(resid_BTD.dtype).reshape(B, T, D)


@contextlib.contextmanager
def residual_edit(model: nn.Module, layer: int, tokens: str, edit: Callable[[Tensor], Tensor]) -> Iterator[None]:
    """While active, the output of vision block `layer` has its hooked token(s) replaced by
    `edit(rows)`: rows are [B, D] (`cls`, the class token) or [B*T, D] (`all`, every token)."""
    if tokens not in SPLICE_TOKENS:
        raise ThumbsaeError(f"splice metrics need activations.tokens in {SPLICE_TOKENS}, got {tokens!r}")
    block = vision_blocks(model)[resolve_layer(model, layer)]
    batch_first = _batch_first(model)

    def hook(_module: nn.Module, _inputs: tuple, output):
        resid = output[0] if isinstance(output, tuple) else output
        resid_BTD = edit_tokens(resid if batch_first else resid.transpose(0, 1), tokens, edit)
        new = resid_BTD if batch_first else resid_BTD.transpose(0, 1)
        return (new, *output[1:]) if isinstance(output, tuple) else new

    handle = block.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def _batch_first(model: nn.Module) -> bool:
    transformer = getattr(vision_tower(model), "transformer", None)
    return bool(getattr(transformer, "batch_first", True))


def runs_tail_only(model: nn.Module) -> bool:
    """True when the tower can be resumed from a cached residual stream: an open_clip
    `VisionTransformer` (blocks in `transformer.resblocks`, then `_pool` and `proj`)."""
    visual = vision_tower(model)
    return (
        hasattr(visual, "transformer")
        and hasattr(visual.transformer, "resblocks")
        and callable(getattr(visual, "_pool", None))
        and hasattr(visual, "proj")
        and hasattr(visual, "forward_intermediates")
    )


class SpliceEvaluator:
    """Zero-shot accuracy and contrastive loss of a CLIP model: original, SAE-spliced, ablated.

    model: an open_clip CLIP (with `encode_image` and `logit_scale`). images_BCHW: preprocessed
    images. labels_B: class index of each image. text_features_CE: one L2-normalised text
    embedding per class (see `from_prompts`). layer / tokens: where the SAE was trained
    (`activations.layer`, `activations.tokens`). The model is moved to the SAE's device.
    After an evaluation, `seconds` holds `{"prepare": s, "evaluate": s}` (the one-off trunk pass
    and the latest evaluation's own time).
    """

    def __init__(
        self,
        model: nn.Module,
        images_BCHW: Tensor,
        labels_B: Tensor,
        text_features_CE: Tensor,
        *,
        layer: int,
        tokens: str,
        batch_size: int = 64,
    ):
        if tokens not in SPLICE_TOKENS:
            raise ThumbsaeError(f"splice metrics need activations.tokens in {SPLICE_TOKENS}, got {tokens!r}")
        if images_BCHW.shape[0] != labels_B.shape[0] or images_BCHW.shape[0] == 0:
            raise ThumbsaeError(f"splice metrics: {images_BCHW.shape[0]} images but {labels_B.shape[0]} labels")
        self.index = resolve_layer(model, layer)
        self.model = model.eval()
        self.images_BCHW = images_BCHW
        self.labels_B = labels_B.long()
        self.text_features_CE = F.normalize(text_features_CE.float(), dim=-1)
        self.layer = int(layer)
        self.tokens = tokens
        self.batch_size = int(batch_size)
        self.tail_only = runs_tail_only(model)
        self.seconds: dict[str, float] = {"prepare": 0.0, "evaluate": 0.0}
        self._device: torch.device | None = None
        self._resid_NTD: Tensor | None = None  # residual after block `layer`, on `_device`
        self._fixed: dict[str, Tensor] = {}  # `original` / `ablated` image features [N, E]

    @classmethod
    @torch.no_grad()
    def from_prompts(
        cls,
        model: nn.Module,
        tokenizer: Callable[[Sequence[str]], Tensor],
        images_BCHW: Tensor,
        labels_B: Tensor,
        class_prompts: Sequence[str],
        *,
        layer: int,
        tokens: str,
        batch_size: int = 64,
    ) -> SpliceEvaluator:
        """Build from one prompt per class (e.g. "a photo of a {label}"), encoded by the model."""
        if int(labels_B.max()) >= len(class_prompts) or int(labels_B.min()) < 0:
            raise ThumbsaeError(f"splice metrics: labels must index the {len(class_prompts)} class prompts")
        model.eval()
        device = next(model.parameters()).device
        text_CE = model.encode_text(tokenizer(list(class_prompts)).to(device)).float()
        return cls(model, images_BCHW, labels_B, text_CE, layer=layer, tokens=tokens, batch_size=batch_size)

    # ---- the tower, whole or from the cached residual -------------------------------------------

    def _batches(self) -> Iterator[slice]:
        for start in range(0, self.images_BCHW.shape[0], self.batch_size):
            yield slice(start, start + self.batch_size)

    @torch.no_grad()
    def _whole_tower(self, device: torch.device) -> Tensor:
        """Image features [N, E] of the full `encode_image` (with whatever hook is active)."""
        feats = [self.model.encode_image(self.images_BCHW[b].to(device)).float() for b in self._batches()]
        return torch.cat(feats)

    @torch.no_grad()
    def _tail(self, resid_BTD: Tensor) -> Tensor:
        """Image features [B, E] from the (batch-first) residual stream after block `layer`."""
        visual = vision_tower(self.model)
        blocks = list(vision_blocks(self.model))[self.index + 1 :]
        x = resid_BTD if _batch_first(self.model) else resid_BTD.transpose(0, 1)
        pools_class_token = getattr(visual, "pool_type", None) == "tok" and getattr(visual, "attn_pool", None) is None
        # The pooled output reads only the class token, so the last block needs no other query.
        class_only = bool(blocks) and pools_class_token and supports_class_token_only(visual, blocks[-1])
        for block in blocks[:-1] if class_only else blocks:
            x = block(x)
        if class_only:
            pooled = visual.ln_post(class_token_through(blocks[-1], x))
        else:
            pooled, _ = visual._pool(x if _batch_first(self.model) else x.transpose(0, 1))
        if visual.proj is not None:
            pooled = pooled @ visual.proj
        return pooled.float()

    @torch.no_grad()
    def _from_cache(self, edit: Callable[[Tensor], Tensor] | None) -> Tensor:
        assert self._resid_NTD is not None
        feats = []
        for b in self._batches():
            resid_BTD = self._resid_NTD[b]
            feats.append(self._tail(resid_BTD if edit is None else edit_tokens(resid_BTD, self.tokens, edit)))
        return torch.cat(feats)

    @torch.no_grad()
    def _prepare(self, device: torch.device) -> None:
        """Once per device: cache the residual after block `layer` and the SAE-free variants."""
        if self._device == device:
            return
        started = time.perf_counter()
        self._device, self._fixed = device, {}
        if self.tail_only:
            parts = [hooked_activations(self.model, self.images_BCHW[b].to(device), self.layer, "all") for b in self._batches()]
            self._resid_NTD = torch.cat(parts)
            self._fixed["original"] = self._from_cache(None)
            self._fixed["ablated"] = self._from_cache(torch.zeros_like)
        else:
            self._fixed["original"] = self._whole_tower(device)
            with residual_edit(self.model, self.layer, self.tokens, torch.zeros_like):
                self._fixed["ablated"] = self._whole_tower(device)
        self.seconds["prepare"] = time.perf_counter() - started

    # ---- metrics ------------------------------------------------------------------------------

    @torch.no_grad()
    def _scores(self, image_NE: Tensor) -> tuple[float, float]:
        """(accuracy, mean cross-entropy) of the class logits."""
        image_NE = F.normalize(image_NE, dim=-1)
        text = self.text_features_CE.to(image_NE.device)
        logits_NC = self.model.logit_scale.exp().float() * image_NE @ text.t()
        if getattr(self.model, "logit_bias", None) is not None:
            logits_NC = logits_NC + self.model.logit_bias.float()
        labels = self.labels_B.to(image_NE.device)
        accuracy = float((logits_NC.argmax(dim=1) == labels).float().mean())
        return accuracy, float(F.cross_entropy(logits_NC, labels))

    @torch.no_grad()
    def evaluate(self, sae: nn.Module) -> dict[str, float]:
        """Metrics for `sae` (anything with `encode(x_BD)` and `decode(acts, indices)` on raw
        activations): `zero_shot_acc_{original,spliced,ablated}`,
        `contrastive_loss_{original,spliced,ablated}`, `loss_recovered`, and the seconds
        `splice_prepare_time_s` (the one-off trunk pass) and `splice_time_s` (this evaluation)."""
        device = next(sae.parameters()).device
        self.model.to(device)
        was_training = sae.training
        sae.eval()

        def reconstruct(rows_ND: Tensor) -> Tensor:
            return sae.decode(*sae.encode(rows_ND.float()))

        try:
            self._prepare(device)
            started = time.perf_counter()
            if self.tail_only:
                spliced = self._from_cache(reconstruct)
            else:
                with residual_edit(self.model, self.layer, self.tokens, reconstruct):
                    spliced = self._whole_tower(device)
            self.seconds["evaluate"] = time.perf_counter() - started
        finally:
            sae.train(was_training)
        features = {"original": self._fixed["original"], "spliced": spliced, "ablated": self._fixed["ablated"]}
        out: dict[str, float] = {}
        for name in VARIANTS:
            out[f"zero_shot_acc_{name}"], out[f"contrastive_loss_{name}"] = self._scores(features[name])
        gap = out["contrastive_loss_ablated"] - out["contrastive_loss_original"]
        recovered = (out["contrastive_loss_ablated"] - out["contrastive_loss_spliced"]) / gap if abs(gap) > 1e-12 else float("nan")
        out["loss_recovered"] = recovered
        # What the metrics cost (train.py moves "time" keys to timing.json): the one-off trunk pass, this call.
        out["splice_prepare_time_s"] = self.seconds["prepare"]
        out["splice_time_s"] = self.seconds["evaluate"]
        return out
