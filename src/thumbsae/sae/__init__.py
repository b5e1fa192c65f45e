"""thumbsae.sae: SAE architectures (TopK, BatchTopK, ReLU), objectives, training, save/load, comparison.

    from thumbsae.sae import SAEConfig, SparseAutoencoder, SAELitModule, save_sae, load_sae

`SAELitModule` (pytorch_lightning), `SpliceEvaluator` (open_clip) and `compare_runs` (matplotlib)
are imported on first use, so loading an SAE to encode images stays light.
"""

from __future__ import annotations

from typing import Any

from thumbsae.sae.config import SAEConfig, sae_config_from_dict, study_relu_config
from thumbsae.sae.io import load_sae, read_sae_config, save_sae
from thumbsae.sae.model import ForwardOutput, SparseAutoencoder, SparseLatents, geometric_median

_LAZY = {
    "SAELitModule": "thumbsae.sae.lightning",
    "SpliceEvaluator": "thumbsae.sae.splice",
    "compare_runs": "thumbsae.sae.compare",
}

__all__ = [
    "ForwardOutput",
    "SAEConfig",
    "SAELitModule",
    "SparseAutoencoder",
    "SparseLatents",
    "SpliceEvaluator",
    "compare_runs",
    "geometric_median",
    "load_sae",
    "read_sae_config",
    "sae_config_from_dict",
    "save_sae",
    "study_relu_config",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'thumbsae.sae' has no attribute {name!r}")
