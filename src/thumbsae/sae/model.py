"""The sparse autoencoder: `encode` to sparse latents, `decode` them back, `forward` with losses.

    pre_BF  = (x_BD * input_scale - b_dec) @ W_enc_FD.T + b_enc
    latents = topk(pre) | batch-topk(pre) (threshold at inference) | relu(pre), then ReLU
    x_hat   = (sum_k acts_BK[:, k] * W_dec_FD[indices_BK[:, k]] + b_dec) / input_scale

Latents stay sparse end to end: `encode` returns `(acts_BK, indices_BK)` (zeros are padding for
relu and batchtopk), `decode` takes them. Raw activations go in and come out; the scaling by
`cfg.input_scale` happens inside. Shapes: B rows, D = d_in, F latents, K active per row.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor, nn

from thumbsae.sae.config import SAEConfig
from thumbsae.sae.objectives import (
    auxk_loss,
    fraction_of_variance_unexplained,
    ghost_grad_loss,
    l1_penalty,
    squared_error,
    total_variance,
)
from thumbsae.sae.sparse_ops import batch_topk_selection, pad_rows, sparse_decode, sparse_encode, topk_selection

# Weight of the newest batch in the BatchTopK inference threshold's moving average.
THRESHOLD_EMA = 0.01


class SparseLatents(NamedTuple):
    """Active latents of each row: values `acts_BK` (>= 0; 0 is padding) and `indices_BK` in [0, F)."""

    acts_BK: Tensor
    indices_BK: Tensor


class ForwardOutput(NamedTuple):
    """What one training forward pass computes (losses are scalars, in the scaled space).

    sae_out [B, D]: the reconstruction in raw (unscaled) units. latent_acts / latent_indices
    [B, K]: the active latents (relu and batchtopk: padded with zeros). fvu: centred FVU of the
    batch. auxk_loss: AuxK (0 without dead latents). l1_loss: `l1_coef` * mean L1. mse_loss: mean
    squared error (per `mse_norm`). ghost_loss: ghost-grad term (0 unless enabled). loss: the
    objective (`fvu + aux_coef * auxk + l1` for topk / batchtopk, `mse + l1 + ghost` for relu).
    """

    sae_out: Tensor
    latent_acts: Tensor
    latent_indices: Tensor
    fvu: Tensor
    auxk_loss: Tensor
    l1_loss: Tensor
    mse_loss: Tensor
    ghost_loss: Tensor
    loss: Tensor


class SparseAutoencoder(nn.Module):
    """A TopK, BatchTopK or ReLU sparse autoencoder built from an `SAEConfig`.

    Parameters: `W_enc` [F, D], `b_enc` [F], `W_dec` [F, D] (one row per latent), `b_dec` [D];
    batchtopk also has the buffer `threshold` (scalar; < 0 until estimated). The initial weights
    depend on `cfg.seed` alone, not on the global RNG.
    """

    def __init__(self, cfg: SAEConfig):
        super().__init__()
        self.cfg = cfg
        self.d_in = cfg.d_in
        self.n_latents = cfg.latents
        self.k_aux = cfg.aux_k
        F, D = self.n_latents, self.d_in
        gen = torch.Generator().manual_seed(int(cfg.seed))
        if cfg.arch == "relu":
            # The study's init: independent Kaiming-uniform encoder and decoder (fan-in F and D).
            W_enc = (torch.rand(F, D, generator=gen) * 2 - 1) * math.sqrt(6 / F)
            W_dec = (torch.rand(F, D, generator=gen) * 2 - 1) * math.sqrt(6 / D)
        else:
            # Gao et al.: the encoder starts as the decoder's transpose (nn.Linear-sized rows).
            W_enc = (torch.rand(F, D, generator=gen) * 2 - 1) / math.sqrt(D)
            W_dec = W_enc.clone()
        self.W_enc = nn.Parameter(W_enc)
        self.b_enc = nn.Parameter(torch.zeros(F))
        self.W_dec = nn.Parameter(W_dec / W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12))
        self.b_dec = nn.Parameter(torch.zeros(D))
        if cfg.arch == "batchtopk":
            self.register_buffer("threshold", torch.tensor(-1.0))

    # ---- encoding -----------------------------------------------------------------------------

    def _pre_acts(self, x_BD: Tensor) -> Tensor:
        """Dense pre-activations [B, F] of already-scaled input."""
        return torch.addmm(self.b_enc, x_BD - self.b_dec, self.W_enc.t())

    def _encode_scaled(self, x_BD: Tensor) -> SparseLatents:
        """Sparse latents of scaled input (inference semantics)."""
        if self.cfg.arch == "topk":
            acts, idx, _, _ = sparse_encode(x_BD, self.b_dec, self.W_enc, self.b_enc, topk_selection(self.cfg.k))
            return SparseLatents(acts, idx)
        if self.cfg.arch == "batchtopk" and float(self.threshold) < 0:
            acts, idx, _, _ = sparse_encode(x_BD, self.b_dec, self.W_enc, self.b_enc, batch_topk_selection(self.cfg.k))
            return SparseLatents(acts, idx)
        threshold = float(self.threshold) if self.cfg.arch == "batchtopk" else 0.0
        return _threshold_latents(self._pre_acts(x_BD), threshold)

    def encode(self, x_BD: Tensor) -> SparseLatents:
        """Raw activations [B, D] -> `SparseLatents(acts_BK, indices_BK)`.

        topk: exactly K = k per row. relu: every positive latent, rows padded with zeros to the
        batch's largest count. batchtopk: latents above the saved threshold (padded likewise);
        before a threshold exists, the batch's B*k largest.
        """
        return self._encode_scaled(x_BD * self.cfg.input_scale)

    def encode_dense(self, x_BD: Tensor) -> Tensor:
        """Raw activations [B, D] -> dense latent activations [B, F] (for small batches)."""
        acts_BK, idx_BK = self.encode(x_BD)
        return torch.zeros(x_BD.shape[0], self.n_latents, dtype=acts_BK.dtype, device=acts_BK.device).scatter_add(
            1, idx_BK, acts_BK
        )

    # ---- decoding -----------------------------------------------------------------------------

    def _decode_scaled(self, acts_BK: Tensor, indices_BK: Tensor) -> Tensor:
        return sparse_decode(acts_BK, indices_BK, self.W_dec) + self.b_dec

    def decode(self, acts_BK: Tensor, indices_BK: Tensor) -> Tensor:
        """Sparse latents `(acts_BK, indices_BK)` -> reconstruction [B, D] in raw units (an
        embedding-bag over the decoder rows, never a dense [B, F] x [F, D] matmul)."""
        return self._decode_scaled(acts_BK, indices_BK) / self.cfg.input_scale

    # ---- training forward ---------------------------------------------------------------------

    def forward(self, x_BD: Tensor, dead_mask: Tensor | None = None, *, prescaled: bool = False) -> ForwardOutput:
        """One training (or evaluation) pass over raw activations `x_BD` [B, D].

        dead_mask [F] bool: latents considered dead (AuxK for topk / batchtopk, ghost grads for
        relu with `ghost_grads`). `prescaled=True` when `x_BD` is already multiplied by
        `cfg.input_scale` (as the activation DataModule delivers it). In training mode batchtopk
        selects the batch's top B*k and updates its inference threshold; in eval mode it uses it.
        """
        cfg = self.cfg
        x = x_BD if prescaled else x_BD * cfg.input_scale
        x = x.to(self.W_enc.dtype) if not torch.is_autocast_enabled(x.device.type) else x
        variance = total_variance(x)
        zero = x.new_zeros(())
        aux = ghost = zero
        if cfg.arch == "relu":
            pre_BF = self._pre_acts(x)
            acts_BF = torch.relu(pre_BF)
            x_hat = acts_BF @ self.W_dec + self.b_dec
            acts_BK, idx_BK = _threshold_latents(acts_BF, 0.0)
            l1 = cfg.l1_coef * l1_penalty(acts_BF)
        else:
            if cfg.arch == "batchtopk" and (self.training or float(self.threshold) < 0):
                select = batch_topk_selection(cfg.k)
            elif cfg.arch == "batchtopk":
                select = _threshold_selection(float(self.threshold))
            else:
                select = topk_selection(cfg.k)
            use_aux = dead_mask is not None and cfg.aux_coef > 0 and self.training
            acts_BK, idx_BK, aux_acts_BA, aux_idx_BA = sparse_encode(
                x, self.b_dec, self.W_enc, self.b_enc, select, dead_mask if use_aux else None, self.k_aux
            )
            x_hat = sparse_decode(acts_BK, idx_BK, self.W_dec) + self.b_dec
            if aux_idx_BA.shape[1] > 0:
                aux_recon = sparse_decode(aux_acts_BA, aux_idx_BA, self.W_dec)
                aux = auxk_loss(x - x_hat, aux_recon, variance, int(dead_mask.sum()), self.k_aux)
            l1 = cfg.l1_coef * l1_penalty(acts_BK) if cfg.l1_coef > 0 else zero
            if cfg.arch == "batchtopk" and self.training:
                self._update_threshold(acts_BK)
        err_BD = squared_error(x, x_hat, cfg.mse_norm)
        mse = err_BD.mean()
        fvu = fraction_of_variance_unexplained(x, x_hat, variance)
        if cfg.arch == "relu":
            if cfg.ghost_grads and self.training and dead_mask is not None and bool(dead_mask.any()):
                ghost = ghost_grad_loss(x, x_hat, pre_BF, dead_mask, self.W_dec, err_BD)
            loss = mse + l1 + ghost
        else:
            loss = fvu + cfg.aux_coef * aux + l1
        return ForwardOutput(x_hat / cfg.input_scale, acts_BK, idx_BK, fvu, aux, l1, mse, ghost, loss)

    @torch.no_grad()
    def _update_threshold(self, acts_BK: Tensor) -> None:
        """Moving average of the smallest selected activation of each batch (Bussmann et al.)."""
        positive = acts_BK[acts_BK > 0]
        if positive.numel() == 0:
            return
        smallest = positive.min().to(self.threshold.dtype)
        if float(self.threshold) < 0:
            self.threshold.copy_(smallest)
        else:
            self.threshold.mul_(1 - THRESHOLD_EMA).add_(THRESHOLD_EMA * smallest)

    # ---- decoder constraints and initialisation -----------------------------------------------

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        """Rescale every decoder row to unit L2 norm."""
        self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp_min(torch.finfo(self.W_dec.dtype).eps))

    @torch.no_grad()
    def remove_parallel_decoder_grad(self) -> None:
        """Project each decoder row's gradient onto the row's orthogonal complement (rows have norm
        1), so an optimiser step moves directions rather than norms."""
        if self.W_dec.grad is None:
            return
        parallel_F1 = torch.linalg.vecdot(self.W_dec.grad, self.W_dec).unsqueeze(1)
        self.W_dec.grad.addcmul_(parallel_F1, self.W_dec, value=-1.0)

    @torch.no_grad()
    def init_b_dec(self, x_ND: Tensor, method: str | None = None, *, prescaled: bool = False) -> None:
        """Set `b_dec` from sample activations [N, D]: `mean`, `geometric_median` or `zeros`
        (default: `cfg.b_dec_init`)."""
        method = method or self.cfg.b_dec_init
        x = (x_ND if prescaled else x_ND * self.cfg.input_scale).to(torch.float64)
        if method == "zeros":
            value = torch.zeros_like(x[0])
        elif method == "mean":
            value = x.mean(0)
        else:
            value = geometric_median(x)
        self.b_dec.copy_(value.to(self.b_dec.dtype))


def geometric_median(x_ND: Tensor, *, max_iter: int = 100, tol: float = 1e-7) -> Tensor:
    """The point minimising the sum of Euclidean distances to the rows of `x_ND` [N, D]
    (Weiszfeld's algorithm, started at the mean; float64). Returns [D]."""
    x = x_ND.to(torch.float64)
    y = x.mean(0)
    for _ in range(max_iter):
        weights_N = 1.0 / (x - y).norm(dim=1).clamp_min(1e-12)
        y_next = (weights_N[:, None] * x).sum(0) / weights_N.sum()
        moved = (y_next - y).norm()
        y = y_next
        if moved <= tol * max(float(y.norm()), 1.0):
            break
    return y


def _threshold_latents(pre_BF: Tensor, threshold: float) -> SparseLatents:
    """Latents with pre-activation above `threshold` (>= 0), per row padded with zeros."""
    rows_N, cols_N = (pre_BF > threshold).nonzero(as_tuple=True)
    acts_BK, idx_BK = pad_rows(rows_N, cols_N, pre_BF[rows_N, cols_N], pre_BF.shape[0])
    return SparseLatents(acts_BK, idx_BK)


def _threshold_selection(threshold: float):
    """A `sparse_encode` selection keeping pre-activations above `threshold`."""

    def select(pre_BF: Tensor) -> tuple[Tensor, Tensor]:
        acts_BK, idx_BK = _threshold_latents(pre_BF, threshold)
        return acts_BK, idx_BK

    return select
