"""The tiny CLIP trained on the world: it learns, reloads through open_clip, is deterministic."""

from __future__ import annotations

import json
from pathlib import Path

import open_clip
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from thumbsae.activations.model_configs import TINY_VIT_NAME, register_shipped_configs
from thumbsae.activations.world_clip import (
    WorldClipConfig,
    fit_world_clip,
    save_world_clip,
    sidecar_path,
    train_world_clip,
    world_captions,
)
from thumbsae.errors import ThumbsaeError
from thumbsae.world import WorldConfig, generate_world

# 10 images (9 to train), batches of 8, 8 epochs: 8 optimiser steps, seconds on 2 cores.
SMALL = dict(epochs=8, batch_size=8, lr=2e-3, seed=0, max_images=10)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    cfg = WorldConfig(n_thumbnails=24, width=64, height=48, n_channels=3, n_reference_per_class=1)
    return generate_world(cfg, tmp_path_factory.mktemp("world") / "w")


@pytest.fixture(scope="module")
def fitted(world):
    return fit_world_clip(world, WorldClipConfig(**SMALL), progress=False)


def test_captions_describe_each_image(world):
    table = world_captions(world)
    assert len(table) == 24 + 15 and table["video_id"].is_unique
    assert all(Path(p).is_file() for p in table["image"])
    thumbs = pd.read_csv(world / "thumbnails.csv")
    first = table.iloc[0]["caption"]
    assert first.startswith("a ") and " thumbnail of " in first
    assert ("food on a plate" in first) == ("food" in thumbs["motifs"][0].split(";"))
    ref_food = table[table["video_id"] == "ref_food_0000"]["caption"].item()
    assert "food on a plate" in ref_food and " and " not in ref_food


def test_training_lowers_the_contrastive_loss(fitted):
    _, report = fitted
    assert report["steps"] == 8 and report["n_train"] + report["n_heldout"] == 10
    assert report["final_loss"] < report["first_loss"] - 0.1
    assert report["epoch_losses"][-1] < report["epoch_losses"][0]
    retrieval = report["heldout_retrieval"]
    assert set(retrieval) == {"trained", "untrained"}
    assert 0 <= retrieval["trained"]["recall_at_1"] <= 1 and retrieval["trained"]["chance"] > 0


def test_checkpoint_reloads_through_open_clip_with_identical_outputs(fitted, world, tmp_path):
    model, report = fitted
    path = save_world_clip(model, report, tmp_path / "clip" / "model.safetensors")
    register_shipped_configs()
    reloaded = open_clip.create_model(TINY_VIT_NAME, pretrained=str(path)).eval()
    fresh = open_clip.create_model(TINY_VIT_NAME, pretrained=None).eval()
    images_BCHW = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    tokens_BL = open_clip.get_tokenizer(TINY_VIT_NAME)(
        [
            "a warm thumbnail of a car on a plain background",
            "a cool thumbnail of a red arrow on a split background",
        ]
    )
    with torch.inference_mode():
        assert torch.equal(model.encode_image(images_BCHW), reloaded.encode_image(images_BCHW))
        assert torch.equal(model.encode_text(tokens_BL), reloaded.encode_text(tokens_BL))
        assert not torch.allclose(
            fresh.encode_image(images_BCHW), reloaded.encode_image(images_BCHW)
        )
    saved = load_file(str(path))
    assert saved.keys() == reloaded.state_dict().keys()
    sidecar = json.loads(sidecar_path(path).read_text())
    assert sidecar["model"] == TINY_VIT_NAME and sidecar["pretrained"] == str(path)
    assert (
        sidecar["quick_gelu"] is False
        and len(sidecar["mean"]) == 3
        and sidecar["image_size"] == 224
    )
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.json", "model.safetensors"]


@pytest.mark.slow  # a second training run; a few seconds on an idle machine, more when shared
def test_same_seed_gives_identical_weights(fitted, world, tmp_path):
    model, report = fitted
    a = save_world_clip(model, report, tmp_path / "a.safetensors")
    b = train_world_clip(world, tmp_path / "b.safetensors", progress=False, **SMALL)
    assert a.read_bytes() == b.read_bytes()
    assert (
        json.loads(sidecar_path(a).read_text())["heldout_retrieval"]
        == json.loads(sidecar_path(b).read_text())["heldout_retrieval"]
    )


