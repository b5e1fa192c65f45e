"""The full-size experiments compose for every entry point and carry the study's settings."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf


def composed(repo_root, name: str, experiment: str):
    with initialize_config_dir(config_dir=str(repo_root / "conf"), version_base="1.3"):
        cfg = compose(config_name=name, overrides=[f"experiment={experiment}"])
    OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
    return cfg


@pytest.mark.parametrize("name", ("train", "evaluate"))
@pytest.mark.parametrize("experiment", ("youtube8m", "youtube8m_topk", "channel"))
def test_full_size_experiments_use_the_studys_model_and_hook(repo_root, name, experiment):
    cfg = composed(repo_root, name, experiment)
    assert (cfg.model.name, cfg.model.pretrained, cfg.model.quick_gelu) == ("ViT-L-14", "openai", True)
    assert (cfg.activations.layer, cfg.activations.tokens, cfg.activations.fit) == (-2, "cls", "crop")
    assert cfg.experiment_name == experiment and cfg.trainer.accelerator == "gpu"


def test_youtube8m_is_the_study_and_topk_and_channel_differ_where_they_should(repo_root):
    study = composed(repo_root, "train", "youtube8m")
    assert study.sae.arch == "relu" and study.sae.expansion_factor == 64 and study.sae.l1_coef == 8e-5
    assert study.sae.ghost_grads and study.sae.mse_norm == "input_norm" and not study.datamodule.normalize
    assert study.trainer.max_steps * study.datamodule.batch_size == 2_621_440
    assert (study.eval.group_size, study.eval.n_side, study.eval.threshold) == (400, 100, 0.05)
    assert study.data.thumbnails == "data/yt8m/manifest.csv"
    topk = composed(repo_root, "train", "youtube8m_topk")
    assert (topk.sae.arch, topk.sae.expansion_factor, topk.sae.k) == ("topk", 64, 32)
    assert topk.trainer.max_steps * topk.datamodule.batch_size == 2_621_440 and topk.datamodule.normalize
    channel = composed(repo_root, "evaluate", "channel")
    assert (channel.eval.group_size, channel.eval.n_side, channel.eval.statistic) == (11, 10, "mean")
