"""A LightningDataModule streaming float32 activation batches `[B, D]` from one or more shard stores.

The train/validation split is by image: all rows of an image fall on the same side. Batches come
from `thumbsae.activations.stream.ActivationStream` (two-level shuffling, disjoint parts per rank
and worker). The training stream is resumable: `state_dict()` records the epoch and how many of
its batches were consumed, and after `load_state_dict()` the next pass yields exactly the batches
an uninterrupted run would have produced from there.
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
from torch.utils.data import DataLoader

from thumbsae.activations.store import ActivationStore, from_storage
from thumbsae.activations.stream import ActivationStream, Piece, Window
from thumbsae.config import Seed
from thumbsae.errors import ThumbsaeError

__all__ = ["ActivationDataModule", "ActivationStream", "Piece", "Window"]

DEFAULT_SCALE_ROWS = 8192


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
        seed: Seed = 0,
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
