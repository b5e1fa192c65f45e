"""The embedded default: make the synthetic world on first use (the world CLIP ships with thumbsae).

`python train.py` with no arguments must work on a fresh clone, offline: when the configured image
sets live under `paths.world` and are missing, the world is generated from the `world` group. The
default model (`model=tiny_world`) is the world CLIP shipped in the package (`thumbsae:world_clip`),
so nothing is trained before the SAE; `thumbsae world-clip` retrains it.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from thumbsae.config import build


def ensure_world(cfg: DictConfig, sources: list[str | None]) -> None:
    """Generate the world at `paths.world` when an image set this run reads (`sources`) points into
    it and is missing; image sets the run does not read never make it write a world."""
    from thumbsae.world import generate_world

    out = Path(cfg.paths.world)
    wanted = [Path(s) for s in sources if s and _is_under(Path(s), out)]
    if wanted and not all(p.exists() for p in wanted):
        print(f"embedded default: generating the synthetic world in {out}")
        generate_world(build(cfg.world, "world"), out)


def _is_under(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False
