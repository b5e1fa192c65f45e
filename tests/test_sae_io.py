"""save_sae / load_sae round trips and errors (older flat configs, bad hook sections, a CLIP of
the wrong width); compare_runs writes the size comparison."""

from __future__ import annotations

import json

from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from thumbsae.errors import ThumbsaeError
from thumbsae.sae import OptimConfig, SparseAutoencoder, TopKConfig, load_sae, read_sae_config, save_sae, sae_config_from_dict
from thumbsae.sae.compare import COLUMNS, compare_runs

LEGACY = Path(__file__).parent / "data" / "legacy_sae"
# A CLIP architecture of width 8 (the SAEs' d_in), so the width check runs.
CLIP_8 = {
    "name": "thumbsae-test-clip",
    "pretrained": None,
    "overrides": {"embed_dim": 8, "vision_cfg": {"image_size": 32, "layers": 2, "width": 8, "patch_size": 16}},
}
META = {
    "clip": {**CLIP_8, "sha256": "ab" * 32},
    "hook": {"layer": -2, "tokens": "cls", "fit": "pad"},
    "normalisation": {"input_scale": 0.25, "method": "mean norm sqrt(d)"},
    "training": {"max_steps": 3, "seed": 0},
}


ARCHS = ("topk", "batchtopk", "matryoshka", "relu", "jumprelu")


def _trained_like(arch: str, **kw) -> SparseAutoencoder:
    k = {"k": 3} if arch in ("topk", "batchtopk", "matryoshka") else {}
    sae = SparseAutoencoder(sae_config_from_dict({"arch": arch, "d_in": 8, "expansion_factor": 4, "input_scale": 0.25, "seed": 5, **k, **kw}))
    with torch.no_grad():
        sae.b_dec.copy_(torch.arange(8.0))
        sae.b_enc.add_(0.1)
    if arch in ("batchtopk", "matryoshka"):
        sae.train()(torch.randn(16, 8))  # estimates the threshold
    return sae


@pytest.mark.parametrize("arch", ARCHS)
def test_round_trip_restores_weights_config_and_outputs(tmp_path, arch):
    sae = _trained_like(arch)
    out = save_sae(sae, tmp_path / "sae", META)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "sae.safetensors"]
    loaded, config = load_sae(tmp_path / "sae")
    assert config["hook"] == META["hook"] and config["sae"]["arch"] == arch
    assert loaded.cfg == sae.cfg and not loaded.training
    for key, value in sae.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    x = torch.randn(5, 8)
    sae.eval()
    for a, b in zip(sae.encode(x), loaded.encode(x)):
        assert torch.equal(a, b)
    # a run folder works too (RUN/sae)
    assert load_sae(tmp_path)[0].cfg == sae.cfg


def test_saving_is_deterministic_and_replaces_atomically(tmp_path):
    sae = _trained_like("topk")
    save_sae(sae, tmp_path / "a", META)
    save_sae(sae, tmp_path / "b", META)
    for name in ("config.json", "sae.safetensors"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    other = SparseAutoencoder(sae_config_from_dict({"arch": "relu", "d_in": 8, "expansion_factor": 2}))
    save_sae(other, tmp_path / "a", META)
    assert load_sae(tmp_path / "a")[0].cfg.arch == "relu"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]  # no temporary left behind
    with pytest.raises(ThumbsaeError, match="meta"):
        save_sae(sae, tmp_path / "c", {"sae": {}})
    assert not (tmp_path / "c").exists()


def test_bad_folders_give_one_line_errors(tmp_path):
    with pytest.raises(ThumbsaeError, match="no such SAE folder"):
        load_sae(tmp_path / "missing")
    save_sae(_trained_like("topk"), tmp_path / "sae", META)
    weights = tmp_path / "sae" / "sae.safetensors"
    weights.write_bytes(weights.read_bytes()[:40])
    with pytest.raises(ThumbsaeError, match="sae.safetensors: not a readable safetensors"):
        load_sae(tmp_path / "sae")
    weights.unlink()
    with pytest.raises(ThumbsaeError, match="missing sae.safetensors"):
        load_sae(tmp_path / "sae")
    save_sae(_trained_like("topk"), tmp_path / "sae", META)
    config = tmp_path / "sae" / "config.json"
    data = json.loads(config.read_text())
    data["sae"]["expansion_factor"] = 8
    config.write_text(json.dumps(data))
    with pytest.raises(ThumbsaeError, match="do not match config.json"):
        load_sae(tmp_path / "sae")
    config.write_text("{not json")
    with pytest.raises(ThumbsaeError, match="config.json: not a readable SAE config") as info:
        load_sae(tmp_path / "sae")
    assert "\n" not in str(info.value)


