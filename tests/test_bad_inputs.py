"""A generated corpus of bad inputs, one test per class (docs/robustness.md lists them all).

Each class checks the three promises: a clear one-line error naming the setting/file/row (or a
row in a rejects file), nothing written outside the folder a command was given, nothing lost.
"""

from __future__ import annotations

import io
import json
import os
import stat
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from safetensors.torch import save_file
from serving import ScriptedServer, send_bytes, too_many_requests, trickle

import thumbsae.data.images as images_module
from thumbsae.activations.model_configs import register_model_config, tiny_vit_config
from thumbsae.analysis.recovery import load_ground_truth
from thumbsae.cli import main as cli_main
from thumbsae.data import (
    DecodeBudget,
    FetchConfig,
    ImageDecodeError,
    decode_cost,
    fetch_manifest,
    load_image_set,
    load_rgb,
    validate_image_set,
)
from thumbsae.errors import ThumbsaeError
from thumbsae.files import atomic_dir, atomic_write_bytes, atomic_write_text
from thumbsae.world import WorldConfig, generate_world

SMALL_WORLD = dict(n_thumbnails=12, width=32, height=32, n_channels=2, n_reference_per_class=1)


def png_bytes(seed: int = 0, size: int = 24) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def one_line_error(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------- 1. names from configs become no paths


BAD_NAMES = ["../../../../tmp/x", "../escape", "a/b", "..", ".hidden", "", "x" * 200, "a\x00b", "c:\\x", 5, None]


@pytest.mark.parametrize("name", BAD_NAMES, ids=[repr(n)[:20] for n in BAD_NAMES])
def test_architecture_names_never_become_paths(name, tmp_path, monkeypatch):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    with pytest.raises(ThumbsaeError, match=r"^model\.name=.*not an architecture name") as info:
        register_model_config(name, tiny_vit_config())
    assert "\n" not in str(info.value)
    assert sorted(tmp_path.rglob("*")) == [scratch]  # nothing written anywhere, not even a temp folder


def test_a_good_architecture_is_registered_without_leaving_a_temp_folder(tmp_path, monkeypatch):
    import open_clip

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    for _ in range(3):
        register_model_config("harden-test-vit", tiny_vit_config())
    assert "harden-test-vit" in open_clip.list_models()
    assert list(tmp_path.iterdir()) == []


def test_a_shared_sae_cannot_make_rank_write_outside_its_folder(tmp_path, monkeypatch, capsys):
    """The issue's attack: `clip.name` climbing out of the temp folder, reached by `thumbsae rank --sae`."""
    from thumbsae.sae import SparseAutoencoder, TopKConfig, save_sae

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    target = tmp_path / "escaped"
    clip = {"name": os.path.relpath(target, scratch / "thumbsae-model-config-xxxxxxxx"), "overrides": tiny_vit_config()}
    sae_dir = save_sae(
        SparseAutoencoder(TopKConfig(d_in=128, expansion_factor=2, k=4)), tmp_path / "shared_sae",
        {"clip": clip, "hook": {"layer": -2, "tokens": "cls", "fit": "pad"}, "normalisation": {"input_scale": 1.0}},
    )
    drafts = tmp_path / "drafts"
    drafts.mkdir()
    (drafts / "a.png").write_bytes(png_bytes())
    (tmp_path / "model").mkdir()
    code = cli_main(
        ["rank", str(drafts), "--sae", str(sae_dir), "--model", str(tmp_path / "model"),
         "--out", str(tmp_path / "ranked"), "--no-progress"]
    )
    assert code != 0
    assert "model.name=" in one_line_error(capsys)
    assert not target.with_suffix(".json").exists()
    assert not (tmp_path / "ranked").exists()
    assert list(scratch.iterdir()) == []


# ---------------------------------------------------------------- 2. world --out replaces only its own worlds


def test_world_replaces_only_a_folder_it_marked(tmp_path, capsys):
    looks_like_a_world = tmp_path / "mine"
    looks_like_a_world.mkdir()
    for name in ("thumbnails.csv", "reference.csv", "ground_truth.json", "thesis.tex"):
        (looks_like_a_world / name).write_text(f"the user's {name}\n")
    before = tree(looks_like_a_world)
    assert cli_main(["world", "--out", str(looks_like_a_world), "--thumbnails", "12", "--size", "32", "32"]) == 2
    assert "is not a world written by `thumbsae world`" in one_line_error(capsys)
    assert tree(looks_like_a_world) == before

    forged = tmp_path / "forged"
    forged.mkdir()
    (forged / ".thumbsae-world").write_text("anything\n")
    (forged / "keep.txt").write_text("mine")
    with pytest.raises(ThumbsaeError, match="nothing was changed"):
        generate_world(WorldConfig(**SMALL_WORLD), forged)
    assert (forged / "keep.txt").read_text() == "mine"

    empty = tmp_path / "empty"
    empty.mkdir()
    world = generate_world(WorldConfig(**SMALL_WORLD), empty)
    (world / "extra.txt").write_text("added inside a world")
    generate_world(WorldConfig(**SMALL_WORLD, seed=1), world)  # its own world: replaced whole
    assert not (world / "extra.txt").exists() and (world / "thumbnails.csv").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "forged", "mine"]


