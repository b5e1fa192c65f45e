"""The two sparse products an SAE needs, with backward passes that touch only the selected latents.

- `sparse_encode`: `pre_BF = (x_BD - b_dec_D) @ W_enc_FD.T + b_enc_F`, then a selection (per-row
  top-k, batch top-k, ...) and ReLU. The forward costs one dense matmul (~2*F*D FLOPs per row);
  the backward builds grad W_enc / b_enc / b_dec from the selected entries only (~4*(K+A)*D FLOPs
  per row), instead of the dense backward's two more [B, F] x [F, D] matmuls. AuxK entries (the
  top `k_aux` pre-activations among dead latents) are selected in the same forward and their
  gradient reaches the encoder rows of those dead latents (sparsify's fused encoder drops it).
- `sparse_decode`: `x_hat_BD = sum_k acts_BK[:, k] * W_dec_FD[indices_BK[:, k]]` (embedding-bag).

`latent_outer_sum(indices_BK, values_BK, y_BD, F)` is the shared kernel of both backwards:
`out_FD[f] = sum over (b, k) with indices[b, k] == f of values[b, k] * y[b]`, i.e. `S.T @ y` for the
[B, F] sparse matrix S. On CPU it is scipy's compiled CSC x dense product (no [B*K, D]
intermediate, unlike `index_add_` on materialised rows); on accelerators it is `index_add_`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import scipy.sparse
import torch
import torch.nn.functional as F
from torch import Tensor

# A selection maps pre-activations [B, F] to (values [B, K], indices [B, K]) of chosen entries.
Selection = Callable[[Tensor], tuple[Tensor, Tensor]]


class SparseLatents(NamedTuple):
    """Active latents of each row: values `acts_BK` (>= 0; 0 is padding) and `indices_BK` in [0, F)."""

    acts_BK: Tensor
    indices_BK: Tensor

# Elements of the accelerator index_add_'s [rows*K, D] intermediate per chunk (256 MiB in float32).
_ADD_CHUNK_ELEMENTS = 2**26
# Pre-activation elements per chunk of a row-wise encoder selection (256 MiB in float32).
_CHUNK_ELEMENTS = 2**26


def latent_outer_sum(indices_BK: Tensor, values_BK: Tensor, y_BD: Tensor, n_latents: int) -> Tensor:
    """`out_FD = S.T @ y_BD` where S is the [B, F] matrix with `values_BK` at `indices_BK`.

    Duplicate indices add up. Returns float32 on CPU (the caller casts), y's dtype elsewhere.
    """
    if indices_BK.numel() == 0:
        return y_BD.new_zeros(n_latents, y_BD.shape[1])
    if y_BD.device.type == "cpu":
        return outer_sum_scipy(indices_BK, values_BK, y_BD, n_latents)
    return outer_sum_index_add(indices_BK, values_BK, y_BD, n_latents)


def outer_sum_scipy(indices_BK: Tensor, values_BK: Tensor, y_BD: Tensor, n_latents: int) -> Tensor:
    """CPU `latent_outer_sum`: scipy's compiled CSC x dense loop, float32."""
    B, K = indices_BK.shape
    # Column b of S.T holds row b's K entries, so indptr is 0, K, 2K, ... and no sort is needed.
    s_FB = scipy.sparse.csc_matrix(
        (
            values_BK.detach().to(torch.float32).contiguous().numpy().ravel(),
            indices_BK.detach().to(torch.int64).contiguous().numpy().ravel(),
            np.arange(0, B * K + 1, K, dtype=np.int64),
        ),
        shape=(n_latents, B),
    )
    y = y_BD.detach().to(torch.float32).contiguous().numpy()
    return torch.from_numpy(np.ascontiguousarray(s_FB @ y))


