"""Small CLIP architectures shipped with thumbsae, registered with open_clip by name.

`thumbsae-tiny-vit` is the embedded default: a ViT-B/32-shaped model (224 px, 32 px patches, so 49
patch tokens + CLS) narrow and shallow enough to extract >= 200 images/s on 2 CPU cores, with a
small text tower so that zero-shot metrics and feature names work. It is used with random weights
or with weights trained on the synthetic world's captions (`thumbsae.activations.world_clip`).
"""

from __future__ import annotations

import json
import tempfile
from importlib import resources
from pathlib import Path

import open_clip

TINY_VIT_NAME = "thumbsae-tiny-vit"
SHIPPED_CONFIG_DIR = Path(str(resources.files("thumbsae") / "resources" / "model_configs"))


def register_shipped_configs() -> None:
    """Register every architecture JSON shipped in `resources/model_configs` with open_clip."""
    if TINY_VIT_NAME not in open_clip.list_models():
        open_clip.add_model_config(SHIPPED_CONFIG_DIR)


def register_model_config(name: str, config: dict) -> None:
    """Register an in-memory architecture `config` under `name` (for `model.overrides`).

    open_clip only registers configs from JSON files, so the dict is written to a private folder.
    """
    folder = Path(tempfile.mkdtemp(prefix="thumbsae-model-config-"))
    (folder / f"{name}.json").write_text(json.dumps(config))
    open_clip.add_model_config(folder)


def tiny_vit_config() -> dict:
    """The `thumbsae-tiny-vit` architecture as a dict (vision_cfg, text_cfg, embed_dim)."""
    return json.loads((SHIPPED_CONFIG_DIR / f"{TINY_VIT_NAME}.json").read_text())
