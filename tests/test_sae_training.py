"""SAELitModule under a real Lightning Trainer on CPU: recipe constraints, metrics, seeds, resume."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Sampler, TensorDataset

from killing import KillAt
from study_recipe import study_relu
from thumbsae.sae import OptimConfig, SAEConfig, SAELitModule, sae_config_from_dict
from thumbsae.sae.lightning import density_summary, max_decoder_cosine

D = 16

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*does not have many workers.*"),
    pytest.mark.filterwarnings("ignore:.*GPU available but not used.*"),
]


def dictionary_data(n: int, d: int = D, atoms: int = 40, active: int = 3, seed: int = 0) -> torch.Tensor:
    """Rows that are sparse non-negative mixtures of a fixed random dictionary, plus noise and an offset."""
    gen = torch.Generator().manual_seed(seed)
    dictionary = torch.nn.functional.normalize(torch.randn(atoms, d, generator=gen), dim=1)
    idx = torch.stack([torch.randperm(atoms, generator=gen)[:active] for _ in range(n)])
    coef = torch.rand(n, active, generator=gen) * 3
    x = torch.einsum("nk,nkd->nd", coef, dictionary[idx])
    return x + 0.05 * torch.randn(n, d, generator=gen) + 1.0


class EpochShuffle(Sampler[int]):
    """A permutation that depends only on (seed, epoch): reproducible after a restart."""

    def __init__(self, n: int, seed: int = 0):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        return iter(torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + self.epoch)).tolist())

    def __len__(self) -> int:
        return self.n


class Activations(pl.LightningDataModule):
    def __init__(self, x: torch.Tensor, batch_size: int, val: torch.Tensor | None = None):
        super().__init__()
        self.x, self.batch_size, self.val = x, batch_size, val

    def train_dataloader(self):
        return DataLoader(TensorDataset(self.x), batch_size=self.batch_size, sampler=EpochShuffle(len(self.x)), drop_last=True)

    def val_dataloader(self):
        return DataLoader(TensorDataset(self.val if self.val is not None else self.x[:64]), batch_size=self.batch_size)


def trainer(max_steps: int, **kw) -> pl.Trainer:
    opts = dict(
        accelerator="cpu",
        devices=1,
        max_steps=max_steps,
        max_epochs=-1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        deterministic=True,
    )
    opts.update(kw)
    return pl.Trainer(**opts)


OPTIM_KEYS = ("lr", "warmup_steps", "adam_betas", "adam_eps")


def topk_cfg(**kw) -> tuple[SAEConfig, OptimConfig]:
    """A small TopK SAE (or, with `arch=...`, another architecture) and its optimisation."""
    base: dict = dict(arch="topk", d_in=D, expansion_factor=4, k=4, dead_window_tokens=96)
    optim: dict = dict(lr=3e-3, warmup_steps=3)
    for key, value in kw.items():
        (optim if key in OPTIM_KEYS else base)[key] = value
    if base["arch"] in ("relu", "jumprelu"):
        del base["k"], base["dead_window_tokens"]
    return sae_config_from_dict(base), OptimConfig(**optim)


def test_study_relu_keeps_decoder_rows_unit_norm_and_uses_ghost_grads():
    cfg, optim = study_relu(D, ("sae.expansion_factor=4", "sae.dead_window_steps=1", "optim.warmup_steps=2", "optim.lr=1e-2"))
    module = SAELitModule(cfg, optim)
    data = dictionary_data(256)
    trainer(8).fit(module, Activations(data, 32))
    norms = module.sae.W_dec.detach().norm(dim=1)
    torch.testing.assert_close(norms, torch.ones_like(norms), rtol=0, atol=1e-5)
    assert int(module.tokens_seen) == 8 * 32
    assert bool(module.b_dec_ready)


def test_parallel_gradient_removed_before_the_step():
    module = SAELitModule(*topk_cfg())
    out = module.sae(dictionary_data(32))
    out.loss.backward()
    module.on_before_optimizer_step(None)
    parallel = (module.sae.W_dec.grad * module.sae.W_dec.detach()).sum(1)
    assert float(parallel.abs().max()) < 1e-6


def test_b_dec_starts_at_first_batch_mean_or_given_sample():
    data = dictionary_data(64)
    first = data[torch.randperm(64, generator=torch.Generator().manual_seed(0))[:32]]
    module = SAELitModule(*topk_cfg(lr=1e-12, warmup_steps=1, input_scale=2.0), prescaled=True)
    trainer(1).fit(module, Activations(data, 32))
    torch.testing.assert_close(module.sae.b_dec.detach(), first.mean(0), rtol=0, atol=1e-6)

    given = SAELitModule(*topk_cfg(b_dec_init="geometric_median", input_scale=2.0), init_sample=data, prescaled=False)
    from thumbsae.sae import geometric_median

    torch.testing.assert_close(given.sae.b_dec.detach(), geometric_median(data * 2.0).float(), rtol=0, atol=1e-5)
    assert bool(given.b_dec_ready)


def test_same_seed_gives_identical_weights():
    data = dictionary_data(256)
    runs = []
    for seed in (0, 0, 1):
        module = SAELitModule(*topk_cfg(seed=seed))
        trainer(6).fit(module, Activations(data, 32))
        runs.append({k: v.clone() for k, v in module.state_dict().items()})
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    assert not torch.equal(runs[0]["sae.W_enc"], runs[2]["sae.W_enc"])


@pytest.mark.parametrize("arch", ["topk", "relu"])
def test_killed_run_resumes_to_identical_weights(tmp_path, arch):
    data = dictionary_data(256)
    extra = dict(arch="relu", l1_coef=1e-3, ghost_grads=True, dead_window_steps=2, mse_norm="input_norm") if arch == "relu" else {}
    steps, per_epoch = 20, 256 // 32

    full = SAELitModule(*topk_cfg(**extra))
    trainer(steps).fit(full, Activations(data, 32))

    ckpt_dir = tmp_path / "checkpoints"
    killed = SAELitModule(*topk_cfg(**extra))
    save = pl.callbacks.ModelCheckpoint(dirpath=str(ckpt_dir), save_last=True, every_n_train_steps=per_epoch)
    run = trainer(steps, enable_checkpointing=True, callbacks=[save, KillAt(per_epoch * 2 + 3)])
    try:
        run.fit(killed, Activations(data, 32))
    except (KeyboardInterrupt, SystemExit):
        pass  # Lightning may turn the interrupt into a graceful stop or exit
    assert (ckpt_dir / "last.ckpt").exists()
    assert killed.global_step < steps

    resumed = SAELitModule(*topk_cfg(**extra))
    run = trainer(steps, enable_checkpointing=True, callbacks=[pl.callbacks.ModelCheckpoint(dirpath=str(tmp_path / "again"))])
    run.fit(resumed, Activations(data, 32), ckpt_path=str(ckpt_dir / "last.ckpt"), weights_only=True)
    assert resumed.global_step == steps
    for key, value in full.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), f"{key} differs after resume"
    if arch == "topk":
        assert int(full.tokens_since_fired.max()) > 0


def test_validation_metrics_match_direct_computation(tmp_path):
    data, val = dictionary_data(256), dictionary_data(96, seed=9)
    module = SAELitModule(*topk_cfg(input_scale=0.5), prescaled=False)
    dm = Activations(data, 32, val=val)
    run = trainer(10, limit_val_batches=None, logger=pl.loggers.CSVLogger(tmp_path), log_every_n_steps=1)
    run.fit(module, dm)
    metrics = run.validate(module, dm, verbose=False)[0]

    sae = module.sae.eval()
    with torch.no_grad():
        x = val.double() * 0.5
        x_hat = sae(val).sae_out.double() * 0.5
        acts, idx = sae.encode(val)
    sse = (x - x_hat).pow(2).sum()
    assert metrics["val/fvu"] == pytest.approx(float(sse / (x - x.mean(0)).pow(2).sum()), rel=1e-6)
    assert metrics["val/explained_variance"] == pytest.approx(float(1 - sse / x.pow(2).sum()), rel=1e-6)
    assert metrics["val/l0"] == pytest.approx(float((acts > 0).sum(1).double().mean()), rel=1e-6)
    fired = torch.zeros(sae.n_latents, dtype=torch.bool)
    fired[idx[acts > 0]] = True
    assert metrics["val/dead_fraction"] == pytest.approx(float((~fired).double().mean()), abs=1e-6)
    bins = [v for k, v in metrics.items() if k.startswith("val/density_")]  # never + the frequency bins
    assert len(bins) == 7 and sum(bins) == pytest.approx(1.0)
    assert 0 < metrics["val/max_decoder_cos"] <= 1 and metrics["val/tokens_per_s"] > 0
    assert 0 <= metrics["val/dense_fraction"] <= 1

    # the CSV logger got the training metrics every step, the lr warming up
    rows = list(csv.DictReader(io.StringIO(next(tmp_path.rglob("metrics.csv")).read_text())))
    lrs = [float(r["train/lr"]) for r in rows if r.get("train/lr")]
    assert lrs[:3] == pytest.approx([1e-3, 2e-3, 3e-3]) and lrs[-1] == pytest.approx(3e-3)
    assert any(r.get("train/tokens_per_s") for r in rows) and any(r.get("train/fvu") for r in rows)


def test_dead_latents_tracked_in_tokens():
    module = SAELitModule(*topk_cfg(dead_window_tokens=64))
    trainer(5).fit(module, Activations(dictionary_data(256), 32))
    assert int(module.tokens_seen) == 160
    assert int(module.tokens_since_fired.max()) <= 160
    never_fired = module.tokens_since_fired == 160
    assert float(module.window_dead_fraction()) >= float(never_fired.float().mean())


def test_max_decoder_cosine_and_density_summary():
    W = torch.nn.functional.normalize(torch.randn(30, 5, generator=torch.Generator().manual_seed(0)), dim=1)
    cos = W @ W.t() - 2 * torch.eye(30)
    assert max_decoder_cosine(W) == pytest.approx(float(cos.max()), abs=1e-6)
    summary = density_summary(np.array([0.0, 1e-6, 5e-5, 0.5, 0.02]))
    assert summary["density_never"] == pytest.approx(0.2)
    assert summary["density_lt_1e-05"] == pytest.approx(0.2) and summary["density_ge_1e-01"] == pytest.approx(0.2)


def test_density_histogram_goes_to_wandb_when_attached(monkeypatch):
    logged = []

    class WandbLogger:  # stands in for pytorch_lightning's W&B logger (matched by class name)
        class experiment:  # noqa: N801
            @staticmethod
            def log(payload):
                logged.append(payload)

    monkeypatch.setattr(SAELitModule, "loggers", property(lambda self: [WandbLogger()]))
    module = SAELitModule(*topk_cfg())
    module._log_density_histogram(np.array([0.0, 0.1, 0.01]))
    assert "val/feature_density_log10" in logged[0]


class Interleaved(pl.LightningDataModule):
    """Rank r gets rows r, r + world, r + 2 world, ... in order (no shuffling)."""

    def __init__(self, x: torch.Tensor, batch_size: int):
        super().__init__()
        self.x, self.batch_size = x, batch_size

    def train_dataloader(self):
        from torch.utils.data import DistributedSampler

        sampler = DistributedSampler(
            TensorDataset(self.x), num_replicas=self.trainer.world_size, rank=self.trainer.global_rank, shuffle=False
        )
        return DataLoader(TensorDataset(self.x), batch_size=self.batch_size, sampler=sampler)


@pytest.mark.slow
def test_ddp_all_reduces_dead_latent_statistics():
    """Two CPU ranks (gloo): token counts and firing are summed over ranks and b_dec is the mean of
    both ranks' first batches (the weights come back from rank 0)."""
    data = dictionary_data(256)
    module = SAELitModule(*topk_cfg(dead_window_tokens=10_000, lr=1e-12, warmup_steps=1))
    run = trainer(3, strategy="ddp_spawn", devices=2, deterministic=False, use_distributed_sampler=False)
    run.fit(module, Interleaved(data, 32))
    assert int(module.tokens_seen) == 3 * 32 * 2
    assert int(module.tokens_since_fired.max()) <= 3 * 32 * 2
    torch.testing.assert_close(module.sae.b_dec.detach(), data[:64].mean(0), rtol=0, atol=1e-5)


