"""SAE files of other libraries: SAELens and sparsify SAEs made by those libraries load in
thumbsae with the same latents; ours exported load in them with the same latents; the study's
torch state dicts load with weights_only=True and anything needing unpickling is refused."""

from __future__ import annotations

import dataclasses
import json
import os
import warnings

import pytest
import torch

from thumbsae.errors import ThumbsaeError
from thumbsae.sae import SparseAutoencoder, export_sae, load_sae, sae_config_from_dict, save_sae

os.environ.setdefault("SPARSIFY_DISABLE_TRITON", "1")  # sparsify's CPU path

D, F = 8, 32
# A CLIP architecture of width D, so that load_sae's width check runs and passes.
CLIP = {"name": "thumbsae-test-clip", "pretrained": None, "overrides": {"vision_cfg": {"width": D, "layers": 4, "image_size": 32, "patch_size": 16}}}
HOOK_DEFAULTS = {"clip": CLIP, "hook": {"layer": -2, "tokens": "cls", "fit": "pad"}}
META = {**HOOK_DEFAULTS, "normalisation": {"input_scale": 0.25, "method": "mean norm sqrt(d)"}}
ATOL = 1e-5


def _x(n: int = 24, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, D, generator=torch.Generator().manual_seed(seed)) * 3


def _ours(arch: str, tmp_path) -> tuple[SparseAutoencoder, object]:
    """A trained-looking SAE of ours (input_scale 0.25, so folding it matters), saved."""
    k = {"k": 4} if arch in ("topk", "batchtopk", "matryoshka") else {}
    extra = {"prefixes": [8, 16]} if arch == "matryoshka" else {}
    cfg = sae_config_from_dict({"arch": arch, "d_in": D, "n_latents": F, "input_scale": 0.25, "seed": 3, **k, **extra})
    sae = SparseAutoencoder(cfg)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        sae.b_dec.copy_(torch.randn(D, generator=gen) * 0.2)
        sae.b_enc.copy_(torch.randn(F, generator=gen) * 0.1)
        if arch == "jumprelu":
            sae.log_threshold.copy_((torch.rand(F, generator=gen) * 0.4 + 0.05).log())
    if arch in ("batchtopk", "matryoshka"):
        sae.train()
        for i in range(3):
            sae(_x(32, seed=10 + i))
    sae.eval()
    folder = save_sae(sae, tmp_path / f"ours_{arch}", META)
    return sae, folder


def _randomised(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return module


# ---- SAELens --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sae_lens():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pytest.importorskip("sae_lens")


def _saelens_made(sae_lens, arch: str):
    from sae_lens.saes.batchtopk_sae import BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig
    from sae_lens.saes.matryoshka_batchtopk_sae import MatryoshkaBatchTopKTrainingSAE, MatryoshkaBatchTopKTrainingSAEConfig
    from sae_lens.saes.sae import TrainStepInput

    made = {
        "standard": lambda: sae_lens.StandardSAE(sae_lens.StandardSAEConfig(d_in=D, d_sae=F)),
        "topk": lambda: sae_lens.TopKSAE(sae_lens.TopKSAEConfig(d_in=D, d_sae=F, k=4, rescale_acts_by_decoder_norm=True)),
        "jumprelu": lambda: sae_lens.JumpReLUSAE(sae_lens.JumpReLUSAEConfig(d_in=D, d_sae=F)),
        "batchtopk": lambda: BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(d_in=D, d_sae=F, k=4)),
        "matryoshka_batchtopk": lambda: MatryoshkaBatchTopKTrainingSAE(
            MatryoshkaBatchTopKTrainingSAEConfig(d_in=D, d_sae=F, k=4, matryoshka_widths=[8, 16, F])
        ),
    }[arch]()
    _randomised(made)
    if arch == "jumprelu":
        with torch.no_grad():
            made.threshold.copy_(torch.rand(F, generator=torch.Generator().manual_seed(2)) * 0.6)
    if arch in ("batchtopk", "matryoshka_batchtopk"):
        for i in range(3):  # SAELens estimates the inference threshold while training
            made.training_forward_pass(
                TrainStepInput(sae_in=_x(32, 20 + i), coefficients={}, dead_neuron_mask=None, n_training_steps=i, is_logging_step=False)
            )
    return made


