"""ActivationDataModule resume: a stream restored mid-epoch continues with the uninterrupted run's batches."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from killing import KillAt
from thumbsae.activations import ActivationDataModule, store_from_array
from thumbsae.errors import ThumbsaeError

D = 8

pytestmark = [
    pytest.mark.usefixtures("one_torch_thread"),
    pytest.mark.filterwarnings("ignore:.*does not have many workers.*"),
    pytest.mark.filterwarnings("ignore:.*GPU available but not used.*"),
    pytest.mark.filterwarnings("ignore:.*`__len__` could be inaccurate.*"),
    pytest.mark.filterwarnings("ignore:.*worker processes in total.*"),
]


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """60 images x 5 tokens (float16, 8 shards: the split leaves gaps in them) and 31 cls rows (float16, 4 shards):
    265 training rows."""
    rng = np.random.default_rng(0)
    tmp = tmp_path_factory.mktemp("stores")
    tokens = store_from_array(tmp / "tokens", rng.standard_normal((60, 5, D), dtype=np.float32),
                              [f"t{i}" for i in range(60)], tokens="all", dtype="float16", shard_rows=40)
    cls = store_from_array(tmp / "cls", rng.standard_normal((31, D), dtype=np.float32) + 2,
                           [f"c{i}" for i in range(31)], dtype="float16", shard_rows=8)
    return tokens, cls


def make(stores, **kw) -> ActivationDataModule:
    opts = dict(batch_size=8, val_fraction=0.2, shuffle_buffer=20, seed=4, normalize=True)
    return ActivationDataModule([s.path for s in stores], **{**opts, **kw})


def take(dm: ActivationDataModule, n: int) -> list[torch.Tensor]:
    """The first `n` batches of the next training pass, the pass then abandoned."""
    batches = iter(dm.train_dataloader())
    return [next(batches) for _ in range(n)]


def assert_same(got: list[torch.Tensor], expected: list[torch.Tensor]) -> None:
    assert len(got) == len(expected)
    assert all(torch.equal(a, b) for a, b in zip(got, expected))


@pytest.mark.parametrize("num_workers", [0, 2, 3])
@pytest.mark.parametrize("rank, world_size", [(0, 1), (1, 2)])
def test_restored_stream_yields_the_remaining_batches(stores, num_workers, rank, world_size):
    kw = dict(num_workers=num_workers, rank=rank, world_size=world_size)
    full = make(stores, **kw)
    full.set_epoch(1)
    epoch1, epoch2 = list(full.train_dataloader()), list(full.train_dataloader())
    total = len(epoch1)
    assert total == len(full.train_dataloader()) > 6
    if (num_workers, world_size) == (3, 1):  # the workers' parts end at different turns
        assert len(set(full.train_dataloader().dataset.worker_batches())) > 1
    cuts = [0, 5, total - 1, total] if num_workers == 0 else [5, total - 1]
    for n in cuts:
        run = make(stores, **kw)
        run.set_epoch(1)
        assert_same(take(run, n), epoch1[:n])
        state = run.state_dict()
        assert (state["epoch"], state["batches"]) == ((1, n) if n < total else (2, 0))
        resumed = make(stores, **kw)
        resumed.load_state_dict(state)
        assert resumed.state_dict() == state
        assert_same(list(resumed.train_dataloader()), epoch1[n:] if n < total else epoch2)
        assert_same(list(resumed.train_dataloader()), epoch2 if n < total else list(full.train_dataloader()))


def test_resuming_twice_in_one_epoch(stores):
    full = make(stores, num_workers=2)
    epoch0 = list(full.train_dataloader())
    first = make(stores, num_workers=2)
    take(first, 3)
    second = make(stores, num_workers=2)
    second.load_state_dict(first.state_dict())
    assert_same(take(second, 4), epoch0[3:7])
    third = make(stores, num_workers=2)
    third.load_state_dict(second.state_dict())
    assert third.state_dict()["batches"] == 7
    assert_same(list(third.train_dataloader()), epoch0[7:])


def test_skipped_windows_are_not_read(stores, monkeypatch):
    from thumbsae.activations.datamodule import ActivationStream

    full = list(make(stores, batch_size=4).train_dataloader())
    run = make(stores, batch_size=4)
    take(run, len(full) - 2)
    resumed = make(stores, batch_size=4)
    resumed.load_state_dict(run.state_dict())
    reads, fill = [], ActivationStream._fill

    def counted_fill(self, window, *rest):
        reads.append(window.n)
        return fill(self, window, *rest)

    monkeypatch.setattr(ActivationStream, "_fill", counted_fill)
    assert_same(list(resumed.train_dataloader()), full[-2:])
    assert len(reads) <= 2 and sum(reads) < resumed.n_train_rows / 3  # the last window or two of ~10


def test_a_mid_epoch_state_needs_the_same_stream(stores):
    run = make(stores)
    take(run, 2)
    state = run.state_dict()
    with pytest.raises(ThumbsaeError, match=r"batch 2 of epoch 0: batch_size 8 -> 16 changed"):
        make(stores, batch_size=16).load_state_dict(state)
    with pytest.raises(ThumbsaeError, match=r": stores changed"):
        make(stores[:1]).load_state_dict(state)
    with pytest.raises(ThumbsaeError, match=r"workers 1 -> 2"):
        make(stores, num_workers=2).load_state_dict(state)
    make(stores, num_workers=1).load_state_dict(state)  # the main process streams as one worker does
    make(stores, batch_size=16).load_state_dict({**state, "batches": 0})  # at an epoch boundary anything goes


# ---- under Lightning ----------------------------------------------------------------------------


def fit(dm: ActivationDataModule, steps: int, callbacks=(), **kw):
    from thumbsae.sae import OptimConfig, SAELitModule, TopKConfig

    cfg = TopKConfig(d_in=D, expansion_factor=4, k=2, dead_window_tokens=64, input_scale=dm.scale)
    module = SAELitModule(cfg, OptimConfig(lr=3e-3, warmup_steps=3))
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=steps, max_epochs=-1, logger=False,
                         enable_checkpointing=bool(callbacks), callbacks=list(callbacks), enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0, deterministic=True)
    try:
        trainer.fit(module, datamodule=dm, **kw)
    except (KeyboardInterrupt, SystemExit):
        pass  # Lightning may turn the interrupt into a graceful stop or exit
    return module


@pytest.mark.parametrize("num_workers, kill_at", [(0, 23), (0, 18), (2, 18)])
def test_killed_fit_resumes_to_identical_weights(stores, tmp_path, num_workers, kill_at):
    """Checkpoints every 5 steps, epochs of 10 batches: killed at step 23 the run resumes from step 20
    (the end of epoch 1); killed at 18, from step 15 (the middle of epoch 1)."""
    steps = 33
    dm = make(stores, num_workers=num_workers, batch_size=27)
    assert len(dm.train_dataloader()) == 10
    full = fit(dm, steps)

    ckpt_dir = tmp_path / "checkpoints"
    save = pl.callbacks.ModelCheckpoint(dirpath=str(ckpt_dir), save_last=True, every_n_train_steps=5)
    killed = fit(make(stores, num_workers=num_workers, batch_size=27), steps, [save, KillAt(kill_at)])
    assert killed.global_step == kill_at
    checkpoint = torch.load(ckpt_dir / "last.ckpt", weights_only=True)
    saved = checkpoint["ActivationDataModule"]
    assert (saved["epoch"], saved["batches"]) == ((2, 0) if kill_at == 23 else (1, 5))

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resumed = fit(make(stores, num_workers=num_workers, batch_size=27), steps,
                      [pl.callbacks.ModelCheckpoint(dirpath=str(tmp_path / "again"))],
                      ckpt_path=str(ckpt_dir / "last.ckpt"), weights_only=True)
    assert not [w for w in caught if "resum" in str(w.message)]  # no "dataloader is not resumable"
    assert resumed.global_step == steps
    for key, value in full.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), f"{key} differs after resume"
