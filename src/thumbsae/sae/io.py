"""An SAE on disk: `sae.safetensors` (weights) + `config.json` (everything needed to use them).

    config.json = {"sae": {"arch": ..., architecture fields}, "optim": OptimConfig fields,
                   "clip": {...}, "hook": {"layer", "tokens", "fit"}, "normalisation": {...},
                   "training": {...}}

The folder is written to a temporary sibling and renamed into place, so a reader sees the old
folder or the new one, never half of one. Loading never unpickles: safetensors and JSON only.
`load_sae` also reads SAELens and sparsify folders and the study's torch state dicts
(`thumbsae.sae.formats`); folders written before the architecture / optimisation split (one
flat `sae` section with `lr` and `batch_size`) still load.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from thumbsae.errors import ThumbsaeError
from thumbsae.files import atomic_dir
from thumbsae.sae.config import SAEConfig, is_legacy_section, sae_config_from_dict, split_legacy_section
from thumbsae.sae.model import SparseAutoencoder

WEIGHTS_FILE = "sae.safetensors"
CONFIG_FILE = "config.json"


def save_sae(sae: SparseAutoencoder, out_dir: str | os.PathLike, meta: dict[str, Any] | None = None) -> Path:
    """Write `out_dir/sae.safetensors` and `out_dir/config.json` atomically; returns `out_dir`.

    meta: JSON-ready sections added beside `"sae"` (the caller passes `optim`, `clip`, `hook`,
    `normalisation`, `training`). Same SAE and meta give byte-identical files.
    """
    meta = dict(meta or {})
    if "sae" in meta:
        raise ThumbsaeError("save_sae: meta must not have an 'sae' key (the SAE's own config goes there)")
    config = {"sae": sae.cfg.to_dict(), **meta}
    try:
        text = json.dumps(config, indent=2, sort_keys=True, allow_nan=False) + "\n"
    except (TypeError, ValueError) as err:
        raise ThumbsaeError(f"save_sae: meta is not plain JSON ({err})") from None
    tensors = {name: t.detach().to("cpu").contiguous() for name, t in sae.state_dict().items()}
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        (tmp / CONFIG_FILE).write_bytes(text.encode("utf-8"))
    return out_dir


def read_sae_config(sae_dir: str | os.PathLike) -> dict[str, Any]:
    """The parsed `config.json` of an SAE folder (or of `RUN/sae` given a run folder).

    A flat `sae` section of older files comes back split like a current one: `sae` (the
    architecture's fields), `optim`, and the batch size under `training`.
    """
    folder = resolve_sae_dir(sae_dir)
    path = folder / CONFIG_FILE
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ThumbsaeError(f"{path}: not a readable SAE config ({type(err).__name__}: {err})") from None
    if not isinstance(config, dict) or not isinstance(config.get("sae"), dict):
        raise ThumbsaeError(f"{path}: no 'sae' section; was this folder written by save_sae?")
    if is_legacy_section(config["sae"]):
        try:
            cfg, optim, batch_size = split_legacy_section(config["sae"])
        except ThumbsaeError as err:
            raise ThumbsaeError(f"{path}: {err}") from None
        config["sae"] = cfg.to_dict()
        config.setdefault("optim", optim.to_dict())
        if batch_size is not None and isinstance(config.setdefault("training", {}), dict):
            config["training"].setdefault("batch_size", batch_size)
    return config


def resolve_sae_dir(sae_dir: str | os.PathLike) -> Path:
    """`sae_dir` itself when it holds `config.json`, else `sae_dir/sae` (a run folder)."""
    folder = Path(sae_dir)
    if not folder.is_dir():
        raise ThumbsaeError(f"{folder}: no such SAE folder")
    if not (folder / CONFIG_FILE).is_file() and (folder / "sae" / CONFIG_FILE).is_file():
        folder = folder / "sae"
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (folder / name).is_file():
            raise ThumbsaeError(f"{folder}: missing {name}; an SAE folder holds {WEIGHTS_FILE} and {CONFIG_FILE}")
    return folder


def load_sae(
    sae_dir: str | os.PathLike,
    device: str | torch.device = "cpu",
    *,
    hook_defaults: Mapping[str, Any] | None = None,
) -> tuple[SparseAutoencoder, dict[str, Any]]:
    """Load an SAE: returns `(sae in eval mode, config dict shaped like our config.json)`.

    sae_dir: our folder (or a run folder holding `sae/`), a SAELens folder (`cfg.json` +
    `sae_weights.safetensors`), a sparsify folder (`cfg.json` + `sae.safetensors`) or a torch
    state dict file of the study's trainer (`W_enc` [D, F], `b_enc`, `W_dec` [F, D], `b_dec`).
    hook_defaults: `{"clip": {...load_clip kwargs...}, "hook": {"layer", "tokens", "fit"}}`, used
    where a foreign file does not say which CLIP, layer and token mode it was trained on.
    Raises `ThumbsaeError` (one line naming the file and the key) for a missing, corrupt or
    mismatched SAE, a bad `hook` section, or a CLIP whose width is not the SAE's `d_in`.
    """
    from thumbsae.sae import formats

    path = Path(sae_dir)
    kind = formats.detect_format(path)
    if kind != formats.THUMBSAE:
        sae, config = formats.read_foreign(path, kind, hook_defaults)
        check_hook(config, str(path))
        return sae.to(device).eval(), config
    folder = resolve_sae_dir(path)
    config_path = folder / CONFIG_FILE
    config = read_sae_config(folder)
    try:
        cfg = sae_config_from_dict(config["sae"])
    except ThumbsaeError as err:
        raise ThumbsaeError(f"{config_path}: {err}") from None
    check_hook(config, str(config_path))
    weights = folder / WEIGHTS_FILE
    try:
        tensors = load_file(str(weights), device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        raise ThumbsaeError(f"{weights}: not a readable safetensors file ({err})") from None
    sae = sae_from_tensors(cfg, tensors, str(weights))
    return sae.to(device).eval(), config


def sae_from_tensors(
    cfg: SAEConfig, tensors: Mapping[str, torch.Tensor], where: str, described_by: str = CONFIG_FILE
) -> SparseAutoencoder:
    """A `SparseAutoencoder(cfg)` holding `tensors` (names and shapes must match exactly, values
    must be finite; errors start with `where` and name `described_by`)."""
    sae = SparseAutoencoder(cfg)
    expected = {name: tuple(t.shape) for name, t in sae.state_dict().items()}
    found = {name: tuple(t.shape) for name, t in tensors.items()}
    if expected != found:
        diff = sorted(set(expected.items()) ^ set(found.items()))
        raise ThumbsaeError(f"{where}: tensors do not match {described_by} (expected vs found differ in {diff[:4]})")
    bad = [name for name, t in tensors.items() if not bool(torch.isfinite(t).all())]
    if bad:
        raise ThumbsaeError(f"{where}: weights contain NaN or infinity ({', '.join(bad)})")
    sae.load_state_dict({name: t.to(torch.float32) for name, t in tensors.items()}, strict=True)
    return sae


def check_hook(config: Mapping[str, Any], where: str) -> None:
    """Validate the `hook` section (`layer` an integer, `tokens` and `fit` known modes) and,
    when the CLIP's residual width is known from its architecture, that it equals `sae.d_in`."""
    hook = config.get("hook")
    if hook is None:
        return
    from thumbsae.activations import FITS, TOKEN_MODES

    if not isinstance(hook, Mapping):
        raise ThumbsaeError(f"{where}: hook must be an object with layer, tokens and fit")
    layer = hook.get("layer")
    if isinstance(layer, bool) or not isinstance(layer, int):
        raise ThumbsaeError(f"{where}: hook.layer={layer!r}: must be an integer (negative counts from the end)")
    for key, allowed in (("tokens", TOKEN_MODES), ("fit", FITS)):
        if key in hook and hook[key] not in allowed:
            raise ThumbsaeError(f"{where}: hook.{key}={hook[key]!r}: use one of {', '.join(allowed)}")
    clip = config.get("clip")
    width = clip_width(clip) if isinstance(clip, Mapping) else None
    d_in = config.get("sae", {}).get("d_in") if isinstance(config.get("sae"), Mapping) else None
    if width is not None and d_in is not None and int(d_in) != width:
        raise ThumbsaeError(
            f"{where}: clip.name={clip.get('name')!r} has residual width {width} but sae.d_in={d_in}; "
            "this SAE was not trained on that CLIP"
        )


def clip_width(clip: Mapping[str, Any]) -> int | None:
    """The residual width of the CLIP's vision tower from its architecture (`overrides`, or
    open_clip's registered config), without building it; None when it cannot be known."""
    vision = _vision_cfg(clip)
    width = vision.get("width") if vision else None
    return int(width) if isinstance(width, int) and not isinstance(width, bool) else None


def clip_depth(clip: Mapping[str, Any]) -> int | None:
    """The number of blocks of the CLIP's vision tower, when known (as `clip_width`)."""
    vision = _vision_cfg(clip)
    layers = vision.get("layers") if vision else None
    return int(layers) if isinstance(layers, int) and not isinstance(layers, bool) else None


def _vision_cfg(clip: Mapping[str, Any]) -> dict[str, Any] | None:
    overrides = clip.get("overrides")
    if isinstance(overrides, Mapping):
        vision = overrides.get("vision_cfg")
        return dict(vision) if isinstance(vision, Mapping) else None
    name = clip.get("name")
    if not isinstance(name, str) or ":" in name:  # hf-hub: / local-dir: architectures are not local
        return None
    import open_clip

    from thumbsae.activations.model_configs import register_shipped_configs

    register_shipped_configs()
    vision = (open_clip.get_model_config(name.replace("/", "-")) or {}).get("vision_cfg")
    if not isinstance(vision, Mapping) or "timm_model_name" in vision and vision.get("timm_model_name"):
        return None
    return dict(vision)
