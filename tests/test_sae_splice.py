"""Splice metrics on a tiny random open_clip model: a perfect SAE changes nothing, ablation does."""

from __future__ import annotations

import open_clip
import pytest
import torch

from thumbsae.activations.model_configs import register_model_config
from thumbsae.errors import ThumbsaeError
from thumbsae.sae import OptimConfig, ReLUConfig, SAELitModule, SparseAutoencoder, SpliceEvaluator, TopKConfig

WIDTH = 32
NAME = "thumbsae-test-splice-vit"
PROMPTS = ["a photo of food", "a photo of a car", "a photo of a field"]


@pytest.fixture(scope="module")
def tiny_clip():
    register_model_config(
        NAME,
        {
            "embed_dim": 16,
            "vision_cfg": {"image_size": 32, "layers": 3, "width": WIDTH, "patch_size": 8, "head_width": 16},
            "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
        },
    )
    torch.manual_seed(0)
    model = open_clip.create_model(NAME).eval()
    with torch.no_grad():
        model.logit_scale.fill_(2.0)  # a sharper softmax than the default so losses differ visibly
    return model, open_clip.get_tokenizer(NAME)


def identity_sae() -> SparseAutoencoder:
    """relu(x) - relu(-x) = x: a ReLU SAE with latents +e_i and -e_i reconstructs exactly."""
    sae = SparseAutoencoder(ReLUConfig(d_in=WIDTH, n_latents=2 * WIDTH, input_scale=0.5))
    eye = torch.eye(WIDTH)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye]))
        sae.W_dec.copy_(torch.cat([eye, -eye]))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


def evaluator(tiny_clip, tokens: str, layer: int = 1) -> SpliceEvaluator:
    model, tokenizer = tiny_clip
    gen = torch.Generator().manual_seed(1)
    images = torch.randn(12, 3, 32, 32, generator=gen)
    labels = torch.arange(12) % len(PROMPTS)
    return SpliceEvaluator.from_prompts(model, tokenizer, images, labels, PROMPTS, layer=layer, tokens=tokens, batch_size=5)


@pytest.mark.parametrize("tokens", ["cls", "all"])
def test_perfect_reconstruction_splices_to_the_original(tiny_clip, tokens):
    metrics = evaluator(tiny_clip, tokens).evaluate(identity_sae())
    assert metrics["zero_shot_acc_spliced"] == metrics["zero_shot_acc_original"]
    assert metrics["contrastive_loss_spliced"] == pytest.approx(metrics["contrastive_loss_original"], abs=1e-5)
    assert metrics["contrastive_loss_ablated"] != pytest.approx(metrics["contrastive_loss_original"], abs=1e-4)
    assert metrics["loss_recovered"] == pytest.approx(1.0, abs=1e-3)
    assert 0.0 <= metrics["zero_shot_acc_original"] <= 1.0


def test_original_matches_open_clip_and_a_random_sae_loses_something(tiny_clip):
    model, tokenizer = tiny_clip
    ev = evaluator(tiny_clip, "cls", layer=-2)
    with torch.no_grad():
        image = torch.nn.functional.normalize(model.encode_image(ev.images_BCHW), dim=-1)
        text = torch.nn.functional.normalize(model.encode_text(tokenizer(PROMPTS)), dim=-1)
        logits = model.logit_scale.exp() * image @ text.t()
        expected = torch.nn.functional.cross_entropy(logits, ev.labels_B)
    random_sae = SparseAutoencoder(TopKConfig(d_in=WIDTH, expansion_factor=2, k=2))
    metrics = ev.evaluate(random_sae)
    assert metrics["contrastive_loss_original"] == pytest.approx(float(expected), rel=1e-5)
    assert metrics["contrastive_loss_spliced"] != pytest.approx(metrics["contrastive_loss_original"], abs=1e-5)
    # the hook is removed afterwards: the model is unchanged
    with torch.no_grad():
        again = torch.nn.functional.normalize(model.encode_image(ev.images_BCHW), dim=-1)
    assert torch.equal(image, again)


def test_lit_module_logs_splice_metrics_at_validation(tiny_clip):
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader, TensorDataset

    module = SAELitModule(TopKConfig(d_in=WIDTH, expansion_factor=2, k=4), OptimConfig(warmup_steps=1), splice=evaluator(tiny_clip, "cls"))
    data = DataLoader(TensorDataset(torch.randn(64, WIDTH)), batch_size=32)
    trainer = pl.Trainer(accelerator="cpu", max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, data)
    metrics = trainer.validate(module, data, verbose=False)[0]
    assert {"val/zero_shot_acc_spliced", "val/contrastive_loss_ablated", "val/loss_recovered"} <= set(metrics)
    assert not any("clip" in key or "model." in key for key in module.state_dict())


def test_mean_tokens_cannot_be_spliced(tiny_clip):
    with pytest.raises(ThumbsaeError, match="tokens"):
        evaluator(tiny_clip, "mean")


@pytest.mark.parametrize("tokens,layer", [("cls", -2), ("cls", 0), ("all", 1), ("cls", -1), ("all", -1)])
def test_tail_from_the_cached_residual_equals_running_the_whole_tower(tiny_clip, tokens, layer):
    fast = evaluator(tiny_clip, tokens, layer=layer)
    whole = evaluator(tiny_clip, tokens, layer=layer)
    whole.tail_only = False  # the hook on a full forward pass, as for towers without a cacheable trunk
    assert fast.tail_only
    sae = SparseAutoencoder(TopKConfig(d_in=WIDTH, expansion_factor=2, k=3))
    got, expected = fast.evaluate(sae), whole.evaluate(sae)
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        if not key.endswith("time_s"):
            assert got[key] == pytest.approx(value, rel=1e-4, abs=1e-5), key


def test_the_trunk_runs_once_and_later_evaluations_run_only_the_blocks_after_the_hook(tiny_clip):
    from thumbsae.activations.hooks import vision_blocks

    model, _ = tiny_clip
    ev = evaluator(tiny_clip, "cls", layer=1)
    calls = {0: 0, 1: 0, 2: 0}
    handles = [block.register_forward_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))
               for i, block in enumerate(vision_blocks(model))]
    try:
        sae = SparseAutoencoder(TopKConfig(d_in=WIDTH, expansion_factor=2, k=3))
        first = ev.evaluate(sae)
        assert calls[0] == calls[1] == 3  # 12 images in batches of 5, up to the hooked block, once
        with torch.no_grad():
            sae.W_dec.mul_(0.5)  # another SAE state: only the spliced variant may change
        second = ev.evaluate(sae)
        assert calls[0] == calls[1] == 3 and calls[2] == 0  # the last block runs for the class token only
    finally:
        for handle in handles:
            handle.remove()
    assert second["contrastive_loss_original"] == first["contrastive_loss_original"]
    assert second["contrastive_loss_ablated"] == first["contrastive_loss_ablated"]
    assert second["contrastive_loss_spliced"] != first["contrastive_loss_spliced"]
    assert ev.seconds["prepare"] > 0 and ev.seconds["evaluate"] > 0
    assert second["splice_prepare_time_s"] == first["splice_prepare_time_s"] == ev.seconds["prepare"]
