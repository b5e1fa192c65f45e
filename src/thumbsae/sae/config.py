"""What an SAE is (one frozen dataclass per architecture) and how it is trained (`OptimConfig`).

    SAEConfig                      shared: arch, d_in, expansion_factor | n_latents, unit_norm_decoder,
    |                                      b_dec_init, input_scale, seed
    +-- TopKConfig                 k, k_aux, aux_coef, dead_window_tokens          (Gao et al. 2024)
    |   +-- BatchTopKConfig        + threshold_ema                                 (Bussmann et al. 2024)
    |       +-- MatryoshkaBatchTopKConfig  + prefixes | prefix_fractions          (Bussmann et al. 2025)
    +-- ReLUConfig                 l1_coef, mse_norm, ghost_grads, dead_window_steps  (the study's)
    +-- JumpReLUConfig             l0_coef, target_l0, bandwidth, init_threshold  (Rajamanoharan et al. 2024)

    OptimConfig                    lr, warmup_steps, adam_betas, adam_eps          (read by SAELitModule)

Each variant holds only its own sparsity and auxiliary-loss settings; its behaviour lives in
`thumbsae.sae.variants`, and `SparseAutoencoder` picks it once from the config's type. Every
config keeps an `arch` field (fixed per class) so that `config.json` and Hydra's `${sae.arch}`
say what the SAE is. Hydra builds them from `conf/sae/*.yaml` (`_target_`) or
`sae_config_from_dict` from a plain mapping; both validate in `__post_init__` and raise one-line
`ThumbsaeError`s naming the setting (`sae.k=99: ...`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from thumbsae.config import Seed
from thumbsae.errors import ThumbsaeError

MSE_NORMS: tuple[str, ...] = ("none", "input_norm")
B_DEC_INITS: tuple[str, ...] = ("zeros", "mean", "geometric_median")

# Architecture name -> config class, filled as the classes below are defined.
ARCHITECTURES: dict[str, type[SAEConfig]] = {}


def _at_least(name: str, value: Any, low: float, what: str = "") -> None:
    if value is None or float(value) < low:
        raise ThumbsaeError(f"sae.{name}={value}: must be >= {low:g}{what}")


@dataclass(frozen=True)
class SAEConfig:
    """The fields every architecture shares (use a subclass: `TopKConfig`, `ReLUConfig`, ...).

    arch: the architecture's name, fixed by the class (`topk`, `batchtopk`, `matryoshka`,
        `relu`, `jumprelu`); kept in files and configs so they say what they hold.
    d_in: width D of the activations. n_latents: number of latents F; when None it is
        `d_in * expansion_factor`.
    unit_norm_decoder: decoder rows kept at norm 1 (parallel gradient removed before each step,
        rows renormalised after it). b_dec_init: `zeros`, `mean` or `geometric_median` of the first
        training batch. input_scale: multiplied into raw activations inside encode/forward.
    seed: seed of the weight initialisation (weights depend on it alone).
    """

    ARCH: ClassVar[str] = ""

    arch: str = ""
    d_in: int = 768
    expansion_factor: int = 32
    n_latents: int | None = None
    unit_norm_decoder: bool = True
    b_dec_init: str = "mean"
    input_scale: float = 1.0
    seed: Seed = 0

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.ARCH:
            ARCHITECTURES[cls.ARCH] = cls

    def __post_init__(self) -> None:
        if not self.ARCH:
            raise ThumbsaeError(f"SAEConfig is abstract: use one of {', '.join(f'{c.__name__}' for c in ARCHITECTURES.values())}")
        if self.arch != self.ARCH:
            raise ThumbsaeError(
                f"sae.arch={self.arch!r} does not match {type(self).__name__} (arch {self.ARCH!r}); "
                f"choose the architecture with sae={self.arch or self.ARCH}"
            )
        if self.b_dec_init not in B_DEC_INITS:
            raise ThumbsaeError(f"sae.b_dec_init={self.b_dec_init!r}: use one of {', '.join(B_DEC_INITS)}")
        for name in ("d_in", "expansion_factor"):
            _at_least(name, getattr(self, name), 1)
        if self.n_latents is not None and self.n_latents < 1:
            raise ThumbsaeError(f"sae.n_latents={self.n_latents}: must be >= 1 (or null for d_in * expansion_factor)")
        if not self.input_scale > 0:
            raise ThumbsaeError(f"sae.input_scale={self.input_scale}: must be > 0")

    @property
    def latents(self) -> int:
        """F, the number of latents (`n_latents`, else `d_in * expansion_factor`)."""
        return int(self.n_latents) if self.n_latents is not None else int(self.d_in * self.expansion_factor)

    def to_dict(self) -> dict[str, Any]:
        """The fields as JSON-ready plain values (tuples become lists), `arch` first."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}


