"""The quiet console: own lines and errors pass, other libraries' chatter is hidden unless verbose;
one training bar over max_steps; no false "initialized randomly" warning; W&B without `anonymous`."""

from __future__ import annotations

import logging
import sys
import warnings

import pytest

from thumbsae.console import OwnLinesOnly, quiet_third_party, step_progress_bar


@pytest.fixture
def clean_logging():
    """Root handlers, levels and warning filters as they were before the test."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    own_level = logging.getLogger("thumbsae").level
    filters = {h: list(h.filters) for h in handlers}
    with warnings.catch_warnings():
        yield
    for h in list(root.handlers):
        if h not in handlers:
            root.removeHandler(h)
    for h, kept in filters.items():
        h.filters[:] = kept
    root.setLevel(level)
    logging.getLogger("thumbsae").setLevel(own_level)


def _emit_everything() -> None:
    logging.getLogger().setLevel(logging.INFO)
    logging.info("open_clip style: Loaded built-in thumbsae-tiny-vit model config.")
    logging.warning("No pretrained weights loaded for model 'x'. Model initialized randomly.")
    logging.getLogger("pytorch_lightning.utilities.rank_zero").info("GPU available: False, used: False")
    logging.getLogger("thumbsae.report").info("thumbsae: wrote the panels")
    logging.getLogger("somelib").error("somelib: a real failure")
    warnings.warn_explicit("a LeafSpec deprecation", FutureWarning, "torch/utils/_pytree.py", 1, module="torch.utils._pytree")
    warnings.warn_explicit("thumbsae: an own warning", UserWarning, "thumbsae/x.py", 1, module="thumbsae.x")


def test_quiet_console_keeps_own_lines_and_errors_only(clean_logging, capsys):
    with warnings.catch_warnings(record=True) as caught:
        quiet_third_party(False)
        quiet_third_party(False)  # idempotent: still one handler, one filter
        _emit_everything()
    err = capsys.readouterr().err
    assert "thumbsae: wrote the panels" in err and "somelib: a real failure" in err
    assert [str(w.message) for w in caught] == ["thumbsae: an own warning"]
    for noise in ("Loaded built-in", "initialized randomly", "GPU available", "LeafSpec"):
        assert noise not in err, noise
    consoles = [h for h in logging.getLogger().handlers if any(isinstance(f, OwnLinesOnly) for f in h.filters)]
    assert len(consoles) == 1 and len(consoles[0].filters) == 1


def test_verbose_shows_third_party_lines(clean_logging, capsys):
    logging.getLogger().addHandler(logging.StreamHandler(sys.stderr))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_third_party(True)
        _emit_everything()
    err = capsys.readouterr().err
    for line in ("Loaded built-in", "initialized randomly", "GPU available", "wrote the panels"):
        assert line in err, line
    assert len(caught) == 2  # the LeafSpec deprecation and thumbsae's own


def test_cli_verbose_flag_reaches_the_console(clean_logging, tmp_path, monkeypatch):
    from thumbsae import cli

    seen = []
    monkeypatch.setattr(cli, "quiet_third_party", seen.append)
    run = tmp_path / "missing"
    assert cli.main(["-v", "compare", str(run), "--out", str(tmp_path / "o")]) == 2
    assert cli.main(["compare", str(run), "--out", str(tmp_path / "o")]) == 2
    assert seen == [True, False]


def test_local_weights_bring_no_random_init_warning(tmp_path, caplog):
    import open_clip
    from safetensors.torch import save_file

    from thumbsae.activations import load_clip
    from thumbsae.activations.model_configs import TINY_VIT_NAME, register_shipped_configs

    register_shipped_configs()
    path = tmp_path / "w.safetensors"
    save_file(open_clip.create_model(TINY_VIT_NAME).state_dict(), str(path))
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        load_clip(TINY_VIT_NAME, pretrained=str(path))
    assert not [r for r in caplog.records if "initialized randomly" in r.getMessage()]
    with caplog.at_level(logging.WARNING):
        load_clip(TINY_VIT_NAME, pretrained=None)  # random weights: the warning is true and stays
    assert [r for r in caplog.records if "initialized randomly" in r.getMessage()]


def test_step_bar_counts_optimiser_steps_up_to_max_steps(tmp_path, capsys):
    import numpy as np
    import pytorch_lightning as pl

    from thumbsae.activations import ActivationDataModule
    from thumbsae.activations.store import store_from_array
    from thumbsae.sae import OptimConfig, SAELitModule, TopKConfig

    acts = np.random.default_rng(0).normal(size=(64, 16)).astype(np.float32)
    store = store_from_array(tmp_path / "store", acts, [f"v{i}" for i in range(64)])
    datamodule = ActivationDataModule([store.path], batch_size=16, val_fraction=0.25, shuffle_buffer=64)
    datamodule.setup("fit")
    module = SAELitModule(TopKConfig(d_in=16, n_latents=32, k=4), OptimConfig())
    bar = step_progress_bar("train SAE")
    trainer = pl.Trainer(
        accelerator="cpu", max_steps=30, max_epochs=-1, val_check_interval=10, check_val_every_n_epoch=None,
        limit_val_batches=1, num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
        enable_model_summary=False, callbacks=[bar],
    )
    assert trainer.progress_bar_callback is bar  # it replaces Lightning's epoch bar
    trainer.fit(module, datamodule=datamodule)
    err = capsys.readouterr().err
    assert "train SAE" in err and "30/30" in err
    assert "Epoch" not in err and "/-" not in err and "Validation" not in err


def test_quiet_wandb_logger_drops_the_anonymous_setting(tmp_path):
    from thumbsae.report.wandb_log import quiet_wandb_logger

    logger = quiet_wandb_logger(save_dir=str(tmp_path), offline=True, project="thumbsae-test")
    assert "anonymous" not in logger._wandb_init
    assert logger.__class__.__name__ == "WandbLogger"  # what closing_loggers looks for


def test_stage_progress_counts_each_named_step_once(capsys):
    from thumbsae.console import StageProgress

    with StageProgress(["encode", "study", "report"], "evaluate") as step:
        step("encode")
        assert step.done == []
        step("study")
        assert step.done == ["encode"]
        with pytest.raises(ValueError, match="'encode' is not a step still to run"):
            step("encode")
        with pytest.raises(ValueError, match="'typo' is not a step"):
            step("typo")
        step("report")
    assert step.done == ["encode", "study", "report"]
    err = capsys.readouterr().err
    assert "3/3" in err.split("\r")[-1] and "report" in err.split("\r")[-1]
    with pytest.raises(ValueError, match="repeat"):
        StageProgress(["a", "a"], "x")


def test_stage_progress_does_not_count_a_step_that_failed():
    from thumbsae.console import StageProgress

    with pytest.raises(RuntimeError), StageProgress(["encode", "study"], "evaluate", disable=True) as step:
        step("encode")
        step("study")
        raise RuntimeError("boom")
    assert step.done == ["encode"]


def _draws(capsys, monkeypatch, *, terminal: bool) -> list[str]:
    import time

    from thumbsae.console import progress_bar

    monkeypatch.setattr(sys.stderr, "isatty", lambda: terminal)
    with progress_bar(400, "many") as bar:
        for _ in range(400):
            time.sleep(0.002)  # 0.8 s in all: eight redraws on a terminal
            bar.update(1)
    return [d for d in capsys.readouterr().err.replace("\n", "\r").split("\r") if "many:" in d]


def test_off_a_terminal_a_bar_is_redrawn_rarely(capsys, monkeypatch):
    in_log = _draws(capsys, monkeypatch, terminal=False)
    assert len(in_log) <= 3 and "400/400" in in_log[-1]  # start, end (tqdm repeats the end on close)
    assert len(_draws(capsys, monkeypatch, terminal=True)) >= 5
