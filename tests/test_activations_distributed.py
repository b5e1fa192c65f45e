"""Extraction across processes (gloo on CPU): two ranks write one store that reads like a single process's."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch.multiprocessing as mp
from PIL import Image

from thumbsae.activations import ActivationStore, extract_to_store, load_clip
from thumbsae.activations.distributed import Ranks, extraction_device
from thumbsae.errors import ThumbsaeError

MICRO = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 3, "width": 32, "patch_size": 16, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
MICRO_NAME = "thumbsae-test-micro-dist"
SETTINGS = dict(layer=-2, tokens="all", fit="pad", dtype="float16", shard_rows=34, batch_size=3, num_workers=0)


@pytest.fixture(scope="module")
def image_csv(tmp_path_factory) -> Path:
    """17 images of mixed sizes, two of them unusable (so ranks also carry rejects)."""
    folder = tmp_path_factory.mktemp("dist-images")
    rng = np.random.default_rng(5)
    rows = []
    for i in range(17):
        path = folder / f"img{i:02d}.png"
        if i == 6:
            path.write_bytes(b"no image")
        elif i != 13:
            w, h = [(80, 60), (64, 36), (50, 70)][i % 3]
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
        rows.append({"video_id": f"v{i:02d}", "image": str(path)})
    pd.DataFrame(rows).to_csv(folder / "images.csv", index=False)
    return folder / "images.csv"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world_size: int, port: int, csv: str, out: str, rejects: str) -> None:
    """One torchrun-like rank: the environment torchrun sets, the group `extraction_group` starts."""
    import torch

    from thumbsae.activations.distributed import extraction_group

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size),
                      LOCAL_RANK=str(rank))
    clip = load_clip(MICRO_NAME, overrides=MICRO)
    with extraction_group(timeout_s=120) as ranks:
        assert ranks == Ranks(rank, world_size)
        store = extract_to_store(pd.read_csv(csv), clip, out_dir=out, rejects_path=rejects, progress=False, **SETTINGS)
    assert store.n_images == 15


def _bytes_of(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


class _Hub:
    """What ranks share when they run as threads of one process (a stand-in for a process group)."""

    def __init__(self, world_size: int):
        self.barrier = threading.Barrier(world_size, timeout=120)
        self.slots: list = [None] * world_size

    def wait(self) -> None:
        self.barrier.wait()


@dataclass(frozen=True)
class ThreadRanks(Ranks):
    """`Ranks` whose barrier, gather and agree work across threads: the sharding logic in seconds."""

    hub: _Hub | None = field(default=None, compare=False)

    def barrier(self) -> None:
        self.hub.wait()

    def gather(self, mine: list) -> list:
        self.hub.slots[self.rank] = list(mine)
        self.hub.wait()
        out = [item for part in self.hub.slots for item in part]
        self.hub.wait()
        return out

    def agree(self, value):
        if self.is_main:
            self.hub.slots[0] = value
        self.hub.wait()
        out = self.hub.slots[0]
        self.hub.wait()
        return out


@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_share_the_shards_and_rank_0_merges_them(image_csv, tmp_path, one_torch_thread, world_size):
    clip = load_clip(MICRO_NAME, overrides=MICRO)
    table = pd.read_csv(image_csv)
    single = extract_to_store(table, clip, out_dir=tmp_path / "single", rejects_path=tmp_path / "single.csv",
                              progress=False, **SETTINGS)
    out, hub, errors = tmp_path / "ranks", _Hub(world_size), []
    # a killed earlier run left shard 1 (owned by rank 1) finished: it is kept, the others computed
    out.mkdir()
    for name in ("shard_00001.npy", "shard_00001.json"):
        shutil.copy2(single.path / name, out / name)
    kept = (out / "shard_00001.npy").stat().st_ino

    def rank(r: int) -> None:
        try:
            extract_to_store(table, clip, out_dir=out, rejects_path=tmp_path / "ranks.csv", progress=False,
                             ranks=ThreadRanks(r, world_size, hub), **SETTINGS)
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)
            hub.barrier.abort()  # the other ranks stop waiting for this one

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(world_size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert _bytes_of(out) == _bytes_of(single.path)
    assert (tmp_path / "ranks.csv").read_bytes() == (tmp_path / "single.csv").read_bytes()
    assert (out / "shard_00001.npy").stat().st_ino == kept  # not written again


@pytest.mark.slow  # two fresh interpreters import torch and open_clip: ~12 s idle, 35 s on a busy machine
def test_two_ranks_write_the_store_one_process_writes(image_csv, tmp_path, one_torch_thread):
    clip = load_clip(MICRO_NAME, overrides=MICRO)
    single = extract_to_store(pd.read_csv(image_csv), clip, out_dir=tmp_path / "single",
                              rejects_path=tmp_path / "single_rejects.csv", progress=False, **SETTINGS)
    out = tmp_path / "two"
    mp.spawn(_rank_main, args=(2, _free_port(), str(image_csv), str(out), str(tmp_path / "two_rejects.csv")),
             nprocs=2, join=True)
    assert len(single.shards) == 9  # 2 images a shard: each rank wrote several, interleaved
    assert _bytes_of(out) == _bytes_of(single.path)
    assert (tmp_path / "two_rejects.csv").read_bytes() == (tmp_path / "single_rejects.csv").read_bytes()
    merged = ActivationStore(out)
    np.testing.assert_array_equal(merged.read(), single.read())
    assert merged.video_ids == single.video_ids and merged.metadata["rejects"] == single.metadata["rejects"]


def test_ranks_split_work_without_overlap_and_check_themselves():
    ranks = [Ranks(r, 3) for r in range(3)]
    assert sorted(i for r in ranks for i in r.part(10)) == list(range(10))
    assert [[s for s in range(7) if r.owns(s)] for r in ranks] == [[0, 3, 6], [1, 4], [2, 5]]
    assert Ranks().gather([1, 2]) == [1, 2] and Ranks().agree("x") == "x"
    with pytest.raises(ThumbsaeError, match="rank 3 of world size 3"):
        Ranks(3, 3)
    assert extraction_device("cpu") == "cpu"
    assert extraction_device("auto") in ("cpu", "cuda:0")


@pytest.mark.slow  # four interpreters start (torchrun's two ranks, one single run, hydra each): ~40 s
def test_torchrun_extract_py_matches_a_single_process_run(tiny_world, tmp_path, repo_root):
    """The command the contract names: `torchrun --nproc-per-node 2 extract.py ...`."""
    args = [f"source={tiny_world / 'thumbnails.csv'}", "kind=thumbnails", "model=tiny_random",
            "activations.shard_rows=2000", f"paths.world={tiny_world}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(repo_root / "src")}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                str(_free_port())]
    for name, launcher in (("single", [sys.executable]), ("two", torchrun)):
        proc = subprocess.run([*launcher, str(repo_root / "extract.py"), *args, f"out={tmp_path / name}"],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
    assert _bytes_of(tmp_path / "two") == _bytes_of(tmp_path / "single")
    assert ActivationStore(tmp_path / "two").n_images == 600
