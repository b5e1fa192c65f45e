"""Extraction across processes and machines: which rank computes which shard, and how ranks agree.

Launched with `torchrun --nproc-per-node N extract.py ...` (on several machines: `--nnodes`, or
SLURM's `srun torchrun ...`), every rank runs the same extraction into the same folder, which must
be on a file system that every rank sees. Rank r reads and hashes its contiguous part of the
images (the content hash is gathered), then computes the shards s with `s % N == r`: the
assignment depends only on the shard index, so a resumed run gives each shard the same owner and
two ranks never write the same file. Rank 0 prepares the folder before anyone writes and writes
`metadata.json` after everyone is done: the store reads the same as a single-process store (on
the same hardware, byte for byte). Ranks agree through `torch.distributed`; only small objects
(file digests, one flag) and barriers travel, so the CPU backend gloo is enough.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist

from thumbsae.errors import ThumbsaeError

# Ranks wait at the final barrier for the slowest one; a long extraction must not time out there.
DEFAULT_TIMEOUT_S = 6 * 3600


@dataclass(frozen=True)
class Ranks:
    """This process's `rank` among `world_size` extraction processes (a single process: 0 of 1)."""

    rank: int = 0
    world_size: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world_size:
            raise ThumbsaeError(f"rank {self.rank} of world size {self.world_size}: need 0 <= rank < world size")

    @property
    def is_main(self) -> bool:
        """Rank 0: prepares the folder, writes metadata and rejects, prints."""
        return self.rank == 0

    def owns(self, shard: int) -> bool:
        """Whether this rank computes shard `shard`."""
        return shard % self.world_size == self.rank

    def part(self, n: int) -> range:
        """This rank's contiguous part of `range(n)` (parts differ in length by at most one)."""
        return range(self.rank * n // self.world_size, (self.rank + 1) * n // self.world_size)

    def barrier(self) -> None:
        """Wait for every rank (nothing to wait for alone)."""
        if self.world_size > 1:
            dist.barrier()

    def gather(self, mine: list) -> list:
        """Every rank's `mine`, concatenated in rank order (on every rank)."""
        if self.world_size == 1:
            return list(mine)
        parts: list = [None] * self.world_size
        dist.all_gather_object(parts, list(mine))
        return [item for part in parts for item in part]

    def agree(self, value):
        """Rank 0's `value`, on every rank."""
        if self.world_size == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def current_ranks() -> Ranks:
    """The ranks of the initialised `torch.distributed` process group, else a single process."""
    if dist.is_available() and dist.is_initialized():
        return Ranks(dist.get_rank(), dist.get_world_size())
    return Ranks()


@contextlib.contextmanager
def extraction_group(timeout_s: float = DEFAULT_TIMEOUT_S) -> Iterator[Ranks]:
    """The ranks to extract with. Under torchrun (`WORLD_SIZE` > 1) without a process group yet,
    start a gloo group (from torchrun's `MASTER_ADDR`, `MASTER_PORT`, `RANK`, `WORLD_SIZE`) for the
    extraction and end it afterwards, so a later trainer can start its own (NCCL) group."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1 or (dist.is_available() and dist.is_initialized()):
        yield current_ranks()
        return
    if not dist.is_available():
        raise ThumbsaeError(f"WORLD_SIZE={world_size} but this torch build has no torch.distributed")
    dist.init_process_group("gloo", timeout=dt.timedelta(seconds=timeout_s))
    try:
        yield current_ranks()
    finally:
        dist.destroy_process_group()


def extraction_device(device: str | None = "auto") -> str:
    """The device to extract on: `auto` (or None) -> this rank's GPU (`cuda:LOCAL_RANK`) when CUDA is
    available, else `cpu`; anything else as given."""
    if device not in (None, "auto"):
        return str(device)
    if torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0')) % torch.cuda.device_count()}"
    return "cpu"
