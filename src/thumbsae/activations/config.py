"""What the `model` and `activations` groups build: which CLIP, and where and how it is hooked."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from thumbsae.config import Seed
from thumbsae.errors import ThumbsaeError

TOKENS = ("cls", "mean", "all")
FITS = ("pad", "crop", "squash")
DTYPES = ("float16", "bfloat16", "float32")


@dataclass(frozen=True)
class ClipConfig:
    """An open_clip model (Hydra `model.*`; the `clip` block of an SAE's `config.json`).

    name: open_clip architecture. pretrained: hub tag (`openai`), local checkpoint path, or None
    for random weights drawn from `seed`. overrides: an architecture dict registered under `name`.
    quick_gelu, mean, std, image_size: None takes the model's own. sha256: when set, the local
    checkpoint must have this digest.
    """

    name: str
    pretrained: str | None = None
    overrides: dict | None = None
    quick_gelu: bool | None = None
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    image_size: int | None = None
    seed: Seed = 0
    sha256: str | None = None

    def load(self, device: str = "cpu"):
        """The loaded model (`thumbsae.activations.LoadedCLIP`); one-line `ModelLoadError` otherwise."""
        from thumbsae.activations.clip import load_clip

        return load_clip(**self.to_dict(), device=device)

    def to_dict(self) -> dict[str, Any]:
        """The fields as JSON-ready values (what `load_clip` takes)."""
        out = dataclasses.asdict(self)
        for key in ("mean", "std"):
            out[key] = list(out[key]) if out[key] is not None else None
        return out


@dataclass(frozen=True)
class HookConfig:
    """Where activations are taken and how they are stored (Hydra `activations.*`).

    layer: residual stream after this block (negative counts from the end). tokens: `cls`, `mean`
    or `all`. fit: how an image becomes the model's square input (`pad` letterboxes, `crop` centre
    crops, `squash` resizes). dtype: storage dtype of the shards. shard_rows: rows per shard file.
    batch_size: images per forward pass. num_workers: decoding workers (None: one per torch thread in
    lockstep on a CPU, min(8, CPUs) ahead on a GPU; 0: in this process). cache_dir: where stores
    extracted on demand live. store / thumbnails_store / reference_store: existing stores to use
    instead of extracting (training images / thumbnails / reference images).
    """

    layer: int = -2
    tokens: Literal["cls", "mean", "all"] = "all"
    fit: Literal["pad", "crop", "squash"] = "pad"
    dtype: Literal["float16", "bfloat16", "float32"] = "float16"
    shard_rows: int = 65536
    batch_size: int = 64
    num_workers: int | None = None
    cache_dir: str = "data/cache/activations"
    store: str | None = None
    thumbnails_store: str | None = None
    reference_store: str | None = None

    def __post_init__(self) -> None:
        for key in ("shard_rows", "batch_size"):
            if getattr(self, key) < 1:
                raise ThumbsaeError(f"activations.{key}={getattr(self, key)}: must be >= 1")
        if self.num_workers is not None and self.num_workers < 0:
            raise ThumbsaeError(f"activations.num_workers={self.num_workers}: must be >= 0 or null")

    @property
    def hook(self) -> dict[str, Any]:
        """The `hook` block of an SAE's `config.json`: what an SAE is only valid on."""
        return {"layer": self.layer, "tokens": self.tokens, "fit": self.fit}
