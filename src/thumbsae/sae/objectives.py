"""Training objectives of the SAEs, separate from the module that computes latents.

All inputs live in the SAE's scaled space (raw activations times `input_scale`). Shapes: B rows,
D model width, F latents.
"""

from __future__ import annotations

import torch
from torch import Tensor

# Keeps exp() of a dead latent's pre-activation finite (exp(80) ~ 5e34 < float32 max).
_GHOST_PRE_MAX = 80.0


def total_variance(x_BD: Tensor) -> Tensor:
    """Sum of squared deviations of the rows from their mean: the FVU denominator (scalar)."""
    return (x_BD - x_BD.mean(0)).pow(2).sum()


def fraction_of_variance_unexplained(x_BD: Tensor, x_hat_BD: Tensor, variance: Tensor | None = None) -> Tensor:
    """FVU = ||x - x_hat||^2 / sum_b ||x_b - mean(x)||^2 over the batch (centred; scalar)."""
    variance = total_variance(x_BD) if variance is None else variance
    return (x_BD - x_hat_BD).pow(2).sum() / variance.clamp_min(torch.finfo(variance.dtype).tiny)


def squared_error(x_BD: Tensor, x_hat_BD: Tensor, mse_norm: str) -> Tensor:
    """Element-wise squared error [B, D]; with `input_norm` each row is divided by ||x_b|| (the
    study's "MSE divided by the input's L2 norm", not its square)."""
    err_BD = (x_hat_BD - x_BD).pow(2)
    if mse_norm == "input_norm":
        err_BD = err_BD / x_BD.pow(2).sum(-1, keepdim=True).sqrt()
    return err_BD


def l1_penalty(acts: Tensor) -> Tensor:
    """Mean over rows of the L1 norm of the latent activations ([B, F] dense or [B, K] sparse)."""
    return acts.abs().sum(-1).mean()


def auxk_loss(residual_BD: Tensor, aux_recon_BD: Tensor, variance: Tensor, n_dead: int, k_aux: int) -> Tensor:
    """AuxK (Gao et al. 2024, appendix A.2): how well the top-`k_aux` dead latents reconstruct the
    residual `x - x_hat` (detached), as a fraction of the batch's variance, scaled down by
    `n_dead / k_aux` when fewer latents are dead than `k_aux` (as sparsify does)."""
    scale = min(n_dead / max(k_aux, 1), 1.0)
    err = (aux_recon_BD - residual_BD.detach()).pow(2).sum()
    return scale * err / variance.clamp_min(torch.finfo(variance.dtype).tiny)


def ghost_grad_loss(
    x_BD: Tensor,
    x_hat_BD: Tensor,
    pre_BF: Tensor,
    dead_mask_F: Tensor,
    W_dec_FD: Tensor,
    err_BD: Tensor,
) -> Tensor:
    """Ghost grads as in Hugo Fry's ViT SAE code (SAELens' early implementation), scalar.

    The dead latents' `exp(pre)` decode a "ghost" reconstruction, rescaled per row to half the
    residual's norm; its squared error to the (detached) residual, divided by the residual's norm,
    is rescaled element-wise so its value equals the main reconstruction error `err_BD`: only its
    gradient matters, and it reaches the dead latents' encoder and decoder rows.
    """
    residual_BD = x_BD - x_hat_BD
    ghost_acts_BA = torch.exp(pre_BF[:, dead_mask_F].clamp_max(_GHOST_PRE_MAX))
    ghost_BD = ghost_acts_BA @ W_dec_FD[dead_mask_F]
    scale_B = residual_BD.norm(dim=-1) / (1e-6 + ghost_BD.norm(dim=-1) * 2)
    ghost_BD = ghost_BD * scale_B[:, None].detach()
    residual_BD = residual_BD.detach()
    ghost_err_BD = (ghost_BD - residual_BD).pow(2) / residual_BD.pow(2).sum(-1, keepdim=True).sqrt()
    rescale_BD = (err_BD / (ghost_err_BD + 1e-6)).detach()
    return (rescale_BD * ghost_err_BD).mean()
