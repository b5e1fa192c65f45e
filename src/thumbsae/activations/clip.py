"""Load any open_clip model (hub tag, local checkpoint or random weights) with its preprocessing.

A local checkpoint carries only weights, so its preprocessing (mean/std, image size) and its
activation function (QuickGELU for OpenAI-trained weights) are set here explicitly; open_clip
would otherwise silently use the architecture defaults. Weights are never unpickled: safetensors,
or `torch.load(..., weights_only=True)`. Checkpoints shipped inside the package are named
`thumbsae:NAME` (`thumbsae:world_clip`), so configs and SAEs that use them do not depend on where
thumbsae is installed.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Callable

import open_clip
import torch
from safetensors.torch import load_file as load_safetensors

from thumbsae.activations.model_configs import (
    register_model_config,
    register_shipped_configs,
)
from thumbsae.config import Seed
from thumbsae.errors import ThumbsaeError, one_line

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")
SHIPPED_PREFIX = "thumbsae:"
# The tiny ViT CLIP trained on the default world (thumbsae.activations.world_clip), float16.
SHIPPED_WORLD_CLIP = "thumbsae:world_clip"
_SHIPPED_FILES = {SHIPPED_WORLD_CLIP: "world_clip/model.safetensors"}  # under thumbsae/resources

log = logging.getLogger(__name__)


class ModelLoadError(ThumbsaeError):
    """The CLIP model could not be built or its weights could not be loaded (one line: what to do)."""


@dataclass(frozen=True, eq=False)
class LoadedCLIP:
    """An open_clip model in eval mode plus everything needed to reproduce its inputs.

    `image_size` is the square input side in pixels (or `(H, W)` for non-square towers); `mean` /
    `std` are the per-channel normalisation; `sha256` is the local checkpoint's digest (None for
    hub tags and random weights).
    """

    model: torch.nn.Module
    name: str
    pretrained: str | None
    sha256: str | None
    image_size: int | tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    tokenizer: Callable[..., torch.Tensor] | None
    has_text: bool
    quick_gelu: bool = False
    overrides: dict | None = None
    seed: Seed = 0
    device: str = "cpu"

    @property
    def visual(self) -> torch.nn.Module:
        """The vision tower (`model.visual`)."""
        return self.model.visual

    def to_config(self) -> dict:
        """The `clip` block of an SAE's `config.json`: enough to `load_clip(**cfg)` the same model."""
        size = self.image_size if isinstance(self.image_size, int) else list(self.image_size)
        return {
            "name": self.name,
            "pretrained": self.pretrained,
            "sha256": self.sha256,
            "overrides": self.overrides,
            "quick_gelu": self.quick_gelu,
            "mean": list(self.mean),
            "std": list(self.std),
            "image_size": size,
        }


def shipped_checkpoint(name: str) -> Path:
    """The file of a checkpoint shipped with thumbsae (`thumbsae:world_clip` -> its path)."""
    if name not in _SHIPPED_FILES:
        raise ModelLoadError(
            f"model.pretrained={name}: no such shipped checkpoint (shipped: {', '.join(_SHIPPED_FILES)})"
        )
    path = Path(str(resources.files("thumbsae") / "resources" / _SHIPPED_FILES[name]))
    if not path.is_file():
        raise ModelLoadError(f"model.pretrained={name}: {path} is missing; reinstall thumbsae")
    return path


