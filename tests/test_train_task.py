"""The train task in process: no validation rows, broken checkpoints, settings checked before work."""

from __future__ import annotations

import json

import pytest

from thumbsae.config import compose
from thumbsae.errors import ThumbsaeError
from thumbsae.tasks.train import check_resumable, train

SMALL = ["model=tiny_random", "trainer.max_steps=6", "trainer.val_check_interval=3", "sae.expansion_factor=2",
         "sae.k=4", "datamodule.batch_size=64", "logger=csv", "callbacks.model_checkpoint.every_n_train_steps=3"]


def small_cfg(tiny_world, tmp_path, *extra):
    return compose("train", [f"data.train={tiny_world / 'reference.csv'}", f"activations.cache_dir={tmp_path / 'cache'}",
                             *SMALL, *extra])


@pytest.mark.slow
def test_a_run_without_validation_rows_still_writes_its_sae(tiny_world, tmp_path, one_torch_thread):
    run = tmp_path / "run"
    sae_dir = train(small_cfg(tiny_world, tmp_path, "datamodule.val_fraction=0"), run)
    assert (sae_dir / "sae.safetensors").stat().st_size > 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["arch"] == "topk" and "fvu" not in metrics


def test_a_zero_byte_checkpoint_says_the_run_cannot_resume(tmp_path):
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    assert check_resumable(ckpt) is False
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"")
    with pytest.raises(ThumbsaeError, match=r"last.ckpt: empty checkpoint .* cannot resume .* Delete .*checkpoints to start"):
        check_resumable(ckpt)
    ckpt.write_bytes(b"not a zip")
    with pytest.raises(ThumbsaeError, match=r"not a readable checkpoint"):
        check_resumable(ckpt)


def test_bad_settings_fail_before_anything_is_written(tiny_world, tmp_path):
    run = tmp_path / "run"
    for bad, message in [("seed=abc", "seed='abc'"), ("activations.fit=bogus", "activations.fit='bogus'"),
                         ("datamodule.val_fraction=abc", "datamodule.val_fraction='abc'")]:
        with pytest.raises(ThumbsaeError, match=message):
            train(small_cfg(tiny_world, tmp_path, bad), run)
    with pytest.raises(ThumbsaeError, match=r"^eval.n_side=3: not used here"):
        train(small_cfg(tiny_world, tmp_path), run, overrides=["eval.n_side=3"])
    assert not run.exists() and not (tmp_path / "cache").exists()
