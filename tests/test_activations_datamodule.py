"""ActivationDataModule: every row exactly once per epoch (ranks x workers), split by image, seeded shuffles."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from thumbsae.activations import ActivationDataModule, ActivationStore, extract_to_store, load_clip
from thumbsae.errors import ThumbsaeError

MICRO = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 3, "width": 32, "patch_size": 16, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _make_store(folder, n_images: int, seed: int, tokens: str, clip) -> ActivationStore:
    rng = np.random.default_rng(seed)
    (folder / "img").mkdir(parents=True)
    rows = []
    for i in range(n_images):
        path = folder / "img" / f"{i}.png"
        Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(path)
        rows.append({"video_id": f"s{seed}-{i}", "image": str(path)})
    return extract_to_store(pd.DataFrame(rows), clip, layer=-1, tokens=tokens, fit="squash",
                            out_dir=folder / "store", dtype="float32", shard_rows=40, batch_size=8,
                            num_workers=0, progress=False)


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """Two stores: 20 images x 17 tokens (8 shards) and 13 images x 1 cls row (1 shard)."""
    clip = load_clip("thumbsae-test-micro", overrides=MICRO)
    a = _make_store(tmp_path_factory.mktemp("a"), 20, 0, "all", clip)
    b = _make_store(tmp_path_factory.mktemp("b"), 13, 1, "cls", clip)
    return a, b


def _keys(x_ND: np.ndarray) -> list[bytes]:
    return [row.tobytes() for row in np.ascontiguousarray(x_ND, dtype=np.float32)]


def _all_rows(stores) -> list[bytes]:
    return sorted(k for s in stores for k in _keys(s.read()))


def _epoch(dm: ActivationDataModule, loader: str = "train") -> list[torch.Tensor]:
    return list(getattr(dm, f"{loader}_dataloader")())


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("world_size", [1, 2])
def test_every_row_exactly_once_per_epoch(stores, world_size, num_workers):
    seen, per_rank = [], []
    for rank in range(world_size):
        dm = ActivationDataModule([s.path for s in stores], batch_size=16, val_fraction=0.2, shuffle_buffer=50,
                                  num_workers=num_workers, seed=3, normalize=False, rank=rank,
                                  world_size=world_size, even_batches=False)
        loader = dm.train_dataloader()
        batches = list(loader)
        assert len(batches) == len(loader)
        assert all(b.dtype == torch.float32 and b.shape[1] == 32 and len(b) <= 16 for b in batches)
        per_rank.append(sum(len(b) for b in batches))
        seen += [k for b in batches for k in _keys(b.numpy())]
        seen += [k for b in _epoch(dm, "val") for k in _keys(b.numpy())]
    assert sorted(seen) == _all_rows(stores)  # train + val of all ranks: each row once
    assert max(per_rank) - min(per_rank) <= 1


def test_split_is_by_image_and_deterministic(stores):
    a, _ = stores
    dm = ActivationDataModule(a.path, batch_size=1000, val_fraction=0.25, seed=5, normalize=False)
    val_rows = np.concatenate([b.numpy() for b in _epoch(dm, "val")])
    assert len(val_rows) == 5 * 17  # 25 % of 20 images, all 17 tokens of each
    image_of = {k: img for k, img in zip(_keys(a.read()), a.row_image)}
    val_images = {image_of[k] for k in _keys(val_rows)}
    assert len(val_images) == 5
    train_rows = np.concatenate([b.numpy() for b in _epoch(dm, "train")])
    assert not val_images & {image_of[k] for k in _keys(train_rows)}
    again = ActivationDataModule(a.path, batch_size=1000, val_fraction=0.25, seed=5, normalize=False)
    assert _keys(np.concatenate([b.numpy() for b in _epoch(again, "val")])) == _keys(val_rows)
    other = ActivationDataModule(a.path, batch_size=1000, val_fraction=0.25, seed=6, normalize=False)
    assert {image_of[k] for k in _keys(np.concatenate([b.numpy() for b in _epoch(other, "val")]))} != val_images


def test_shuffle_is_seeded_and_changes_every_epoch(stores):
    def order(seed, epochs=2):
        dm = ActivationDataModule([s.path for s in stores], batch_size=16, val_fraction=0.0, shuffle_buffer=64,
                                  seed=seed, normalize=False)
        return [_keys(torch.cat(_epoch(dm)).numpy()) for _ in range(epochs)]

    first, second = order(0)
    assert first == order(0)[0]  # same seed, same epoch -> same batches
    assert first != second and sorted(first) == sorted(second)  # next epoch: same rows, new order
    assert first != order(1)[0]
    # the shuffle really mixes: consecutive rows rarely come from consecutive store rows
    natural = {k: i for i, k in enumerate(_all_rows(stores))}
    steps = np.diff([natural[k] for k in first])
    assert np.mean(steps == 1) < 0.2
    # an explicit epoch reproduces that epoch's order
    dm = ActivationDataModule([s.path for s in stores], batch_size=16, val_fraction=0.0, shuffle_buffer=64,
                              seed=0, normalize=False)
    dm.set_epoch(1)
    assert _keys(torch.cat(_epoch(dm)).numpy()) == second


def test_even_batches_keep_ranks_in_step(stores):
    counts, seen = [], []
    for rank in range(3):
        dm = ActivationDataModule([s.path for s in stores], batch_size=16, val_fraction=0.2, seed=0,
                                  normalize=False, rank=rank, world_size=3, num_workers=0)
        batches = _epoch(dm)
        counts.append(len(batches))
        seen += [k for b in batches for k in _keys(b.numpy())]
    assert len(set(counts)) == 1
    assert len(seen) == len(set(seen))  # disjoint across ranks
    assert dm.n_train_rows - len(seen) < 3  # at most world_size - 1 rows left out this epoch


def test_normalize_scales_to_mean_norm_sqrt_d(stores):
    dm = ActivationDataModule([s.path for s in stores], batch_size=64, val_fraction=0.1, seed=0, normalize=True)
    raw_norm = np.linalg.norm(np.concatenate([s.read() for s in stores]), axis=1).mean()
    assert dm.scale == pytest.approx(np.sqrt(32) / raw_norm, rel=0.1)
    x_ND = torch.cat(_epoch(dm)).numpy()
    assert np.linalg.norm(x_ND, axis=1).mean() == pytest.approx(np.sqrt(32), rel=0.1)
    assert ActivationDataModule(stores[0].path, normalize=False).scale == 1.0
    assert dm.d == 32


def test_lightning_trainer_drives_epochs_and_rank(stores):
    import pytorch_lightning as pl

    class Recorder(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(32, 1)
            self.rows = {}

        def training_step(self, x_BD, batch_idx):
            self.rows.setdefault(self.current_epoch, []).extend(_keys(x_BD.numpy()))
            return self.layer(x_BD).pow(2).mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.0)

    dm = ActivationDataModule([s.path for s in stores], batch_size=32, val_fraction=0.0, seed=0, normalize=False)
    model = Recorder()
    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(model, datamodule=dm)
    assert sorted(model.rows[0]) == sorted(model.rows[1]) == _all_rows(stores)
    assert model.rows[0] != model.rows[1]


def test_stores_of_different_width_are_refused(stores, tmp_path):
    clip = load_clip("thumbsae-test-micro-48", overrides={**MICRO, "vision_cfg": {**MICRO["vision_cfg"], "width": 48}})
    wide = _make_store(tmp_path, 3, 9, "cls", clip)
    with pytest.raises(ThumbsaeError, match="differ in width"):
        ActivationDataModule([stores[0].path, wide.path]).setup()


def test_stores_of_mixed_dtypes_stream_together(tmp_path):
    from thumbsae.activations import store_from_array

    rng = np.random.default_rng(0)
    a_NTD = rng.standard_normal((6, 5, 8), dtype=np.float32)
    b_ND = rng.standard_normal((7, 8), dtype=np.float32)
    a = store_from_array(tmp_path / "a", a_NTD, [f"a{i}" for i in range(6)], tokens="all", dtype="bfloat16",
                         shard_rows=10)
    b = store_from_array(tmp_path / "b", b_ND, [f"b{i}" for i in range(7)], dtype="float16", shard_rows=3)
    assert (a.n, a.tokens_per_image, len(a.shards), b.n, len(b.shards)) == (30, 5, 3, 7, 3)
    assert a.row_token.tolist() == list(range(5)) * 6
    dm = ActivationDataModule([a.path, b.path], batch_size=4, val_fraction=0.0, shuffle_buffer=8, normalize=False)
    got = torch.cat(_epoch(dm)).numpy()
    expected = np.concatenate([a.read(), b.read()])
    assert sorted(_keys(got)) == sorted(_keys(expected))
    np.testing.assert_allclose(np.sort(expected[:, 0]), np.sort(np.r_[a_NTD.reshape(-1, 8)[:, 0], b_ND[:, 0]]),
                               rtol=1e-2, atol=1e-2)
