"""Which CLIP and hook an SAE runs on: its own `config.json`, or, for a SAELens / sparsify folder or
a state dict that does not say, the `model.*` and `activations.{layer,tokens,fit}` settings the user
gave on the command line (the composed defaults are the embedded model's, never a foreign SAE's)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from omegaconf import DictConfig

from thumbsae.config import build, override_keys, refuse_overrides, to_plain

HOOK_KEYS = ("layer", "tokens", "fit")


def hook_defaults(cfg: DictConfig, overrides: Sequence[str]) -> dict[str, Any]:
    """`{"clip": {...}, "hook": {...}}` from the settings the command line gave (for `load_sae`).

    A model is taken when `model=...` or any `model.*` was given; a hook key when
    `activations.<key>` was given. What is left out stays missing, so loading a folder that does not
    name it fails in one line naming the setting.
    """
    keys = override_keys(overrides)
    defaults: dict[str, Any] = {"hook": {}}
    if any(k == "model" or k.startswith("model.") for k in keys):
        defaults["clip"] = build(cfg.model, "model").to_dict()
    for key in HOOK_KEYS:
        if f"activations.{key}" in keys:
            defaults["hook"][key] = to_plain(cfg.activations)[key]
    return defaults


def refuse_hook_settings(sae_config: dict[str, Any], overrides: Sequence[str]) -> None:
    """For an SAE whose files name their CLIP and hook, refuse `model.*` and the hook settings: an SAE
    is only meaningful on the activations it was trained on."""
    source = sae_config.get("source") or {}
    if source.get("format") in (None, "thumbsae"):
        refuse_overrides(overrides, ["model", *(f"activations.{k}" for k in HOOK_KEYS)],
                         why="the SAE's config.json names the CLIP model and hook it was trained on")


def refuse_storage_settings(overrides: Sequence[str], command: str) -> None:
    """`thumbsae rank` and `export` read only the hook keys of `activations`; refuse the others."""
    hook_keys = {f"activations.{k}" for k in HOOK_KEYS}
    refuse_overrides([o for o in overrides if override_keys([o])[0] not in hook_keys], ["activations"],
                     why=f"{command} reads only activations.layer, tokens and fit, for an SAE that does not name them")