def test_matryoshka_validation_reports_the_fvu_of_each_prefix():
    data, val = dictionary_data(256), dictionary_data(96, seed=9)
    module = SAELitModule(*topk_cfg(arch="matryoshka", prefixes=(8, 32), input_scale=0.5), prescaled=False)
    dm = Activations(data, 32, val=val)
    run = trainer(10, limit_val_batches=None)
    run.fit(module, dm)
    metrics = run.validate(module, dm, verbose=False)[0]
    sae = module.sae.eval()
    with torch.no_grad():
        out = sae(val)
    x = val.double() * 0.5
    centred = (x - x.mean(0)).pow(2).sum()
    for size in (8, 32, 64):
        fvu = float((x - out.prefix_sae_out[size].double() * 0.5).pow(2).sum() / centred)
        assert metrics[f"val/fvu_prefix_{size}"] == pytest.approx(fvu, rel=1e-6)
    assert metrics["val/fvu_prefix_64"] == pytest.approx(metrics["val/fvu"], rel=1e-9)
    assert metrics["val/fvu_prefix_8"] > metrics["val/fvu_prefix_64"]


def test_jumprelu_thresholds_start_at_init_l0_and_train():
    data = dictionary_data(512)
    cfg, optim = topk_cfg(arch="jumprelu", init_l0=3.0, target_l0=3.0, l0_coef=0.1, bandwidth=0.05)
    module = SAELitModule(cfg, optim, prescaled=False)
    sae = module.sae
    sae.init_from_sample(data, prescaled=False)
    with torch.no_grad():
        l0 = float((sae.encode_dense(data) > 0).sum(1).float().mean())
    assert l0 == pytest.approx(3.0, abs=0.2)  # every latent fires on 3/F of the sample
    start = sae.log_threshold.detach().clone()
    module.b_dec_ready.fill_(True)
    trainer(16).fit(module, Activations(data, 32))
    assert not torch.equal(start, sae.log_threshold.detach())  # the STE moved the thresholds
    with torch.no_grad():
        acts, idx = sae.eval().encode(data)
    assert 1.0 < float((acts > 0).sum(1).float().mean()) < 6.0