# ---------------------------------------------------------------- 3. fetch never writes over its input


def test_fetch_never_writes_over_its_input(tmp_path, capsys):
    folder = tmp_path / "set"
    folder.mkdir()
    (folder / "a.png").write_bytes(png_bytes())
    manifest = folder / "manifest.csv"
    manifest.write_text("video_id,image,views\na,a.png,5\n")
    os.link(manifest, tmp_path / "linked.csv")
    before = manifest.read_bytes()
    assert cli_main(["fetch", str(manifest), "--out", str(folder)]) == 2
    assert "would write over its input (manifest.csv)" in one_line_error(capsys)
    with pytest.raises(ThumbsaeError, match="would write over its input"):
        fetch_manifest(tmp_path / "linked.csv", folder, progress=False)  # same file, other name
    (folder / "rejects.csv").symlink_to(tmp_path / "linked.csv")
    with pytest.raises(ThumbsaeError, match=r"over its input \(rejects.csv\)"):
        fetch_manifest(tmp_path / "linked.csv", tmp_path / "elsewhere" / ".." / "set", progress=False)
    assert manifest.read_bytes() == before
    assert sorted(p.name for p in folder.iterdir()) == ["a.png", "manifest.csv", "rejects.csv"]


# ---------------------------------------------------------------- 4. rows with extra fields are rejects


def test_rows_with_more_fields_than_the_header_are_rejects(tmp_path):
    (tmp_path / "a.png").write_bytes(png_bytes())
    manifest = tmp_path / "m.csv"
    manifest.write_text(
        "video_id,image,views\n"
        "first,a.png,1,500\n"  # the first data row: used to crash with a zip() message
        "ok,a.png,7\n"
        'quoted,a.png,"1,500"\n'  # quoted: one field, and not an integer either
        "short,a.png\n"
        "last,a.png,2,,\n"
    )
    checked = validate_image_set(manifest, kind="thumbnails")
    reasons = {r.video_id: r.reason for r in checked.rejects}
    assert reasons["first"].startswith("4 fields, but the header has 3 (an unquoted comma inside a value?)")
    assert reasons["last"].startswith("5 fields, but the header has 3")
    assert reasons["quoted"] == "views is not a number: '1,500'"
    assert reasons["short"] == "empty views"
    assert checked.rows["video_id"].tolist() == ["ok"] and checked.rows["views"].tolist() == [7]
    assert checked.n_input == 5 and sorted([*checked.row_numbers, *(r.row for r in checked.rejects)]) == [1, 2, 3, 4, 5]

    semicolons = tmp_path / "excel.csv"  # Excel in many locales
    semicolons.write_text("video_id;image;views\nx;a.png;3\ny;a.png;1;500\n")
    checked = validate_image_set(semicolons, kind="thumbnails")
    assert checked.rows["video_id"].tolist() == ["x"]
    assert checked.rejects[0].reason.startswith("4 fields, but the header has 3 (an unquoted semicolon")


# ---------------------------------------------------------------- 5. slow and rate-limiting servers


