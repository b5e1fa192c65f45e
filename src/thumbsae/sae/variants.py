"""What each SAE architecture does: how it picks latents (training and inference), what it adds
to the loss, which latents it treats as dead, and any state of its own.

One class per config class of `thumbsae.sae.config`; `variant_for(cfg)` picks it from the
config's type, once, when a `SparseAutoencoder` is built. Adding an architecture = a config
dataclass + a class here registered with `@variant_of(ItsConfig)` + a YAML under `conf/sae/`.

Every method gets the `SparseAutoencoder` whose parameters it uses (`W_enc` [F, D], `b_enc` [F],
`W_dec` [F, D], `b_dec` [D], plus what `add_state` registered) and works in the SAE's scaled space.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch import Tensor

from thumbsae.errors import ThumbsaeError
from thumbsae.sae.config import (
    BatchTopKConfig,
    JumpReLUConfig,
    MatryoshkaBatchTopKConfig,
    ReLUConfig,
    SAEConfig,
    TopKConfig,
)
from thumbsae.sae.objectives import (
    auxk_loss,
    fraction_of_variance_unexplained,
    ghost_grad_loss,
    l1_penalty,
    squared_error,
)
from thumbsae.sae.sparse_ops import (
    SparseLatents,
    batch_topk_selection,
    sparse_decode,
    sparse_encode,
    threshold_selection,
    topk_selection,
)

if TYPE_CHECKING:
    from thumbsae.sae.model import SparseAutoencoder


class TrainStep(NamedTuple):
    """What a variant's forward pass computes (scaled space).

    x_hat_BD: reconstruction. acts_BK / indices_BK: the latents used (padding has act 0).
    fvu: centred FVU of the batch. mse: mean squared error (per the variant's normalisation).
    loss: the objective. terms: the variant's other loss terms, by name, as logged
    (`auxk_loss`, `l1_loss`, `ghost_loss`, `l0_loss`, ...). prefix_x_hat: reconstructions of
    nested prefixes of the dictionary, by prefix size (Matryoshka; empty otherwise).
    """

    x_hat_BD: Tensor
    acts_BK: Tensor
    indices_BK: Tensor
    fvu: Tensor
    mse: Tensor
    loss: Tensor
    terms: dict[str, Tensor]
    prefix_x_hat: dict[int, Tensor]


VARIANTS: dict[type[SAEConfig], type[Variant]] = {}


def variant_of(config_cls: type[SAEConfig]):
    """Class decorator: register the behaviour of configs of exactly `config_cls`."""

    def register(cls: type[Variant]) -> type[Variant]:
        VARIANTS[config_cls] = cls
        return cls

    return register


def variant_for(cfg: SAEConfig) -> Variant:
    """The behaviour object of `cfg`'s architecture."""
    try:
        return VARIANTS[type(cfg)](cfg)
    except KeyError:
        raise ThumbsaeError(f"no SAE behaviour registered for {type(cfg).__name__}") from None


class Variant:
    """Behaviour shared by the architectures; subclasses override what differs."""

    def __init__(self, cfg: Any):
        self.cfg = cfg

    def initial_weights(self, gen: torch.Generator, F: int, D: int) -> tuple[Tensor, Tensor]:
        """`(W_enc_FD, W_dec_FD)` before the decoder rows are normalised. Gao et al.: the encoder
        starts as the decoder's transpose (nn.Linear-sized rows)."""
        W_enc = (torch.rand(F, D, generator=gen) * 2 - 1) / math.sqrt(D)
        return W_enc, W_enc.clone()

    def add_state(self, sae: SparseAutoencoder) -> None:
        """Register parameters or buffers of the architecture's own on `sae` (flat names)."""

    def init_from_sample(self, sae: SparseAutoencoder, x_ND: Tensor) -> None:
        """Initialise the architecture's own state from scaled sample activations [N, D] (after
        `b_dec`); nothing by default."""

    def encode(self, sae: SparseAutoencoder, x_BD: Tensor) -> SparseLatents:
        """Inference latents of scaled input [B, D]."""
        raise NotImplementedError

    def forward(self, sae: SparseAutoencoder, x_BD: Tensor, dead_mask_F: Tensor | None, variance: Tensor) -> TrainStep:
        """One training (`sae.training`) or evaluation pass over scaled input [B, D]."""
        raise NotImplementedError

    def dead_mask(self, tokens_since_fired_F: Tensor, steps_since_fired_F: Tensor) -> Tensor | None:
        """Latents the auxiliary loss treats as dead in the next step (None: no such loss)."""
        return None

    def inference_form(self, sae: SparseAutoencoder) -> SparseAutoencoder:
        """The SAE as it runs at inference (`sae` itself unless the architecture says otherwise)."""
        return sae

    @staticmethod
    def _fvu_and_mse(x_BD: Tensor, x_hat_BD: Tensor, variance: Tensor, mse_norm: str = "none") -> tuple[Tensor, Tensor, Tensor]:
        err_BD = squared_error(x_BD, x_hat_BD, mse_norm)
        return fraction_of_variance_unexplained(x_BD, x_hat_BD, variance), err_BD.mean(), err_BD


@variant_of(TopKConfig)
class TopK(Variant):
    """Exactly `k` latents per row; AuxK (top `k_aux` dead latents reconstruct the residual)."""

    cfg: TopKConfig

    def selection(self, sae: SparseAutoencoder):
        """The training-time selection of pre-activations."""
        return topk_selection(self.cfg.k)

    def encode(self, sae, x_BD):
        acts, idx, _, _ = sparse_encode(x_BD, sae.b_dec, sae.W_enc, sae.b_enc, self.selection(sae))
        return SparseLatents(acts, idx)

    def dead_mask(self, tokens_since_fired_F, steps_since_fired_F):
        return tokens_since_fired_F >= self.cfg.dead_window_tokens if self.cfg.aux_coef > 0 else None

    def _latents_and_aux(self, sae, x_BD, dead_mask_F, variance, select):
        """Latents of `select`, the reconstruction, FVU / MSE and AuxK."""
        use_aux = dead_mask_F is not None and self.cfg.aux_coef > 0 and sae.training
        k_aux = self.cfg.aux_k
        acts_BK, idx_BK, aux_acts_BA, aux_idx_BA = sparse_encode(
            x_BD, sae.b_dec, sae.W_enc, sae.b_enc, select, dead_mask_F if use_aux else None, k_aux
        )
        x_hat_BD = sparse_decode(acts_BK, idx_BK, sae.W_dec) + sae.b_dec
        aux = x_BD.new_zeros(())
        if aux_idx_BA.shape[1] > 0:
            aux_recon = sparse_decode(aux_acts_BA, aux_idx_BA, sae.W_dec)
            aux = auxk_loss(x_BD - x_hat_BD, aux_recon, variance, int(dead_mask_F.sum()), k_aux)
        fvu, mse, _ = self._fvu_and_mse(x_BD, x_hat_BD, variance)
        return acts_BK, idx_BK, x_hat_BD, fvu, mse, aux

    def forward(self, sae, x_BD, dead_mask_F, variance):
        acts, idx, x_hat, fvu, mse, aux = self._latents_and_aux(sae, x_BD, dead_mask_F, variance, self.selection(sae))
        return TrainStep(x_hat, acts, idx, fvu, mse, fvu + self.cfg.aux_coef * aux, {"auxk_loss": aux}, {})


@variant_of(BatchTopKConfig)
class BatchTopK(TopK):
    """The batch's `B * k` largest pre-activations while training (and before a threshold
    exists); latents above the estimated `threshold` buffer in evaluation and inference."""

    cfg: BatchTopKConfig

    def add_state(self, sae):
        sae.register_buffer("threshold", torch.tensor(-1.0))  # < 0 until estimated

    def selection(self, sae):
        if sae.training or float(sae.threshold) < 0:
            return batch_topk_selection(self.cfg.k)
        return threshold_selection(float(sae.threshold))

    def encode(self, sae, x_BD):
        if float(sae.threshold) < 0:
            acts, idx, _, _ = sparse_encode(x_BD, sae.b_dec, sae.W_enc, sae.b_enc, batch_topk_selection(self.cfg.k))
            return SparseLatents(acts, idx)
        return threshold_latents(sae.pre_acts(x_BD), float(sae.threshold))

    def forward(self, sae, x_BD, dead_mask_F, variance):
        step = super().forward(sae, x_BD, dead_mask_F, variance)
        if sae.training:
            self.update_threshold(sae, step.acts_BK)
        return step

    @torch.no_grad()
    def update_threshold(self, sae, acts_BK: Tensor) -> None:
        """Moving average of the smallest selected activation of each batch (Bussmann et al.)."""
        positive = acts_BK[acts_BK > 0]
        if positive.numel() == 0:
            return
        smallest = positive.min().to(sae.threshold.dtype)
        if float(sae.threshold) < 0:
            sae.threshold.copy_(smallest)
        else:
            rate = self.cfg.threshold_ema
            sae.threshold.mul_(1 - rate).add_(rate * smallest)

    @torch.no_grad()
    def inference_form(self, sae):
        """A JumpReLU SAE with the same weights and the threshold on every latent: the same
        latents as this one's inference, in the form SAELens saves BatchTopK SAEs."""
        if float(sae.threshold) <= 0:
            raise ThumbsaeError(f"this {self.cfg.arch} SAE has no inference threshold yet (train it for at least one step)")
        shared = {f.name: getattr(self.cfg, f.name) for f in dataclasses.fields(SAEConfig) if f.name != "arch"}
        out = type(sae)(JumpReLUConfig(**shared)).to(sae.W_enc.device)
        for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
            getattr(out, name).copy_(getattr(sae, name))
        out.log_threshold.fill_(math.log(float(sae.threshold)))
        return out.train(sae.training)


@variant_of(MatryoshkaBatchTopKConfig)
class MatryoshkaBatchTopK(BatchTopK):
    """BatchTopK whose nested prefixes each reconstruct: loss = sum over prefix sizes m of the FVU
    of `b_dec + sum of the active latents below m` (the full dictionary included), + AuxK."""

    cfg: MatryoshkaBatchTopKConfig

    def forward(self, sae, x_BD, dead_mask_F, variance):
        acts, idx, x_hat, fvu, mse, aux = self._latents_and_aux(sae, x_BD, dead_mask_F, variance, self.selection(sae))
        if sae.training:
            self.update_threshold(sae, acts)
        prefix_x_hat: dict[int, Tensor] = {}
        loss = fvu
        for size in self.cfg.prefix_sizes[:-1]:
            # Entries of later latents decode as zeros: one embedding-bag per prefix.
            prefix_x_hat[size] = sparse_decode(acts * (idx < size), idx, sae.W_dec) + sae.b_dec
            loss = loss + fraction_of_variance_unexplained(x_BD, prefix_x_hat[size], variance)
        prefix_x_hat[self.cfg.prefix_sizes[-1]] = x_hat
        return TrainStep(x_hat, acts, idx, fvu, mse, loss + self.cfg.aux_coef * aux, {"auxk_loss": aux}, prefix_x_hat)


@variant_of(ReLUConfig)
class ReLU(Variant):
    """Every positive pre-activation (dense while training: the L1 and ghost grads need all
    latents); L1 penalty, optional MSE / input norm and ghost grads (the study's recipe)."""

    cfg: ReLUConfig

    def initial_weights(self, gen, F, D):
        # The study's init: independent Kaiming-uniform encoder and decoder (fan-in F and D).
        W_enc = (torch.rand(F, D, generator=gen) * 2 - 1) * math.sqrt(6 / F)
        W_dec = (torch.rand(F, D, generator=gen) * 2 - 1) * math.sqrt(6 / D)
        return W_enc, W_dec

    def encode(self, sae, x_BD):
        return threshold_latents(sae.pre_acts(x_BD), 0.0)

    def dead_mask(self, tokens_since_fired_F, steps_since_fired_F):
        return steps_since_fired_F > self.cfg.dead_window_steps if self.cfg.ghost_grads else None

    def forward(self, sae, x_BD, dead_mask_F, variance):
        cfg = self.cfg
        pre_BF = sae.pre_acts(x_BD)
        acts_BF = torch.relu(pre_BF)
        x_hat_BD = acts_BF @ sae.W_dec + sae.b_dec
        acts_BK, idx_BK = threshold_latents(acts_BF, 0.0)
        fvu, mse, err_BD = self._fvu_and_mse(x_BD, x_hat_BD, variance, cfg.mse_norm)
        l1 = cfg.l1_coef * l1_penalty(acts_BF)
        ghost = x_BD.new_zeros(())
        if cfg.ghost_grads and sae.training and dead_mask_F is not None and bool(dead_mask_F.any()):
            ghost = ghost_grad_loss(x_BD, x_hat_BD, pre_BF, dead_mask_F, sae.W_dec, err_BD)
        return TrainStep(x_hat_BD, acts_BK, idx_BK, fvu, mse, mse + l1 + ghost, {"l1_loss": l1, "ghost_loss": ghost}, {})


def _rectangle(u: Tensor) -> Tensor:
    """The rectangle kernel: 1 where |u| < 1/2, else 0."""
    return (u.abs() < 0.5).to(u.dtype)


class _JumpReLU(torch.autograd.Function):
    """`pre * H(pre - theta)`; d/dpre = H(pre - theta); d/dtheta = -(theta / eps) K((pre - theta) / eps)
    (Rajamanoharan et al. 2024, the straight-through estimator with kernel K)."""

    @staticmethod
    def forward(ctx, pre, theta, bandwidth):  # noqa: D102
        ctx.save_for_backward(pre, theta)
        ctx.bandwidth = bandwidth
        return torch.where(pre > theta, pre, torch.zeros_like(pre))

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        pre, theta = ctx.saved_tensors
        eps = ctx.bandwidth
        grad_pre = torch.where(pre > theta, grad, torch.zeros_like(grad))
        grad_theta = -(theta / eps) * _rectangle((pre - theta) / eps) * grad
        return grad_pre, grad_theta, None


class _Step(torch.autograd.Function):
    """`H(pre - theta)`; d/dtheta = -(1 / eps) K((pre - theta) / eps); no gradient to `pre`."""

    @staticmethod
    def forward(ctx, pre, theta, bandwidth):  # noqa: D102
        ctx.save_for_backward(pre, theta)
        ctx.bandwidth = bandwidth
        return (pre > theta).to(pre.dtype)

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        pre, theta = ctx.saved_tensors
        eps = ctx.bandwidth
        return None, -(1.0 / eps) * _rectangle((pre - theta) / eps) * grad, None


def jump_relu(pre: Tensor, theta: Tensor, bandwidth: float) -> Tensor:
    """JumpReLU of pre-activations with thresholds of the same shape (STE gradients to theta)."""
    return _JumpReLU.apply(pre, theta, float(bandwidth))


def heaviside_step(pre: Tensor, theta: Tensor, bandwidth: float) -> Tensor:
    """1 where `pre > theta` (STE gradient to theta only): the L0 of a JumpReLU, entry by entry."""
    return _Step.apply(pre, theta, float(bandwidth))


@variant_of(JumpReLUConfig)
class JumpReLU(Variant):
    """Latents above their own threshold `exp(log_threshold)` [F] (a parameter).

    Training selects, besides the active latents, those within half a bandwidth below their
    threshold: the kernel's support, where the thresholds' gradient comes from. Their activation
    is 0, but the decoder's gradient with respect to it is what the STE needs.
    """

    cfg: JumpReLUConfig

    def add_state(self, sae):
        F = sae.n_latents
        sae.log_threshold = torch.nn.Parameter(torch.full((F,), math.log(self.cfg.init_threshold)))

    def encode(self, sae, x_BD):
        return threshold_latents(sae.pre_acts(x_BD), sae.log_threshold.detach().exp())

    @torch.no_grad()
    def init_from_sample(self, sae, x_ND):
        """With `init_l0`: each latent's threshold at the `1 - init_l0 / F` quantile of its
        pre-activations on the sample, so every latent fires on that fraction of it (L0 about
        `init_l0`, none dead). Adam moves a log-threshold by about lr per step, so a constant
        start far from the right scale would take thousands of steps to leave."""
        if self.cfg.init_l0 is None:
            return
        pre_NF = sae.pre_acts(x_ND).float()
        q = 1.0 - self.cfg.init_l0 / sae.n_latents
        # torch.quantile takes at most 2^24 elements: columns in chunks.
        cols = max(1, 2**24 // max(pre_NF.shape[0], 1))
        theta_F = torch.cat([torch.quantile(pre_NF[:, i : i + cols], q, dim=0) for i in range(0, sae.n_latents, cols)])
        sae.log_threshold.copy_(theta_F.clamp_min(self.cfg.bandwidth / 2).log().to(sae.log_threshold.dtype))

    def forward(self, sae, x_BD, dead_mask_F, variance):
        cfg = self.cfg
        theta_F = sae.log_threshold.exp()
        if not sae.training:
            latents = self.encode(sae, x_BD)
            x_hat = sparse_decode(latents.acts_BK, latents.indices_BK, sae.W_dec) + sae.b_dec
            fvu, mse, _ = self._fvu_and_mse(x_BD, x_hat, variance)
            l0 = (latents.acts_BK > 0).sum(-1).to(x_BD.dtype)
            penalty = cfg.l0_coef * self.sparsity_penalty(l0)
            return TrainStep(x_hat, *latents, fvu, mse, fvu + penalty, {"l0_loss": penalty}, {})
        window = threshold_selection(theta_F.detach() - cfg.bandwidth / 2, fill=float("-inf"))
        pre_BN, idx_BN, _, _ = sparse_encode(x_BD, sae.b_dec, sae.W_enc, sae.b_enc, window, relu=False)
        theta_BN = theta_F[idx_BN]
        acts_BN = jump_relu(pre_BN, theta_BN, cfg.bandwidth)
        x_hat = sparse_decode(acts_BN, idx_BN, sae.W_dec) + sae.b_dec
        fvu, mse, _ = self._fvu_and_mse(x_BD, x_hat, variance)
        l0_B = heaviside_step(pre_BN, theta_BN, cfg.bandwidth).sum(-1)
        penalty = cfg.l0_coef * self.sparsity_penalty(l0_B)
        return TrainStep(x_hat, acts_BN, idx_BN, fvu, mse, fvu + penalty, {"l0_loss": penalty}, {})

    def sparsity_penalty(self, l0_B: Tensor) -> Tensor:
        """Mean over rows of L0, or of `2 / target * (L0 - target)^2` with `target_l0` set."""
        target = self.cfg.target_l0
        if target is None:
            return l0_B.mean()
        return (2.0 / target * (l0_B - target).pow(2)).mean()



def threshold_latents(pre_BF: Tensor, threshold: float | Tensor) -> SparseLatents:
    """Latents with pre-activation above `threshold` (>= 0; a scalar or one per latent [F]),
    per row padded with zeros."""
    return SparseLatents(*threshold_selection(threshold)(pre_BF))
