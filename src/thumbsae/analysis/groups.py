"""Feature groups: for every SAE feature, its highest-activating thumbnails.

A feature's group is its `group_size` thumbnails with the highest activation (ties broken by row
order, earlier row first). The feature qualifies when its `group_size`-th highest activation is
above `threshold` (the study: 400 thumbnails, 0.05). One member is held out (the top-1, or a
seeded random member); the group statistic is computed on the others.

The selection is vectorised over all features: the CSC entries above the threshold of the
features that can qualify are ordered by one 64-bit key (feature, then activation descending), so
524,288 x 65,536 latents with 32 non-zeros per row take seconds and memory grows with the
non-zeros only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import scipy.sparse as sp

from thumbsae.errors import ThumbsaeError

HeldoutRule = Literal["top1", "random"]


@dataclass(frozen=True)
class FeatureGroups:
    """The qualifying features' groups, in ascending feature order.

    features_G: int64 `[G]` feature (latent) index of each qualifying feature.
    members_GM: int64 `[G, M]` thumbnail rows of each group, highest activation first
        (`M` = group_size, the held-out member included).
    acts_GM: float32 `[G, M]` their activations.
    heldout_G: int64 `[G]` position of the held-out member inside `members_GM[g]`.
    n_active_F: int64 `[F]` thumbnails with a non-zero activation, for every feature.
    """

    features_G: np.ndarray
    members_GM: np.ndarray
    acts_GM: np.ndarray
    heldout_G: np.ndarray
    n_active_F: np.ndarray

    @property
    def n_groups(self) -> int:
        return int(self.features_G.shape[0])

    @property
    def group_size(self) -> int:
        return int(self.members_GM.shape[1])

    @property
    def n_features(self) -> int:
        return int(self.n_active_F.shape[0])

    @property
    def heldout_rows_G(self) -> np.ndarray:
        """int64 `[G]` thumbnail row of each group's held-out member."""
        return self.members_GM[np.arange(self.n_groups), self.heldout_G]

    def subset(self, keep_G: np.ndarray) -> "FeatureGroups":
        """The groups where the bool `[G]` mask `keep_G` is true (every latent's n_active kept)."""
        keep_G = np.asarray(keep_G, dtype=bool)
        return FeatureGroups(
            features_G=self.features_G[keep_G],
            members_GM=self.members_GM[keep_G],
            acts_GM=self.acts_GM[keep_G],
            heldout_G=self.heldout_G[keep_G],
            n_active_F=self.n_active_F,
        )

    def others(self) -> np.ndarray:
        """int64 `[G, M-1]` member rows without the held-out one, in activation order."""
        g, m = self.members_GM.shape
        # Column j of the result skips the held-out position: j < h keeps j, j >= h takes j + 1.
        cols_GK = np.arange(m - 1)[None, :] + (np.arange(m - 1)[None, :] >= self.heldout_G[:, None])
        return np.take_along_axis(self.members_GM, cols_GK, axis=1)


def _check_latents(latents: sp.spmatrix) -> sp.csc_matrix:
    """CSC float32 copy of `latents`, with a clear error for negative or non-finite values."""
    if not sp.issparse(latents):
        raise ThumbsaeError(f"latents: expected a scipy.sparse matrix, got {type(latents).__name__}")
    csc = sp.csc_matrix(latents, dtype=np.float32)
    csc.sum_duplicates()  # also sorts the row indices within every column
    if csc.nnz and not np.isfinite(csc.data).all():
        raise ThumbsaeError("latents: contain NaN or infinite values")
    if csc.nnz and csc.data.min() < 0:
        raise ThumbsaeError(
            f"latents: contain negative values (min {csc.data.min():.4g}); expected post-activation latents"
        )
    return csc


def _occurrence_in_run(keys_E: np.ndarray) -> np.ndarray:
    """int64 `[E]`: how many earlier entries share each entry's key (0 for the first)."""
    order_E = np.argsort(keys_E, kind="stable")
    sorted_keys = keys_E[order_E]
    starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
    run_start_E = np.repeat(starts, np.diff(np.r_[starts, sorted_keys.shape[0]]))
    occ_E = np.empty_like(order_E)
    occ_E[order_E] = np.arange(order_E.shape[0]) - run_start_E
    return occ_E