def _arch_default(arch: str) -> Any:
    return dataclasses.field(default=arch)


@dataclass(frozen=True)
class TopKConfig(SAEConfig):
    """TopK (Gao et al. 2024): exactly `k` latents per row, AuxK for dead latents.

    k: active latents per row. k_aux: dead latents used by AuxK per row; None means `d_in // 2`
    (Gao et al. appendix B.1). aux_coef: weight of the AuxK loss (0 turns it off).
    dead_window_tokens: a latent that has not fired on this many training tokens is dead (AuxK's
    candidates and the `dead_fraction_train` metric).
    """

    ARCH: ClassVar[str] = "topk"

    arch: str = _arch_default("topk")
    k: int = 32
    k_aux: int | None = None
    aux_coef: float = 1 / 32
    dead_window_tokens: int = 10_000_000

    def __post_init__(self) -> None:
        super().__post_init__()
        _at_least("k", self.k, 1)
        _at_least("dead_window_tokens", self.dead_window_tokens, 1)
        _at_least("aux_coef", self.aux_coef, 0)
        if self.k_aux is not None and self.k_aux < 0:
            raise ThumbsaeError(f"sae.k_aux={self.k_aux}: must be >= 0 (or null for d_in // 2)")
        if self.k > self.latents:
            raise ThumbsaeError(f"sae.k={self.k} is larger than the number of latents {self.latents}")

    @property
    def aux_k(self) -> int:
        """Dead latents per row in AuxK (`k_aux`, else `d_in // 2`)."""
        return int(self.k_aux) if self.k_aux is not None else self.d_in // 2


@dataclass(frozen=True)
class BatchTopKConfig(TopKConfig):
    """BatchTopK (Bussmann et al. 2024): the batch's `B * k` largest pre-activations while
    training; at inference, latents above a threshold estimated during training (a moving
    average of the smallest selected activation, weight `threshold_ema` per batch). Its inference
    form is a JumpReLU with that threshold on every latent (`SparseAutoencoder.inference_form`)."""

    ARCH: ClassVar[str] = "batchtopk"

    arch: str = _arch_default("batchtopk")
    threshold_ema: float = 0.01

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.threshold_ema <= 1:
            raise ThumbsaeError(f"sae.threshold_ema={self.threshold_ema}: must be in (0, 1]")


@dataclass(frozen=True)
class MatryoshkaBatchTopKConfig(BatchTopKConfig):
    """Matryoshka BatchTopK (Bussmann et al. 2025; Nabeshima 2024): BatchTopK latents whose first
    m (for each prefix size m) reconstruct the input on their own; the loss sums the FVU of every
    prefix (the full dictionary last).

    prefixes: prefix sizes in latents, increasing (the full size is added when missing). When
    None, `prefix_fractions` of the number of latents (rounded, at least 1) are used, so a size
    sweep keeps the same nesting.
    """

    ARCH: ClassVar[str] = "matryoshka"

    arch: str = _arch_default("matryoshka")
    prefixes: tuple[int, ...] | None = None
    prefix_fractions: tuple[float, ...] = (0.0625, 0.125, 0.25, 0.5, 1.0)

    def __post_init__(self) -> None:
        # YAML gives lists; tuples keep the config hashable and equal after a JSON round trip.
        if self.prefixes is not None:
            object.__setattr__(self, "prefixes", tuple(int(p) for p in self.prefixes))
        object.__setattr__(self, "prefix_fractions", tuple(float(p) for p in self.prefix_fractions))
        super().__post_init__()
        if self.prefixes is not None:
            if not self.prefixes or any(p < 1 or p > self.latents for p in self.prefixes):
                raise ThumbsaeError(f"sae.prefixes={list(self.prefixes)}: sizes must be in 1..{self.latents} (the number of latents)")
        elif not self.prefix_fractions or any(not 0 < f <= 1 for f in self.prefix_fractions):
            raise ThumbsaeError(f"sae.prefix_fractions={list(self.prefix_fractions)}: fractions must be in (0, 1]")
        sizes = self.prefix_sizes
        if any(b <= a for a, b in zip(sizes, sizes[1:])):
            raise ThumbsaeError(f"sae.prefixes: sizes {list(sizes)} must be strictly increasing")

    @property
    def prefix_sizes(self) -> tuple[int, ...]:
        """The nested prefix sizes in latents, increasing, ending with the number of latents."""
        F = self.latents
        sizes = list(self.prefixes) if self.prefixes is not None else [max(1, round(f * F)) for f in self.prefix_fractions]
        if sizes[-1] != F:
            sizes.append(F)
        return tuple(sizes)


