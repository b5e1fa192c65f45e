"""`EngagementModel`: a fitted sparse linear model from SAE latents to (channel-relative) log views.

Each prediction decomposes exactly into the intercept plus one contribution per active used
feature (what `thumbsae rank` shows as reasons). Bootstrap refits and an out-of-fold win curve
give the uncertainty of score DIFFERENCES between thumbnails (`score_samples`, `pair_curve`;
`thumbsae.analysis.engagement.pairs` turns them into P(A beats B)).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from thumbsae.analysis.latents import LatentMatrix
from thumbsae.errors import ThumbsaeError


def transform_latents(x: sp.csr_matrix, log1p: bool) -> sp.csr_matrix:
    """Activations as the model sees them: as is, or signed log1p (sparsity kept)."""
    if not log1p:
        return x
    x = x.copy()
    x.data = np.sign(x.data) * np.log1p(np.abs(x.data))
    return x


@dataclass(frozen=True, eq=False)
class BootstrapFits:
    """B refits of the model on resampled training channels, at the chosen strength.

    feature_indices: int64 `[V]` latents with a non-zero coefficient in any refit, sorted.
    scale: float64 `[V]` their divisors (the full fit's); coef: float64 `[B, V]`; intercept `[B]`.
    """

    feature_indices: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: np.ndarray

    @property
    def n_bootstrap(self) -> int:
        return int(self.intercept.shape[0])


@dataclass(frozen=True, eq=False)
class EngagementModel:
    """Predicted log views = intercept + sum over used latents of coef * scaled activation.

    feature_indices: int64 `[U]` used latents (of `n_latents`), sorted.
    coef: float64 `[U]` per scaled activation; scale: float64 `[U]` (activation / scale).
    residual_quantiles: out-of-fold residual quantiles `(lo, hi)` giving `interval` coverage.
    feature_info: per used latent, what evaluate knows about it (name, lift, q_value, examples
        as paths relative to `path`).
    bootstrap: refits behind `score_samples`, or None (a model fitted with n_bootstrap=0).
    pair_curve: (d `[K]` ascending, g `[K]`): P(A's views beat B's) against their score
        difference d, learned out of fold on pairs of training thumbnails of one channel; None
        for a model fitted without it.
    """

    feature_indices: np.ndarray
    coef: np.ndarray
    scale: np.ndarray
    intercept: float
    n_latents: int
    residual_quantiles: tuple[float, float]
    interval: float = 0.8
    log1p: bool = False
    target_kind: str = "channel_relative"
    metrics: dict[str, Any] = field(default_factory=dict)
    feature_info: dict[int, dict[str, Any]] = field(default_factory=dict)
    path: Path | None = None
    bootstrap: BootstrapFits | None = None
    pair_curve: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def n_features_used(self) -> int:
        return int(self.feature_indices.size)

    def _latents(self, latents: Any) -> sp.csr_matrix:
        """csr `[N, F]` of any accepted latents input, with its width checked."""
        if isinstance(latents, LatentMatrix):
            latents = latents.csr
        x_NF = sp.csr_matrix(np.atleast_2d(latents) if isinstance(latents, np.ndarray) else latents)
        if x_NF.shape[1] != self.n_latents:
            raise ThumbsaeError(
                f"engagement model expects {self.n_latents} latents per thumbnail, got {x_NF.shape[1]}"
            )
        return x_NF

    def _scaled(
        self, latents: Any, features: np.ndarray | None = None, scale: np.ndarray | None = None
    ) -> sp.csr_matrix:
        """Scaled activations of `features` (default: the used latents): csr float64 `[N, U]`."""
        features = self.feature_indices if features is None else features
        scale = self.scale if scale is None else scale
        x_NU = self._latents(latents)[:, features].astype(np.float64)
        return transform_latents(x_NU, self.log1p) @ sp.diags(1.0 / scale, format="csr")

    def predict(self, latents: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Scores and intervals of thumbnails from their latents.

        latents: csr `[N, F]` (or a dense `[N, F]` / `[F]` array, or a LatentMatrix).
        Returns (score `[N]`, lo `[N]`, hi `[N]`) in the target's units (log views).
        """
        x_NU = self._scaled(latents)
        score_N = np.asarray(x_NU @ self.coef, dtype=np.float64).reshape(-1) + self.intercept
        lo_q, hi_q = self.residual_quantiles
        return score_N, score_N + lo_q, score_N + hi_q

    def score_samples(self, latents: Any) -> np.ndarray | None:
        """float64 `[N, B]`: each thumbnail's score under each bootstrap refit (None without refits).

        Each row is centred on the thumbnail's fitted score (the refits give the spread; an
        L1 refit's mean is pulled towards zero where a latent drops out). Differences of rows are
        draws of the difference of two thumbnails' scores (`pairs.beat_probability`).
        """
        if self.bootstrap is None:
            return None
        boot = self.bootstrap
        x_NV = self._scaled(latents, boot.feature_indices, boot.scale)
        samples_NB = np.asarray(x_NV @ boot.coef.T, dtype=np.float64) + boot.intercept[None, :]
        # Centred on the fitted scores: the refits give the spread, not a second estimate.
        return samples_NB - samples_NB.mean(axis=1, keepdims=True) + self.predict(latents)[0][:, None]

    def contributions(self, latents_row: Any, top: int | None = 5) -> tuple[list[dict], list[dict]]:
        """The features pushing one thumbnail's score up and down.

        latents_row: its latents, csr `[1, F]` or an array `[F]`.
        Returns (up, down): dicts `{feature, contribution, activation}` (plus `name` when known),
        up by largest positive contribution, down by most negative; `top=None` gives all. The
        contributions of all active used features plus the intercept equal the score.
        """
        x_NU = self._scaled(latents_row)
        if x_NU.shape[0] != 1:
            raise ThumbsaeError(f"contributions takes one thumbnail's latents, got {x_NU.shape[0]} rows")
        x_U = x_NU.toarray()[0]
        contrib_U = self.coef * x_U
        raw_U = x_U * self.scale
        if self.log1p:
            raw_U = np.sign(raw_U) * np.expm1(np.abs(raw_U))
        entries = [
            self._entry(int(u), float(contrib_U[u]), float(raw_U[u])) for u in np.flatnonzero(contrib_U)
        ]
        # Ties broken by feature id so the order is reproducible.
        up = sorted((e for e in entries if e["contribution"] > 0), key=lambda e: (-e["contribution"], e["feature"]))
        down = sorted((e for e in entries if e["contribution"] < 0), key=lambda e: (e["contribution"], e["feature"]))
        return (up, down) if top is None else (up[:top], down[:top])

    def _entry(self, u: int, contribution: float, activation: float) -> dict:
        feature = int(self.feature_indices[u])
        entry = {"feature": feature, "contribution": contribution, "activation": activation}
        name = self.feature_info.get(feature, {}).get("name")
        if name:
            entry["name"] = name
        return entry

    def examples(self, feature: int) -> list[Path]:
        """Absolute paths of the example thumbnails saved for `feature` (empty if none)."""
        paths = self.feature_info.get(int(feature), {}).get("examples", [])
        base = self.path or Path(".")
        return [Path(p) if Path(p).is_absolute() else base / p for p in paths]

    def save(self, out_dir: str | os.PathLike, feature_info: dict[int, dict] | None = None) -> Path:
        """Write the model folder (see `thumbsae.analysis.engagement.io.save_model`); returns it."""
        from thumbsae.analysis.engagement.io import save_model

        return save_model(self, out_dir, feature_info)

    @classmethod
    def load(cls, model_dir: str | os.PathLike) -> EngagementModel:
        """Read a folder written by `save` (see `thumbsae.analysis.engagement.io.load_model`)."""
        from thumbsae.analysis.engagement.io import load_model

        return load_model(model_dir)
