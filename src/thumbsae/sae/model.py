"""The sparse autoencoder: `encode` to sparse latents, `decode` them back, `forward` with losses.

    pre_BF  = (x_BD * input_scale - b_dec) @ W_enc_FD.T + b_enc
    latents = the architecture's selection of pre (`thumbsae.sae.variants`)
    x_hat   = (sum_k acts_BK[:, k] * W_dec_FD[indices_BK[:, k]] + b_dec) / input_scale

Latents stay sparse end to end: `encode` returns `(acts_BK, indices_BK)` (zeros are padding
where rows hold different numbers of latents), `decode` takes them. Raw activations go in and
come out; the scaling by `cfg.input_scale` happens inside. Shapes: B rows, D = d_in, F latents,
K active per row.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from thumbsae.sae.config import SAEConfig
from thumbsae.sae.objectives import total_variance
from thumbsae.sae.sparse_ops import SparseLatents, sparse_decode
from thumbsae.sae.variants import variant_for

__all__ = ["ForwardOutput", "SparseAutoencoder", "SparseLatents", "geometric_median"]


class ForwardOutput(NamedTuple):
    """What one training (or evaluation) forward pass computes (losses are scalars, scaled space).

    sae_out [B, D]: the reconstruction in raw (unscaled) units. latent_acts / latent_indices
    [B, K]: the active latents (padded with zeros where rows differ in count). fvu: centred FVU
    of the batch. mse_loss: mean squared error (ReLU: per its `mse_norm`). loss: the
    architecture's objective. terms: its other loss terms by name (`auxk_loss` for the TopK
    family, `l1_loss` and `ghost_loss` for ReLU, `l0_loss` for JumpReLU). prefix_sae_out: raw
    reconstructions from nested prefixes of the dictionary by prefix size (Matryoshka only).
    """

    sae_out: Tensor
    latent_acts: Tensor
    latent_indices: Tensor
    fvu: Tensor
    mse_loss: Tensor
    loss: Tensor
    terms: dict[str, Tensor]
    prefix_sae_out: dict[int, Tensor]


class SparseAutoencoder(nn.Module):
    """A sparse autoencoder of the architecture `cfg` is a config of (`TopKConfig`, ...).

    Parameters: `W_enc` [F, D], `b_enc` [F], `W_dec` [F, D] (one row per latent), `b_dec` [D],
    plus the architecture's own (BatchTopK / Matryoshka: buffer `threshold`, a scalar < 0 until
    estimated; JumpReLU: parameter `log_threshold` [F]). `self.variant` holds the behaviour of
    the architecture, picked once here. The initial weights depend on `cfg.seed` alone, not on
    the global RNG.
    """

    def __init__(self, cfg: SAEConfig):
        super().__init__()
        self.cfg = cfg
        self.variant = variant_for(cfg)
        self.d_in = cfg.d_in
        self.n_latents = cfg.latents
        F, D = self.n_latents, self.d_in
        W_enc, W_dec = self.variant.initial_weights(torch.Generator().manual_seed(int(cfg.seed)), F, D)
        self.W_enc = nn.Parameter(W_enc)
        self.b_enc = nn.Parameter(torch.zeros(F))
        self.W_dec = nn.Parameter(W_dec / W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12))
        self.b_dec = nn.Parameter(torch.zeros(D))
        self.variant.add_state(self)

    # ---- encoding -----------------------------------------------------------------------------

    def pre_acts(self, x_BD: Tensor) -> Tensor:
        """Dense pre-activations [B, F] of already-scaled input."""
        return torch.addmm(self.b_enc, x_BD - self.b_dec, self.W_enc.t())

    def encode(self, x_BD: Tensor) -> SparseLatents:
        """Raw activations [B, D] -> `SparseLatents(acts_BK, indices_BK)`.

        topk: exactly K = k per row. relu: every positive latent; jumprelu: every latent above
        its threshold; batchtopk / matryoshka: latents above the saved threshold (before one
        exists, the batch's B*k largest). Rows are padded with zeros to the batch's largest count.
        """
        return self.variant.encode(self, x_BD * self.cfg.input_scale)

    def encode_dense(self, x_BD: Tensor) -> Tensor:
        """Raw activations [B, D] -> dense latent activations [B, F] (for small batches)."""
        acts_BK, idx_BK = self.encode(x_BD)
        return torch.zeros(x_BD.shape[0], self.n_latents, dtype=acts_BK.dtype, device=acts_BK.device).scatter_add(
            1, idx_BK, acts_BK
        )

    # ---- decoding -----------------------------------------------------------------------------

    def decode(self, acts_BK: Tensor, indices_BK: Tensor) -> Tensor:
        """Sparse latents `(acts_BK, indices_BK)` -> reconstruction [B, D] in raw units (an
        embedding-bag over the decoder rows, never a dense [B, F] x [F, D] matmul)."""
        return (sparse_decode(acts_BK, indices_BK, self.W_dec) + self.b_dec) / self.cfg.input_scale

    # ---- training forward ---------------------------------------------------------------------

    def forward(self, x_BD: Tensor, dead_mask: Tensor | None = None, *, prescaled: bool = False) -> ForwardOutput:
        """One training (or evaluation) pass over raw activations `x_BD` [B, D].

        dead_mask [F] bool: latents the architecture's auxiliary loss treats as dead (AuxK for
        the TopK family, ghost grads for ReLU with `ghost_grads`). `prescaled=True` when `x_BD` is
        already multiplied by `cfg.input_scale` (as the activation DataModule delivers it). In
        training mode batchtopk selects the batch's top B*k and updates its inference threshold;
        in eval mode it uses it.
        """
        scale = self.cfg.input_scale
        x = x_BD if prescaled else x_BD * scale
        x = x.to(self.W_enc.dtype) if not torch.is_autocast_enabled(x.device.type) else x
        step = self.variant.forward(self, x, dead_mask, total_variance(x))
        prefixes = {size: x_hat / scale for size, x_hat in step.prefix_x_hat.items()}
        return ForwardOutput(
            step.x_hat_BD / scale, step.acts_BK, step.indices_BK, step.fvu, step.mse, step.loss, step.terms, prefixes
        )

    def dead_mask(self, tokens_since_fired_F: Tensor, steps_since_fired_F: Tensor) -> Tensor | None:
        """Latents the architecture's auxiliary loss treats as dead given how long each has not
        fired (in tokens and in steps); None when it has no such loss."""
        return self.variant.dead_mask(tokens_since_fired_F, steps_since_fired_F)

    @torch.no_grad()
    def inference_form(self) -> SparseAutoencoder:
        """The SAE as it runs at inference: for BatchTopK and Matryoshka a JumpReLU with the same
        weights and their threshold on every latent (as SAELens saves them); itself otherwise."""
        return self.variant.inference_form(self)

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
    def init_from_sample(self, x_ND: Tensor, *, prescaled: bool = False) -> None:
        """Data-dependent initialisation from sample activations [N, D]: `b_dec` per
        `cfg.b_dec_init`, then the architecture's own (JumpReLU with `init_l0`: its thresholds)."""
        self.init_b_dec(x_ND, prescaled=prescaled)
        x = x_ND if prescaled else x_ND * self.cfg.input_scale
        self.variant.init_from_sample(self, x.to(self.W_enc.dtype))

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