@dataclass(frozen=True)
class ReLUConfig(SAEConfig):
    """ReLU + L1 (the study's recipe with `sae=study_relu`).

    l1_coef: weight of the mean L1 norm of the latents. mse_norm: `none` or `input_norm` (squared
    error divided by the input's L2 norm, the study's). ghost_grads: the study's ghost-grad term
    for latents that have not fired for more than `dead_window_steps` steps. Weights start as
    independent Kaiming-uniform encoder and decoder (the study's init).
    """

    ARCH: ClassVar[str] = "relu"

    arch: str = _arch_default("relu")
    l1_coef: float = 0.0
    mse_norm: str = "none"
    ghost_grads: bool = False
    dead_window_steps: int = 64

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mse_norm not in MSE_NORMS:
            raise ThumbsaeError(f"sae.mse_norm={self.mse_norm!r}: use one of {', '.join(MSE_NORMS)}")
        _at_least("l1_coef", self.l1_coef, 0)
        _at_least("dead_window_steps", self.dead_window_steps, 1)


@dataclass(frozen=True)
class JumpReLUConfig(SAEConfig):
    """JumpReLU (Rajamanoharan et al. 2024, as in Gemma Scope): a latent fires when its
    pre-activation exceeds its own threshold `exp(log_threshold)`; the thresholds train through a
    straight-through estimator with a rectangle kernel of width `bandwidth`.

    l0_coef: weight of the sparsity penalty: the mean L0 per row, or, with `target_l0` set, the
    mean of `2 / target_l0 * (L0 - target_l0)^2` per row (Gemma Scope 2's quadratic penalty, as
    SAELens' `target_l0`). The reconstruction term is the batch FVU, as for TopK, so `l0_coef` is
    in FVU per active latent (a Gemma-Scope-style coefficient on the summed squared error is
    about `d_in` times larger). init_threshold: every latent's threshold at the start; with
    `init_l0` set, thresholds are instead set from the first training batch so that each latent
    fires on `init_l0 / F` of it (L0 about `init_l0` from the first step).
    """

    ARCH: ClassVar[str] = "jumprelu"

    arch: str = _arch_default("jumprelu")
    l0_coef: float = 1e-3
    target_l0: float | None = None
    bandwidth: float = 0.05
    init_threshold: float = 0.1
    init_l0: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        _at_least("l0_coef", self.l0_coef, 0)
        if self.init_l0 is not None and not 0 < self.init_l0 < self.latents:
            raise ThumbsaeError(f"sae.init_l0={self.init_l0}: must be in (0, {self.latents}) or null")
        for name in ("bandwidth", "init_threshold"):
            if not getattr(self, name) > 0:
                raise ThumbsaeError(f"sae.{name}={getattr(self, name)}: must be > 0")
        if self.target_l0 is not None and not 0 < self.target_l0 <= self.latents:
            raise ThumbsaeError(f"sae.target_l0={self.target_l0}: must be in (0, {self.latents}] or null")


