"""Small CLIP architectures shipped with thumbsae, registered with open_clip by name.

`thumbsae-tiny-vit` is the embedded default: a ViT-B/32-shaped model (224 px, 32 px patches, so 49
patch tokens + CLS) narrow and shallow enough to extract >= 200 images/s on 2 CPU cores, with a
small text tower so that zero-shot metrics and feature names work. It is used with random weights
or with weights trained on the synthetic world's captions (`thumbsae.activations.world_clip`).
"""

from __future__ import annotations

import json
import re
import tempfile
from importlib import resources
from pathlib import Path

import open_clip

from thumbsae.errors import ThumbsaeError

TINY_VIT_NAME = "thumbsae-tiny-vit"
SHIPPED_CONFIG_DIR = Path(str(resources.files("thumbsae") / "resources" / "model_configs"))
# open_clip's architecture names ("ViT-B-32", "convnext_base_w", "EVA02-L-14-336"): a plain file
# stem, so a name from a shared SAE's config.json can never reach outside the folder it is put in.
_ARCHITECTURE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,127}")


def register_shipped_configs() -> None:
    """Register every architecture JSON shipped in `resources/model_configs` with open_clip."""
    if TINY_VIT_NAME not in open_clip.list_models():
        open_clip.add_model_config(SHIPPED_CONFIG_DIR)


def check_architecture_name(name: object) -> str:
    """`name` if it is a plain architecture name (letters, digits, `_ . + -`, no path), else raise.

    Raises `ThumbsaeError` naming `model.name`, for any name that is not a string, is empty, holds
    a path separator or `..`, or starts with a dot.
    """
    if not isinstance(name, str) or not _ARCHITECTURE_NAME.fullmatch(name) or ".." in name:
        raise ThumbsaeError(
            f"model.name={name!r}: not an architecture name; with model.overrides it must be letters, digits "
            "and _ . + - (at most 128, no path, no '..')"
        )
    return name


def register_model_config(name: str, config: dict) -> None:
    """Register an in-memory architecture `config` under `name` (for `model.overrides`).

    open_clip only registers configs from JSON files and keeps what it read, so the dict goes to a
    private temporary folder that is removed again at once. `name` is checked first
    (`check_architecture_name`); `config` must be a mapping with `embed_dim`, `vision_cfg` and
    `text_cfg`. Raises `ThumbsaeError` otherwise.
    """
    check_architecture_name(name)
    missing = [k for k in ("embed_dim", "vision_cfg", "text_cfg") if not isinstance(config, dict) or k not in config]
    if missing:
        raise ThumbsaeError(f"model.overrides: an architecture needs {', '.join(missing)} (as open_clip's model JSON)")
    try:
        text = json.dumps(config)
    except (TypeError, ValueError) as err:
        raise ThumbsaeError(f"model.overrides: not JSON data ({err})") from None
    with tempfile.TemporaryDirectory(prefix="thumbsae-model-config-") as folder:
        path = Path(folder) / f"{name}.json"
        path.write_text(text)
        # Registering the file (not the folder): once it is gone, open_clip's rescans skip it.
        open_clip.add_model_config(path)


def tiny_vit_config() -> dict:
    """The `thumbsae-tiny-vit` architecture as a dict (vision_cfg, text_cfg, embed_dim)."""
    return json.loads((SHIPPED_CONFIG_DIR / f"{TINY_VIT_NAME}.json").read_text())
