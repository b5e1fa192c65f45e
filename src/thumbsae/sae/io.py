"""An SAE on disk: `sae.safetensors` (weights) + `config.json` (everything needed to use them).

    config.json = {"sae": SAEConfig fields, "clip": {...}, "hook": {...}, "normalisation": {...},
                   "training": {...}}

The folder is written to a temporary sibling and renamed into place, so a reader sees the old
folder or the new one, never half of one. Loading never unpickles: safetensors and JSON only.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from thumbsae.files import atomic_dir
from thumbsae.errors import ThumbsaeError
from thumbsae.sae.config import sae_config_from_dict
from thumbsae.sae.model import SparseAutoencoder

WEIGHTS_FILE = "sae.safetensors"
CONFIG_FILE = "config.json"


def save_sae(sae: SparseAutoencoder, out_dir: str | os.PathLike, meta: dict[str, Any] | None = None) -> Path:
    """Write `out_dir/sae.safetensors` and `out_dir/config.json` atomically; returns `out_dir`.

    meta: JSON-ready sections added beside `"sae"` (the caller passes `clip`, `hook`,
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
    """The parsed `config.json` of an SAE folder (or of `RUN/sae` given a run folder)."""
    folder = resolve_sae_dir(sae_dir)
    path = folder / CONFIG_FILE
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ThumbsaeError(f"{path}: not a readable SAE config ({type(err).__name__}: {err})") from None
    if not isinstance(config, dict) or not isinstance(config.get("sae"), dict):
        raise ThumbsaeError(f"{path}: no 'sae' section; was this folder written by save_sae?")
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


def load_sae(sae_dir: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[SparseAutoencoder, dict[str, Any]]:
    """Load an SAE folder (or a run folder holding `sae/`): returns `(sae in eval mode, config dict)`.

    Raises `ThumbsaeError` (one line naming the file) for a missing, corrupt or mismatched folder.
    """
    folder = resolve_sae_dir(sae_dir)
    config = read_sae_config(folder)
    try:
        cfg = sae_config_from_dict(config["sae"])
    except ThumbsaeError as err:
        raise ThumbsaeError(f"{folder / CONFIG_FILE}: {err}") from None
    weights = folder / WEIGHTS_FILE
    try:
        tensors = load_file(str(weights), device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        raise ThumbsaeError(f"{weights}: not a readable safetensors file ({err})") from None
    sae = SparseAutoencoder(cfg)
    expected = {name: tuple(t.shape) for name, t in sae.state_dict().items()}
    found = {name: tuple(t.shape) for name, t in tensors.items()}
    if expected != found:
        diff = sorted(set(expected.items()) ^ set(found.items()))
        raise ThumbsaeError(f"{weights}: tensors do not match config.json (expected vs found differ in {diff[:4]})")
    if not all(bool(torch.isfinite(t).all()) for t in tensors.values()):
        raise ThumbsaeError(f"{weights}: weights contain NaN or infinity")
    sae.load_state_dict(tensors, strict=True)
    return sae.to(device).eval(), config