def load_clip(
    name: str,
    pretrained: str | os.PathLike | None = None,
    overrides: dict | None = None,
    quick_gelu: bool | None = None,
    mean: tuple[float, float, float] | list[float] | None = None,
    std: tuple[float, float, float] | list[float] | None = None,
    image_size: int | None = None,
    device: str = "cpu",
    *,
    seed: int = 0,
    sha256: str | None = None,
) -> LoadedCLIP:
    """Build open_clip model `name` and load its weights.

    `pretrained`: an open_clip hub tag (`"openai"`; needs internet on first use), a local checkpoint
    (`.safetensors`, `.pt`, `.pth`, `.bin`; its mean/std default to OpenAI CLIP's and QuickGELU to
    off unless given), a shipped checkpoint (`thumbsae:world_clip`, kept under that name in
    `LoadedCLIP.pretrained`), or None for random weights drawn from `seed`. `overrides`: an architecture
    dict (`embed_dim`, `vision_cfg`, `text_cfg`) registered under `name` first. `sha256`, when
    given, must match the local checkpoint (a stored SAE names the exact weights it was trained
    on). Raises `ModelLoadError` with one line saying what to do.
    """
    register_shipped_configs()
    if overrides:
        if not isinstance(overrides, Mapping):
            raise ModelLoadError(f"model.overrides: an architecture dict (embed_dim, vision_cfg, text_cfg), got {type(overrides).__name__}")
        register_model_config(name, dict(overrides))
    _check_model_name(name)

    local_path = _local_checkpoint(pretrained)
    tag = None if pretrained in (None, "") or local_path is not None else str(pretrained)
    tag_cfg: dict = {}
    if tag is not None:
        tag_cfg = _check_hub_tag(name, tag)
    if quick_gelu is None:
        quick_gelu = bool(tag_cfg.get("quick_gelu", False))

    digest = None
    if local_path is not None:
        digest = _sha256(local_path)
        if sha256 and sha256 != digest:
            raise ModelLoadError(
                f"checkpoint {local_path} has sha256 {digest[:12]}..., not the {sha256[:12]}... this SAE "
                "was trained on; pass the original checkpoint file"
            )

    force_image_size = image_size if image_size else None
    model = _create(name, tag, quick_gelu, force_image_size, seed, device, weights_follow=local_path is not None)
    if local_path is not None:
        _load_local_weights(model, local_path, name)

    visual_size = getattr(model.visual, "image_size", None) or image_size
    size = _square_or_pair(visual_size)
    if mean is None or std is None:
        # Hub tags know their preprocessing; local files and random weights use OpenAI CLIP's.
        pp = open_clip.get_model_preprocess_cfg(model) if tag is not None else {}
        mean = mean if mean is not None else pp.get("mean", OPENAI_MEAN)
        std = std if std is not None else pp.get("std", OPENAI_STD)

    model = model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    has_text = callable(getattr(model, "encode_text", None)) and _text_layers(name) > 0
    tokenizer = open_clip.get_tokenizer(name) if has_text else None
    return LoadedCLIP(
        model=model,
        name=name,
        pretrained=None if pretrained in (None, "") else _pretrained_name(pretrained, local_path),
        sha256=digest,
        image_size=size,
        mean=tuple(float(v) for v in mean),
        std=tuple(float(v) for v in std),
        tokenizer=tokenizer,
        has_text=has_text,
        quick_gelu=bool(quick_gelu),
        overrides=dict(overrides) if overrides else None,
        seed=seed,
        device=str(device),
    )


def _check_model_name(name: str) -> None:
    if ":" in name:  # hf-hub: / local-dir: schemas are resolved by open_clip itself
        return
    known = open_clip.list_models()
    if name.replace("/", "-") not in known:
        close = difflib.get_close_matches(name, known, n=4, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}?" if close else "see open_clip.list_models()"
        raise ModelLoadError(
            f"unknown CLIP model name '{name}': {hint} (or give model.overrides with an architecture)"
        )


def _local_checkpoint(pretrained: str | os.PathLike | None) -> Path | None:
    """The checkpoint path if `pretrained` names a file (existing or path-like), else None (a tag)."""
    if pretrained in (None, ""):
        return None
    if str(pretrained).startswith(SHIPPED_PREFIX):
        return shipped_checkpoint(str(pretrained))
    path = Path(pretrained).expanduser()
    looks_like_path = (
        isinstance(pretrained, os.PathLike)
        or os.sep in str(pretrained)
        or path.suffix.lower() in CHECKPOINT_SUFFIXES
    )
    if path.is_file():
        return path.resolve()
    if looks_like_path:
        if path.is_dir():
            raise ModelLoadError(f"model.pretrained={pretrained} is a folder; pass the checkpoint file inside it")
        raise ModelLoadError(
            f"checkpoint file not found: {pretrained}; pass an existing .safetensors/.pt file, "
            "an open_clip tag such as 'openai', or null for random weights"
        )
    return None


def _pretrained_name(pretrained: str | os.PathLike, local_path: Path | None) -> str:
    """What `LoadedCLIP.pretrained` records: a shipped name as given, a local file resolved, a tag."""
    if str(pretrained).startswith(SHIPPED_PREFIX):
        return str(pretrained)
    return str(local_path or pretrained)


def _check_hub_tag(name: str, tag: str) -> dict:
    cfg = open_clip.get_pretrained_cfg(name, tag)
    if not cfg:
        tags = open_clip.list_pretrained_tags_by_model(name)
        known = f"known tags: {', '.join(tags)}" if tags else "it has no hub weights"
        raise ModelLoadError(
            f"'{tag}' is neither a checkpoint file nor an open_clip tag of {name} ({known}); "
            "pass a local checkpoint path or null for random weights"
        )
    return cfg


