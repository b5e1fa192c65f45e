"""thumbsae.sae: SAE architectures (TopK, BatchTopK, Matryoshka BatchTopK, ReLU, JumpReLU),
objectives, training, save/load (ours, SAELens, sparsify, the study's state dicts), comparison.

    from thumbsae.sae import TopKConfig, OptimConfig, SparseAutoencoder, SAELitModule, save_sae, load_sae

One frozen config dataclass per architecture says what the SAE is (`thumbsae.sae.config`), its
behaviour lives in `thumbsae.sae.variants`, and `OptimConfig` says how it is trained.
`SAELitModule` (pytorch_lightning), `SpliceEvaluator` (open_clip) and `compare_runs`
(matplotlib) are imported on first use, so loading an SAE to encode images stays light.
"""

from __future__ import annotations

from typing import Any

from thumbsae.sae.config import (
    ARCHITECTURES,
    BatchTopKConfig,
    JumpReLUConfig,
    MatryoshkaBatchTopKConfig,
    OptimConfig,
    ReLUConfig,
    SAEConfig,
    TopKConfig,
    optim_config_from_dict,
    sae_config_from_dict,
)
from thumbsae.sae.io import load_sae, read_sae_config, save_sae
from thumbsae.sae.model import ForwardOutput, SparseAutoencoder, SparseLatents, geometric_median

_LAZY = {
    "SAELitModule": "thumbsae.sae.lightning",
    "SpliceEvaluator": "thumbsae.sae.splice",
    "compare_runs": "thumbsae.sae.compare",
    "export_sae": "thumbsae.sae.formats",
}

__all__ = [
    "ARCHITECTURES",
    "BatchTopKConfig",
    "ForwardOutput",
    "JumpReLUConfig",
    "MatryoshkaBatchTopKConfig",
    "OptimConfig",
    "ReLUConfig",
    "SAEConfig",
    "SAELitModule",
    "SparseAutoencoder",
    "SparseLatents",
    "SpliceEvaluator",
    "TopKConfig",
    "compare_runs",
    "export_sae",
    "geometric_median",
    "load_sae",
    "optim_config_from_dict",
    "read_sae_config",
    "sae_config_from_dict",
    "save_sae",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'thumbsae.sae' has no attribute {name!r}")
