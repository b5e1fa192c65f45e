"""The embedded default: make the synthetic world on first use (the world CLIP ships with thumbsae).

`python train.py` with no arguments must work on a fresh clone, offline: when the configured image
sets live under `paths.world` and are missing, the world is generated from the `world` group. The
default model (`model=tiny_world`) is the world CLIP shipped in the package (`thumbsae:world_clip`),
so nothing is trained before the SAE; `thumbsae world-clip` retrains it.

A world that is already there is used as it is, never regenerated over: when the `world` settings
differ from those its `ground_truth.json` records, a setting given on the command line is refused
(`world.seed=5` would otherwise be silently ignored), and a difference that comes from the config
files is said in one line.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig

from thumbsae.config import build, override_keys
from thumbsae.errors import ThumbsaeError


def ensure_world(cfg: DictConfig, sources: list[str | None], overrides: Sequence[str] = ()) -> None:
    """Generate the world at `paths.world` when an image set this run reads (`sources`) points into
    it and is missing; image sets the run does not read never make it write a world. The `world`
    settings are checked either way; `overrides` (the command line's) decide whether a world already
    there that they do not describe is refused or only noted."""
    from thumbsae.world import generate_world

    out = Path(cfg.paths.world)
    wanted = [Path(s) for s in sources if s and _is_under(Path(s), out)]
    if not wanted:
        return
    world = build(cfg.world, "world")
    if all(p.exists() for p in wanted):
        _check_same_world(world, out, overrides)
        return
    print(f"embedded default: generating the synthetic world in {out}")
    generate_world(world, out)


def _check_same_world(world, out: Path, overrides: Sequence[str]) -> None:
    from thumbsae.world import settings_differing

    try:
        truth = json.loads((out / "ground_truth.json").read_text())
    except (OSError, ValueError):
        return  # image sets placed there by hand: no record to compare with
    if not isinstance(truth, dict):
        return
    differing = settings_differing(world, truth)
    if not differing:
        return
    given = set(override_keys(overrides))
    for key, (recorded, asked) in differing.items():
        if f"world.{key}" in given or "world" in given:
            raise ThumbsaeError(
                f"world.{key}={_shown(asked)}: {out} holds a world generated with world.{key}={_shown(recorded)}, "
                f"and this run would read that one; delete {out} to generate the world asked for, "
                f"or pass paths.world=NEW_FOLDER"
            )
    shown = ", ".join(f"world.{k}={_shown(r)}" for k, (r, _) in differing.items())
    print(f"note: using the world in {out} as it is ({shown}; the config says otherwise: delete it to regenerate)")


def _shown(value) -> str:
    return json.dumps(value, sort_keys=True)


def _is_under(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False
