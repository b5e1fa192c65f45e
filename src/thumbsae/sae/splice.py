"""Does the CLIP model still work with the SAE's reconstruction in its residual stream?

For a labelled image batch and one text prompt per class, `SpliceEvaluator.evaluate(sae)` runs
the vision tower three times and reports zero-shot accuracy and contrastive loss for each:

- `original`: the model as is;
- `spliced`: the hooked token(s) at the output of block `layer` replaced by the SAE's
  reconstruction, the remaining blocks, `ln_post`, pooling and projection run as usual;
- `ablated`: the hooked token(s) set to zero there.

The contrastive loss is the image-to-text cross-entropy over the class prompts with the model's
own logit scale (and logit bias, if it has one); `loss_recovered` = (ablated - spliced) /
(ablated - original), 1 when the reconstruction loses nothing. Hugo Fry's ViT SAE code logged
the same three-way comparison.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from thumbsae.activations.hooks import resolve_layer, vision_blocks, vision_tower
from thumbsae.errors import ThumbsaeError

SPLICE_TOKENS: tuple[str, ...] = ("cls", "all")
VARIANTS: tuple[str, ...] = ("original", "spliced", "ablated")


@contextlib.contextmanager
def residual_edit(model: nn.Module, layer: int, tokens: str, edit: Callable[[Tensor], Tensor]) -> Iterator[None]:
    """While active, the output of vision block `layer` has its hooked token(s) replaced by
    `edit(rows)`: rows are [B, D] (`cls`, the class token) or [B*T, D] (`all`, every token)."""
    if tokens not in SPLICE_TOKENS:
        raise ThumbsaeError(f"splice metrics need activations.tokens in {SPLICE_TOKENS}, got {tokens!r}")
    block = vision_blocks(model)[resolve_layer(model, layer)]
    transformer = getattr(vision_tower(model), "transformer", None)
    batch_first = bool(getattr(transformer, "batch_first", True))

    def hook(_module: nn.Module, _inputs: tuple, output):
        resid = output[0] if isinstance(output, tuple) else output
        resid_BTD = resid if batch_first else resid.transpose(0, 1)
        resid_BTD = resid_BTD.clone()
        if tokens == "cls":
            resid_BTD[:, 0] = edit(resid_BTD[:, 0]).to(resid_BTD.dtype)
        else:
            B, T, D = resid_BTD.shape
            resid_BTD = edit(resid_BTD.reshape(B * T, D)).to(resid_BTD.dtype).reshape(B, T, D)
        new = resid_BTD if batch_first else resid_BTD.transpose(0, 1)
        return (new, *output[1:]) if isinstance(output, tuple) else new

    handle = block.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


class SpliceEvaluator:
    """Zero-shot accuracy and contrastive loss of a CLIP model: original, SAE-spliced, ablated.

    model: an open_clip CLIP (with `encode_image` and `logit_scale`). images_BCHW: preprocessed
    images. labels_B: class index of each image. text_features_CE: one L2-normalised text
    embedding per class (see `from_prompts`). layer / tokens: where the SAE was trained
    (`activations.layer`, `activations.tokens`). The model is moved to the SAE's device.
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
        resolve_layer(model, layer)
        self.model = model.eval()
        self.images_BCHW = images_BCHW
        self.labels_B = labels_B.long()
        self.text_features_CE = F.normalize(text_features_CE.float(), dim=-1)
        self.layer = int(layer)
        self.tokens = tokens
        self.batch_size = int(batch_size)

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

    @torch.no_grad()
    def _image_features(self, device: torch.device) -> Tensor:
        feats = [
            self.model.encode_image(self.images_BCHW[i : i + self.batch_size].to(device)).float()
            for i in range(0, self.images_BCHW.shape[0], self.batch_size)
        ]
        return F.normalize(torch.cat(feats), dim=-1)

    @torch.no_grad()
    def _scores(self, image_NE: Tensor) -> tuple[float, float]:
        """(accuracy, mean cross-entropy) of the class logits."""
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
        `contrastive_loss_{original,spliced,ablated}` and `loss_recovered`."""
        device = next(sae.parameters()).device
        self.model.to(device)
        was_training = sae.training
        sae.eval()

        def reconstruct(rows_ND: Tensor) -> Tensor:
            return sae.decode(*sae.encode(rows_ND.float()))

        edits: dict[str, Callable[[Tensor], Tensor] | None] = {
            "original": None,
            "spliced": reconstruct,
            "ablated": torch.zeros_like,
        }
        out: dict[str, float] = {}
        try:
            for name, edit in edits.items():
                scope = residual_edit(self.model, self.layer, self.tokens, edit) if edit else contextlib.nullcontext()
                with scope:
                    accuracy, loss = self._scores(self._image_features(device))
                out[f"zero_shot_acc_{name}"] = accuracy
                out[f"contrastive_loss_{name}"] = loss
        finally:
            sae.train(was_training)
        gap = out["contrastive_loss_ablated"] - out["contrastive_loss_original"]
        recovered = (out["contrastive_loss_ablated"] - out["contrastive_loss_spliced"]) / gap if abs(gap) > 1e-12 else float("nan")
        out["loss_recovered"] = recovered
        return out
