"""The training row stream: float32 activation batches `[B, D]` of one split, for one rank and worker.

Shuffling is two-level, so reads stay sequential on disk: the (store, shard) order is permuted
every epoch, and a window of `shuffle_buffer` rows is permuted in memory before it is cut into
batches. Each rank (and each DataLoader worker within it) reads a disjoint contiguous part of the
epoch's row stream, so an epoch covers every training row exactly once across all ranks (with
`even_batches`, up to world_size - 1 rows are left out so that every rank runs as many steps).
A stream can start mid-epoch (`set_epoch(epoch, batches)`) and then yields exactly the batches an
uninterrupted pass would have from there, reading only the windows it still needs.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from thumbsae.activations.store import from_storage

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
