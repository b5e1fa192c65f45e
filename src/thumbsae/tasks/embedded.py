"""The embedded default: make the synthetic world (and the tiny CLIP trained on it) on first use.

`python train.py` with no arguments must work on a fresh clone, offline: when the configured image
sets live under `paths.world` and are missing, the world is generated from the `world` group; when
the model config points at the world CLIP checkpoint and it is missing, it is trained.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from thumbsae.config import build

WORLD_CLIP_DEFAULT = Path("data/world_clip/model.safetensors")


def ensure_world(cfg: DictConfig) -> None:
    """Generate the world at `paths.world` if any configured image set points into it and is missing."""
    from thumbsae.world import generate_world

    out = Path(cfg.paths.world)
    sources = [cfg.data.get(k) for k in ("train", "thumbnails", "reference")]
    wanted = [Path(s) for s in sources if s and _is_under(Path(s), out)]
    if wanted and not all(p.exists() for p in wanted):
        print(f"embedded default: generating the synthetic world in {out}")
        generate_world(build(cfg.world, "world"), out)


def ensure_world_clip(cfg: DictConfig) -> None:
    """Train the tiny world CLIP if the model config points at its (missing) default checkpoint."""
    pretrained = cfg.model.get("pretrained")
    if not pretrained or Path(pretrained) != WORLD_CLIP_DEFAULT or WORLD_CLIP_DEFAULT.exists():
        return
    from thumbsae.activations.world_clip import train_world_clip
    from thumbsae.world import generate_world

    out = Path(cfg.paths.world)
    if not (out / "thumbnails.csv").exists():
        generate_world(build(cfg.world, "world"), out)
    print(f"embedded default: training the tiny world CLIP into {WORLD_CLIP_DEFAULT}")
    train_world_clip(out, WORLD_CLIP_DEFAULT, seed=int(cfg.seed))


def _is_under(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False
