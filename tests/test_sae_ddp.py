"""SAE training with `trainer=ddp_cpu` on two gloo ranks ends with the weights of one process
trained on the same global batches (each global batch = rank 0's batch, then rank 1's)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import hydra
import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file
from study_recipe import study_relu

from thumbsae.activations import ActivationDataModule, store_from_array
from thumbsae.sae import SAELitModule

pytestmark = [
    pytest.mark.slow,  # two fresh interpreters import torch and Lightning: ~15 s idle, more when busy
    pytest.mark.filterwarnings("ignore:.*does not have many workers.*"),
]
REPO = Path(__file__).resolve().parents[1]
D, PER_RANK_BATCH, STEPS = 16, 32, 6
TRAINER_OPTS = dict(max_steps=STEPS, logger=False, enable_checkpointing=False, enable_model_summary=False,
                    limit_val_batches=0, val_check_interval=None)


def sae_module(scale: float) -> SAELitModule:
    # ReLU + L1 + ghost grads (the study's recipe): a per-row mean loss, so two ranks' averaged
    # gradients are the gradient of the concatenated batch.
    import dataclasses

    sae_cfg, optim_cfg = study_relu(D, ("sae.expansion_factor=4", "sae.dead_window_steps=1", "optim.warmup_steps=2",
                                        "optim.lr=3e-3"))
    return SAELitModule(dataclasses.replace(sae_cfg, input_scale=scale), optim_cfg)


def datamodule(store: Path, **kw) -> ActivationDataModule:
    return ActivationDataModule([store], batch_size=PER_RANK_BATCH, val_fraction=0.1, shuffle_buffer=64, seed=3, **kw)


def trainer_from_conf(**kw) -> pl.Trainer:
    from thumbsae.config import compose

    node = compose("train", ["trainer=ddp_cpu"]).trainer
    return hydra.utils.instantiate(node, **TRAINER_OPTS, **kw)


def _rank_main(rank: int, port: int, store: str, out: str) -> None:
    """One rank as torchrun starts it: Lightning reads the environment and joins the gloo group."""
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), GROUP_RANK="0",
                      LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2")
    pl.seed_everything(0)
    dm = datamodule(Path(store))
    module = sae_module(dm.scale)
    trainer_from_conf().fit(module, datamodule=dm)
    if rank == 0:
        save_file({k: v.contiguous() for k, v in module.sae.state_dict().items()}, out)


class GlobalBatches(torch.utils.data.IterableDataset):
    """Step t: rank 0's training batch t, then rank 1's (what the two ranks see together)."""

    def __init__(self, store: Path, ranks: tuple[int, ...] = (0, 1)):
        self.parts = [datamodule(store, rank=r, world_size=2) for r in ranks]

    def __iter__(self):
        for batches in zip(*(dm.train_dataloader() for dm in self.parts)):
            yield torch.cat(batches)


def train_single(store: Path, scale: float, ranks: tuple[int, ...]) -> dict[str, torch.Tensor]:
    pl.seed_everything(0)
    module = sae_module(scale)
    loader = torch.utils.data.DataLoader(GlobalBatches(store, ranks), batch_size=None)
    trainer_from_conf(devices=1, strategy="auto").fit(module, train_dataloaders=loader)
    return module.sae.state_dict()


def test_two_cpu_ranks_train_to_the_weights_of_one_process_with_the_same_global_batch(tmp_path):
    rng = np.random.default_rng(0)
    dictionary = rng.normal(size=(40, D)) / np.sqrt(D)
    codes = rng.exponential(size=(700, 40)) * (rng.random((700, 40)) < 0.08)
    acts = (codes @ dictionary + 0.05 * rng.normal(size=(700, D)) + 0.5).astype(np.float32)
    store = store_from_array(tmp_path / "store", acts, [f"v{i}" for i in range(700)], shard_rows=128).path

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_rank_main, args=(port, str(store), str(tmp_path / "ddp.safetensors")), nprocs=2, join=True)
    ddp = load_file(tmp_path / "ddp.safetensors")

    scale = datamodule(store).scale
    single = train_single(store, scale, (0, 1))
    assert set(ddp) == set(single)
    for name, value in single.items():
        torch.testing.assert_close(ddp[name], value, rtol=1e-4, atol=2e-6, msg=name)
    # the comparison can tell: training on rank 0's half alone, or not at all, ends elsewhere
    half = train_single(store, scale, (0,))
    start = sae_module(scale).sae.state_dict()
    for other in (half, start):
        assert (ddp["W_enc"] - other["W_enc"]).abs().max() > 100 * (ddp["W_enc"] - single["W_enc"]).abs().max()
