"""Activation stores for an image set: validate the set, load CLIP, extract (or reuse) the store."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from omegaconf import DictConfig, OmegaConf


def clip_kwargs(model_cfg: DictConfig | dict) -> dict:
    """Keyword arguments of `thumbsae.activations.load_clip` from a `model` config node."""
    m = OmegaConf.to_container(model_cfg, resolve=True) if isinstance(model_cfg, DictConfig) else dict(model_cfg)
    keys = ("name", "pretrained", "overrides", "quick_gelu", "mean", "std", "image_size", "seed", "sha256")
    kwargs = {k: m.get(k) for k in keys}
    kwargs["seed"] = int(kwargs["seed"] or 0)
    return kwargs


def store_folder(cfg: DictConfig, source: str | Path, kind: str) -> Path:
    """The cache folder of the store for `source` under these model/activation settings.

    The store itself checks a content hash of the images, so a changed image set is re-extracted.
    """
    a = cfg.activations
    key = {
        "source": str(Path(source).resolve()),
        "kind": kind,
        "model": clip_kwargs(cfg.model),
        "layer": int(a.layer),
        "tokens": str(a.tokens),
        "fit": str(a.fit),
        "dtype": str(a.dtype),
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    return Path(a.cache_dir) / f"{Path(source).stem}-{kind}-{digest}"


def extract_store(
    cfg: DictConfig, source: str | Path, *, kind: str, rejects_path: Path, out_dir: Path | None = None, clip=None
):
    """Validate `source`, then extract its activations at the configured hook into a store.

    Returns `(ActivationStore, images DataFrame)`; rejected rows go to `rejects_path`.
    """
    from thumbsae.activations import extract_to_store, load_clip
    from thumbsae.data import load_image_set

    images = load_image_set(source, kind=kind, rejects_path=rejects_path, strict=bool(cfg.data.strict))
    clip = clip if clip is not None else load_clip(**clip_kwargs(cfg.model))
    a = cfg.activations
    store = extract_to_store(
        images,
        clip,
        layer=int(a.layer),
        tokens=str(a.tokens),
        fit=str(a.fit),
        out_dir=Path(out_dir) if out_dir is not None else store_folder(cfg, source, kind),
        dtype=str(a.dtype),
        shard_rows=int(a.shard_rows),
        batch_size=int(a.batch_size),
        num_workers=None if a.num_workers is None else int(a.num_workers),
        # Images were decoded once during validation; a file that changes in between lands here.
        rejects_path=rejects_path.with_name(rejects_path.stem + "_extract.csv"),
    )
    return store, images