@pytest.mark.parametrize("arch", ["standard", "topk", "jumprelu", "batchtopk", "matryoshka_batchtopk"])
def test_saelens_sae_loads_with_the_same_latents(sae_lens, tmp_path, arch):
    made = _saelens_made(sae_lens, arch)
    x = _x()
    folders = [tmp_path / "saved"]
    if arch in ("batchtopk", "matryoshka_batchtopk"):
        # SAELens' inference form of these is a JumpReLU; the training save keeps the threshold.
        made.save_inference_model(tmp_path / "inference")
        theirs = sae_lens.SAE.load_from_disk(str(tmp_path / "inference")).encode(x)
        folders.append(tmp_path / "inference")
    else:
        theirs = made.encode(x)
    made.save_model(tmp_path / "saved")
    assert int((theirs > 0).sum()) > 0
    for folder in folders:
        ours, config = load_sae(folder, hook_defaults=HOOK_DEFAULTS)
        torch.testing.assert_close(ours.encode_dense(x), theirs.detach(), rtol=0, atol=ATOL, msg=str(folder))
        assert config["source"]["format"] == "saelens" and config["hook"] == HOOK_DEFAULTS["hook"]
    if arch == "matryoshka_batchtopk":
        assert load_sae(tmp_path / "saved", hook_defaults=HOOK_DEFAULTS)[0].cfg.prefix_sizes == (8, 16, F)


@pytest.mark.parametrize("arch", ["topk", "relu", "jumprelu", "batchtopk", "matryoshka"])
def test_ours_exported_loads_in_saelens_with_the_same_latents(sae_lens, tmp_path, arch):
    ours, folder = _ours(arch, tmp_path)
    out = export_sae(folder, "saelens", tmp_path / "exported")
    assert sorted(p.name for p in out.iterdir()) == ["cfg.json", "sae_weights.safetensors"]
    theirs = sae_lens.SAE.load_from_disk(str(out))
    expected = {"topk": "topk", "relu": "standard", "jumprelu": "jumprelu", "batchtopk": "jumprelu", "matryoshka": "jumprelu"}
    assert theirs.cfg.architecture() == expected[arch]
    x = _x(seed=5)
    torch.testing.assert_close(theirs.encode(x).detach(), ours.encode_dense(x), rtol=0, atol=ATOL)
    torch.testing.assert_close(theirs.decode(theirs.encode(x)).detach(), ours.decode(*ours.encode(x)), rtol=1e-5, atol=1e-5)
    # and back: the export says which CLIP, layer and tokens, so no defaults are needed
    again, config = load_sae(out)
    torch.testing.assert_close(again.encode_dense(x), ours.encode_dense(x), rtol=0, atol=ATOL)
    assert config["hook"] == META["hook"] and config["clip"] == CLIP
    assert config["source"]["trained_as"]["arch"] == arch


def test_saelens_folder_without_hook_names_the_setting_to_give(sae_lens, tmp_path):
    made = _saelens_made(sae_lens, "topk")
    made.cfg.metadata.hook_name = "blocks.3.hook_resid_post"
    made.save_model(tmp_path / "saved")
    with pytest.raises(ThumbsaeError, match=r"does not say its clip.name; set model.name") as info:
        load_sae(tmp_path / "saved")
    assert "\n" not in str(info.value)
    with pytest.raises(ThumbsaeError, match=r"hook.tokens; set activations.tokens"):
        load_sae(tmp_path / "saved", hook_defaults={"clip": CLIP})
    _, config = load_sae(tmp_path / "saved", hook_defaults={"clip": CLIP, "hook": {"tokens": "all"}})
    assert config["hook"]["layer"] == 3  # read from the folder's hook name


def test_saelens_layer_norm_sae_is_refused(sae_lens, tmp_path):
    made = sae_lens.StandardSAE(sae_lens.StandardSAEConfig(d_in=D, d_sae=F, normalize_activations="layer_norm"))
    made.save_model(tmp_path / "saved")
    with pytest.raises(ThumbsaeError, match="normalize_activations='layer_norm'"):
        load_sae(tmp_path / "saved", hook_defaults=HOOK_DEFAULTS)


# ---- sparsify -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sparsify():
    return pytest.importorskip("sparsify")


def _sparsify_dense(coder, x: torch.Tensor) -> torch.Tensor:
    acts, idx, _ = coder.encode(x)
    return torch.zeros(x.shape[0], coder.num_latents).scatter_add(1, idx, acts.detach())


def test_sparsify_sae_loads_with_the_same_latents(sparsify, tmp_path):
    coder = sparsify.SparseCoder(D, sparsify.SparseCoderConfig(num_latents=F, k=4))
    _randomised(coder, seed=4)
    folder = tmp_path / "layers.5"  # sparsify names a hookpoint's folder after the module
    coder.save_to_disk(folder)
    ours, config = load_sae(folder, hook_defaults={"clip": CLIP, "hook": {"tokens": "cls"}})
    x = _x(seed=6)
    torch.testing.assert_close(ours.encode_dense(x), _sparsify_dense(coder, x), rtol=0, atol=ATOL)
    assert config["hook"]["layer"] == 5 and config["sae"]["arch"] == "topk" and config["sae"]["k"] == 4


