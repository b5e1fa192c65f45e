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


def test_a_world_already_there_is_never_silently_taken_for_another(tiny_world, tmp_path, capsys):
    # tiny_world was generated with seed=3 and 600 thumbnails; the configured world has seed 0 and 4,000.
    from thumbsae.tasks.embedded import ensure_world

    before = sorted(p.name for p in tiny_world.iterdir())
    run = tmp_path / "run"
    world = [f"paths.world={tiny_world}", f"activations.cache_dir={tmp_path / 'cache'}", *SMALL]
    with pytest.raises(ThumbsaeError) as err:
        train(compose("train", [*world, "world.seed=5"]), run, overrides=["world.seed=5"])
    assert str(err.value) == (
        f"world.seed=5: {tiny_world} holds a world generated with world.seed=3, and this run would read that one; "
        f"delete {tiny_world} to generate the world asked for, or pass paths.world=NEW_FOLDER"
    )
    assert not run.exists() and not (tmp_path / "cache").exists()
    # A world setting is checked even when the world is there and so is not generated.
    with pytest.raises(ThumbsaeError, match=r"^world.seed=-1: expected a whole number from 0 to 4294967295$"):
        train(compose("train", [*world, "world.seed=-1"]), run, overrides=["world.seed=-1"])
    # The same difference coming from the config files (not the command line) is said, not refused.
    cfg = compose("train", world)
    ensure_world(cfg, [cfg.data.train], overrides=["sae.k=4"])
    note = capsys.readouterr().out
    assert note.startswith(f"note: using the world in {tiny_world} as it is (")
    assert "world.seed=3" in note and "world.n_thumbnails=600" in note
    # Described exactly, it is used quietly; nothing was regenerated in any case.
    exact = ["world.seed=3", "world.n_thumbnails=600", "world.n_reference_per_class=12", "world.n_channels=12",
             "world.width=64", "world.height=64"]
    cfg = compose("train", [*world, *exact])
    ensure_world(cfg, [cfg.data.train], overrides=exact)
    assert capsys.readouterr().out == ""
    assert sorted(p.name for p in tiny_world.iterdir()) == before
