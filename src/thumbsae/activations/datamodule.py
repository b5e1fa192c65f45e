"""A LightningDataModule streaming float32 activation batches `[B, D]` from one or more shard stores.

Shuffling is two-level, so reads stay sequential on disk: the (store, shard) order is permuted
every epoch, and a window of `shuffle_buffer` rows is permuted in memory before it is cut into
batches. Each rank (and each DataLoader worker within it) reads a disjoint contiguous part of the
epoch's row stream, so an epoch covers every training row exactly once across all ranks (with
`even_batches`, up to world_size - 1 rows are left out so that every rank runs as many steps).
The train/validation split is by image: all rows of an image fall on the same side.

The training stream is resumable: `state_dict()` records the epoch and how many of its batches
were consumed, and after `load_state_dict()` the next pass yields exactly the batches an
uninterrupted run would have produced from there, reading only the windows it still needs.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from thumbsae.activations.store import ActivationStore, from_storage
from thumbsae.errors import ThumbsaeError

DEFAULT_SCALE_ROWS = 8192
# torch runs an elementwise op on one thread below this many elements (at::internal::GRAIN_SIZE).
_SERIAL_ELEMENTS = 32768
# Rows of a batch cast to float32, then scaled while still in cache.
_BLOCK_ROWS = 1024
_NUMPY_STORAGE = {"float16": np.float16, "bfloat16": np.uint16, "float32": np.float32}


@dataclass(frozen=True)
class Piece:
    """Rows `rows` (local indices, ascending) of shard `shard` of store `store`."""

    store: int
    shard: int
    rows: np.ndarray


@dataclass(frozen=True)
class Window:
    """The new rows of one shuffle window: `parts` `(piece, local rows)` hold stream rows `[first, first + n)`."""

    parts: list[tuple[Piece, np.ndarray]]
    first: int
    n: int


class ActivationStream(IterableDataset):
    """Batches of one split for one rank: yields float32 tensors `[B, D]` (last one may be shorter).

    `shard_files[s]` are store `s`'s shard files (`.npy`, storage dtype `dtypes[s]`); `pieces` is
    the split's rows per (store, shard). `shuffle` permutes shard order per epoch (seeded by
    `(seed, epoch)`) and rows within windows of `shuffle_buffer` rows. A window is held in
    `window_dtype` (the storage dtype, half the bytes of float32 for 16-bit stores); each batch is one
    gather from it, converted to float32 and scaled.
    """

    def __init__(
        self,
        shard_files: Sequence[Sequence[str]],
        dtypes: Sequence[str],
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
    ):
        super().__init__()
        self.shard_files = [list(files) for files in shard_files]
        self.dtypes = list(dtypes)
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
        self.n_rows = int(sum(len(p.rows) for p in pieces))
        self.d = int(d)
        # One dtype: shuffle rows in it; mixed stores share float32.
        self.window_dtype = self.dtypes[0] if len(set(self.dtypes)) == 1 else "float32"
        self.epoch = 0
        self.skip_W = [0] * max(1, self.num_workers)  # batches of each worker's part already consumed this epoch
        self.rotation = 0  # DataLoader worker j streams worker (j + rotation) % n_workers's part
        self._maps: dict[tuple[int, int], np.ndarray] = {}

    def __getstate__(self) -> dict:
        # Workers reopen the memory maps themselves instead of receiving pickled copies.
        return {**self.__dict__, "_maps": {}}

    def set_epoch(self, epoch: int, batches: int = 0) -> None:
        """Stream epoch `epoch` from its batch `batches` on; the batches before it are not read.

        DataLoader workers take turns, one batch each, a worker dropping out when its part ends. So
        the first `batches` batches hold a known number from each worker's part, and DataLoader
        worker 0 of the next pass takes the part whose turn comes next.
        """
        counts_W = np.array(self.worker_batches())
        turns = np.flatnonzero(np.arange(counts_W.max())[:, None] < counts_W) % len(counts_W)  # round by round
        self.epoch = int(epoch)
        self.skip_W = np.bincount(turns[:batches], minlength=len(counts_W)).tolist()
        self.rotation = int(turns[batches]) if batches < len(turns) else 0

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

    def worker_batches(self) -> list[int]:
        """Batches per epoch of each worker's part (each part ends on a short batch)."""
        n_workers = max(1, self.num_workers)
        bounds = [self.worker_bounds(w, n_workers) for w in range(n_workers)]
        return [-(-(b - a) // self.batch_size) for a, b in bounds]

    def __len__(self) -> int:
        return sum(self.worker_batches())

    def __iter__(self) -> Iterator[torch.Tensor]:
        info = get_worker_info()
        n_workers = info.num_workers if info is not None else 1
        worker = (info.id + self.rotation) % n_workers if info is not None else 0
        rng = np.random.default_rng([self.seed, self.epoch, self.rank, worker, 1])
        windows = self._windows(*self.worker_bounds(worker, n_workers))
        first, carry_P, skip = self._skip(windows, rng, self.skip_W[worker])
        return self._batches(windows, first, self._read_rows(windows[:first], carry_P), rng, skip)

    # ---- planning -----------------------------------------------------------------------------

    def _epoch_pieces(self) -> list[Piece]:
        if not self.shuffle:
            return self.pieces
        order = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.pieces))
        return [self.pieces[i] for i in order]

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

    def _windows(self, start: int, stop: int) -> list[Window]:
        """Stream rows `[start, stop)` as windows of whole pieces of at least `shuffle_buffer` rows,
        then one of what remains (possibly nothing)."""
        windows: list[Window] = []
        parts: list[tuple[Piece, np.ndarray]] = []
        first, n = start, 0
        for piece, local in self._span(start, stop):
            parts.append((piece, local))
            n += len(local)
            if n >= self.shuffle_buffer:
                windows.append(Window(parts, first, n))
                parts, first, n = [], first + n, 0
        windows.append(Window(parts, first, n))
        return windows

    def _order(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """Positions `[n]` of a window's rows (the carried ones first) in batch order."""
        return rng.permutation(n) if self.shuffle else np.arange(n)

    def _skip(self, windows: list[Window], rng: np.random.Generator, skip: int) -> tuple[int, np.ndarray, int]:
        """Pass over the windows whose batches are all among the first `skip`, drawing their
        shuffles without reading them. Returns (first window to read, stream rows `[L]` carried into
        it, batches of it to skip)."""
        carry_P = np.empty(0, dtype=np.int64)
        for i, window in enumerate(windows):
            n = len(carry_P) + window.n
            n_full = n // self.batch_size * self.batch_size
            n_batches = n_full // self.batch_size + int(i == len(windows) - 1 and n > n_full)
            if n == 0 or skip < n_batches:
                return i, carry_P, skip
            rows_P = np.concatenate([carry_P, np.arange(window.first, window.first + window.n)])
            carry_P = rows_P[self._order(rng, n)[n_full:]]
            skip -= n_batches
        return len(windows), np.empty(0, dtype=np.int64), 0  # the last window's rest was its short batch

    # ---- reading ------------------------------------------------------------------------------

    def _batches(
        self, windows: list[Window], first: int, carry_RD: np.ndarray, rng: np.random.Generator, skip: int
    ) -> Iterator[torch.Tensor]:
        """Batches of `windows[first:]`, each window's rows after the rows carried over from the one
        before (`carry_RD`), shuffled; the first `skip` batches are left out."""
        window_RD = np.empty((0, self.d), dtype=_NUMPY_STORAGE[self.window_dtype])
        for window in windows[first:]:
            window_RD, slots = self._fill(window, carry_RD, window_RD)
            order = slots[self._order(rng, len(slots))]
            n_full = len(order) // self.batch_size * self.batch_size
            for a in range(skip * self.batch_size, n_full, self.batch_size):
                yield self._to_batch(window_RD[order[a : a + self.batch_size]])
            skip = 0
            carry_RD = window_RD[order[n_full:]]
        if len(carry_RD):
            yield self._to_batch(carry_RD)

    def _fill(self, window: Window, carry_RD: np.ndarray, window_RD: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Read the carried rows, then the window's, into `window_RD` (replaced if too small).

        Returns the array and each row's slot in it `[L + n]`. A piece whose rows are dense (the
        training split) is read as one contiguous slice from its first to its last row, a plain copy
        much cheaper than fancy indexing a memmap; the few rows of the other split in between are
        skipped by the slots. Sparse pieces (the validation split) are read row by row.
        """
        spans = [(int(local[0]), int(local[-1]) + 1) for _, local in window.parts]
        spans = [(a, b) if b - a <= 2 * len(local) else None for (a, b), (_, local) in zip(spans, window.parts)]
        sizes = [span[1] - span[0] if span else len(local) for span, (_, local) in zip(spans, window.parts)]
        if len(window_RD) < len(carry_RD) + sum(sizes):
            window_RD = np.empty((len(carry_RD) + sum(sizes), self.d), dtype=window_RD.dtype)
        window_RD[: len(carry_RD)] = carry_RD
        slots = [np.arange(len(carry_RD))]
        at = len(carry_RD)
        for (piece, local), span, size in zip(window.parts, spans, sizes):
            shard = self._map(piece)
            window_RD[at : at + size] = self._to_window(piece, shard[span[0] : span[1]] if span else shard[local])
            slots.append(local - span[0] + at if span else np.arange(at, at + size))
            at += size
        return window_RD, np.concatenate(slots)

    def _read_rows(self, windows: list[Window], rows_P: np.ndarray) -> np.ndarray:
        """`[len(rows_P), D]` in the window dtype: the rows at stream positions `rows_P` (any order)."""
        out_RD = np.empty((len(rows_P), self.d), dtype=_NUMPY_STORAGE[self.window_dtype])
        for window in windows:
            at = window.first
            for piece, local in window.parts:
                hit = np.flatnonzero((rows_P >= at) & (rows_P < at + len(local)))
                if len(hit):
                    out_RD[hit] = self._to_window(piece, self._map(piece)[local[rows_P[hit] - at]])
                at += len(local)
        return out_RD

    def _map(self, piece: Piece) -> np.ndarray:
        """The memory map of the shard of `piece`, `[rows, D]` in its storage dtype."""
        key = (piece.store, piece.shard)
        if key not in self._maps:
            self._maps[key] = np.load(self.shard_files[piece.store][piece.shard], mmap_mode="r")
        return self._maps[key]

    def _to_window(self, piece: Piece, raw: np.ndarray) -> np.ndarray:
        """Rows of `piece`'s store as the window dtype (as they are when it is theirs)."""
        dtype = self.dtypes[piece.store]
        return raw if dtype == self.window_dtype else from_storage(raw, dtype)

    def _to_batch(self, raw_BD: np.ndarray) -> torch.Tensor:
        """Window rows (a fresh array) -> float32 tensor `[B, D]`, scaled.

        Everything runs on the calling thread, block by block while a block is in cache: the cast
        in pieces below torch's parallel grain size, the scaling in numpy. Intra-op threads would
        compete with the training step for the same cores (and stall badly on a busy machine) for
        what is a memory-bound copy.
        """
        src_BD = torch.from_numpy(raw_BD)
        if self.window_dtype == "bfloat16":
            src_BD = src_BD.view(torch.bfloat16)  # the uint16 bits are bfloat16 values
        x_BD = np.empty(raw_BD.shape, dtype=np.float32)
        to_BD = torch.from_numpy(x_BD)
        step = max(1, _SERIAL_ELEMENTS // self.d)
        for a in range(0, len(x_BD), _BLOCK_ROWS):
            for to, block in zip(to_BD[a : a + _BLOCK_ROWS].split(step), src_BD[a : a + _BLOCK_ROWS].split(step)):
                to.copy_(block)
            if self.scale != 1.0:
                np.multiply(x_BD[a : a + _BLOCK_ROWS], np.float32(self.scale), out=x_BD[a : a + _BLOCK_ROWS])
        return to_BD


@dataclass
class _Pass:
    """A training pass under way: `batches` of the `total` of epoch `epoch` handed out so far."""

    epoch: int
    batches: int
    total: int


class _TrainLoader(DataLoader):
    """The training DataLoader: before each pass its DataModule says where to start (epoch, batches
    already consumed); it counts the batches it hands out. Its `state_dict` / `load_state_dict` are
    the DataModule's, so Lightning treats it as resumable (and saves and restores the same
    position twice: with the DataModule and with the fit loop)."""

    def __init__(self, stream: ActivationStream, datamodule: ActivationDataModule, **kwargs):
        super().__init__(stream, batch_size=None, **kwargs)
        self._datamodule = datamodule

    def __iter__(self) -> Iterator[torch.Tensor]:
        progress = self._datamodule._begin_pass(len(self.dataset))
        self.dataset.set_epoch(progress.epoch, progress.batches)
        return self._counted(super().__iter__(), progress)

    @staticmethod
    def _counted(batches: Iterator[torch.Tensor], progress: _Pass) -> Iterator[torch.Tensor]:
        for x_BD in batches:
            progress.batches += 1
            yield x_BD

    def state_dict(self) -> dict[str, Any]:
        return self._datamodule.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._datamodule.load_state_dict(state_dict)


class ActivationDataModule(pl.LightningDataModule):
    """Train/validation batches (float32 `[B, D]`) over one or more activation stores.

    `stores`: store folders (or opened `ActivationStore`s) with equal `d`. `val_fraction` of each
    store's images (chosen by `seed`) form the validation split. `normalize=True` multiplies every
    batch by `.scale = sqrt(d) / mean ||x||` estimated on a fixed sample of training rows (save it
    with the SAE; apply it at inference). `rank` / `world_size` default to the trainer's (or
    `torch.distributed`'s); `even_batches` (default: on when world_size > 1) gives every rank the
    same number of rows so DDP steps stay in lockstep. Same seed and epoch -> same batches.

    `state_dict()` / `load_state_dict()` save and restore the training stream's position, which
    Lightning does with every checkpoint: a run resumed mid-epoch continues with exactly the
    batches the uninterrupted run would have had. Give Lightning the DataModule (`datamodule=`),
    not its loader: the position then comes from the fit loop's counters, which leave out the
    batch Lightning has prefetched.
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
        self._start: tuple[int, int] | None = None  # (epoch, batches to skip) of the next training pass
        self._pass: _Pass | None = None
        self._next_epoch = 0  # of the next training pass when no trainer is attached
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
        """Shuffle the next training pass as epoch `epoch` (else: the trainer's epoch when attached,
        alone the epoch after the previous pass's)."""
        self._start = (int(epoch), 0)

    # ---- loaders ------------------------------------------------------------------------------

    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches of this rank, float32 `[B, D]`, reshuffled every epoch."""
        self.setup()
        return _TrainLoader(self._stream(self.train_pieces, shuffle=True), self, num_workers=self.num_workers,
                            persistent_workers=False)

    def val_dataloader(self) -> DataLoader:
        """Validation batches of this rank in store order, float32 `[B, D]`."""
        self.setup()
        return DataLoader(self._stream(self.val_pieces, shuffle=False), batch_size=None,
                          num_workers=self.num_workers, persistent_workers=False)

    def _stream(self, pieces: list[Piece], *, shuffle: bool) -> ActivationStream:
        rank, world_size = self.rank_and_world_size()
        return ActivationStream(
            [[str(s.path / shard["file"]) for shard in s.metadata["shards"]] for s in self.stores],
            [s.dtype for s in self.stores],
            pieces,
            batch_size=self.batch_size,
            shuffle=shuffle,
            shuffle_buffer=self.shuffle_buffer,
            seed=self.seed,
            rank=rank,
            world_size=world_size,
            even_batches=shuffle and self._even(world_size),
            num_workers=self.num_workers,
            scale=self.scale,
            d=self.d,
        )

    def _even(self, world_size: int) -> bool:
        return self._even_batches if self._even_batches is not None else world_size > 1

    def _begin_pass(self, total: int) -> _Pass:
        """Start a training pass of `total` batches: at the loaded (or set) position, else at the
        first batch of the trainer's epoch (alone: the epoch after the previous pass's)."""
        if self._start is not None:
            (epoch, batches), self._start = self._start, None
        else:
            trainer = self._trainer_or_none()
            epoch, batches = int(trainer.current_epoch) if trainer is not None else self._next_epoch, 0
        self._next_epoch = epoch + 1
        self._pass = _Pass(epoch, batches, total)
        return self._pass

    def _trainer_or_none(self):
        return getattr(self, "trainer", None)

    # ---- resuming -----------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The training stream's position: `{"epoch", "batches", "stream"}`.

        `batches` of epoch `epoch` are consumed on this rank (the same count on every rank in DDP).
        Under a trainer these are the batches its fit loop finished, not those it prefetched; alone,
        the batches the latest training pass handed out. A finished epoch is saved as batch 0 of the
        next. `stream` holds the settings that fix the batch order within an epoch.
        """
        epoch, batches = self._position()
        return {"epoch": epoch, "batches": batches, "stream": self._stream_settings()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Make the next training pass start where `state_dict` (from `state_dict()`) left off.

        That pass yields exactly the remaining batches of the saved run's epoch, reading only the
        windows still needed. Raises `ThumbsaeError` when the saved position is mid-epoch and the
        settings that fix the batch order (stores, split, seed, batch size, shuffle buffer, world
        size, workers) differ from the saved ones, since the remaining batches would then not be
        the saved run's; at an epoch boundary they may differ.
        """
        epoch, batches = int(state_dict["epoch"]), int(state_dict["batches"])
        if batches:
            saved, now = state_dict["stream"], self._stream_settings()
            changed = [k if k == "stores" else f"{k} {saved.get(k)} -> {v}"
                       for k, v in now.items() if saved.get(k) != v]
            if changed:
                raise ThumbsaeError(
                    f"cannot resume the activation stream at batch {batches} of epoch {epoch}: {', '.join(changed)} "
                    "changed since the checkpoint; resume with its settings or from an end-of-epoch checkpoint"
                )
        self._start = (epoch, batches)

    def _position(self) -> tuple[int, int]:
        """(epoch, batches of it consumed) of the training stream, a finished epoch read as the next's start."""
        trainer = self._trainer_or_none()
        if trainer is not None:
            epochs = trainer.fit_loop.epoch_progress.current
            epoch, total = epochs.processed, trainer.num_training_batches
            batches = trainer.fit_loop.epoch_loop.batch_progress.current.processed if epochs.started > epoch else 0
        elif self._start is not None:
            return self._start
        elif self._pass is None:
            return self._next_epoch, 0
        else:
            epoch, batches, total = self._pass.epoch, self._pass.batches, self._pass.total
        return (epoch + 1, 0) if batches and batches >= total else (epoch, batches)

    def _stream_settings(self) -> dict[str, Any]:
        """What fixes the order of a rank's training batches within an epoch (plain values)."""
        self.setup()
        _, world_size = self.rank_and_world_size()
        return {
            "stores": [s.metadata.get("content_hash") or str(s.path) for s in self.stores],
            "val_fraction": self.val_fraction,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "shuffle_buffer": max(self.shuffle_buffer, self.batch_size),
            "world_size": world_size,
            "even_batches": self._even(world_size),
            "workers": max(1, self.num_workers),  # 0 (in the main process) streams as 1 worker does
        }
