"""The activation store: extraction, dtype round trip, rejects, cache reuse, resume after a crash (and kill -9)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from thumbsae.activations import ActivationStore, embed_images, extract_to_store, load_clip, store_content_hash
from thumbsae.activations import decoding
from thumbsae.activations import extract as extract_module
from thumbsae.errors import ThumbsaeError

MICRO = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 3, "width": 32, "patch_size": 16, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
MICRO_NAME = "thumbsae-test-micro"
N_IMAGES = 23
BAD = {4: b"", 11: b"this is not a png"}  # empty and non-image files, plus image 17 missing
MISSING = 17



pytestmark = pytest.mark.usefixtures("one_torch_thread")

@pytest.fixture(scope="module")
def micro():
    return load_clip(MICRO_NAME, overrides=MICRO)


@pytest.fixture(scope="module")
def image_table(tmp_path_factory) -> pd.DataFrame:
    """23 small images of mixed sizes and modes; three of them unusable."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    rows = []
    for i in range(N_IMAGES):
        path = folder / f"img{i:02d}.png"
        w, h = [(80, 60), (64, 36), (50, 70)][i % 3]
        if i in BAD:
            path.write_bytes(BAD[i])
        elif i != MISSING:
            mode = "L" if i % 5 == 0 else "RGB"
            image = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).convert(mode)
            image.save(path)
        rows.append({"video_id": f"vid{i:02d}", "image": str(path)})
    return pd.DataFrame(rows)


def _good(table: pd.DataFrame) -> pd.DataFrame:
    return table.drop(index=[*BAD, MISSING]).reset_index(drop=True)


def _bytes_of(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _extract(table, clip, out_dir, **kw):
    settings = dict(layer=-2, tokens="cls", fit="pad", dtype="float32", shard_rows=4, batch_size=3, num_workers=0)
    settings.update(kw)
    return extract_to_store(table, clip, out_dir=out_dir, progress=False, **settings)


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_round_trip_per_dtype(micro, image_table, tmp_path, dtype):
    good = _good(image_table)
    store = _extract(good, micro, tmp_path / "store", tokens="all", dtype=dtype, shard_rows=40)
    images = [Image.open(p) for p in good["image"]]
    expected_NTD = embed_images(micro, images, layer=-2, tokens="all", fit="pad")
    expected_ND = expected_NTD.reshape(-1, 32)
    assert (store.n, store.d, store.n_images) == (len(good) * 17, 32, len(good))
    tol = {"float32": 1e-5, "float16": 2e-3, "bfloat16": 1.6e-2}[dtype]
    np.testing.assert_allclose(store.read(), expected_ND, rtol=tol, atol=tol)
    # the stored bytes are exactly torch's conversion of the float32 activations
    as_torch = torch.from_numpy(expected_ND).to(getattr(torch, dtype)).float().numpy()
    np.testing.assert_allclose(store.read(), as_torch, rtol=tol, atol=tol)
    # read() across shard boundaries, read_rows() in any order, memmapped shards
    assert len(store.shards) == int(np.ceil(len(good) / 2)) and isinstance(store.shards[0], np.memmap)
    np.testing.assert_array_equal(store.read(30, 75), store.read()[30:75])
    rows = np.array([70, 3, 33, 0, 34])
    np.testing.assert_array_equal(store.read_rows(rows), store.read()[rows])
    # every row knows its image and token position
    assert store.row_image.tolist() == np.repeat(np.arange(len(good)), 17).tolist()
    assert store.row_token.tolist() == np.tile(np.arange(17), len(good)).tolist()
    assert list(store.image_rows(3)) == list(range(51, 68))
    assert store.video_ids == good["video_id"].tolist()
    raw = np.load(store.path / "shard_00000.npy")
    assert raw.dtype == {"float32": np.float32, "float16": np.float16, "bfloat16": np.uint16}[dtype]


def test_metadata_records_everything_needed(micro, image_table, tmp_path):
    store = _extract(image_table, micro, tmp_path / "store", rejects_path=tmp_path / "rejects.csv")
    meta = store.metadata
    for key in ("format_version", "content_hash", "layer", "layer_index", "tokens", "dtype", "d", "n",
                "video_ids", "shards", "preprocessing", "model", "rejects", "row_index"):
        assert key in meta, key
    assert meta["model"]["name"] == MICRO_NAME and meta["model"]["pretrained"] is None
    assert meta["layer"] == -2 and meta["layer_index"] == 1 and meta["tokens"] == "cls"
    assert meta["preprocessing"] == {"fit": "pad", "mean": list(micro.mean), "std": list(micro.std), "image_size": 64,
                                  "resize": "bicubic, antialiased (torch uint8 kernel)"}
    ranges = [s["rows"] for s in meta["shards"]]
    assert ranges[0][0] == 0 and ranges[-1][1] == store.n == N_IMAGES - 3
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    # shards hold whole inputs, fixed 4 per shard, however many of them were rejected
    assert [s["inputs"] for s in meta["shards"]][:2] == [[0, 4], [4, 8]]
    assert store.row_token.tolist() == [0] * store.n


def test_bad_images_become_rejects_not_crashes(micro, image_table, tmp_path):
    rejects_path = tmp_path / "rejects.csv"
    store = _extract(image_table, micro, tmp_path / "store", num_workers=2, rejects_path=rejects_path)
    rejects = pd.read_csv(rejects_path)
    assert rejects["video_id"].tolist() == ["vid04", "vid11", "vid17"]
    assert rejects["row"].tolist() == [4, 11, 17]
    assert rejects["reason"].str.startswith(("empty file", "not an image", "missing file")).all()
    assert "vid04" not in store.video_ids and len(store.video_ids) == N_IMAGES - 3
    # the good images' rows equal those of a store made from the good images only (batched differently)
    clean = _extract(_good(image_table), micro, tmp_path / "clean")
    np.testing.assert_allclose(store.read(), clean.read(), rtol=1e-5, atol=1e-5)


@pytest.mark.filterwarnings("ignore:This DataLoader will create 3 worker processes")  # more workers than cores, on purpose
@pytest.mark.parametrize("tokens", ["all", "cls"])
def test_lockstep_workers_write_the_same_bytes_as_decoding_in_process(micro, image_table, tmp_path, tokens):
    """Worker processes decoding in lockstep (the CPU default) fill the shared batch with the same
    pixels as decoding here: mixed sizes, rejects leaving holes in batches, uneven parts."""
    inline = _extract(image_table, micro, tmp_path / "inline", tokens=tokens, batch_size=5, shard_rows=40,
                      num_workers=0)
    for workers in (2, 3):
        out = tmp_path / f"lockstep{workers}"
        store = _extract(image_table, micro, out, tokens=tokens, batch_size=5, shard_rows=40, num_workers=workers,
                         rejects_path=tmp_path / f"rejects{workers}.csv")
        assert _bytes_of(out) == _bytes_of(inline.path)
        assert pd.read_csv(tmp_path / f"rejects{workers}.csv")["row"].tolist() == [4, 11, 17]
        assert store.n_images == N_IMAGES - 3


def test_workers_decoding_ahead_as_on_a_gpu_write_the_same_bytes(micro, image_table, tmp_path, monkeypatch):
    """The GPU path (DataLoader workers decoding whole batches ahead), run here on the CPU."""
    inline = _extract(image_table, micro, tmp_path / "inline", tokens="all", batch_size=5, shard_rows=40)
    monkeypatch.setattr(decoding, "in_lockstep", lambda device: False)
    monkeypatch.setattr(decoding, "lockstep_stream", None)  # must not be reached
    _extract(image_table, micro, tmp_path / "ahead", tokens="all", batch_size=5, shard_rows=40, num_workers=2)
    assert _bytes_of(tmp_path / "ahead") == _bytes_of(inline.path)


def test_default_workers_follow_the_device_and_thread_count(monkeypatch):
    resolve = extract_module.resolve_num_workers
    assert resolve(None, "cpu") == 0  # this test module runs torch on one thread: decode in process
    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)
    assert resolve(None, "cpu") == 4  # one lockstep worker per core the forward pass uses
    assert resolve(None, "cuda") == min(8, os.cpu_count() or 1)
    assert resolve(3, "cpu") == 3 and resolve(0, "cuda") == 0
    with pytest.raises(ThumbsaeError, match="num_workers=-1"):
        resolve(-1, "cpu")


