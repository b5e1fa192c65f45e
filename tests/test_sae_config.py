"""The `sae` and `optim` Hydra groups: every option instantiates its dataclass; option files
inherit; the study's recipe (sae=study_relu) is whole; what a TopK YAML must not carry."""

from __future__ import annotations

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.errors import InstantiationException
from hydra.utils import instantiate

from thumbsae.errors import ThumbsaeError
from thumbsae.sae import (
    BatchTopKConfig,
    JumpReLUConfig,
    MatryoshkaBatchTopKConfig,
    OptimConfig,
    ReLUConfig,
    SparseAutoencoder,
    TopKConfig,
    sae_config_from_dict,
)

OPTIONS = {
    "topk": TopKConfig,
    "batchtopk": BatchTopKConfig,
    "matryoshka": MatryoshkaBatchTopKConfig,
    "relu": ReLUConfig,
    "study_relu": ReLUConfig,
    "jumprelu": JumpReLUConfig,
}


def composed(repo_root, name: str = "train", overrides: tuple[str, ...] = ()):
    with initialize_config_dir(config_dir=str(repo_root / "conf"), version_base="1.3"):
        return compose(config_name=name, overrides=list(overrides))


def test_every_option_is_listed(repo_root):
    assert sorted(p.stem for p in (repo_root / "conf" / "sae").glob("*.yaml")) == sorted(OPTIONS)
    assert sorted(p.stem for p in (repo_root / "conf" / "optim").glob("*.yaml")) == ["default", "study"]


@pytest.mark.parametrize("option", sorted(OPTIONS))
def test_every_sae_option_instantiates_its_config(repo_root, option):
    cfg = composed(repo_root, overrides=(f"sae={option}",))
    sae_cfg = instantiate(cfg.sae, d_in=16, input_scale=0.5)
    assert type(sae_cfg) is OPTIONS[option] and sae_cfg.arch == cfg.sae.arch
    assert (sae_cfg.d_in, sae_cfg.input_scale) == (16, 0.5)
    # the plain-mapping route gives the same dataclass
    from omegaconf import OmegaConf

    plain = OmegaConf.to_container(cfg.sae, resolve=True)
    assert sae_config_from_dict({**plain, "d_in": 16, "input_scale": 0.5}) == sae_cfg
    assert isinstance(instantiate(cfg.optim), OptimConfig)
    SparseAutoencoder(sae_cfg)  # builds


def test_option_files_inherit_and_carry_only_their_own_keys(repo_root):
    conf = repo_root / "conf" / "sae"
    topk = yaml.safe_load((conf / "topk.yaml").read_text())
    assert not {"l1_coef", "ghost_grads", "mse_norm", "lr", "batch_size", "warmup_steps"} & set(topk)
    relu = yaml.safe_load((conf / "relu.yaml").read_text())
    assert not {"k", "aux_coef", "dead_window_tokens", "lr", "batch_size"} & set(relu)
    batchtopk = composed(repo_root, overrides=("sae=batchtopk",)).sae
    for key in ("expansion_factor", "k", "aux_coef", "dead_window_tokens"):
        assert batchtopk[key] == topk[key], key  # inherited, not copied
    study = yaml.safe_load((conf / "study_relu.yaml").read_text())
    assert "relu" in study["defaults"] and not {"arch", "_target_", "lr"} & set(study)


def test_study_relu_is_the_whole_recipe(repo_root):
    cfg = composed(repo_root, overrides=("sae=study_relu",))
    sae, optim = instantiate(cfg.sae, d_in=1024), instantiate(cfg.optim)
    assert (sae.latents, sae.l1_coef, sae.mse_norm, sae.ghost_grads, sae.dead_window_steps) == (65536, 8e-5, "input_norm", True, 64)
    assert (sae.unit_norm_decoder, sae.b_dec_init) == (True, "mean")
    assert (optim.lr, optim.warmup_steps, cfg.datamodule.batch_size) == (4e-4, 500, 1024)
    # an explicit override still wins, and other presets keep the default warm-up
    assert composed(repo_root, overrides=("sae=study_relu", "optim.warmup_steps=7")).optim.warmup_steps == 7
    assert composed(repo_root, overrides=("sae=relu",)).optim.warmup_steps == 100
    assert composed(repo_root, overrides=("experiment=study",)).optim.warmup_steps == 500
    composed(repo_root, "evaluate", ("experiment=study",))  # the evaluate tree composes too


def test_contract_overrides(repo_root):
    cfg = composed(repo_root, overrides=("sae=topk", "sae.k=8", "sae.expansion_factor=64", "datamodule.batch_size=256"))
    sae = instantiate(cfg.sae, d_in=8)
    assert (sae.k, sae.latents, cfg.datamodule.batch_size) == (8, 512, 256)
    # Hydra wraps the config's one-line error; the cause is ours
    with pytest.raises(InstantiationException) as info:
        instantiate(composed(repo_root, overrides=("sae.arch=relu",)).sae)
    assert isinstance(info.value.__cause__, ThumbsaeError)
    assert "sae.arch='relu' does not match TopKConfig" in str(info.value.__cause__)
