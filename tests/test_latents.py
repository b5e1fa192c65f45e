"""Sparse latents of thumbnails: pooling against a dense reference, sparsity of memory, save/load."""

from __future__ import annotations

import tracemalloc
from typing import NamedTuple

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from thumbsae.analysis.latents import LatentMatrix, encode_latents, load_latents, save_latents
from thumbsae.errors import ThumbsaeError


class FakeLatents(NamedTuple):
    acts_BK: torch.Tensor
    indices_BK: torch.Tensor


class TopKFake(torch.nn.Module):
    """A tiny top-k SAE encoder with the thumbsae `encode` contract."""

    def __init__(self, d: int, n_latents: int, k: int, *, relu: bool = True, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.W_enc_DF = torch.nn.Parameter(torch.randn(d, n_latents, generator=g))
        self.n_latents, self.k, self.relu = n_latents, k, relu

    def encode(self, x_BD: torch.Tensor) -> FakeLatents:
        pre_BF = x_BD @ self.W_enc_DF
        if self.relu:
            pre_BF = pre_BF.relu()
        acts_BK, indices_BK = pre_BF.topk(self.k, dim=-1)
        return FakeLatents(acts_BK, indices_BK)

    def dense(self, x_ND: np.ndarray) -> np.ndarray:
        """Reference: the latents as a dense `[N, F]` array."""
        with torch.no_grad():
            acts_NK, idx_NK = self.encode(torch.as_tensor(x_ND))
        out_NF = np.zeros((x_ND.shape[0], self.n_latents), np.float64)
        np.put_along_axis(out_NF, idx_NK.numpy(), acts_NK.double().numpy(), axis=1)
        return out_NF


class FakeStore:
    """ActivationStore stand-in: rows in any order, a row -> image map, ids per image."""

    def __init__(self, x_ND: np.ndarray, row_image_N: np.ndarray, video_ids: list[str]):
        self._x_ND, self.row_image = x_ND, row_image_N
        self.video_ids = video_ids
        self.n, self.d = x_ND.shape
        self.row_token = np.zeros(self.n, np.int64)
        self.metadata = {"tokens": "all"}

    def read(self, start: int, stop: int) -> np.ndarray:
        return self._x_ND[start:stop]


def _pool_dense(lat_NF: np.ndarray, row_image_N: np.ndarray, n_images: int, pool: str) -> np.ndarray:
    out_IF = np.zeros((n_images, lat_NF.shape[1]))
    for i in range(n_images):
        rows = lat_NF[row_image_N == i]
        if len(rows):
            out_IF[i] = rows.max(0) if pool == "max" else rows.mean(0)
    return out_IF


@pytest.mark.parametrize("pool", ["max", "mean"])
@pytest.mark.parametrize("relu", [True, False])
def test_all_token_array_pools_like_dense_reference(pool, relu):
    rng = np.random.default_rng(0)
    x_NTD = rng.normal(size=(13, 7, 6)).astype(np.float32)
    # relu=False gives negative activations, where max must still see the absent zeros.
    sae = TopKFake(6, 20, 4 if relu else 15, relu=relu)
    # A batch size that splits images across batches.
    lm = encode_latents(sae, x_NTD, pool=pool, batch_size=5)
    ref = _pool_dense(sae.dense(x_NTD.reshape(-1, 6)), np.repeat(np.arange(13), 7), 13, pool)
    assert isinstance(lm.csr, sp.csr_matrix) and lm.csr.dtype == np.float32
    assert lm.csr.shape == (13, 20) and lm.video_ids == [str(i) for i in range(13)]
    np.testing.assert_allclose(lm.csr.toarray(), ref, rtol=1e-5, atol=1e-6)
    assert lm.csr.has_sorted_indices and not np.any(lm.csr.data == 0)


@pytest.mark.parametrize("pool", ["max", "mean"])
def test_store_with_shuffled_rows_and_uneven_token_counts(pool):
    rng = np.random.default_rng(1)
    tokens_per_image = np.array([3, 1, 5, 2, 4, 0, 6])  # image 5 has no rows
    row_image_N = rng.permutation(np.repeat(np.arange(7), tokens_per_image))
    x_ND = rng.normal(size=(row_image_N.size, 8)).astype(np.float32)
    ids = [f"v{i}" for i in range(7)]
    sae = TopKFake(8, 32, 3, seed=2)
    lm = encode_latents(sae, FakeStore(x_ND, row_image_N, ids), pool=pool, batch_size=4)
    ref = _pool_dense(sae.dense(x_ND), row_image_N, 7, pool)
    np.testing.assert_allclose(lm.csr.toarray(), ref, rtol=1e-5, atol=1e-6)
    assert lm.video_ids == ids
    assert lm.csr[5].nnz == 0


def test_one_vector_per_image_gives_its_own_latents():
    rng = np.random.default_rng(2)
    x_ND = rng.normal(size=(9, 5)).astype(np.float32)
    sae = TopKFake(5, 16, 2)
    lm = encode_latents(sae, x_ND, video_ids=[f"a{i}" for i in range(9)], batch_size=4)
    np.testing.assert_allclose(lm.csr.toarray(), sae.dense(x_ND), rtol=1e-6)
    assert (lm.csr.getnnz(axis=1) == 2).all()
    assert lm.video_ids[3] == "a3"


class HashedSAE:
    """An `encode` that needs no weights, so F can be huge: k latents picked from the input."""

    def __init__(self, n_latents: int, k: int):
        self.n_latents, self.k = n_latents, k

    def encode(self, x_BD: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        idx_BK = (x_BD[:, : self.k].abs() * 1e6).long() % self.n_latents
        return x_BD[:, : self.k].abs() + 0.1, idx_BK


def test_memory_grows_with_non_zeros_not_images_times_latents():
    n_latents = 2**22  # dense float32 latents of 3000 images would be ~50 GB
    x_NTD = np.random.default_rng(3).normal(size=(3000, 10, 4)).astype(np.float32)
    sae = HashedSAE(n_latents, k=4)
    tracemalloc.start()
    try:
        lm = encode_latents(sae, x_NTD, pool="max", batch_size=2048)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert lm.csr.shape == (3000, n_latents)
    assert 3000 * 4 <= lm.csr.nnz <= 3000 * 10 * 4
    # A few dozen bytes per non-zero (CSR itself is 8); dense would need 10 GB.
    assert peak < 48 * lm.csr.nnz + 2**20, f"peak {peak / 1e6:.1f} MB for {lm.csr.nnz} non-zeros"


def test_save_load_round_trip(tmp_path):
    rng = np.random.default_rng(4)
    sae = TopKFake(6, 40, 5)
    lm = encode_latents(sae, rng.normal(size=(11, 3, 6)).astype(np.float32), video_ids=[f"id,{i}" for i in range(11)])
    path = save_latents(lm, tmp_path / "latents.npz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latents.npz", "latents.video_ids.json"]
    back = load_latents(path)
    assert back.video_ids == lm.video_ids
    assert back.csr.dtype == np.float32 and back.csr.shape == lm.csr.shape
    np.testing.assert_array_equal(back.csr.indptr, lm.csr.indptr)
    np.testing.assert_array_equal(back.csr.indices, lm.csr.indices)
    np.testing.assert_array_equal(back.csr.data, lm.csr.data)


def test_encoding_is_deterministic(tmp_path):
    x_NTD = np.random.default_rng(5).normal(size=(20, 4, 6)).astype(np.float32)
    a = save_latents(encode_latents(TopKFake(6, 30, 3), x_NTD, pool="mean", batch_size=7), tmp_path / "a.npz")
    b = save_latents(encode_latents(TopKFake(6, 30, 3), x_NTD, pool="mean", batch_size=7), tmp_path / "b.npz")
    assert a.read_bytes() == b.read_bytes()
    # Another batch size changes only the encoder's matmul rounding, not the pooled result.
    c = encode_latents(TopKFake(6, 30, 3), x_NTD, pool="mean", batch_size=64)
    np.testing.assert_allclose(c.csr.toarray(), load_latents(a).csr.toarray(), rtol=1e-5, atol=1e-6)


def test_bad_files_and_inputs_raise_one_line_errors(tmp_path):
    with pytest.raises(ThumbsaeError, match="not found"):
        load_latents(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    (tmp_path / "junk.video_ids.json").write_text('{"video_ids": []}')
    with pytest.raises(ThumbsaeError, match="junk.npz"):
        load_latents(tmp_path / "junk.npz")
    lm = LatentMatrix(sp.csr_matrix(np.eye(3, dtype=np.float32)), ["a", "b", "c"])
    path = save_latents(lm, tmp_path / "ok.npz")
    (tmp_path / "ok.video_ids.json").write_text('{"video_ids": ["a"], "n_images": 1, "n_latents": 3}')
    with pytest.raises(ThumbsaeError, match="do not match"):
        load_latents(path)
    with pytest.raises(ThumbsaeError, match="pool"):
        encode_latents(TopKFake(3, 4, 1), np.zeros((2, 3), np.float32), pool="median")
    with pytest.raises(ThumbsaeError, match="shape"):
        encode_latents(TopKFake(3, 4, 1), np.zeros(3, np.float32))
    with pytest.raises(ThumbsaeError, match="video_ids"):
        encode_latents(TopKFake(3, 4, 1), np.zeros((2, 3), np.float32), video_ids=["x"])


def test_real_activation_store_matches_the_in_memory_array(tmp_path):
    """A store written by extraction (all tokens, rows across shards) pools like its `[N, T, D]` array."""
    import pandas as pd
    from PIL import Image

    from thumbsae.activations import embed_images, extract_to_store, load_clip

    micro = {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 64, "layers": 2, "width": 32, "patch_size": 16, "head_width": 16},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    }
    clip = load_clip("thumbsae-test-micro", overrides=micro)
    rng = np.random.default_rng(6)
    paths = []
    for i in range(5):
        paths.append(tmp_path / f"t{i}.png")
        Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(paths[-1])
    table = pd.DataFrame({"video_id": [f"v{i}" for i in range(5)], "image": [str(p) for p in paths]})
    settings = dict(layer=-2, tokens="all", fit="pad")
    store = extract_to_store(
        table, clip, out_dir=tmp_path / "store", dtype="float32", shard_rows=2, batch_size=2, num_workers=0,
        progress=False, **settings,
    )
    x_NTD = embed_images(clip, [Image.open(p) for p in paths], **settings)
    sae = TopKFake(store.d, 64, 4, seed=1)
    for pool in ("max", "mean"):
        from_store = encode_latents(sae, store, pool=pool, batch_size=7)
        from_array = encode_latents(sae, x_NTD, pool=pool, video_ids=table["video_id"].tolist())
        assert from_store.video_ids == store.video_ids == from_array.video_ids
        np.testing.assert_allclose(from_store.csr.toarray(), from_array.csr.toarray(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("arch", ["topk", "relu"])
def test_real_sparse_autoencoder_pools_like_its_dense_latents(arch):
    """The team's SAE (zero-padded rows for relu, input scaling inside encode) against `encode_dense`."""
    from thumbsae.sae import SparseAutoencoder, sae_config_from_dict

    sizes = {"arch": arch, "d_in": 8, "n_latents": 48, "input_scale": 1.5, **({"k": 4} if arch == "topk" else {})}
    sae = SparseAutoencoder(sae_config_from_dict(sizes)).eval()
    x_NTD = np.random.default_rng(7).normal(size=(9, 5, 8)).astype(np.float32)
    with torch.no_grad():
        dense_NTF = sae.encode_dense(torch.as_tensor(x_NTD.reshape(-1, 8))).reshape(9, 5, 48).double().numpy()
    for pool, ref_NF in (("max", dense_NTF.max(axis=1)), ("mean", dense_NTF.mean(axis=1))):
        lm = encode_latents(sae, x_NTD, pool=pool, batch_size=8)
        assert lm.n_latents == 48
        np.testing.assert_allclose(lm.csr.toarray(), ref_NF, rtol=1e-5, atol=1e-6)