def test_same_inputs_reuse_the_store_without_recomputing(micro, image_table, tmp_path, monkeypatch):
    out = tmp_path / "store"
    first = _extract(image_table, micro, out)
    first_row = first.read(0, 1)
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    calls = []
    real = extract_module.PixelForward.__call__
    monkeypatch.setattr(extract_module.PixelForward, "__call__", lambda *a, **k: calls.append(1) or real(*a, **k))
    again = _extract(image_table, micro, out)
    assert calls == []  # no batch was recomputed
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    assert again.metadata == first.metadata
    # a changed image (same path) changes the content hash and is extracted again
    changed = image_table.copy()
    Image.new("RGB", (40, 30), (10, 200, 30)).save(tmp_path / "new.png")
    changed.loc[0, "image"] = str(tmp_path / "new.png")
    assert store_content_hash(changed, micro, layer=-2, tokens="cls", fit="pad", dtype="float32", shard_rows=4) != (
        first.metadata["content_hash"]
    )
    calls.clear()
    third = _extract(changed, micro, out)
    assert len(calls) > 1 and third.metadata["content_hash"] != first.metadata["content_hash"]
    assert not np.array_equal(third.read(0, 1), first_row)


def test_other_settings_are_not_reused(micro, image_table, tmp_path):
    out = tmp_path / "store"
    a = _extract(image_table, micro, out, tokens="cls")
    b = _extract(image_table, micro, out, tokens="mean")
    assert a.metadata["content_hash"] != b.metadata["content_hash"]
    assert ActivationStore(out).tokens == "mean" and ActivationStore(out).row_token.tolist() == [-1] * b.n