def test_bad_world_or_output_is_one_clear_error(tmp_path, world, capsys):
    with pytest.raises(ThumbsaeError, match="thumbnails.csv: missing"):
        train_world_clip(tmp_path / "nowhere", tmp_path / "m.safetensors", progress=False)
    with pytest.raises(ThumbsaeError, match=".safetensors"):
        train_world_clip(world, tmp_path / "m.pt", progress=False)
    from thumbsae.cli import main

    assert main(["world-clip", "--world", str(tmp_path / "nowhere"), "--out", str(tmp_path / "m.safetensors")]) == 2
    assert "thumbsae world-clip: error:" in capsys.readouterr().err
    assert not (tmp_path / "m.safetensors").exists()


def test_settings_are_validated_with_the_key_named():
    with pytest.raises(ThumbsaeError, match=r"world_clip.epochs=0: must be >= 1"):
        WorldClipConfig(epochs=0)
    with pytest.raises(ThumbsaeError, match=r"world_clip.dtype=bfloat16: must be one of float16, float32"):
        WorldClipConfig(dtype="bfloat16")
    with pytest.raises(ThumbsaeError, match=r"world_clip.heldout_fraction=1.0"):
        WorldClipConfig(heldout_fraction=1.0)


def test_the_config_group_builds_the_dataclass_with_its_defaults():
    from thumbsae.config import build, compose

    cfg = compose("world_clip", ["world_dir=w", "out=o.safetensors"])
    assert build(cfg.world_clip, "world_clip") == WorldClipConfig()
    tweaked = compose("world_clip", ["world_dir=w", "out=o.safetensors", "world_clip.epochs=1"])
    assert build(tweaked.world_clip, "world_clip") == WorldClipConfig(epochs=1)


def test_float16_checkpoint_and_its_sidecar_sha256(fitted, tmp_path):
    import hashlib

    model, report = fitted
    path = save_world_clip(model, report, tmp_path / "m.safetensors")
    saved = load_file(str(path))
    assert {v.dtype for v in saved.values() if v.is_floating_point()} == {torch.float16}
    sidecar = json.loads(sidecar_path(path).read_text())
    assert sidecar["dtype"] == "float16" and sidecar["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    # The returned model was rounded to float16 already: the saved file holds exactly its weights.
    state = model.state_dict()
    assert all(torch.equal(saved[k].float(), state[k].float()) for k in saved)


def test_the_shipped_world_clip_loads_by_name_and_matches_its_sha256(repo_root):
    import yaml

    from thumbsae.activations import load_clip
    from thumbsae.activations.clip import SHIPPED_WORLD_CLIP, shipped_checkpoint
    from thumbsae.activations.world_clip import check_shipped_world_clip

    sidecar = check_shipped_world_clip()
    path = shipped_checkpoint(SHIPPED_WORLD_CLIP)
    assert path.stat().st_size < 20_000_000 and sidecar["dtype"] == "float16"
    assert sidecar["heldout_retrieval"]["trained"]["recall_at_1"] > 10 * sidecar["heldout_retrieval"]["trained"]["chance"]
    model_cfg = yaml.safe_load((repo_root / "conf" / "model" / "tiny_world.yaml").read_text())
    assert model_cfg["pretrained"] == SHIPPED_WORLD_CLIP and model_cfg["sha256"] == sidecar["sha256"]
    clip = load_clip(model_cfg["name"], pretrained=SHIPPED_WORLD_CLIP, sha256=model_cfg["sha256"])
    # Recorded by name, so SAE configs and store hashes do not depend on the install folder.
    assert clip.to_config()["pretrained"] == SHIPPED_WORLD_CLIP and clip.sha256 == sidecar["sha256"]
    with pytest.raises(ThumbsaeError, match="thumbsae:nope: no such shipped checkpoint"):
        load_clip(model_cfg["name"], pretrained="thumbsae:nope")