class _DropRandomInitWarning(logging.Filter):
    """Drops open_clip's "initialized randomly" warning, false when local weights are loaded next."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("No pretrained weights loaded for model")


@contextlib.contextmanager
def _weights_follow(enabled: bool) -> Iterator[None]:
    # open_clip logs through the root logger, so the filter sits there for this call only.
    dropper = _DropRandomInitWarning()
    if enabled:
        logging.getLogger().addFilter(dropper)
    try:
        yield
    finally:
        logging.getLogger().removeFilter(dropper)


def _create(
    name: str,
    tag: str | None,
    quick_gelu: bool,
    image_size: int | None,
    seed: int,
    device: str,
    *,
    weights_follow: bool = False,
) -> torch.nn.Module:
    """Build the open_clip model (random weights unless `tag`); `weights_follow`: a local
    checkpoint is loaded right after, so open_clip's "initialized randomly" warning is dropped."""
    # Seed only a forked RNG so random weights are reproducible without touching the caller's RNG.
    with torch.random.fork_rng(devices=[]), _weights_follow(weights_follow):
        torch.manual_seed(seed)
        try:
            return open_clip.create_model(
                name,
                pretrained=tag,
                force_quick_gelu=quick_gelu,
                force_image_size=image_size,
                device="cpu",
                weights_only=True,
            )
        except RuntimeError as exc:
            if tag is not None and "download" in str(exc).lower():
                raise ModelLoadError(
                    f"could not download the '{tag}' weights of {name} (offline?): fetch them on a "
                    "machine with internet and pass model.pretrained=/path/to/checkpoint.safetensors"
                ) from exc
            raise ModelLoadError(f"could not build CLIP model {name}: {one_line(exc)}") from exc
        except (ValueError, TypeError, KeyError) as exc:
            raise ModelLoadError(f"could not build CLIP model {name}: {one_line(exc)}") from exc


def _load_local_weights(model: torch.nn.Module, path: Path, name: str) -> None:
    """Load a local state dict into `model` (safetensors, or torch.load with weights_only=True)."""
    try:
        if path.suffix.lower() == ".safetensors":
            state = load_safetensors(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # safetensors, the weights-only unpickler and zip readers each raise their own
        raise ModelLoadError(
            f"corrupt or unreadable checkpoint {path} ({one_line(exc)}); re-save it as .safetensors "
            "(a state dict of open_clip weights)"
        ) from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelLoadError(f"checkpoint {path} is not a state dict of tensors; re-save it with safetensors")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if "positional_embedding" in state and not hasattr(model, "positional_embedding"):
        state = open_clip.convert_to_custom_text_state_dict(state)  # old CLIP layout -> CustomTextCLIP
    if "logit_scale" in state and state["logit_scale"].ndim != model.logit_scale.ndim:
        state["logit_scale"] = state["logit_scale"].reshape(model.logit_scale.shape)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        missing, unexpected = _key_mismatch(model, state)
        raise ModelLoadError(
            f"checkpoint {path} does not fit architecture {name} (missing {missing}, unexpected "
            f"{unexpected}); pass the model.name (or model.overrides) it was trained with"
        ) from exc


def _key_mismatch(model: torch.nn.Module, state: dict[str, Any]) -> tuple[str, str]:
    want, have = set(model.state_dict()), set(state)
    missing = sorted(want - have)
    unexpected = sorted(have - want)
    shaped = [k for k in sorted(want & have) if tuple(model.state_dict()[k].shape) != tuple(state[k].shape)]

    def brief(keys: list[str]) -> str:
        return f"{len(keys)} keys" + (f" e.g. {keys[0]}" if keys else "")

    return brief(missing), brief(unexpected) + (f", {len(shaped)} of other shape e.g. {shaped[0]}" if shaped else "")


def _text_layers(name: str) -> int:
    cfg = open_clip.get_model_config(name) or {}
    text_cfg = cfg.get("text_cfg", {})
    return int(text_cfg.get("layers", 1) if "hf_model_name" not in text_cfg else 1)


def _square_or_pair(size: Any) -> int | tuple[int, int]:
    if isinstance(size, (tuple, list)):
        h, w = int(size[0]), int(size[1])
        return h if h == w else (h, w)
    return int(size)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
