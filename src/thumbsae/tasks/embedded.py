"""The embedded default: make the synthetic world on first use (the world CLIP ships with thumbsae).

`python train.py` with no arguments must work on a fresh clone, offline: when the configured image
sets live under `world.out` and are missing, the world is generated from the `world` config. The
default model (`model=tiny_world`) is the world CLIP shipped in the package (`thumbsae:world_clip`),
so nothing is trained before the SAE. A model config that points at `data/world_clip/model.safetensors`
(the DVC `world_clip` stage's retrain) gets it trained first when it is missing.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

WORLD_CLIP_RETRAIN = Path("data/world_clip/model.safetensors")


def world_config(cfg: DictConfig):
    """`thumbsae.world.WorldConfig` from the Hydra `world` node."""
    from thumbsae.world import WorldConfig

    w = cfg.world
    return WorldConfig(
        n_thumbnails=int(w.thumbnails),
        n_reference_per_class=int(w.reference_per_class),
        n_channels=int(w.channels),
        seed=int(w.seed),
        null=bool(w.null),
        width=int(w.width),
        height=int(w.height),
    )


def ensure_world(cfg: DictConfig) -> None:
    """Generate the world at `world.out` if any configured image set points into it and is missing."""
    from thumbsae.world import generate_world

    out = Path(cfg.world.out)
    sources = [cfg.data.get(k) for k in ("train", "thumbnails", "reference")]
    wanted = [Path(s) for s in sources if s and _is_under(Path(s), out)]
    if wanted and not all(p.exists() for p in wanted):
        print(f"embedded default: generating the synthetic world in {out}")
        generate_world(world_config(cfg), out)


def world_clip_config(cfg: DictConfig):
    """`WorldClipConfig` from the `world_clip` node when the config has one, else the defaults."""
    from thumbsae.activations.world_clip import WorldClipConfig

    node = cfg.get("world_clip")
    if node is None:
        return WorldClipConfig(seed=int(cfg.get("seed", 0)))
    import hydra

    return hydra.utils.instantiate(node, _convert_="all")


def ensure_world_clip(cfg: DictConfig) -> None:
    """Train the world CLIP into `data/world_clip/` if the model config points at that (missing) retrain.

    The default `model=tiny_world` loads the shipped checkpoint and needs nothing here.
    """
    pretrained = cfg.model.get("pretrained")
    if not pretrained or Path(str(pretrained)) != WORLD_CLIP_RETRAIN or WORLD_CLIP_RETRAIN.exists():
        return
    from thumbsae.activations.world_clip import train_world_clip
    from thumbsae.world import generate_world

    out = Path(cfg.world.out)
    if not (out / "thumbnails.csv").exists():
        generate_world(world_config(cfg), out)
    print(f"embedded default: training the tiny world CLIP into {WORLD_CLIP_RETRAIN}")
    train_world_clip(out, WORLD_CLIP_RETRAIN, world_clip_config(cfg))


def _is_under(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False