def test_fetch_deadline_holds_against_trickling_servers_and_retry_after_is_capped(tmp_path):
    image = png_bytes()
    routes = {"/ok.png": send_bytes(image)}
    with ScriptedServer(routes) as server:
        routes["/body"] = trickle(server, in_headers=False)
        routes["/headers"] = trickle(server, in_headers=True)
        routes["/hour"] = too_many_requests("3600")
        routes["/second"] = too_many_requests("1", then=send_bytes(png_bytes(1)))
        manifest = tmp_path / "m.csv"
        rows = [("ok", "/ok.png"), ("body", "/body"), ("headers", "/headers"), ("hour", "/hour"), ("second", "/second")]
        pd.DataFrame(
            {"video_id": [v for v, _ in rows], "image": [server.url(p) for _, p in rows], "views": range(len(rows))}
        ).to_csv(manifest, index=False)
        config = FetchConfig(workers=5, timeout=0.5, deadline=1.0, retries=1, retry_after_cap=5)
        started = time.monotonic()
        fetch_manifest(manifest, tmp_path / "out", config, progress=False)
        elapsed = time.monotonic() - started
        second = server.times("/second")
    # Two attempts of at most a 1 s deadline each (plus backoff): never the minutes a trickle can last.
    assert elapsed < 8, elapsed
    reasons = dict(pd.read_csv(tmp_path / "out" / "rejects.csv")[["video_id", "reason"]].itertuples(index=False))
    assert reasons["body"] == "too slow: not finished after 1 s (2 attempts)"
    assert reasons["headers"] == "too slow: not finished after 1 s (2 attempts)"
    assert reasons["hour"] == (
        "HTTP 429 Too Many Requests; the server asks to wait 3600 s, over fetch.retry_after_cap=5 s (fetch again later)"
    )
    assert len(server.times("/hour")) == 1
    assert len(second) == 2 and second[1] - second[0] >= 0.9  # Retry-After: 1 honoured, not 0.25 s
    fetched = pd.read_csv(tmp_path / "out" / "manifest.csv")
    assert fetched["video_id"].tolist() == ["ok", "second"]


# ---------------------------------------------------------------- 6. decoding memory is bounded


def test_decoding_memory_is_bounded_per_image_and_in_flight(tmp_path, monkeypatch):
    big = tmp_path / "sixteen_bit.png"
    Image.fromarray(np.zeros((3000, 3000), dtype=np.uint16)).save(big)  # ~20 kB on disk
    assert big.stat().st_size < 100_000
    with pytest.raises(ImageDecodeError, match=r"decompression bomb: decoding 3000 x 3000 I;16 needs about 72 MB"):
        load_rgb(big, max_decode_bytes=50_000_000)
    assert load_rgb(big).size == (3000, 3000)  # under the default limit it decodes, in bounded memory

    folder = tmp_path / "set"
    folder.mkdir()
    for i in range(12):
        (folder / f"img{i:02d}.png").write_bytes(png_bytes(i, size=200))
    one = decode_cost("RGB", 200, 200)
    budget = DecodeBudget(int(2.5 * one))
    monkeypatch.setattr(images_module, "DECODE_BUDGET", budget)
    table = load_image_set(folder, kind="images", workers=16)
    assert len(table) == 12
    assert one <= budget.peak <= budget.total  # at most two of the sixteen threads decoded at once
    budget.peak = 0
    load_rgb(big)  # bigger than the whole budget: runs alone
    assert budget.peak == decode_cost("I;16", 3000, 3000)


# ---------------------------------------------------------------- 8. every bad setting: one line naming it


