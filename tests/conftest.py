"""Shared fixtures: offline W&B/DVC, and a tiny synthetic world generated once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("HYDRA_FULL_ERROR", "1")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory) -> Path:
    """A small world (600 thumbnails, 64 px, 12 channels) shared by the pipeline tests."""
    from thumbsae.world import WorldConfig, generate_world

    out = tmp_path_factory.mktemp("world") / "world"
    generate_world(
        WorldConfig(n_thumbnails=600, n_reference_per_class=12, n_channels=12, width=64, height=64, seed=3),
        out,
    )
    return out


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread for a module: tiny models gain nothing from more, and a busy machine
    loses a lot to threads waiting on each other."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