def test_ours_exported_loads_in_sparsify_with_the_same_latents(sparsify, tmp_path):
    ours, folder = _ours("topk", tmp_path)
    out = export_sae(folder, "sparsify", tmp_path / "exported")
    coder = sparsify.SparseCoder.load_from_disk(out)
    x = _x(seed=7)
    torch.testing.assert_close(_sparsify_dense(coder, x), ours.encode_dense(x), rtol=0, atol=ATOL)
    torch.testing.assert_close(coder(x).sae_out.detach(), ours(x).sae_out.detach(), rtol=1e-5, atol=1e-5)
    again, config = load_sae(out)
    torch.testing.assert_close(again.encode_dense(x), ours.encode_dense(x), rtol=0, atol=ATOL)
    assert config["hook"] == META["hook"]


def test_sparsify_takes_topk_only(tmp_path):
    _, folder = _ours("relu", tmp_path)
    with pytest.raises(ThumbsaeError, match="sparsify stores TopK autoencoders only; this SAE is relu"):
        export_sae(folder, "sparsify", tmp_path / "exported")
    assert not (tmp_path / "exported").exists()
    with pytest.raises(ThumbsaeError, match="--format onnx: use one of saelens, sparsify"):
        export_sae(folder, "onnx", tmp_path / "exported")


# ---- the study's torch state dicts ----------------------------------------------------------


def _study_state_dict() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(8)
    return {
        "W_enc": torch.randn(D, F, generator=gen) * 0.3,
        "b_enc": torch.randn(F, generator=gen) * 0.1,
        "W_dec": torch.randn(F, D, generator=gen) * 0.3,
        "b_dec": torch.randn(D, generator=gen) * 0.1,
    }


@pytest.mark.parametrize("nested", [False, True])
def test_study_state_dict_loads_with_weights_only(tmp_path, nested):
    state = _study_state_dict()
    path = tmp_path / "sae.pt"
    torch.save({"state_dict": state, "step": 7} if nested else state, path)
    ours, config = load_sae(path, hook_defaults=HOOK_DEFAULTS)
    x = _x(seed=9)
    expected = torch.relu((x - state["b_dec"]) @ state["W_enc"] + state["b_enc"])
    torch.testing.assert_close(ours.encode_dense(x), expected, rtol=1e-5, atol=ATOL)
    torch.testing.assert_close(ours.decode(*ours.encode(x)), expected @ state["W_dec"] + state["b_dec"], rtol=1e-5, atol=1e-5)
    assert config["sae"]["arch"] == "relu" and config["source"]["format"] == "state_dict"


@dataclasses.dataclass
class TrainerConfig:  # what a trainer might pickle beside its weights
    l1_coefficient: float = 8e-5


def test_state_dict_needing_unpickling_is_refused_in_one_line(tmp_path):
    path = tmp_path / "sae.pt"
    torch.save({"cfg": TrainerConfig(), "state_dict": _study_state_dict()}, path)
    with pytest.raises(ThumbsaeError, match=r"sae.pt: refused, it needs unpickling") as info:
        load_sae(path, hook_defaults=HOOK_DEFAULTS)
    assert "\n" not in str(info.value)
    torch.save(torch.nn.Linear(2, 2), path)
    with pytest.raises(ThumbsaeError, match="needs unpickling"):
        load_sae(path, hook_defaults=HOOK_DEFAULTS)
    path.write_bytes(b"not a torch file")
    with pytest.raises(ThumbsaeError, match="sae.pt: (not a readable torch file|refused)"):
        load_sae(path, hook_defaults=HOOK_DEFAULTS)
    with pytest.raises(ThumbsaeError, match=r"does not say its hook.layer; set activations.layer"):
        torch.save(_study_state_dict(), path)
        load_sae(path, hook_defaults={"clip": CLIP})


def test_unknown_folder_says_what_it_looked_for(tmp_path):
    with pytest.raises(ThumbsaeError, match=r"not an SAE folder: expected config.json \+ sae.safetensors \(thumbsae\)"):
        load_sae(tmp_path)
    (tmp_path / "cfg.json").write_text(json.dumps({"d_in": D}))
    with pytest.raises(ThumbsaeError, match="has cfg.json but neither sae_weights.safetensors"):
        load_sae(tmp_path)
