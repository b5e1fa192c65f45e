"""Activation stores for an image set: validate the set, load CLIP, extract (or reuse) the store."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from thumbsae.activations.config import ClipConfig, HookConfig
from thumbsae.files import key_digest


def store_folder(source: str | Path, kind: str, hook: HookConfig, clip_cfg: ClipConfig) -> Path:
    """The cache folder of the store for `source` under these model/activation settings.

    The store itself checks a content hash of the images, so a changed image set is re-extracted.
    """
    key = {
        "source": str(Path(source).resolve()),
        "kind": kind,
        "model": clip_cfg.to_dict(),
        "layer": hook.layer,
        "tokens": hook.tokens,
        "fit": hook.fit,
        "dtype": hook.dtype,
    }
    return Path(hook.cache_dir) / f"{Path(source).stem}-{kind}-{key_digest(key, 12)}"


def extract_store(
    source: str | Path,
    *,
    kind: str,
    hook: HookConfig,
    clip_cfg: ClipConfig,
    strict: bool,
    rejects_path: Path,
    out_dir: str | Path | None = None,
    clip=None,
):
    """Validate `source`, then extract its activations at `hook` into a store (`out_dir`, or the cache),
    on this process's GPU when CUDA is available (`cuda:LOCAL_RANK`), else on the CPU.

    Returns `(ActivationStore, images DataFrame)`; rejected rows go to `rejects_path`.
    """
    from thumbsae.activations import extract_to_store
    from thumbsae.data import load_image_set

    from thumbsae.activations.distributed import extraction_device

    images = load_image_set(source, kind=kind, rejects_path=rejects_path, strict=strict)
    # Extraction runs on this rank's GPU when there is one (a copy of the model there), else the CPU.
    device = extraction_device("auto")
    if clip is None or str(clip.device) != device:
        clip = clip_cfg.load(device=device)
    store = extract_to_store(
        images,
        clip,
        layer=hook.layer,
        tokens=hook.tokens,
        fit=hook.fit,
        out_dir=Path(out_dir) if out_dir is not None else store_folder(source, kind, hook, clip_cfg),
        dtype=hook.dtype,
        shard_rows=hook.shard_rows,
        batch_size=hook.batch_size,
        num_workers=hook.num_workers,
        # Images were decoded once during validation; a file that changes in between lands here.
        rejects_path=rejects_path.with_name(rejects_path.stem + "_extract.csv"),
    )
    return store, images


def extract(cfg, overrides: Sequence[str] = ()) -> tuple["ActivationStore", bool]:  # noqa: F821 - imported lazily
    """`python extract.py`: the store of `source` (`kind` images|thumbnails|reference) at `out`;
    rejects go to `<out>_rejects.csv` beside it. Under torchrun every rank runs this and the ranks
    share the shards (one store, read as a single process would write it). Returns the store and
    whether this process is the main one. `overrides`: the command line's, for `ensure_world`."""
    from thumbsae.activations.distributed import extraction_group
    from thumbsae.config import build, setting
    from thumbsae.data import KINDS
    from thumbsae.errors import ThumbsaeError
    from thumbsae.tasks.embedded import ensure_world

    setting(cfg, "strict", bool)  # `strict=maybe` named as typed, before data.strict inherits it
    data = build(cfg.data, "data")
    clip_cfg = build(cfg.model, "model")
    hook = build(cfg.activations, "activations")
    if cfg.kind not in KINDS:
        raise ThumbsaeError(f"kind={cfg.kind!r}: expected one of {', '.join(KINDS)}")
    if not cfg.source:
        raise ThumbsaeError("source: not set; pass source=IMAGES (a manifest or a folder)")
    out = Path(cfg.out)
    with extraction_group() as ranks:
        if ranks.is_main:
            ensure_world(cfg, [cfg.source], overrides)
        ranks.barrier()
        store, _ = extract_store(cfg.source, kind=cfg.kind, hook=hook, clip_cfg=clip_cfg, strict=data.strict,
                                 rejects_path=out.parent / f"{out.name}_rejects.csv", out_dir=out)
    return store, ranks.is_main