@dataclass(frozen=True)
class OptimConfig:
    """How an SAE is optimised (Hydra group `optim`; read by `SAELitModule` only).

    lr, adam_betas, adam_eps: Adam. warmup_steps: linear warm-up from lr / warmup_steps to lr,
    then constant (the study's `constantwithwarmup`). The batch size is the DataModule's
    (`datamodule.batch_size`).
    """

    lr: float = 4e-4
    warmup_steps: int = 100
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise ThumbsaeError(f"optim.lr={self.lr}: must be > 0")
        if self.warmup_steps < 0:
            raise ThumbsaeError(f"optim.warmup_steps={self.warmup_steps}: must be >= 0")
        if not self.adam_eps > 0:
            raise ThumbsaeError(f"optim.adam_eps={self.adam_eps}: must be > 0")
        betas = tuple(float(b) for b in self.adam_betas)
        if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
            raise ThumbsaeError(f"optim.adam_betas={list(betas)}: need two numbers in [0, 1)")
        object.__setattr__(self, "adam_betas", betas)

    def to_dict(self) -> dict[str, Any]:
        """The fields as JSON-ready plain values."""
        return {**dataclasses.asdict(self), "adam_betas": list(self.adam_betas)}


OPTIM_FIELDS: frozenset[str] = frozenset(f.name for f in dataclasses.fields(OptimConfig))
# Keys of the flat `sae` section that files written before the split held (one dataclass for all).
LEGACY_KEYS: frozenset[str] = frozenset(
    {"arch", "d_in", "expansion_factor", "n_latents", "k", "k_aux", "aux_coef", "dead_window_tokens", "l1_coef",
     "mse_norm", "ghost_grads", "dead_window_steps", "unit_norm_decoder", "b_dec_init", "input_scale", "seed",
     "lr", "warmup_steps", "batch_size", "adam_betas", "adam_eps"}
)


def _plain(mapping: Mapping[str, Any]) -> dict[str, Any]:
    """Keys as strings, Hydra's `_target_` and the like dropped."""
    return {str(k): v for k, v in mapping.items() if not str(k).startswith("_")}


def config_class(arch: str) -> type[SAEConfig]:
    """The config class of architecture `arch` (ThumbsaeError naming the known ones)."""
    try:
        return ARCHITECTURES[str(arch)]
    except KeyError:
        raise ThumbsaeError(f"sae.arch={arch!r}: use one of {', '.join(ARCHITECTURES)}") from None


def sae_config_from_dict(mapping: Mapping[str, Any]) -> SAEConfig:
    """Build the config of architecture `mapping["arch"]` (default `topk`) from a plain mapping
    (Hydra's `sae` node, or `config.json["sae"]`).

    Keys starting with `_` (Hydra's `_target_`) are ignored; any other key the architecture does
    not have is an error naming it, so a typo, or an L1 coefficient given to a TopK SAE, never
    goes unnoticed.
    """
    values = _plain(mapping)
    cls = config_class(values.setdefault("arch", TopKConfig.ARCH))
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ThumbsaeError(
            f"sae config: unknown key(s) {', '.join(unknown)} for arch {cls.ARCH}; known: {', '.join(sorted(known))}"
        )
    try:
        return cls(**values)
    except TypeError as err:
        raise ThumbsaeError(f"sae config: {err}") from None


def optim_config_from_dict(mapping: Mapping[str, Any]) -> OptimConfig:
    """Build an `OptimConfig` from a plain mapping (Hydra's `optim` node); unknown keys are errors."""
    values = _plain(mapping)
    unknown = sorted(set(values) - OPTIM_FIELDS)
    if unknown:
        raise ThumbsaeError(f"optim config: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(OPTIM_FIELDS))}")
    return OptimConfig(**values)


def is_legacy_section(section: Mapping[str, Any]) -> bool:
    """True for a flat `sae` section written before architectures and optimisation were split
    (it held `lr` and `batch_size` beside the architecture)."""
    return "lr" in section and "batch_size" in section


def split_legacy_section(section: Mapping[str, Any]) -> tuple[SAEConfig, OptimConfig, int | None]:
    """A legacy flat `sae` section -> (architecture config, optimisation config, batch size).

    The old dataclass carried every architecture's keys; those the architecture does not have are
    dropped, any key it never had is an error.
    """
    values = _plain(section)
    unknown = sorted(set(values) - LEGACY_KEYS)
    if unknown:
        raise ThumbsaeError(f"sae config: unknown key(s) {', '.join(unknown)} in a flat (older) sae section")
    cls = config_class(values.get("arch", TopKConfig.ARCH))
    known = {f.name for f in dataclasses.fields(cls)}
    optim = optim_config_from_dict({k: v for k, v in values.items() if k in OPTIM_FIELDS})
    batch = values.get("batch_size")
    return cls(**{k: v for k, v in values.items() if k in known}), optim, int(batch) if batch is not None else None
