"""Sparse SAE latents of thumbnails: one row per image, stored as CSR, never dense.

An SAE trained on CLS or mean vectors gives each thumbnail the latents of its one vector. An SAE
trained on all tokens gives each token its latents; a thumbnail's latents are then its tokens'
latents pooled per image, by `max` (default) or `mean` (sum divided by the image's token count).
Pooling works on (image, latent, value) triplets, so memory grows with the non-zeros.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import scipy.sparse as sp
import torch

from thumbsae.files import atomic_write_text, write_atomic
from thumbsae.errors import ThumbsaeError

Pool = Literal["max", "mean"]


@dataclass(frozen=True)
class LatentMatrix:
    """SAE latents of a set of thumbnails.

    csr: float32 `[N_images, F]`, row i belongs to `video_ids[i]`; absent entries are zero.
    video_ids: `N_images` ids, in the image order of the source.
    """

    csr: sp.csr_matrix
    video_ids: list[str]

    def __post_init__(self) -> None:
        if self.csr.shape[0] != len(self.video_ids):
            raise ThumbsaeError(
                f"LatentMatrix: {self.csr.shape[0]} rows but {len(self.video_ids)} video_ids"
            )

    @property
    def n_images(self) -> int:
        return int(self.csr.shape[0])

    @property
    def n_latents(self) -> int:
        return int(self.csr.shape[1])


@dataclass(frozen=True)
class _Rows:
    """Where activation rows come from: `read(start, stop) -> [rows, D]`, and each row's image."""

    n: int
    read: Callable[[int, int], np.ndarray]
    row_image_N: np.ndarray
    n_images: int
    video_ids: list[str]


def _rows_of(source: Any, video_ids: Sequence[str] | None) -> _Rows:
    """Turn an ActivationStore, an `[N, D]` array or an `[N, T, D]` array into activation rows."""
    if isinstance(source, torch.Tensor):
        source = source.detach().cpu().numpy()
    if isinstance(source, np.ndarray):
        if source.ndim == 2:
            n_images, n_tokens = source.shape[0], 1
            x_ND = source
        elif source.ndim == 3:
            n_images, n_tokens = source.shape[0], source.shape[1]
            x_ND = source.reshape(n_images * n_tokens, source.shape[2])
        else:
            raise ThumbsaeError(
                f"encode_latents: expected an [N, D] or [N, T, D] array, got shape {source.shape}"
            )
        ids = [str(i) for i in range(n_images)] if video_ids is None else [str(v) for v in video_ids]
        # Tokens of image i are rows i*T .. i*T+T-1 after the reshape.
        row_image_N = np.repeat(np.arange(n_images, dtype=np.int64), n_tokens)
        return _Rows(x_ND.shape[0], lambda a, b: x_ND[a:b], row_image_N, n_images, _check_ids(ids, n_images))
    if not hasattr(source, "read"):
        raise ThumbsaeError(
            f"encode_latents: source must be an ActivationStore or an array, got {type(source).__name__}"
        )
    ids = list(source.video_ids) if video_ids is None else [str(v) for v in video_ids]
    n = int(source.n)
    row_image = getattr(source, "row_image", None)
    # A store without a row -> image map holds one vector per image.
    row_image_N = np.arange(n, dtype=np.int64) if row_image is None else np.asarray(row_image, dtype=np.int64)
    if row_image_N.shape != (n,):
        raise ThumbsaeError(f"encode_latents: store row_image has shape {row_image_N.shape}, expected ({n},)")
    n_images = len(ids)
    if n and (row_image_N.min() < 0 or row_image_N.max() >= n_images):
        raise ThumbsaeError(
            f"encode_latents: store row_image refers to images outside 0..{n_images - 1}"
        )
    return _Rows(n, source.read, row_image_N, n_images, _check_ids(ids, n_images))


def _check_ids(ids: list[str], n_images: int) -> list[str]:
    if len(ids) != n_images:
        raise ThumbsaeError(f"encode_latents: {len(ids)} video_ids for {n_images} images")
    return ids


def _n_latents(sae: Any) -> int:
    n = getattr(sae, "n_latents", None)
    if n is None:
        n = getattr(getattr(sae, "cfg", None), "n_latents", None)
    if n is None:
        raise ThumbsaeError("encode_latents: the SAE exposes neither .n_latents nor .cfg.n_latents")
    return int(n)