def _fake_run(root, name, expansion, fvu, l0, dead, tokens_per_s):
    run = root / name
    save_sae(SparseAutoencoder(TopKConfig(d_in=8, expansion_factor=expansion, k=4)), run / "sae", META)
    metrics = {"name": name, "fvu": fvu, "explained_variance": 1 - fvu / 2, "l0": l0, "dead_fraction": dead, "dense_fraction": 0.0}
    (run / "metrics.json").write_text(json.dumps(metrics))
    (run / "timing.json").write_text(json.dumps({"tokens_per_s": tokens_per_s, "train_seconds": 1.5}))
    return run


def test_compare_runs_writes_csv_and_png(tmp_path):
    big = _fake_run(tmp_path, "x16", 16, 0.2, 4.0, 0.3, 900.0)
    small = _fake_run(tmp_path, "x8", 8, 0.3, 4.0, 0.1, 2000.0)
    csv_path, png_path = compare_runs([big, small], tmp_path / "cmp")
    table = pd.read_csv(csv_path)
    assert list(table.columns) == list(COLUMNS)
    assert table["n_latents"].tolist() == [64, 128]  # sorted by size
    assert table["fvu"].tolist() == [0.3, 0.2] and table["tokens_per_s"].tolist() == [2000.0, 900.0]
    assert table["expansion_factor"].tolist() == [8, 16]
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png_path.stat().st_size > 5000

    (small / "metrics.json").unlink()
    with pytest.raises(ThumbsaeError, match="metrics.json: missing"):
        compare_runs([big, small], tmp_path / "cmp2")
    with pytest.raises(ThumbsaeError, match="no such run folder"):
        compare_runs([tmp_path / "nope"], tmp_path / "cmp3")


def test_cli_compare(tmp_path, capsys):
    from thumbsae.cli import main

    run = _fake_run(tmp_path, "x8", 8, 0.3, 4.0, 0.1, 2000.0)
    assert main(["compare", str(run), "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "sae_comparison.csv").exists()
    assert main(["compare", str(tmp_path / "missing"), "--out", str(tmp_path / "out")]) == 2
    assert "no such run folder" in capsys.readouterr().err


@pytest.mark.parametrize("arch", ["batchtopk", "relu"])
def test_folders_written_before_the_split_still_load(arch):
    """Flat `sae` sections (architecture + lr, batch_size, ...) from the previous code."""
    loaded, config = load_sae(LEGACY / arch)
    expected = load_file(str(LEGACY / "expected_latents.safetensors"))
    torch.testing.assert_close(loaded.encode_dense(expected["x"]), expected[arch], rtol=0, atol=0)
    assert config["sae"]["arch"] == arch and "lr" not in config["sae"] and "batch_size" not in config["sae"]
    assert config["training"]["batch_size"] == 1024
    optim = OptimConfig(**{k: v for k, v in config["optim"].items()})
    assert optim.warmup_steps == (500 if arch == "relu" else 100) and optim.lr == 4e-4
    if arch == "relu":
        assert (loaded.cfg.l1_coef, loaded.cfg.ghost_grads, loaded.cfg.mse_norm) == (8e-5, True, "input_norm")
        assert "k" not in config["sae"] and "aux_coef" not in config["sae"]  # the relu's unused keys dropped
    else:
        assert (loaded.cfg.k, loaded.cfg.dead_window_tokens) == (3, 1000) and "l1_coef" not in config["sae"]
    assert read_sae_config(LEGACY / arch)["sae"] == config["sae"]


def test_a_legacy_section_with_a_foreign_key_is_refused(tmp_path):
    import shutil

    shutil.copytree(LEGACY / "relu", tmp_path / "sae")
    path = tmp_path / "sae" / "config.json"
    data = json.loads(path.read_text())
    data["sae"]["l2_coef"] = 1.0
    path.write_text(json.dumps(data))
    with pytest.raises(ThumbsaeError, match=r"config.json: sae config: unknown key\(s\) l2_coef"):
        load_sae(tmp_path / "sae")


@pytest.mark.parametrize(
    ("section", "key", "value", "message"),
    [
        ("hook", "fit", "bogus", "hook.fit='bogus': use one of crop, pad, squash"),
        ("hook", "tokens", "patches", "hook.tokens='patches': use one of cls, mean, all"),
        ("hook", "layer", "last", "hook.layer='last': must be an integer"),
        ("clip", "overrides", {"vision_cfg": {"width": 16, "layers": 2}}, "residual width 16 but sae.d_in=8"),
        ("clip", "name", "ViT-B-32", "clip.name='ViT-B-32' has residual width 768 but sae.d_in=8"),
    ],
)
def test_bad_hook_or_clip_of_another_width_is_one_line(tmp_path, section, key, value, message):
    save_sae(_trained_like("topk"), tmp_path / "sae", META)
    path = tmp_path / "sae" / "config.json"
    data = json.loads(path.read_text())
    data[section][key] = value
    if key == "name":
        data["clip"].pop("overrides")
    path.write_text(json.dumps(data))
    with pytest.raises(ThumbsaeError) as info:
        load_sae(tmp_path / "sae")
    assert str(path) in str(info.value) and message in str(info.value) and "\n" not in str(info.value)
