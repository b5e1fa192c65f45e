"""What an SAE is (architecture, sizes, objective) and how it is optimised, in one frozen dataclass.

`sae.*` in Hydra maps onto `SAEConfig` one key to one field (`sae_config_from_dict`). The model
fields decide the weights and the objective; the optimisation fields (`lr`, `warmup_steps`,
`batch_size`, `adam_betas`, `adam_eps`) are read only by `SAELitModule`, and are saved with the
weights so that `config.json` says how they were trained.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from thumbsae.errors import ThumbsaeError

ARCHS: tuple[str, ...] = ("topk", "batchtopk", "relu")
MSE_NORMS: tuple[str, ...] = ("none", "input_norm")
B_DEC_INITS: tuple[str, ...] = ("zeros", "mean", "geometric_median")


@dataclass(frozen=True)
class SAEConfig:
    """A sparse autoencoder and its training objective.

    arch: `topk` (Gao et al. 2024, with AuxK), `batchtopk` (Bussmann et al. 2024; a threshold is
        estimated during training and used at inference) or `relu` (ReLU + L1, the study's).
    d_in: width D of the activations. n_latents: number of latents F; when None it is
        `d_in * expansion_factor`.
    k: active latents per row (topk), or on average per row (batchtopk).
    k_aux: dead latents used by AuxK per row; None means `d_in // 2` (Gao et al. appendix B.1).
    aux_coef: weight of the AuxK loss. dead_window_tokens: a latent that has not fired on this many
        training tokens is dead (for AuxK and the dead fraction).
    l1_coef: L1 weight (relu). mse_norm: `none` or `input_norm` (squared error divided by the
        input's L2 norm, the study's). ghost_grads: the study's ghost-grad term for latents that
        have not fired for more than `dead_window_steps` steps (relu only).
    unit_norm_decoder: decoder rows kept at norm 1 (parallel gradient removed before each step,
        rows renormalised after it). b_dec_init: `zeros`, `mean` or `geometric_median` of the first
        training batch. input_scale: multiplied into raw activations inside encode/forward.
    seed: seed of the weight initialisation (weights depend on it alone).
    lr, warmup_steps (linear warm-up, then constant), batch_size, adam_betas, adam_eps: Adam.
    """

    arch: str = "topk"
    d_in: int = 768
    expansion_factor: int = 32
    n_latents: int | None = None
    k: int = 32
    k_aux: int | None = None
    aux_coef: float = 1 / 32
    dead_window_tokens: int = 10_000_000
    l1_coef: float = 0.0
    mse_norm: str = "none"
    ghost_grads: bool = False
    dead_window_steps: int = 64
    unit_norm_decoder: bool = True
    b_dec_init: str = "mean"
    input_scale: float = 1.0
    seed: int = 0
    # Optimisation (read by SAELitModule only).
    lr: float = 4e-4
    warmup_steps: int = 100
    batch_size: int = 1024
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ThumbsaeError(f"sae.arch={self.arch!r}: use one of {', '.join(ARCHS)}")
        if self.mse_norm not in MSE_NORMS:
            raise ThumbsaeError(f"sae.mse_norm={self.mse_norm!r}: use one of {', '.join(MSE_NORMS)}")
        if self.b_dec_init not in B_DEC_INITS:
            raise ThumbsaeError(f"sae.b_dec_init={self.b_dec_init!r}: use one of {', '.join(B_DEC_INITS)}")
        for name in ("d_in", "expansion_factor", "k", "batch_size", "dead_window_tokens", "dead_window_steps"):
            if int(getattr(self, name)) < 1:
                raise ThumbsaeError(f"sae.{name}={getattr(self, name)}: must be >= 1")
        if self.n_latents is not None and self.n_latents < 1:
            raise ThumbsaeError(f"sae.n_latents={self.n_latents}: must be >= 1 (or null for d_in * expansion_factor)")
        if self.k_aux is not None and self.k_aux < 0:
            raise ThumbsaeError(f"sae.k_aux={self.k_aux}: must be >= 0 (or null for d_in // 2)")
        if self.arch in ("topk", "batchtopk") and self.k > self.latents:
            raise ThumbsaeError(f"sae.k={self.k} is larger than the number of latents {self.latents}")
        if self.ghost_grads and self.arch != "relu":
            raise ThumbsaeError(f"sae.ghost_grads=true needs sae.arch=relu (got {self.arch!r}); TopK uses AuxK")
        if not self.input_scale > 0:
            raise ThumbsaeError(f"sae.input_scale={self.input_scale}: must be > 0")
        if self.lr <= 0 or self.warmup_steps < 0:
            raise ThumbsaeError(f"sae.lr={self.lr}, sae.warmup_steps={self.warmup_steps}: need lr > 0, warmup >= 0")
        for name in ("aux_coef", "l1_coef"):
            if getattr(self, name) < 0:
                raise ThumbsaeError(f"sae.{name}={getattr(self, name)}: must be >= 0")
        if len(self.adam_betas) != 2:
            raise ThumbsaeError(f"sae.adam_betas={self.adam_betas}: need two numbers")
        # YAML gives lists; a tuple keeps the config hashable and equal after a JSON round trip.
        object.__setattr__(self, "adam_betas", tuple(float(b) for b in self.adam_betas))

    @property
    def latents(self) -> int:
        """F, the number of latents (`n_latents`, else `d_in * expansion_factor`)."""
        return int(self.n_latents) if self.n_latents is not None else int(self.d_in * self.expansion_factor)

    @property
    def aux_k(self) -> int:
        """Dead latents per row in AuxK (`k_aux`, else `d_in // 2`)."""
        return int(self.k_aux) if self.k_aux is not None else self.d_in // 2

    def to_dict(self) -> dict[str, Any]:
        """The fields as JSON-ready plain values (tuples become lists)."""
        out = dataclasses.asdict(self)
        out["adam_betas"] = list(self.adam_betas)
        return out


FIELD_NAMES: frozenset[str] = frozenset(f.name for f in dataclasses.fields(SAEConfig))


def sae_config_from_dict(mapping: Mapping[str, Any]) -> SAEConfig:
    """Build an `SAEConfig` from a plain mapping (Hydra's `sae` node, or `config.json["sae"]`).

    Keys starting with `_` (Hydra's `_target_` and the like) are ignored; any other unknown key is
    an error naming it, so a typo in an override never goes unnoticed.
    """
    values = {str(k): v for k, v in mapping.items() if not str(k).startswith("_")}
    unknown = sorted(set(values) - FIELD_NAMES)
    if unknown:
        raise ThumbsaeError(f"sae config: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(FIELD_NAMES))}")
    if "adam_betas" in values and values["adam_betas"] is not None:
        values["adam_betas"] = tuple(values["adam_betas"])
    try:
        return SAEConfig(**values)
    except TypeError as err:
        raise ThumbsaeError(f"sae config: {err}") from None


def study_relu_config(d_in: int = 1024, **overrides: Any) -> SAEConfig:
    """The published study's recipe (STUDY.md): ReLU + L1 8e-5, MSE / input norm, ghost grads
    (64-step window), unit-norm decoder, b_dec = mean, Adam 4e-4, 500 warm-up steps, batch 1024,
    expansion 64. `overrides` replace single fields (e.g. a smaller expansion in tests)."""
    values: dict[str, Any] = dict(STUDY_RELU, d_in=d_in)
    values.update(overrides)
    return sae_config_from_dict(values)


# The `sae=study_relu` Hydra group mirrors this dict key for key.
STUDY_RELU: dict[str, Any] = {
    "arch": "relu",
    "expansion_factor": 64,
    "n_latents": None,
    "k": 32,
    "k_aux": None,
    "aux_coef": 0.0,
    "l1_coef": 8e-5,
    "mse_norm": "input_norm",
    "ghost_grads": True,
    "dead_window_steps": 64,
    "unit_norm_decoder": True,
    "b_dec_init": "mean",
    "lr": 4e-4,
    "warmup_steps": 500,
    "batch_size": 1024,
    "adam_betas": (0.9, 0.999),
}