def _sae_dtype(sae: Any) -> torch.dtype:
    params = getattr(sae, "parameters", None)
    if params is not None:
        for p in params():
            return p.dtype
    return torch.float32


def _finish(
    image: np.ndarray,
    latent: np.ndarray,
    value: np.ndarray,
    count: np.ndarray,
    tokens_per_image_I: np.ndarray,
    pool: Pool,
    index_dtype: type,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pooled values of complete images: `(image, latent, value float32)`, zeros dropped.

    value: max or sum over the tokens where the latent was active; count: how many such tokens.
    """
    if pool == "mean":
        value = value / tokens_per_image_I[image]
    else:
        # A latent absent from some of the image's tokens is 0 there, which beats a negative max.
        value = np.where(count < tokens_per_image_I[image], np.maximum(value, 0.0), value)
    keep = value != 0
    return image[keep].astype(index_dtype), latent[keep].astype(index_dtype), value[keep].astype(np.float32)


def _acts_and_indices(latents: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """`(acts_BK, indices_BK)` of an SAE's `encode` output (SparseLatents or a plain pair)."""
    if hasattr(latents, "acts_BK"):
        return latents.acts_BK, latents.indices_BK
    acts_BK, indices_BK = latents[0], latents[1]
    return acts_BK, indices_BK


def _reduce_triplets(
    key: np.ndarray, value: np.ndarray, count: np.ndarray, pool: Pool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Merge duplicate keys: max (or sum, for mean) of values, and the sum of counts.

    key int64 `[M]` (image * F + latent), value float64 `[M]`, count int64 `[M]` (tokens seen).
    Returns sorted unique keys with their reduced value and count.
    """
    if key.size == 0:
        return key, value, count
    order = np.argsort(key, kind="stable")
    key_s, value_s, count_s = key[order], value[order], count[order]
    starts = np.flatnonzero(np.concatenate(([True], key_s[1:] != key_s[:-1])))
    reduce = np.maximum if pool == "max" else np.add
    return key_s[starts], reduce.reduceat(value_s, starts), np.add.reduceat(count_s, starts)


def encode_latents(
    sae: Any,
    source: Any,
    *,
    pool: Pool = "max",
    batch_size: int = 4096,
    device: str | torch.device = "cpu",
    progress: bool = False,
    video_ids: Sequence[str] | None = None,
) -> LatentMatrix:
    """SAE latents of every image of `source`, pooled over each image's tokens.

    sae: anything with `encode(x_BD) -> (acts_BK, indices_BK)` (zeros are padding) and
        `n_latents` (or `cfg.n_latents`); it is used as is (not moved to `device`).
    source: an ActivationStore (`.n`, `.read(start, stop) -> [rows, D]`, `.row_image` `[N]`,
        `.video_ids`), an array `[N, D]` (one vector per image) or `[N, T, D]` (all tokens).
    pool: `max` or `mean` (sum over the image's tokens divided by its token count, zeros included).
    video_ids: ids of the images (default: the store's, or "0".."N-1" for an array).
    Returns LatentMatrix with csr float32 `[N_images, F]`.
    """
    if pool not in ("max", "mean"):
        raise ThumbsaeError(f"encode_latents: pool must be 'max' or 'mean', got {pool!r}")
    if batch_size < 1:
        raise ThumbsaeError(f"encode_latents: batch_size must be >= 1, got {batch_size}")
    rows = _rows_of(source, video_ids)
    n_latents = _n_latents(sae)
    dtype = _sae_dtype(sae)
    tokens_per_image_I = np.bincount(rows.row_image_N, minlength=rows.n_images)
    index_dtype = np.int32 if max(rows.n_images, n_latents) < 2**31 else np.int64

    # An image is complete once the batch holding its last row is done; only incomplete images'
    # triplets are carried, so memory follows the pooled non-zeros (rows sorted by image carry one).
    last_row_I = np.full(rows.n_images, -1, dtype=np.int64)
    np.maximum.at(last_row_I, rows.row_image_N, np.arange(rows.n, dtype=np.int64))
    pending = (np.zeros(0, np.int64), np.zeros(0, np.float64), np.zeros(0, np.int32))
    done: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    starts = range(0, rows.n, batch_size)
    if progress:
        from thumbsae.console import progress_bar

        starts = progress_bar(len(starts), "latents", unit="batch", iterable=starts)
    with torch.inference_mode():
        for start in starts:
            stop = min(start + batch_size, rows.n)
            x_BD = torch.as_tensor(np.asarray(rows.read(start, stop)), device=device).to(dtype)
            acts_BK, indices_BK = _acts_and_indices(sae.encode(x_BD))
            acts_BK = acts_BK.float().cpu().numpy()
            indices_BK = indices_BK.cpu().numpy().astype(np.int64)
            image_BK = np.broadcast_to(rows.row_image_N[start:stop, None], acts_BK.shape)
            live = acts_BK != 0  # zeros are padding (relu SAEs) or inactive latents
            key = image_BK[live] * n_latents + indices_BK[live]
            key, value, count = _reduce_triplets(
                np.concatenate((pending[0], key)),
                np.concatenate((pending[1], acts_BK[live].astype(np.float64))),
                np.concatenate((pending[2], np.ones(key.size, np.int32))),
                pool,
            )
            image = key // n_latents
            complete = last_row_I[image] < stop
            pending = (key[~complete], value[~complete], count[~complete])
            done.append(
                _finish(image[complete], key[complete] - image[complete] * n_latents,
                        value[complete], count[complete], tokens_per_image_I, pool, index_dtype)
            )

    image_M = np.concatenate([d[0] for d in done]) if done else np.zeros(0, index_dtype)
    latent_M = np.concatenate([d[1] for d in done]) if done else np.zeros(0, index_dtype)
    value_M = np.concatenate([d[2] for d in done]) if done else np.zeros(0, np.float32)
    del done
    if np.any(image_M[1:] < image_M[:-1]):
        # Rows not sorted by image: images completed out of order; within an image latents are sorted.
        order = np.argsort(image_M, kind="stable")
        image_M, latent_M, value_M = image_M[order], latent_M[order], value_M[order]
    indptr = np.zeros(rows.n_images + 1, dtype=np.int64)
    np.cumsum(np.bincount(image_M, minlength=rows.n_images), out=indptr[1:])
    del image_M
    csr = sp.csr_matrix((value_M, latent_M, indptr), shape=(rows.n_images, n_latents))
    return LatentMatrix(csr=csr, video_ids=rows.video_ids)


def _ids_path(path: Path) -> Path:
    return path.with_name(path.name.removesuffix(".npz") + ".video_ids.json")


def save_latents(lm: LatentMatrix, path: str | os.PathLike) -> Path:
    """Write `lm` to `path` (`.npz`, scipy.sparse) and `<stem>.video_ids.json`, each atomically.

    Returns the `.npz` path.
    """
    path = Path(path)
    if path.suffix != ".npz":
        path = path.with_name(path.name + ".npz")
    csr = lm.csr.tocsr().astype(np.float32)
    csr.sort_indices()
    meta = {"n_images": lm.n_images, "n_latents": lm.n_latents, "video_ids": [str(v) for v in lm.video_ids]}
    try:
        # The ids go first: a reader finding the .npz also finds ids of the same write.
        atomic_write_text(_ids_path(path), json.dumps(meta))
        write_atomic(path, lambda tmp: sp.save_npz(tmp, csr, compressed=True))
    except OSError as e:
        raise ThumbsaeError(f"{path}: cannot write latents ({e.strerror or e})") from e
    return path


def load_latents(path: str | os.PathLike) -> LatentMatrix:
    """Read latents written by `save_latents` (no pickle). Returns LatentMatrix csr `[N, F]`."""
    path = Path(path)
    if path.suffix != ".npz":
        path = path.with_name(path.name + ".npz")
    ids_path = _ids_path(path)
    for p in (path, ids_path):
        if not p.is_file():
            raise ThumbsaeError(f"{p}: latents file not found")
    try:
        # scipy's load_npz reads with allow_pickle=False.
        csr = sp.csr_matrix(sp.load_npz(path))
        meta = json.loads(ids_path.read_text())
        video_ids = [str(v) for v in meta["video_ids"]]
    except (OSError, ValueError, KeyError, TypeError, json.JSONDecodeError) as e:
        raise ThumbsaeError(f"{path}: not a readable latents file ({e})") from e
    if csr.shape[0] != len(video_ids) or [csr.shape[0], csr.shape[1]] != [meta.get("n_images"), meta.get("n_latents")]:
        raise ThumbsaeError(
            f"{path}: {csr.shape} latents do not match {ids_path.name} "
            f"({len(video_ids)} video_ids, {meta.get('n_latents')} latents)"
        )
    return LatentMatrix(csr=csr.astype(np.float32), video_ids=video_ids)
