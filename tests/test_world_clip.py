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
    main,
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
    assert (
        main(["--world", str(tmp_path / "nowhere"), "--out", str(tmp_path / "m.safetensors")]) == 2
    )
    assert "world_clip: error:" in capsys.readouterr().err
    assert not (tmp_path / "m.safetensors").exists()
