"""`SAELitModule`: trains a `SparseAutoencoder` under Lightning (CPU, one GPU or DDP).

What it adds around the SAE:
- `b_dec` (and what else the architecture initialises from data) set from the first training
  batch (gathered from every rank) or a given sample;
- Adam with a linear warm-up, then a constant learning rate (the study's `constantwithwarmup`),
  set by an `OptimConfig`;
- firing tracked in tokens and in steps, all-reduced across ranks; the architecture decides which
  latents its auxiliary loss treats as dead (AuxK: tokens, ghost grads: steps);
- the unit-norm decoder: gradient parallel to each row removed before the optimiser step, rows
  renormalised after it;
- metrics: training (every step, written every `log_every_n_steps`) and validation (FVU centred
  and accumulated in float64, the study's uncentred explained variance, L0, dead and dense
  fractions, a feature-density histogram, max decoder cosine, tokens/s, the FVU of each nested
  prefix for Matryoshka (`val/fvu_prefix_<size>`), and the zero-shot / contrastive metrics of
  an optional `thumbsae.sae.splice.SpliceEvaluator`).

Checkpoints hold only tensors and plain values, so `trainer.fit(..., ckpt_path=..., weights_only=True)`
resumes; a resumed run ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch import Tensor

from thumbsae.errors import ThumbsaeError
from thumbsae.sae.config import OptimConfig, SAEConfig, optim_config_from_dict, sae_config_from_dict
from thumbsae.sae.model import SparseAutoencoder

# Latents firing on more than this fraction of validation rows count as dense.
DENSE_FREQUENCY = 1e-2
# Above this many latents, max decoder cosine compares a seeded sample of rows against all rows.
EXACT_COSINE_MAX_LATENTS = 8192
COSINE_SAMPLE_ROWS = 1024
# Bin edges of the feature-density summary logged as scalars (CSV-friendly).
DENSITY_EDGES: tuple[float, ...] = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1)


def warmup_factor(warmup_steps: int):
    """LR multiplier after `step` optimiser steps: linear from 1/warmup to 1, then constant."""
    warm = max(int(warmup_steps), 1)

    def factor(step: int) -> float:
        return min(1.0, (step + 1) / warm)

    return factor


def batch_rows(batch: Any) -> Tensor:
    """The activation rows [B, D] of a batch (a tensor, or the first item of a tuple/list)."""
    if isinstance(batch, (tuple, list)):
        batch = batch[0]
    if not isinstance(batch, Tensor) or batch.ndim != 2:
        raise ThumbsaeError(f"SAELitModule expects batches of activations [B, D], got {type(batch).__name__}")
    return batch


def max_decoder_cosine(W_dec_FD: Tensor, *, chunk: int = 2048) -> float:
    """Largest cosine similarity between two different decoder rows.

    Exact when F <= EXACT_COSINE_MAX_LATENTS; above, the rows of a fixed seeded sample of
    COSINE_SAMPLE_ROWS latents are compared with all rows (an F x F product would cost F^2 D).
    """
    W = W_dec_FD.detach().float()
    W = W / W.norm(dim=1, keepdim=True).clamp_min(1e-12)
    F = W.shape[0]
    if F < 2:
        return 0.0
    if F <= EXACT_COSINE_MAX_LATENTS:
        rows = torch.arange(F, device=W.device)
    else:
        gen = torch.Generator().manual_seed(F)
        rows = torch.randperm(F, generator=gen)[:COSINE_SAMPLE_ROWS].to(W.device)
    best = -1.0
    for start in range(0, rows.numel(), chunk):
        r = rows[start : start + chunk]
        cos_RF = W[r] @ W.t()
        cos_RF[torch.arange(r.numel(), device=W.device), r] = -1.0  # a row against itself
        best = max(best, float(cos_RF.max()))
    return best


def density_summary(density_F: np.ndarray) -> dict[str, float]:
    """Fractions of latents per firing-frequency bin (never, <1e-5, 1e-5..1e-4, ..., >=1e-1)
    and the mean log10 density of the latents that fired."""
    out: dict[str, float] = {"density_never": float(np.mean(density_F == 0))}
    fired = density_F[density_F > 0]
    lower = 0.0
    for edge in DENSITY_EDGES:
        name = f"density_lt_{edge:.0e}" if lower == 0 else f"density_{lower:.0e}_{edge:.0e}"
        out[name] = float(np.mean((density_F > lower) & (density_F < edge)))
        lower = edge
    out[f"density_ge_{lower:.0e}"] = float(np.mean(density_F >= lower))
    out["log10_density_mean"] = float(np.mean(np.log10(fired))) if fired.size else float("nan")
    return out


class SAELitModule(pl.LightningModule):
    """Lightning wrapper that trains `self.sae` (a `SparseAutoencoder`) on activation batches.

    cfg: an architecture config (`TopKConfig`, ...; or the plain dict of one). optim: an
    `OptimConfig` (or its plain dict; default: `OptimConfig()`). init_sample: optional
    activations [N, D] (in the batches' space) to initialise `b_dec` from now, instead of from
    the first training batch; a mean [1, D] works. prescaled: batches are already multiplied by
    `cfg.input_scale` (what `ActivationDataModule` delivers); False for raw activations. splice:
    an optional `SpliceEvaluator` run at each validation end.
    """

    def __init__(
        self,
        cfg: SAEConfig | Mapping[str, Any],
        optim: OptimConfig | Mapping[str, Any] | None = None,
        *,
        init_sample: Tensor | None = None,
        prescaled: bool = True,
        splice: Any = None,
    ):
        super().__init__()
        cfg = cfg if isinstance(cfg, SAEConfig) else sae_config_from_dict(cfg)
        optim = optim if isinstance(optim, OptimConfig) else optim_config_from_dict(optim or {})
        # Plain values only, so checkpoints load with weights_only=True.
        self.save_hyperparameters({"cfg": cfg.to_dict(), "optim": optim.to_dict(), "prescaled": bool(prescaled)})
        self.cfg = cfg
        self.optim = optim
        self.prescaled = bool(prescaled)
        self.sae = SparseAutoencoder(cfg)
        F = self.sae.n_latents
        self.register_buffer("tokens_since_fired", torch.zeros(F, dtype=torch.long))
        self.register_buffer("steps_since_fired", torch.zeros(F, dtype=torch.long))
        self.register_buffer("tokens_seen", torch.zeros((), dtype=torch.long))
        # True once the data-dependent initialisation (b_dec, JumpReLU thresholds) has run.
        self.register_buffer("b_dec_ready", torch.tensor(False))
        self._splice = splice  # a plain attribute: the CLIP model must not enter the state dict
        self._last_step_end: float | None = None
        self._train_seconds = 0.0
        self._train_tokens = 0
        self.last_density_F: np.ndarray | None = None
        if init_sample is not None:
            self.sae.init_from_sample(init_sample.float(), prescaled=self.prescaled)
            self.b_dec_ready.fill_(True)

    # ---- optimisation -------------------------------------------------------------------------

    def configure_optimizers(self):
        optim = self.optim
        params = list(self.sae.parameters())
        # The fused kernel is one pass over the weights: ~5x faster than foreach Adam on CPU.
        fused = all(p.device.type in ("cpu", "cuda") and p.dtype in (torch.float32, torch.bfloat16) for p in params)
        optimizer = torch.optim.Adam(params, lr=optim.lr, betas=optim.adam_betas, eps=optim.adam_eps, fused=fused)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_factor(optim.warmup_steps))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step", "frequency": 1}}

    def dead_mask(self) -> Tensor | None:
        """Latents the architecture's auxiliary loss treats as dead in the next step (TopK
        family: no firing in the last `dead_window_tokens` tokens; ReLU with ghost grads: in more
        than `dead_window_steps` steps); None when it has no such loss."""
        return self.sae.dead_mask(self.tokens_since_fired, self.steps_since_fired)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x_BD = batch_rows(batch)
        if not bool(self.b_dec_ready):
            self._init_b_dec_from(x_BD)
        dead = self.dead_mask()
        out = self.sae(x_BD, dead, prescaled=self.prescaled)
        with torch.no_grad():
            self._track_firing(out.latent_acts, out.latent_indices, x_BD.shape[0])
            active = (out.latent_acts > 0).sum(-1).float().mean()
            scheduler = self.lr_schedulers()
            lr = scheduler.get_last_lr()[0] if scheduler is not None else self.optim.lr
            logged = {
                "train/loss": out.loss.detach(),
                "train/fvu": out.fvu.detach(),
                "train/mse": out.mse_loss.detach(),
                "train/l0": active,
                "train/lr": float(lr),
                **{f"train/{name}": term.detach() for name, term in out.terms.items()},
            }
            if dead is not None:
                logged["train/dead_fraction"] = dead.float().mean()
            self.log_dict(logged, on_step=True, on_epoch=False)
        return out.loss

    def on_before_optimizer_step(self, optimizer) -> None:
        if self.cfg.unit_norm_decoder:
            self.sae.remove_parallel_decoder_grad()

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if self._last_step_end is None:
            self._last_step_end = time.perf_counter()

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        # Right after the step, before any callback (a checkpoint) sees the weights.
        if self.cfg.unit_norm_decoder:
            self.sae.normalize_decoder()

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        now = time.perf_counter()
        seconds = now - (self._last_step_end or now)
        self._last_step_end = now
        tokens = batch_rows(batch).shape[0] * self._world_size()
        if seconds > 0:
            self._train_seconds += seconds
            self._train_tokens += tokens
            self.log("train/tokens_per_s", tokens / seconds, on_step=True, on_epoch=False)

    def on_validation_start(self) -> None:
        # Validation time must not count as training throughput.
        self._last_step_end = None

    # ---- bookkeeping --------------------------------------------------------------------------

    def _world_size(self) -> int:
        return self._trainer.world_size if self._trainer is not None else 1

    def _reduce_sum(self, value: Tensor) -> Tensor:
        """Sum over ranks (identity on one device)."""
        if self._world_size() > 1:
            return self.trainer.strategy.reduce(value, reduce_op="sum")
        return value

    @torch.no_grad()
    def _init_b_dec_from(self, x_BD: Tensor) -> None:
        sample = self.all_gather(x_BD) if self._world_size() > 1 else x_BD
        self.sae.init_from_sample(sample.reshape(-1, x_BD.shape[-1]).float(), prescaled=self.prescaled)
        self.b_dec_ready.fill_(True)

    @torch.no_grad()
    def _track_firing(self, acts_BK: Tensor, indices_BK: Tensor, n_rows: int) -> None:
        counts_F = torch.bincount(indices_BK[acts_BK > 0], minlength=self.sae.n_latents)
        tokens = torch.tensor(n_rows, dtype=torch.long, device=counts_F.device)
        counts_F, tokens = self._reduce_sum(counts_F), self._reduce_sum(tokens)
        fired_F = counts_F > 0
        self.tokens_since_fired.add_(tokens).masked_fill_(fired_F, 0)
        self.steps_since_fired.add_(1).masked_fill_(fired_F, 0)
        self.tokens_seen.add_(tokens)

    def window_dead_fraction(self) -> Tensor | None:
        """Fraction of latents the architecture's auxiliary loss treats as dead now (None when it
        has no such loss)."""
        dead = self.dead_mask()
        return dead.float().mean() if dead is not None else None

    # ---- validation ---------------------------------------------------------------------------

    def on_validation_epoch_start(self) -> None:
        D, F = self.sae.d_in, self.sae.n_latents
        f64 = dict(dtype=torch.float64, device=self.device)
        self._val = {
            "sse": torch.zeros((), **f64),
            "sum_x": torch.zeros(D, **f64),
            "sum_x2": torch.zeros((), **f64),
            "rows": torch.zeros((), **f64),
            "active": torch.zeros((), **f64),
            "fired": torch.zeros(F, **f64),
        }

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x_BD = batch_rows(batch)
        out = self.sae(x_BD, prescaled=self.prescaled)
        scale = self.cfg.input_scale
        x = (x_BD if self.prescaled else x_BD * scale).to(torch.float64)
        x_hat = out.sae_out.to(torch.float64) * scale
        acc = self._val
        acc["sse"] += (x - x_hat).pow(2).sum()
        acc["sum_x"] += x.sum(0)
        acc["sum_x2"] += x.pow(2).sum()
        acc["rows"] += x.shape[0]
        on = out.latent_acts > 0
        acc["active"] += on.sum()
        acc["fired"] += torch.bincount(out.latent_indices[on], minlength=self.sae.n_latents).to(torch.float64)
        for size, prefix_out in out.prefix_sae_out.items():
            sse = (x - prefix_out.to(torch.float64) * scale).pow(2).sum()
            acc[f"sse_prefix_{size}"] = acc.get(f"sse_prefix_{size}", torch.zeros_like(sse)) + sse

    def on_validation_epoch_end(self) -> None:
        acc = {k: self._reduce_sum(v) for k, v in self._val.items()}
        rows = float(acc["rows"])
        if rows == 0:
            return
        centred = acc["sum_x2"] - acc["sum_x"].pow(2).sum() / rows
        density_F = (acc["fired"] / rows).cpu().numpy()
        self.last_density_F = density_F
        dead_train = self.window_dead_fraction()
        metrics: dict[str, float] = {
            "mse": float(acc["sse"] / (rows * self.sae.d_in)),
            "fvu": float(acc["sse"] / centred.clamp_min(1e-300)),
            "explained_variance": float(1 - acc["sse"] / acc["sum_x2"].clamp_min(1e-300)),
            "l0": float(acc["active"] / rows),
            "dead_fraction": float(np.mean(density_F == 0)),
            "dead_fraction_train": float(dead_train) if dead_train is not None else math.nan,
            "dense_fraction": float(np.mean(density_F > DENSE_FREQUENCY)),
            "max_decoder_cos": max_decoder_cosine(self.sae.W_dec),
            **density_summary(density_F),
            **{
                f"fvu_prefix_{key.rsplit('_', 1)[1]}": float(value / centred.clamp_min(1e-300))
                for key, value in acc.items()
                if key.startswith("sse_prefix_")
            },
        }
        if self._train_seconds > 0:
            metrics["tokens_per_s"] = self._train_tokens / self._train_seconds
        if self._splice is not None:
            metrics.update(self._splice.evaluate(self.sae))
        self.log_dict({f"val/{k}": v for k, v in metrics.items() if not math.isnan(v)})
        self._log_density_histogram(density_F)

    def _log_density_histogram(self, density_F: np.ndarray) -> None:
        """A W&B histogram of log10 feature density when a W&B logger is attached."""
        for logger in self.loggers:
            if logger.__class__.__name__ == "WandbLogger":
                import wandb

                values = np.log10(density_F + 1e-10)
                logger.experiment.log(
                    {"val/feature_density_log10": wandb.Histogram(values), "trainer/global_step": self.global_step}
                )
