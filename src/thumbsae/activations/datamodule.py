"""A LightningDataModule streaming float32 activation batches `[B, D]` from one or more shard stores.

Shuffling is two-level, so reads stay sequential on disk: the (store, shard) order is permuted
every epoch, and a window of `shuffle_buffer` rows is permuted in memory before it is cut into
batches. Each rank (and each DataLoader worker within it) reads a disjoint contiguous part of the
epoch's row stream, so an epoch covers every training row exactly once across all ranks (with
`even_batches`, up to world_size - 1 rows are left out so that every rank runs as many steps).
The train/validation split is by image: all rows of an image fall on the same side.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from thumbsae.activations.store import ActivationStore, from_storage
from thumbsae.errors import ThumbsaeError

DEFAULT_SCALE_ROWS = 8192
# torch runs an elementwise op on one thread below this many elements (at::internal::GRAIN_SIZE).
_SERIAL_ELEMENTS = 32768
_NUMPY_STORAGE = {"float16": np.float16, "bfloat16": np.uint16, "float32": np.float32}


@dataclass(frozen=True)
class Piece:
    """Rows `rows` (local indices, ascending) of shard `shard` of store `store`."""

    store: int
    shard: int
    rows: np.ndarray


class ActivationStream(IterableDataset):
    """Batches of one split for one rank: yields float32 tensors `[B, D]` (last one may be shorter).

    `pieces` is the split's rows per (store, shard); `shuffle` permutes shard order per epoch (seeded
    by `(seed, epoch)`) and rows within windows of `shuffle_buffer` rows.
    """

    def __init__(
        self,
        store_paths: Sequence[str],
        pieces: list[Piece],
        *,
        batch_size: int,
        shuffle: bool,
        shuffle_buffer: int,
        seed: int,
        rank: int,
        world_size: int,
        even_batches: bool,
        num_workers: int,
        scale: float,
        d: int,
        window_dtype: str,
    ):
        super().__init__()
        self.store_paths = list(store_paths)
        self.pieces = pieces
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.shuffle_buffer = max(int(shuffle_buffer), self.batch_size)
        self.seed = int(seed)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.even_batches = even_batches
        self.num_workers = int(num_workers)
        self.scale = float(scale)
        self.epoch = 0
        self._stores: list[ActivationStore] | None = None
        self.n_rows = int(sum(len(p.rows) for p in pieces))
        self.d = int(d)
        self.window_dtype = window_dtype

    def __getstate__(self) -> dict:
        # Workers reopen the memory maps themselves instead of receiving pickled copies.
        return {**self.__dict__, "_stores": None}

    def set_epoch(self, epoch: int) -> None:
        """Use `epoch` for the next iteration's shuffle."""
        self.epoch = int(epoch)

    def rank_bounds(self) -> tuple[int, int]:
        """`[start, stop)` of this rank's part of the epoch's row stream."""
        if self.even_batches:
            per_rank = self.n_rows // self.world_size
            return self.rank * per_rank, (self.rank + 1) * per_rank
        return self.rank * self.n_rows // self.world_size, (self.rank + 1) * self.n_rows // self.world_size

    def worker_bounds(self, worker: int, n_workers: int) -> tuple[int, int]:
        """`[start, stop)` of one DataLoader worker's part of this rank's rows."""
        a, b = self.rank_bounds()
        return a + worker * (b - a) // n_workers, a + (worker + 1) * (b - a) // n_workers

    def __len__(self) -> int:
        n_workers = max(1, self.num_workers)
        bounds = [self.worker_bounds(w, n_workers) for w in range(n_workers)]
        return sum(-(-(b - a) // self.batch_size) for a, b in bounds)  # ceil: each worker ends on a short batch

    def _open(self) -> list[ActivationStore]:
        if self._stores is None:
            self._stores = [ActivationStore(p) for p in self.store_paths]
        return self._stores

    def _epoch_pieces(self) -> list[Piece]:
        if not self.shuffle:
            return self.pieces
        order = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.pieces))
        return [self.pieces[i] for i in order]

    def __iter__(self) -> Iterator[torch.Tensor]:
        info = get_worker_info()
        worker, n_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        start, stop = self.worker_bounds(worker, n_workers)
        rng = np.random.default_rng([self.seed, self.epoch, self.rank, worker, 1])
        stores = self._open()
        leftover = np.empty((0, self.d), dtype=_NUMPY_STORAGE[self.window_dtype])
        group: list[tuple[Piece, np.ndarray]] = []
        group_rows = 0
        for piece, local in self._span(start, stop):
            group.append((piece, local))
            group_rows += len(local)
            if group_rows >= self.shuffle_buffer:
                leftover = yield from self._emit(self._fill(stores, group, leftover), rng, final=False)
                group, group_rows = [], 0
        window = self._fill(stores, group, leftover)
        if len(window[1]):
            yield from self._emit(window, rng, final=True)

    def _span(self, start: int, stop: int) -> Iterator[tuple[Piece, np.ndarray]]:
        """`(piece, local rows)` covering rows `[start, stop)` of the epoch's row stream."""
        offset = 0
        for piece in self._epoch_pieces():
            first, offset = offset, offset + len(piece.rows)
            a, b = max(start, first), min(stop, offset)
            if b > a:
                yield piece, piece.rows[a - first : b - first]
            if offset >= stop:
                break

    def _fill(
        self, stores: list[ActivationStore], group: list[tuple[Piece, np.ndarray]], leftover: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """One window: `(rows [R, D] in the window dtype, positions of the wanted rows in it)`.

        A piece whose wanted rows are dense (the training split) is read as one contiguous slice
        from its first to its last wanted row, a plain copy much cheaper than fancy indexing a
        memmap; the few rows of the other split in between are skipped by the positions. Sparse
        pieces (the validation split) are read row by row.
        """
        reads: list[tuple[int, int] | None] = []  # a slice to read, or None: read the rows themselves
        for _, local in group:
            a, b = int(local[0]), int(local[-1]) + 1
            reads.append((a, b) if b - a <= 2 * len(local) else None)
        sizes = [span[1] - span[0] if span else len(local) for span, (_, local) in zip(reads, group)]
        window = np.empty((len(leftover) + sum(sizes), self.d), dtype=leftover.dtype)
        window[: len(leftover)] = leftover
        wanted = [np.arange(len(leftover))]
        at = len(leftover)
        for (piece, local), span, size in zip(group, reads, sizes):
            store = stores[piece.store]
            shard = store.shards[piece.shard]
            raw = shard[span[0] : span[1]] if span else shard[local]
            window[at : at + size] = raw if store.dtype == self.window_dtype else from_storage(raw, store.dtype)
            wanted.append(local - span[0] + at if span else np.arange(at, at + size))
            at += size
        return window, np.concatenate(wanted)

    def _emit(self, window: tuple[np.ndarray, np.ndarray], rng: np.random.Generator, *, final: bool):
        """Yield full batches of the (shuffled) window; return the leftover rows (all of them if `final`)."""
        rows_RD, wanted = window
        order = wanted[rng.permutation(len(wanted))] if self.shuffle else wanted
        n_full = len(order) // self.batch_size * self.batch_size
        for i in range(0, n_full, self.batch_size):
            yield self._to_batch(rows_RD[order[i : i + self.batch_size]])
        rest = rows_RD[order[n_full:]]
        if final and len(rest):
            yield self._to_batch(rest)
            return rest[:0]
        return rest

    def _to_batch(self, raw_BD: np.ndarray) -> torch.Tensor:
        """Storage rows (a fresh array) -> float32 tensor `[B, D]`, scaled.

        Everything runs on the calling thread: the cast in chunks below torch's parallel grain size,
        the scaling in numpy. Intra-op threads would compete with the training step for the same
        cores (and stall badly on a busy machine) for what is a memory-bound copy.
        """
        src_BD = torch.from_numpy(raw_BD)
        if self.window_dtype == "bfloat16":
            src_BD = src_BD.view(torch.bfloat16)  # the uint16 bits are bfloat16 values
        x_BD = torch.empty(src_BD.shape, dtype=torch.float32)
        step = max(1, _SERIAL_ELEMENTS // max(1, src_BD.shape[1]))
        for i in range(0, len(src_BD), step):
            x_BD[i : i + step].copy_(src_BD[i : i + step])
        if self.scale != 1.0:
            np.multiply(x_BD.numpy(), np.float32(self.scale), out=x_BD.numpy())
        return x_BD


class _EpochLoader(DataLoader):
    """A DataLoader that tells its stream the epoch before each pass (workers copy it at start)."""

    def __init__(self, stream: ActivationStream, epoch_of_next_pass, **kwargs):
        super().__init__(stream, batch_size=None, **kwargs)
        self._epoch_of_next_pass = epoch_of_next_pass

    def __iter__(self):
        self.dataset.set_epoch(self._epoch_of_next_pass())
        return super().__iter__()


class ActivationDataModule(pl.LightningDataModule):
    """Train/validation batches (float32 `[B, D]`) over one or more activation stores.

    `stores`: store folders (or opened `ActivationStore`s) with equal `d`. `val_fraction` of each
    store's images (chosen by `seed`) form the validation split. `normalize=True` multiplies every
    batch by `.scale = sqrt(d) / mean ||x||` estimated on a fixed sample of training rows (save it
    with the SAE; apply it at inference). `rank` / `world_size` default to the trainer's (or
    `torch.distributed`'s); `even_batches` (default: on when world_size > 1) gives every rank the
    same number of rows so DDP steps stay in lockstep. Same seed and epoch -> same batches.
    """

    def __init__(
        self,
        stores: str | os.PathLike | ActivationStore | Sequence[str | os.PathLike | ActivationStore],
        batch_size: int = 4096,
        val_fraction: float = 0.05,
        shuffle_buffer: int = 32768,
        num_workers: int = 0,
        seed: int = 0,
        normalize: bool = True,
        *,
        rank: int | None = None,
        world_size: int | None = None,
        even_batches: bool | None = None,
        scale_rows: int = DEFAULT_SCALE_ROWS,
    ):
        super().__init__()
        if isinstance(stores, (str, os.PathLike, ActivationStore)):
            stores = [stores]
        self.store_paths = [str(s.path if isinstance(s, ActivationStore) else Path(s)) for s in stores]
        if not self.store_paths:
            raise ThumbsaeError("ActivationDataModule needs at least one activation store")
        if not 0.0 <= val_fraction < 1.0:
            raise ThumbsaeError(f"val_fraction={val_fraction} must be in [0, 1)")
        self.batch_size = int(batch_size)
        self.val_fraction = float(val_fraction)
        self.shuffle_buffer = int(shuffle_buffer)
        self.num_workers = int(num_workers)
        self.seed = int(seed)
        self.normalize = bool(normalize)
        self.scale_rows = int(scale_rows)
        self._rank, self._world_size, self._even_batches = rank, world_size, even_batches
        self._epoch: int | None = None
        self._passes = 0
        self._ready = False
        self._scale: float | None = None

    # ---- set-up -------------------------------------------------------------------------------

    def setup(self, stage: str | None = None) -> None:
        """Open the stores and split their rows by image (idempotent)."""
        if self._ready:
            return
        self.stores = [ActivationStore(p) for p in self.store_paths]
        dims = {s.d for s in self.stores}
        if len(dims) != 1:
            raise ThumbsaeError(f"activation stores differ in width d ({sorted(dims)}): {', '.join(self.store_paths)}")
        self.train_pieces, self.val_pieces = [], []
        for i, store in enumerate(self.stores):
            is_val_image = self._val_images(i, store.n_images)
            row_is_val = is_val_image[np.asarray(store.row_image)]
            for s, (lo, hi) in enumerate(store.shard_rows):
                local_val = row_is_val[lo:hi]
                self.train_pieces.append(Piece(i, s, np.flatnonzero(~local_val)))
                self.val_pieces.append(Piece(i, s, np.flatnonzero(local_val)))
        self.train_pieces = [p for p in self.train_pieces if len(p.rows)]
        self.val_pieces = [p for p in self.val_pieces if len(p.rows)]
        self._ready = True

    def _val_images(self, store_index: int, n_images: int) -> np.ndarray:
        """`[n_images]` bool: which images of store `store_index` are validation images."""
        n_val = int(round(self.val_fraction * n_images))
        rank_of = np.random.default_rng([self.seed, store_index]).permutation(n_images)
        return rank_of < n_val

    @property
    def d(self) -> int:
        """Activation width D."""
        self.setup()
        return self.stores[0].d

    @property
    def n_train_rows(self) -> int:
        """Training rows of all ranks together."""
        self.setup()
        return int(sum(len(p.rows) for p in self.train_pieces))

    @property
    def n_val_rows(self) -> int:
        """Validation rows of all ranks together."""
        self.setup()
        return int(sum(len(p.rows) for p in self.val_pieces))

    @property
    def scale(self) -> float:
        """The factor multiplied into every batch (1.0 unless `normalize`)."""
        if self._scale is None:
            self._scale = self.estimate_scale() if self.normalize else 1.0
        return self._scale

    def estimate_scale(self) -> float:
        """`sqrt(d) / mean ||x||` over a fixed (seeded) sample of up to `scale_rows` training rows."""
        self.setup()
        pieces = self.train_pieces or self.val_pieces
        counts = np.array([len(p.rows) for p in pieces])
        if counts.sum() == 0:
            return 1.0
        rng = np.random.default_rng([self.seed, 2])
        picks = np.sort(rng.choice(counts.sum(), size=min(self.scale_rows, counts.sum()), replace=False))
        ends = np.cumsum(counts)
        piece_of = np.searchsorted(ends, picks, side="right")
        norms = []
        for k in np.unique(piece_of):
            piece = pieces[k]
            local = piece.rows[picks[piece_of == k] - (ends[k] - counts[k])]
            store = self.stores[piece.store]
            x_ND = from_storage(store.shards[piece.shard][local], store.dtype)
            norms.append(np.linalg.norm(x_ND.astype(np.float64), axis=1))
        mean_norm = float(np.concatenate(norms).mean())
        return float(np.sqrt(self.d) / mean_norm) if mean_norm > 0 else 1.0

    def rank_and_world_size(self) -> tuple[int, int]:
        """This process's (rank, world size): explicit, else the trainer's, else torch.distributed's."""
        if self._rank is not None or self._world_size is not None:
            return int(self._rank or 0), int(self._world_size or 1)
        trainer = self._trainer_or_none()
        if trainer is not None:
            return int(trainer.global_rank), int(trainer.world_size)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1

    def set_epoch(self, epoch: int) -> None:
        """Shuffle the next training pass as epoch `epoch` (the trainer's epoch is used when attached)."""
        self._epoch = int(epoch)

    # ---- loaders ------------------------------------------------------------------------------

    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches of this rank, float32 `[B, D]`, reshuffled every epoch."""
        self.setup()
        return self._loader(self.train_pieces, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        """Validation batches of this rank in store order, float32 `[B, D]`."""
        self.setup()
        return self._loader(self.val_pieces, shuffle=False)

    def _loader(self, pieces: list[Piece], *, shuffle: bool) -> DataLoader:
        rank, world_size = self.rank_and_world_size()
        even = self._even_batches if self._even_batches is not None else world_size > 1
        stream = ActivationStream(
            self.store_paths,
            pieces,
            batch_size=self.batch_size,
            shuffle=shuffle,
            shuffle_buffer=self.shuffle_buffer,
            seed=self.seed,
            rank=rank,
            world_size=world_size,
            even_batches=even and shuffle,
            num_workers=self.num_workers,
            scale=self.scale,
            d=self.d,
            # One dtype: shuffle rows in it (half the bytes of float32); mixed stores share float32.
            window_dtype=self.stores[0].dtype if len({s.dtype for s in self.stores}) == 1 else "float32",
        )
        return _EpochLoader(
            stream,
            self._next_epoch if shuffle else (lambda: 0),
            num_workers=self.num_workers,
            persistent_workers=False,
        )

    def _next_epoch(self) -> int:
        trainer = self._trainer_or_none()
        if self._epoch is not None:
            epoch, self._epoch = self._epoch, None
        elif trainer is not None:
            epoch = int(trainer.current_epoch)
        else:
            epoch = self._passes
        self._passes += 1
        return epoch

    def _trainer_or_none(self):
        return getattr(self, "trainer", None)