def test_resume_after_crash_gives_identical_bytes(micro, image_table, tmp_path, monkeypatch):
    reference = _extract(image_table, micro, tmp_path / "reference", tokens="all", shard_rows=40)
    out = tmp_path / "crashed"
    written = []
    real_write = extract_module.write_shard

    def crash_after_two(*args, **kwargs):
        if len(written) == 2:
            raise KeyboardInterrupt("simulated crash")
        written.append(args[1])
        return real_write(*args, **kwargs)

    monkeypatch.setattr(extract_module, "write_shard", crash_after_two)
    with pytest.raises(KeyboardInterrupt):
        _extract(image_table, micro, out, tokens="all", shard_rows=40)
    assert not (out / "metadata.json").exists()
    with pytest.raises(ThumbsaeError, match="not a finished activation store"):
        ActivationStore(out)
    # a half-written temporary from the killed run must not survive either
    (out / ".shard_00002.tmp-deadbeef.npy").write_bytes(b"partial")
    monkeypatch.setattr(extract_module, "write_shard", real_write)
    recomputed = []
    monkeypatch.setattr(
        extract_module, "write_shard", lambda *a, **k: recomputed.append(a[1]) or real_write(*a, **k)
    )
    _extract(image_table, micro, out, tokens="all", shard_rows=40)
    assert written == [0, 1] and recomputed == list(range(2, len(reference.shards)))
    assert _bytes_of(out) == _bytes_of(reference.path)


_KILL_SCRIPT = """
import sys, pandas as pd
from thumbsae.activations import extract_to_store, load_clip
from thumbsae.activations import extract as ex
table = pd.read_csv(sys.argv[1])
clip = load_clip({name!r}, overrides={micro!r})
real = ex.PixelForward.__call__
def slow(*a, **k):
    import time; time.sleep(0.05)  # slow enough to be killed in the middle of the run
    return real(*a, **k)
ex.PixelForward.__call__ = slow
extract_to_store(table, clip, layer=-2, tokens="all", fit="pad", out_dir=sys.argv[2], dtype="float16",
                 shard_rows=20, batch_size=1, num_workers=int(sys.argv[3]), progress=False)
"""


def _children(pid: int) -> set[int]:
    """Processes whose parent is `pid` (Linux /proc)."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.add(int(stat.parent.name))
    return found


@pytest.mark.slow  # a fresh interpreter imports torch and open_clip: ~10 s alone, far more on a busy machine
@pytest.mark.parametrize("workers", [0, 2])
def test_kill_9_then_rerun_gives_identical_bytes(micro, image_table, tmp_path, workers):
    good = _good(image_table)
    good.to_csv(tmp_path / "images.csv", index=False)
    reference = _extract(good, micro, tmp_path / "reference", tokens="all", dtype="float16", shard_rows=20,
                         batch_size=1)
    out = tmp_path / "killed"
    script = tmp_path / "run.py"
    script.write_text(_KILL_SCRIPT.format(name=MICRO_NAME, micro=MICRO))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path / "images.csv"), str(out), str(workers)], env=env
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(list(out.glob("shard_*.json"))) < 2 and proc.poll() is None:
        time.sleep(0.02)
    decoders = _children(proc.pid) if sys.platform == "linux" else set()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    if sys.platform == "linux":
        assert len(decoders) == workers
        # orphaned lockstep workers notice that the main process is gone and exit
        deadline = time.monotonic() + 20
        while decoders and time.monotonic() < deadline:
            decoders = {pid for pid in decoders if Path(f"/proc/{pid}").exists() and not _zombie(pid)}
            time.sleep(0.1)
        assert not decoders, f"worker processes {sorted(decoders)} outlived the killed extraction"
    assert not (out / "metadata.json").exists()
    store = _extract(good, micro, out, tokens="all", dtype="float16", shard_rows=20, batch_size=1)
    assert _bytes_of(out) == _bytes_of(reference.path)
    assert store.n == reference.n


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return False


def test_bad_settings_are_one_line_errors(micro, image_table, tmp_path):
    with pytest.raises(ThumbsaeError, match="float16, bfloat16, float32"):
        _extract(image_table, micro, tmp_path / "s", dtype="int8")
    with pytest.raises(ThumbsaeError, match="lacks column"):
        _extract(image_table.rename(columns={"image": "path"}), micro, tmp_path / "s")
    with pytest.raises(ThumbsaeError, match="out of range"):
        _extract(image_table, micro, tmp_path / "s", layer=7)
    assert not (tmp_path / "s").exists()
    with pytest.raises(ThumbsaeError, match="no metadata.json"):
        ActivationStore(tmp_path)


def test_store_files_are_plain_numpy(micro, image_table, tmp_path):
    store = _extract(_good(image_table), micro, tmp_path / "store", dtype="float16")
    meta = json.loads((store.path / "metadata.json").read_text())
    arrays = [np.load(store.path / s["file"], mmap_mode="r") for s in meta["shards"]]
    assert sum(len(a) for a in arrays) == meta["n"] and all(a.shape[1] == meta["d"] for a in arrays)
    assert not any(name.startswith(".") for name in os.listdir(store.path))