BAD_SETTINGS = [
    (FetchConfig, {"timeout": 0}, "fetch.timeout=0: must be a finite number > 0 (seconds)"),
    (FetchConfig, {"timeout": -1}, "fetch.timeout=-1: must be a finite number > 0"),
    (FetchConfig, {"timeout": float("nan")}, "fetch.timeout=nan: must be a finite number > 0"),
    (FetchConfig, {"timeout": float("inf")}, "fetch.timeout=inf: must be a finite number > 0"),
    (FetchConfig, {"timeout": "abc"}, "fetch.timeout='abc': must be a finite number > 0"),
    (FetchConfig, {"retries": -1}, "fetch.retries=-1: must be an integer in 0..100"),
    (FetchConfig, {"workers": 0}, "fetch.workers=0: must be an integer in 1..256"),
    (FetchConfig, {"deadline": 0}, "fetch.deadline=0: must be a finite number > 0"),
    (FetchConfig, {"retry_after_cap": -5}, "fetch.retry_after_cap=-5: must be a finite number >= 0"),
    (WorldConfig, {"seed": -1}, "world.seed=-1: must be an integer in 0.."),
    (WorldConfig, {"width": 20000, "height": 20000}, "world.width=20000: must be an integer in 16..2048"),
    (WorldConfig, {"n_thumbnails": 10**9}, "world.n_thumbnails=1000000000: must be an integer in 1..1000000"),
    (WorldConfig, {"noise_sd": float("inf")}, "world.noise_sd=inf: must be a finite number"),
    (WorldConfig, {"null": "maybe"}, "world.null='maybe': must be true or false"),
    (WorldConfig, {"workers": 0}, "world.workers=0: must be an integer in 1..256"),
]


@pytest.mark.parametrize("config,settings,message", BAD_SETTINGS, ids=[str(s) for _, s, _ in BAD_SETTINGS])
def test_bad_settings_are_one_line_naming_them(config, settings, message):
    with pytest.raises(ThumbsaeError) as info:
        config(**settings)
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


def test_bad_flags_on_the_command_line_exit_with_one_line(tmp_path, capsys):
    manifest = tmp_path / "m.csv"
    manifest.write_text("video_id,image,views\na,a.png,1\n")
    for flags, says in [
        (["--timeout", "0"], "fetch.timeout=0.0"),
        (["--timeout", "nan"], "fetch.timeout=nan"),
        (["--retries", "-1"], "fetch.retries=-1"),
    ]:
        assert cli_main(["fetch", str(manifest), "--out", str(tmp_path / "o"), *flags]) == 2
        assert says in one_line_error(capsys)
    (tmp_path / "file").write_text("in the way")
    assert cli_main(["fetch", str(manifest), "--out", str(tmp_path / "file" / "sub")]) == 2
    assert "--out" in one_line_error(capsys)
    assert cli_main(["world", "--out", str(tmp_path / "w"), "--seed", "-1"]) == 2
    assert "world.seed=-1" in one_line_error(capsys)
    assert cli_main(["world", "--out", str(tmp_path / "w"), "--size", "20000", "20000"]) == 2
    assert "world.width=20000" in one_line_error(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "m.csv"]  # nothing written


@pytest.mark.parametrize("value", [
    "runs/embedded/train/sae",
    "multirun/train/2026-12-07_22-24-47/sae.expansion_factor=4,trainer.max_steps=20/sae",  # Hydra's own folder names
    "my runs/it's here/sae",
    "C:\\runs\\x=1/sae",
    "odd\\'name\\",
])
def test_a_printed_next_command_reads_back_the_same_folder(value):
    # train.py ends with `next: python evaluate.py sae_dir=...`: what the shell and Hydra make of it
    # must be the folder train.py wrote, even a multirun's (its name holds `=` and `,`).
    import shlex

    from thumbsae.config import compose
    from thumbsae.tasks.entry import override_arg

    words = shlex.split(override_arg("sae_dir", value))
    assert len(words) == 1
    assert compose("evaluate", words).sae_dir == value
    assert (override_arg("sae_dir", value) == f"sae_dir={value}") == (value == "runs/embedded/train/sae")