def choose_heldout(n_groups: int, group_size: int, rule: HeldoutRule, seed: int) -> np.ndarray:
    """int64 `[n_groups]` held-out position per group: 0 for `top1`, seeded uniform for `random`."""
    if rule == "top1":
        return np.zeros(n_groups, dtype=np.int64)
    if rule == "random":
        rng = np.random.default_rng(np.random.SeedSequence([seed, 101]))
        return rng.integers(0, group_size, size=n_groups, dtype=np.int64)
    raise ThumbsaeError(f"eval.heldout: expected 'top1' or 'random', got {rule!r}")


def top_groups(
    latents: sp.spmatrix,
    group_size: int,
    threshold: float,
    *,
    heldout: HeldoutRule = "top1",
    seed: int = 0,
    channel_N: np.ndarray | None = None,
    max_per_channel: int | None = None,
) -> FeatureGroups:
    """Every qualifying feature's top `group_size` thumbnails.

    latents: sparse `[N, F]` non-negative activations, rows = thumbnails.
    channel_N: int `[N]` channel code per thumbnail, needed with `max_per_channel`: then a group
        walks down the activation order and skips thumbnails whose channel already has
        `max_per_channel` members.
    Returns FeatureGroups (possibly with zero groups); a feature qualifies when its group has
    `group_size` members, all with activation > `threshold`.
    """
    csc = _check_latents(latents)
    n_rows, n_features = csc.shape
    if group_size < 2:
        raise ThumbsaeError(f"eval.group_size={group_size}: need at least 2 (one held out, one in the statistic)")
    if group_size > n_rows:
        raise ThumbsaeError(
            f"eval.group_size={group_size} is larger than the number of thumbnails ({n_rows})"
        )
    if max_per_channel is not None:
        if max_per_channel < 1:
            raise ThumbsaeError(f"eval.max_per_channel={max_per_channel}: must be >= 1 or null")
        if channel_N is None:
            raise ThumbsaeError("eval.max_per_channel needs a 'channel_id' column in the thumbnails table")

    col_E = np.repeat(np.arange(n_features, dtype=np.int64), np.diff(csc.indptr))
    n_active_F = np.bincount(col_E[csc.data > 0], minlength=n_features).astype(np.int64)

    # Only entries above the threshold can be members; only features with enough of them can qualify.
    above_E = csc.data > threshold
    n_above_F = np.bincount(col_E[above_E], minlength=n_features)
    keep_E = above_E & (n_above_F >= group_size)[col_E]
    col_E = col_E[keep_E]
    row_E = csc.indices[keep_E].astype(np.int64)
    val_E = csc.data[keep_E]

    # One key orders by feature, then activation descending: for non-negative float32 the bit
    # pattern grows with the value, so its complement sorts descending. Stable sort keeps the row
    # order (CSC rows are sorted) for ties.
    desc_bits_E = np.invert(val_E.view(np.uint32)).astype(np.uint64)
    key_E = (col_E.astype(np.uint64) << np.uint64(32)) | desc_bits_E
    order_E = np.argsort(key_E, kind="stable")
    del key_E, desc_bits_E
    col_E, row_E, val_E = col_E[order_E], row_E[order_E], val_E[order_E]
    del order_E

    if max_per_channel is not None:
        channel_E = np.asarray(channel_N, dtype=np.int64)[row_E]
        n_channels = int(channel_E.max(initial=0)) + 1
        occ_E = _occurrence_in_run(col_E * n_channels + channel_E)
        capped_E = occ_E < max_per_channel
        col_E, row_E, val_E = col_E[capped_E], row_E[capped_E], val_E[capped_E]

    counts_F = np.bincount(col_E, minlength=n_features)
    features_G = np.flatnonzero(counts_F >= group_size).astype(np.int64)
    starts_F = np.r_[0, np.cumsum(counts_F)[:-1]]
    pos_GM = starts_F[features_G][:, None] + np.arange(group_size)[None, :]
    members_GM = row_E[pos_GM]
    acts_GM = val_E[pos_GM]
    heldout_G = choose_heldout(features_G.shape[0], group_size, heldout, seed)
    return FeatureGroups(
        features_G=features_G,
        members_GM=members_GM,
        acts_GM=acts_GM,
        heldout_G=heldout_G,
        n_active_F=n_active_F,
    )
