"""Decoding and fitting images for extraction: a stream of uint8 pixel batches for the forward pass.

Where the forward pass runs decides how the decoding workers run. On a GPU they decode ahead, as
usual (DataLoader worker processes). On the CPU the forward pass already keeps every core busy,
and workers decoding at the same time would only slow it down, so they work in lockstep with it:
a worker starts on a batch only when the main process opens its gate (between two forward
passes), the workers claim chunks of it from a shared counter, and write the fitted pixels
straight into a shared-memory batch buffer. Decoding then uses every core without the GIL, and
never overlaps the forward pass. Whoever decodes, the pixels are the same.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info

from thumbsae.activations.preprocess import ImageTransform, rgb_tensor
from thumbsae.data import ImageDecodeError, load_rgb
from thumbsae.errors import ThumbsaeError


@dataclass(frozen=True)
class Batch:
    """One batch for the forward pass."""

    kept: list[int]  # input indices of the decoded images, in order
    pixels_BCHW: torch.Tensor | None  # their fitted uint8 pixels (None: every image was rejected)
    rejects: list[tuple[int, str]]  # (input index, reason)
    margins: tuple[int, int, int, int]  # pad rows/columns every image has (top, bottom, left, right)

    def pin_memory(self) -> Batch:
        """The same batch with its pixels in page-locked memory (DataLoader `pin_memory=True`)."""
        pixels = self.pixels_BCHW.pin_memory() if self.pixels_BCHW is not None else None
        return dataclasses.replace(self, pixels_BCHW=pixels)


def resolve_num_workers(num_workers: int | None, device: str | torch.device) -> int:
    """Decoding worker processes for a model on `device`; None -> the default: one lockstep worker
    per torch thread on the CPU (0, i.e. in process, with a single thread), min(8, CPUs) on a GPU."""
    if num_workers is None:
        if torch.device(device).type == "cpu":
            return torch.get_num_threads() if torch.get_num_threads() > 1 else 0
        return min(8, os.cpu_count() or 1)
    if num_workers < 0:
        raise ThumbsaeError(f"activations.num_workers={num_workers} must be >= 0 (or null for the default)")
    return int(num_workers)


def in_lockstep(device: str | torch.device) -> bool:
    """Whether decoding workers must wait for the forward pass: it runs on the same (CPU) cores."""
    return torch.device(device).type == "cpu"


def batch_stream(
    transform: ImageTransform,
    paths: tuple[str, ...],
    batches: list[list[int]],
    *,
    device: str | torch.device,
    batch_size: int,
    num_workers: int,
) -> Iterator[Batch]:
    """The `Batch`es of `batches` (lists of indices into `paths`), in order. Their pixels may be
    overwritten by the next batch once it is asked for."""
    if num_workers > 0 and in_lockstep(device):
        yield from lockstep_stream(transform, paths, batches, batch_size=batch_size, num_workers=num_workers)
        return
    yield from DataLoader(
        DecodedImages(paths, threads=torch.get_num_threads() if num_workers == 0 else 1),
        batch_sampler=batches,
        collate_fn=FitBatch(transform),
        num_workers=num_workers,
        pin_memory=torch.device(device).type == "cuda",
    )


@dataclass(frozen=True)
class DecodedImages(Dataset):
    """Image i of `paths` -> `(i, uint8 RGB pixels [h, w, 3] or None, reject reason or None)`.

    Fetched a batch at a time: in DataLoader worker processes one image after another, in the main
    process (`num_workers=0`) on `threads` threads (decoding releases the GIL), so that decoding
    uses every core between two forward passes instead of competing with them.
    """

    paths: tuple[str, ...]
    threads: int = 1

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None, str | None]:
        try:
            return i, rgb_tensor(load_rgb(self.paths[i])), None
        except ImageDecodeError as exc:
            return i, None, exc.reason
        except Exception as exc:  # a decoder bug on one file must not stop extraction
            return i, None, f"unusable image: {' '.join(str(exc).split())[:200]}"

    def __getitems__(self, indices: list[int]) -> list[tuple[int, torch.Tensor | None, str | None]]:
        if self.threads <= 1 or len(indices) < 2 or get_worker_info() is not None:
            return [self[i] for i in indices]
        with ThreadPoolExecutor(min(self.threads, len(indices))) as pool:
            return list(pool.map(self.__getitem__, indices))


@dataclass(frozen=True)
class FitBatch:
    """DataLoader collate: decoded images -> a `Batch`."""

    transform: ImageTransform

    def __call__(self, items: list[tuple[int, torch.Tensor | None, str | None]]) -> Batch:
        images = [x for _, x, _ in items if x is not None]
        return Batch(
            kept=[i for i, x, _ in items if x is not None],
            pixels_BCHW=self.transform.fit_batch(images) if images else None,
            rejects=[(i, reason) for i, x, reason in items if x is None],
            margins=self.transform.pad_margins([tuple(x.shape[:2]) for x in images]),
        )


# ---- lockstep workers (CPU) ---------------------------------------------------------------------


@dataclass(frozen=True)
class _SharedBatch(Dataset):
    """Worker side of lockstep decoding. A task is a whole batch (its input indices); every worker
    gets each batch, waits for its gate, then claims chunks of the batch from a shared counter until
    none is left, decoding and fitting each chunk straight into `pixels_BHWC` at its slots. Claiming
    balances the work when one worker starts late or runs slower. Only `(slot, input index, decoded
    size (h, w) or None, reject reason)` per image goes back to the main process.
    """

    images: DecodedImages
    transform: ImageTransform
    pixels_BHWC: torch.Tensor  # shared memory: one batch of fitted pixels
    gates: tuple  # one multiprocessing semaphore per worker
    next_slot: Any  # multiprocessing Value("q"): the first slot of the batch nobody has claimed yet
    parent_pid: int

    def __len__(self) -> int:
        return len(self.images)

    def __getitems__(self, batch: list[int]) -> list[tuple]:
        gate = self.gates[get_worker_info().id]
        while not gate.acquire(timeout=1.0):
            if os.getppid() != self.parent_pid:  # the main process is gone (killed): nobody will open the gate
                os._exit(0)
        done = []
        while True:
            # Guided chunks: a share of what is left, so that the last ones are small and the
            # workers finish together even when one started late.
            with self.next_slot.get_lock():
                first = self.next_slot.value
                end = min(len(batch), first + max(2, (len(batch) - first) // (2 * len(self.gates))))
                self.next_slot.value = end
            if first >= end:
                return done
            done.extend(self._decode_and_fit(batch, first, end))

    def _decode_and_fit(self, batch: list[int], first: int, end: int) -> list[tuple]:
        decoded = [self.images[batch[slot]] for slot in range(first, end)]
        good = [slot for slot, (_, x, _) in zip(range(first, end), decoded) if x is not None]
        images = [x for _, x, _ in decoded if x is not None]
        if good and good == list(range(good[0], good[0] + len(good))):
            self.transform.fit_batch(images, out=self.pixels_BHWC[good[0] : good[-1] + 1].permute(0, 3, 1, 2))
        elif good:
            self.pixels_BHWC[good] = self.transform.fit_batch(images).permute(0, 2, 3, 1)
        return [
            (slot, i, None if x is None else tuple(x.shape[:2]), reason)
            for slot, (i, x, reason) in zip(range(first, end), decoded)
        ]


def _as_list(items: list) -> list:
    """DataLoader collate for `_SharedBatch`: its results are already lists."""
    return items


@dataclass(frozen=True)
class _PinToCore:
    """DataLoader `worker_init_fn`: worker w runs on core `cores[w]`. In lockstep each worker has a
    core to itself; left to the scheduler, two would now and then share one, or start on a cold cache."""

    cores: tuple[int, ...]

    def __call__(self, worker_id: int) -> None:
        try:
            os.sched_setaffinity(0, {self.cores[worker_id]})
        except (AttributeError, OSError, IndexError):  # no affinity on this OS, or a core went away: run unpinned
            pass


def lockstep_stream(
    transform: ImageTransform, paths: tuple[str, ...], batches: list[list[int]], *, batch_size: int, num_workers: int
) -> Iterator[Batch]:
    """`batch_stream` with workers that decode only while the main process waits for them."""
    context = multiprocessing.get_context()
    gates = tuple(context.Semaphore(0) for _ in range(num_workers))
    next_slot = context.Value("q", 0)
    h, w = transform.size_hw
    pixels_BHWC = torch.empty((batch_size, h, w, 3), dtype=torch.uint8).share_memory_()
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    loader = DataLoader(
        _SharedBatch(DecodedImages(paths), transform, pixels_BHWC, gates, next_slot, os.getpid()),
        # Every worker gets every batch (DataLoader hands out tasks round-robin) and claims chunks of it.
        batch_sampler=[batch for batch in batches for _ in range(num_workers)],
        collate_fn=_as_list,
        num_workers=num_workers,
        prefetch_factor=1,
        worker_init_fn=_PinToCore(tuple(cores)) if len(cores) >= num_workers else None,
        multiprocessing_context=context,
    )
    results = iter(loader)
    try:
        for _ in batches:
            next_slot.value = 0  # no worker touches it now: all of them wait at their gates
            for gate in gates:
                gate.release()
            items = sorted(item for _ in gates for item in next(results))
            kept = [(slot, i, size) for slot, i, size, _ in items if size is not None]
            slots = [slot for slot, _, _ in kept]
            pixels_BCHW = pixels_BHWC.permute(0, 3, 1, 2)
            if not kept:
                pixels_BCHW = None
            elif slots == list(range(len(slots))):
                pixels_BCHW = pixels_BCHW[: len(slots)]
            else:  # rejects left holes in the batch
                pixels_BCHW = pixels_BCHW[torch.tensor(slots)]
            yield Batch(
                kept=[i for _, i, _ in kept],
                pixels_BCHW=pixels_BCHW,
                rejects=[(i, reason) for _, i, size, reason in items if size is None],
                margins=transform.pad_margins([size for _, _, size in kept]),
            )
    finally:
        for gate in gates:  # a worker waiting at its gate must get past it to see the loader shut down
            gate.release()
        del results  # shuts the workers down