def outer_sum_index_add(indices_BK: Tensor, values_BK: Tensor, y_BD: Tensor, n_latents: int) -> Tensor:
    """Accelerator `latent_outer_sum`: `index_add_` of value-weighted rows, in row chunks."""
    B, K = indices_BK.shape
    D = y_BD.shape[1]
    out_FD = y_BD.new_zeros(n_latents, D)
    rows = max(1, _ADD_CHUNK_ELEMENTS // (K * D))
    for start in range(0, B, rows):
        stop = start + rows
        rows_BKD = values_BK[start:stop, :, None].to(y_BD.dtype) * y_BD[start:stop, None, :]
        out_FD.index_add_(0, indices_BK[start:stop].reshape(-1), rows_BKD.reshape(-1, D))
    return out_FD


def rowwise_gather_dot(indices_BK: Tensor, weight_FD: Tensor, y_BD: Tensor) -> Tensor:
    """`out_BK[b, k] = weight_FD[indices_BK[b, k]] . y_BD[b]` without a [B, K, D] intermediate."""
    B, K = indices_BK.shape
    if K == 0 or B == 0:
        return y_BD.new_zeros(B, K)
    offsets = torch.arange(0, B * K, K, device=y_BD.device)
    bag_of_entry = torch.arange(B, device=y_BD.device).repeat_interleave(K)
    # The per-sample-weight gradient kernel of embedding_bag is exactly this sampled product.
    out = torch.ops.aten._embedding_bag_per_sample_weights_backward(
        y_BD.to(weight_FD.dtype).contiguous(), weight_FD.contiguous(), indices_BK.reshape(-1), offsets, bag_of_entry, 0, -1
    )
    return out.view(B, K)


class _SparseEncode(torch.autograd.Function):
    """pre = (x - b_dec) W_enc^T + b_enc; selected entries (+ AuxK entries) through ReLU (or raw)."""

    @staticmethod
    def forward(ctx, x_BD, b_dec_D, W_enc_FD, b_enc_F, select, dead_mask_F, k_aux, relu):  # noqa: D102
        x_in_BD = x_BD - b_dec_D.to(x_BD.dtype)
        device = x_in_BD.device.type
        # Under autocast, cast the weights once rather than once per row chunk.
        mm_dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x_in_BD.dtype
        weight_DF = W_enc_FD.to(mm_dtype).t()
        bias_F = b_enc_F.to(mm_dtype)
        x_mm_BD = x_in_BD.to(mm_dtype)
        B, n = x_in_BD.shape[0], W_enc_FD.shape[0]
        dead_A = dead_mask_F.nonzero().squeeze(1) if dead_mask_F is not None and k_aux > 0 else None
        if dead_A is not None and dead_A.numel() == 0:
            dead_A = None
        # Row-wise selections run on row chunks: a bounded [rows, F] buffer instead of [B, F].
        n_chunks = -(-B * n // _CHUNK_ELEMENTS) if getattr(select, "rowwise", False) else 1
        rows = max(1, -(-B // max(n_chunks, 1)))  # even chunks, no tiny trailing one
        parts: list[tuple[Tensor, Tensor, Tensor, Tensor]] = []
        for start in range(0, max(B, 1), rows):
            pre_RF = torch.addmm(bias_F, x_mm_BD[start : start + rows], weight_DF)
            vals, idx = select(pre_RF)
            if dead_A is not None:
                aux_vals, local = pre_RF.index_select(1, dead_A).topk(min(k_aux, dead_A.numel()), dim=1, sorted=False)
                aux_idx = dead_A[local]
            else:
                aux_vals, aux_idx = pre_RF.new_zeros(pre_RF.shape[0], 0), idx.new_zeros(pre_RF.shape[0], 0)
            parts.append((vals, idx, aux_vals, aux_idx))
            del pre_RF
        if len({part[0].shape[1] for part in parts}) > 1:
            # Threshold selections give each chunk its own width: pad all to the widest.
            width, fill = max(part[0].shape[1] for part in parts), float(getattr(select, "fill", 0.0))
            parts = [
                (F.pad(v, (0, width - v.shape[1]), value=fill), F.pad(i, (0, width - i.shape[1])), av, ai)
                for v, i, av, ai in parts
            ]
        vals_BK, idx_BK, aux_vals_BA, aux_idx_BA = (torch.cat(t) for t in zip(*parts))
        acts_BK = vals_BK.clamp_min(0) if relu else vals_BK
        aux_acts_BA = aux_vals_BA.clamp_min(0)
        # ReLU passes the gradient only where the selected pre-activation was positive; raw values
        # pass it wherever an entry was selected (padding is -inf there).
        active_BK = acts_BK > 0 if relu else torch.isfinite(acts_BK)
        ctx.save_for_backward(x_in_BD, W_enc_FD, torch.cat([idx_BK, aux_idx_BA], 1), torch.cat([active_BK, aux_acts_BA > 0], 1))
        ctx.n_latents = n
        ctx.mark_non_differentiable(idx_BK, aux_idx_BA)
        return acts_BK, idx_BK, aux_acts_BA, aux_idx_BA

    @staticmethod
    def backward(ctx, grad_acts_BK, _grad_idx, grad_aux_BA, _grad_aux_idx):  # noqa: D102
        x_in_BD, W_enc_FD, idx_BN, active_BN = ctx.saved_tensors
        g_BN = torch.where(active_BN, torch.cat([grad_acts_BK, grad_aux_BA.to(grad_acts_BK.dtype)], 1), 0.0)
        g_BN = g_BN.to(torch.float32)
        grad_x = grad_b_dec = grad_W = grad_b_enc = None
        grad_b_enc_F = torch.zeros(ctx.n_latents, dtype=torch.float32, device=g_BN.device)
        grad_b_enc_F.index_add_(0, idx_BN.reshape(-1), g_BN.reshape(-1))
        if ctx.needs_input_grad[2]:
            grad_W = latent_outer_sum(idx_BN, g_BN, x_in_BD, ctx.n_latents).to(W_enc_FD.dtype).to(W_enc_FD.device)
        if ctx.needs_input_grad[3]:
            grad_b_enc = grad_b_enc_F.to(W_enc_FD.dtype)
        if ctx.needs_input_grad[1]:
            # d pre[b, f] / d b_dec = -W_enc[f] for every row, so the sum over rows is one mat-vec.
            grad_b_dec = -(grad_b_enc_F.to(W_enc_FD.dtype) @ W_enc_FD)
        if ctx.needs_input_grad[0]:
            grad_x = F.embedding_bag(idx_BN, W_enc_FD, per_sample_weights=g_BN.to(W_enc_FD.dtype), mode="sum")
        return grad_x, grad_b_dec, grad_W, grad_b_enc, None, None, None, None


def sparse_encode(
    x_BD: Tensor,
    b_dec_D: Tensor,
    W_enc_FD: Tensor,
    b_enc_F: Tensor,
    select: Selection,
    dead_mask_F: Tensor | None = None,
    k_aux: int = 0,
    *,
    relu: bool = True,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Encode with a sparse backward.

    x_BD [B, D], b_dec_D [D], W_enc_FD [F, D], b_enc_F [F]; `select(pre_BF) -> (values_BK,
    indices_BK)`; dead_mask_F [F] bool (AuxK candidates) with `k_aux` entries per row.
    Returns `(acts_BK, indices_BK, aux_acts_BA, aux_indices_BA)`, acts after ReLU; A = 0 when no
    latent is dead. Gradients flow to b_dec, W_enc, b_enc (and x if it requires grad) from the
    K + A selected entries of each row. `relu=False` returns the selected pre-activations as
    they are (for an activation applied afterwards, like JumpReLU); the selection then pads
    with -inf, and the gradient flows through every finite entry.
    """
    return _SparseEncode.apply(x_BD, b_dec_D, W_enc_FD, b_enc_F, select, dead_mask_F, int(k_aux), bool(relu))


class _SparseDecode(torch.autograd.Function):
    """x_hat[b] = sum_k acts[b, k] W_dec[indices[b, k]]."""

    @staticmethod
    def forward(ctx, acts_BK, indices_BK, W_dec_FD):  # noqa: D102
        ctx.save_for_backward(acts_BK, indices_BK, W_dec_FD)
        return F.embedding_bag(indices_BK, W_dec_FD, per_sample_weights=acts_BK.to(W_dec_FD.dtype), mode="sum")

    @staticmethod
    def backward(ctx, grad_BD):  # noqa: D102
        acts_BK, indices_BK, W_dec_FD = ctx.saved_tensors
        grad_acts = grad_W = None
        if ctx.needs_input_grad[0]:
            grad_acts = rowwise_gather_dot(indices_BK, W_dec_FD, grad_BD).to(acts_BK.dtype)
        if ctx.needs_input_grad[2]:
            grad_W = latent_outer_sum(indices_BK, acts_BK, grad_BD, W_dec_FD.shape[0]).to(W_dec_FD.dtype).to(W_dec_FD.device)
        return grad_acts, None, grad_W


def sparse_decode(acts_BK: Tensor, indices_BK: Tensor, W_dec_FD: Tensor) -> Tensor:
    """`x_hat_BD[b] = sum_k acts_BK[b, k] * W_dec_FD[indices_BK[b, k]]` (no bias), sparse both ways.

    Padding entries (act 0) contribute nothing. Gradients reach `acts_BK` and `W_dec_FD` only.
    """
    return _SparseDecode.apply(acts_BK, indices_BK, W_dec_FD)


class topk_selection:  # noqa: N801 (used like a function: topk_selection(k))
    """Per-row top-k of the pre-activations (Gao et al. 2024); row-wise, so encoders may chunk rows."""

    rowwise = True

    def __init__(self, k: int):
        self.k = int(k)

    def __call__(self, pre_BF: Tensor) -> tuple[Tensor, Tensor]:
        return pre_BF.topk(self.k, dim=1, sorted=False)


class batch_topk_selection:  # noqa: N801
    """The B*k largest positive pre-activations of the whole batch (Bussmann et al. 2024),
    returned per row padded with zeros to the batch's largest row count (index 0, value 0)."""

    rowwise = False
    # Each row's candidates: this many times k (most rows hold fewer of the batch's B*k largest).
    CANDIDATES = 4

    def __init__(self, k: int):
        self.k = int(k)

    def __call__(self, pre_BF: Tensor) -> tuple[Tensor, Tensor]:
        B, n = pre_BF.shape
        total = min(self.k * B, B * n)
        found = self._from_row_candidates(pre_BF, total)
        vals_N, flat_N = found if found is not None else pre_BF.reshape(-1).topk(total, sorted=False)
        keep = vals_N > 0
        flat_N, vals_N = flat_N[keep], vals_N[keep]
        order = torch.argsort(flat_N)  # row-major order, as pad_rows needs
        return pad_rows(flat_N[order] // n, flat_N[order] % n, vals_N[order], B)

    def _from_row_candidates(self, pre_BF: Tensor, total: int) -> tuple[Tensor, Tensor] | None:
        """The batch's `total` largest entries `(values_N, flat_indices_N)`, found from each row's
        `CANDIDATES * k` largest (a topk over all B * F elements costs several times more).

        The `total`-th largest candidate t is at most the true `total`-th largest entry. When no
        row has all its candidates >= t, every entry >= t is a candidate; otherwise (a crowded
        row, common early in training) the entries >= t of the whole batch, a superset of the
        answer, are ranked. None when rows are too short for candidates to save anything.
        """
        B, n = pre_BF.shape
        per_row = self.CANDIDATES * self.k
        if per_row >= n:
            return None
        cand_vals_BC, cand_idx_BC = pre_BF.topk(per_row, dim=1, sorted=False)
        vals_N, pos_N = cand_vals_BC.reshape(-1).topk(total, sorted=False)
        floor = vals_N.min()
        if not bool((cand_vals_BC.min(dim=1).values >= floor).any()):
            rows_N = torch.div(pos_N, per_row, rounding_mode="floor")
            return vals_N, rows_N * n + cand_idx_BC.reshape(-1)[pos_N]
        rows_M, cols_M = (pre_BF >= floor).nonzero(as_tuple=True)
        vals_N, pick_N = pre_BF[rows_M, cols_M].topk(total, sorted=False)
        return vals_N, rows_M[pick_N] * n + cols_M[pick_N]


def pad_rows(
    rows_N: Tensor, cols_N: Tensor, vals_N: Tensor, n_rows: int, fill: float = 0.0
) -> tuple[Tensor, Tensor]:
    """Scatter entries (row, col, value), sorted by row, into per-row padded `(values_BK, indices_BK)`.

    Entries keep their order within a row; K is the largest row count (at least 1); padding has
    value `fill` and index 0. Values stay differentiable.
    """
    counts_B = torch.bincount(rows_N, minlength=n_rows)
    K = max(int(counts_B.max()) if counts_B.numel() else 0, 1)
    starts_B = torch.cumsum(counts_B, 0) - counts_B
    pos_N = torch.arange(rows_N.numel(), device=rows_N.device) - starts_B[rows_N]
    values_BK = vals_N.new_full((n_rows, K), fill).index_put((rows_N, pos_N), vals_N)
    indices_BK = cols_N.new_zeros(n_rows, K).index_put((rows_N, pos_N), cols_N)
    return values_BK, indices_BK


class threshold_selection:  # noqa: N801
    """Pre-activations above a threshold (a scalar, or one per latent `[F]`), per row padded to the
    batch's largest row count with `fill` (0 for latents, -inf for raw pre-activations)."""

    rowwise = True

    def __init__(self, threshold: float | Tensor, fill: float = 0.0):
        self.threshold, self.fill = threshold, float(fill)

    def __call__(self, pre_BF: Tensor) -> tuple[Tensor, Tensor]:
        threshold = self.threshold
        if isinstance(threshold, Tensor):
            threshold = threshold.to(device=pre_BF.device, dtype=pre_BF.dtype)
        rows_N, cols_N = (pre_BF > threshold).nonzero(as_tuple=True)
        return pad_rows(rows_N, cols_N, pre_BF[rows_N, cols_N], pre_BF.shape[0], self.fill)
