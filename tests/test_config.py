"""Every entry point's config composes, with every experiment and group option."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from thumbsae.tasks.extract import clip_kwargs

CONFIGS = ("train", "evaluate", "extract")


@pytest.mark.parametrize("name", CONFIGS)
def test_default_config_composes_and_resolves(repo_root, name):
    with initialize_config_dir(config_dir=str(repo_root / "conf"), version_base="1.3"):
        cfg = compose(config_name=name)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert resolved["data"]["train"] == "data/world/reference.csv"
    assert resolved["activations"]["layer"] == -2
    assert clip_kwargs(cfg.model)["name"] == "thumbsae-tiny-vit"


@pytest.mark.parametrize("name", ("train", "evaluate"))
def test_study_experiment_sets_the_papers_recipe(repo_root, name):
    with initialize_config_dir(config_dir=str(repo_root / "conf"), version_base="1.3"):
        cfg = compose(config_name=name, overrides=["experiment=study"])
    assert cfg.model.name == "ViT-L-14" and cfg.model.pretrained == "openai"
    assert cfg.activations.tokens == "cls" and cfg.activations.layer == -2
    assert cfg.sae.arch == "relu" and cfg.sae.expansion_factor == 64 and cfg.sae.l1_coef == 8e-5
    assert cfg.eval.group_size == 400 and cfg.eval.n_side == 100 and cfg.eval.threshold == 0.05


def test_no_hydra_resolver_interpolation_in_pipeline_configs(repo_root):
    # DVC composes these configs through the command line, so ${hydra:...} must not appear in them.
    for path in (repo_root / "conf").rglob("*.yaml"):
        text = path.read_text()
        body = text.split("\nhydra:")[0]
        assert "${hydra:" not in body, path