def test_a_multirun_is_checked_before_its_first_job(capsys):
    from thumbsae.tasks.entry import check_command_line, sweep_samples

    # Every value of every sweep is composed once: 1 + 1 + 2 lists here, not the 2 x 3 product.
    assert sweep_samples(["sae=topk,relu", "sae.expansion_factor=8,16,32", "seed=1"]) == [
        ["sae=topk", "sae.expansion_factor=8", "seed=1"],
        ["sae=relu", "sae.expansion_factor=8", "seed=1"],
        ["sae=topk", "sae.expansion_factor=16", "seed=1"],
        ["sae=topk", "sae.expansion_factor=32", "seed=1"],
    ]
    assert sweep_samples(["sae.k=range(4,7,2)"]) == [["sae.k=4"], ["sae.k=6"]]
    check_command_line("train.py", "train", ["-m", "sae.expansion_factor=8,16", "hydra.sweep.dir=x"])  # fine
    for argv, says in [
        (["-m", "sae.bogus=1,2"], "train.py: error: bad setting: Could not override 'sae.bogus'."),
        (["--multirun", "sae.expansion_factor=8,16", "sae=topk,bogus"], "Could not find 'sae/bogus'"),
        (["-m", "sae.k=range(1,1)"], "train.py: error: sae.k=range(1,1): the sweep has no values"),
    ]:
        with pytest.raises(SystemExit) as exit_:
            check_command_line("train.py", "train", argv)
        assert exit_.value.code == 2
        assert says in one_line_error(capsys)


# ---------------------------------------------------------------- 9. a malformed ground truth is a warning


def _malformed_truths(folder: Path) -> dict[str, Path]:
    good = {
        "null": False, "motif_effects": {"food": 1.4, "face": 0.0}, "positive": ["food"], "negative": [],
        "confounded": ["face"],
    }
    cases = {
        "not_json": b"{not json",
        "truncated": json.dumps(good).encode()[:-9],
        "a_list": b"[1, 2, 3]",
        "null_not_bool": json.dumps({**good, "null": "maybe"}).encode(),
        "effects_not_object": json.dumps({**good, "motif_effects": "big"}).encode(),
        "effect_nan": json.dumps({**good, "motif_effects": {"food": float("nan")}}).encode(),
        "unknown_motif": json.dumps({**good, "positive": ["unicorn"]}).encode(),
        "positive_not_list": json.dumps({**good, "positive": "food"}).encode(),
        "null_world_without_planted": json.dumps({"null": True}).encode(),
        "deep": b"[" * 100_000 + b"]" * 100_000,
        "binary": bytes(range(256)),
    }
    paths = {}
    for name, data in cases.items():
        (folder / name).mkdir()
        paths[name] = folder / name / "ground_truth.json"
        paths[name].write_bytes(data)
    (folder / "a_folder" / "ground_truth.json").mkdir(parents=True)
    paths["a_folder"] = folder / "a_folder" / "ground_truth.json"
    (folder / "good").mkdir()
    (folder / "good" / "ground_truth.json").write_text(json.dumps(good))
    return paths


def test_a_malformed_ground_truth_is_a_one_line_warning(tmp_path):
    for name, path in _malformed_truths(tmp_path).items():
        truth, warning = load_ground_truth(path)
        assert truth is None, name
        assert warning.startswith(f"{path}: malformed ground truth (") and warning.endswith("; recovery skipped"), name
        assert "\n" not in warning
    truth, warning = load_ground_truth(tmp_path / "good" / "ground_truth.json")
    assert warning is None and truth["positive"] == ["food"]
    assert load_ground_truth(tmp_path / "absent.json") == (None, None)


# ---------------------------------------------------------------- 10. failures are visible


@pytest.mark.parametrize("flag", ["strict=true", "data.strict=true"])
def test_strict_on_the_command_line_makes_a_reject_fatal(tmp_path, flag):
    # The contract's spelling is `strict=true`; `data.strict=true` is the setting it sets.
    from thumbsae.config import compose
    from thumbsae.tasks.extract import extract

    (tmp_path / "a.png").write_bytes(png_bytes())
    manifest = tmp_path / "m.csv"
    manifest.write_text("video_id,image,views\na,a.png,5\nb,a.png,-3\n")
    settings = [f"source={manifest}", "kind=thumbnails", f"out={tmp_path / 'store'}", "model=tiny_random"]
    with pytest.raises(ThumbsaeError) as err:
        extract(compose("extract", [*settings, flag]))
    assert str(err.value).startswith(f"{manifest}: 1 of 2 rows rejected (strict); first: row 2 (video_id 'b'): views is negative")
    assert pd.read_csv(tmp_path / "store_rejects.csv")["video_id"].tolist() == ["b"]  # written before failing
    assert not (tmp_path / "store").exists()
    with pytest.raises(ThumbsaeError, match=r"^strict='maybe': expected true or false$"):
        extract(compose("extract", [*settings, "strict=maybe"]))


