"""The study's recipe as the repository's Hydra configs compose it (`sae=study_relu`): the one
source of truth, instantiated with small overrides for tests."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

CONF = Path(__file__).resolve().parents[1] / "conf"


def study_relu(d_in: int = 1024, overrides: tuple[str, ...] = ()):
    """`(ReLUConfig, OptimConfig)` of `sae=study_relu` with `d_in` and Hydra `overrides`
    (e.g. `sae.expansion_factor=4`, `optim.warmup_steps=2`)."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["sae=study_relu", *overrides])
    return instantiate(cfg.sae, d_in=d_in), instantiate(cfg.optim)