def test_fetch_exits_non_zero_when_every_row_is_rejected(tmp_path, capsys):
    manifest = tmp_path / "m.csv"
    manifest.write_text("video_id,image,views\na,missing.png,1\nb,also_missing.png,-3\n")
    assert cli_main(["fetch", str(manifest), "--out", str(tmp_path / "o")]) == 2
    line = one_line_error(capsys)
    assert "all 2 rows rejected" in line and str(tmp_path / "o" / "rejects.csv") in line
    assert len(pd.read_csv(tmp_path / "o" / "rejects.csv")) == 2
    assert len(pd.read_csv(tmp_path / "o" / "manifest.csv")) == 0


def test_folder_sets_report_broken_entries_as_rejects(tmp_path):
    root = tmp_path / "refs"
    (root / "cats").mkdir(parents=True)
    (root / "cats" / "good.png").write_bytes(png_bytes())
    (root / "cats" / "gone.png").symlink_to(root / "cats" / "never.png")
    (root / "cats" / "loop.png").symlink_to(root / "cats" / "loop.png")
    (root / "dogs" / "x.png").mkdir(parents=True)  # a folder with an image's name
    (root / "dogs" / "x.png" / "inner.png").write_bytes(png_bytes(1))
    os.mkfifo(root / "dogs" / "pipe.png")  # would block a reader for ever
    (root / "dogs" / "up").symlink_to(root)  # a folder loop: walked once
    (root / ".hidden.png").write_bytes(b"skipped: hidden")
    (root / "notes.txt").write_text("not an image name")

    checked = validate_image_set(root, kind="reference")
    assert checked.rows["video_id"].tolist() == ["cats/good.png", "dogs/x.png/inner.png"]
    reasons = {r.video_id: r.reason for r in checked.rejects}
    assert reasons == {
        "cats/gone.png": "broken symbolic link (its target does not exist)",
        "cats/loop.png": "symbolic link loop",
        "dogs/pipe.png": "not a regular file",
        "dogs/x.png": "not a regular file (a folder)",
    }
    with pytest.raises(ImageDecodeError, match="not a regular file"):
        load_rgb(root / "dogs" / "pipe.png")  # a manifest naming the FIFO does not hang either


@pytest.mark.parametrize("umask,file_mode,dir_mode", [(0o022, 0o644, 0o755), (0o027, 0o640, 0o750), (0o077, 0o600, 0o700)])
def test_outputs_get_the_modes_the_umask_gives(tmp_path, umask, file_mode, dir_mode):
    import torch

    from thumbsae.sae import SparseAutoencoder, TopKConfig, save_sae

    previous = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "a.json", "{}")
        atomic_write_bytes(tmp_path / "b.bin", b"\x00")
        with atomic_dir(tmp_path / "folder") as folder:
            save_file({"w": torch.zeros(2)}, str(folder / "weights.safetensors"))  # created 0600
            (folder / "sub").mkdir()
        save_sae(SparseAutoencoder(TopKConfig(d_in=8, expansion_factor=2, k=2)), tmp_path / "sae")
    finally:
        os.umask(previous)
    for path in ["a.json", "b.bin", "folder/weights.safetensors", "sae/sae.safetensors", "sae/config.json"]:
        assert stat.S_IMODE((tmp_path / path).stat().st_mode) == file_mode, path
    for path in ["folder", "folder/sub", "sae"]:
        assert stat.S_IMODE((tmp_path / path).stat().st_mode) == dir_mode, path


def test_the_model_json_leaves_no_temp_file_on_a_bad_config(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with pytest.raises(ThumbsaeError, match="model.overrides: an architecture needs"):
        register_model_config("fine-name", {"vision_cfg": {}})
    with pytest.raises(ThumbsaeError, match="model.overrides: not JSON data"):
        register_model_config("fine-name", {"embed_dim": 8, "vision_cfg": {"x": object()}, "text_cfg": {}})
    assert list(tmp_path.iterdir()) == []


if sys.platform != "linux":  # FIFOs, umask and /proc are Linux behaviour here
    pytestmark = pytest.mark.skip("robustness corpus is written for Linux")
