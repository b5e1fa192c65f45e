"""SparseAutoencoder: sparse kernels against dense autograd (TopK, AuxK, JumpReLU, Matryoshka),
the BatchTopK threshold, the study's ReLU recipe, config validation."""

from __future__ import annotations

import pytest
import torch

from thumbsae.errors import ThumbsaeError
from study_recipe import study_relu
from thumbsae.sae import (
    JumpReLUConfig,
    MatryoshkaBatchTopKConfig,
    SAEConfig,
    SparseAutoencoder,
    TopKConfig,
    geometric_median,
    optim_config_from_dict,
    sae_config_from_dict,
)
from thumbsae.sae.sparse_ops import latent_outer_sum, outer_sum_index_add, sparse_decode, sparse_encode, topk_selection

D, F, K = 12, 48, 4


def _cfg(arch: str = "topk", **kw) -> SAEConfig:
    base = {"arch": arch, "d_in": D, "n_latents": F, **({"k": K} if arch in ("topk", "batchtopk", "matryoshka") else {})}
    return sae_config_from_dict({**base, **kw})


def _sae(arch: str = "topk", **kw) -> SparseAutoencoder:
    sae = SparseAutoencoder(_cfg(arch, **kw))
    with torch.no_grad():  # non-trivial biases so every gradient path is exercised
        sae.b_enc.copy_(torch.linspace(-0.2, 0.2, F))
        sae.b_dec.copy_(torch.linspace(-0.5, 0.5, D))
    return sae


def _grads(sae: SparseAutoencoder) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in sae.named_parameters() if p.grad is not None}


def _dense_topk_reference(sae, x_BD, idx_BK):
    """Dense autograd version of the TopK forward, given the selected indices."""
    pre_BF = (x_BD * sae.cfg.input_scale - sae.b_dec) @ sae.W_enc.t() + sae.b_enc
    acts_BF = torch.zeros_like(pre_BF).scatter(1, idx_BK, torch.relu(pre_BF.gather(1, idx_BK)))
    return pre_BF, acts_BF @ sae.W_dec + sae.b_dec


def test_latent_outer_sum_matches_dense():
    gen = torch.Generator().manual_seed(0)
    idx = torch.randint(0, F, (10, 5), generator=gen)
    idx[0, 1] = idx[0, 0]  # duplicates must add up
    vals, y = torch.randn(10, 5, generator=gen), torch.randn(10, D, generator=gen)
    dense_BF = torch.zeros(10, F).index_put((torch.arange(10)[:, None].expand(10, 5), idx), vals, accumulate=True)
    torch.testing.assert_close(latent_outer_sum(idx, vals, y, F), dense_BF.t() @ y, rtol=1e-5, atol=1e-5)
    # the accelerator kernel (index_add_) gives the same, run here on CPU
    torch.testing.assert_close(outer_sum_index_add(idx, vals, y, F), dense_BF.t() @ y, rtol=1e-5, atol=1e-5)


def test_sparse_decode_matches_dense_decode_including_gradients():
    gen = torch.Generator().manual_seed(1)
    idx = torch.stack([torch.randperm(F, generator=gen)[:K] for _ in range(6)])
    acts = torch.rand(6, K, generator=gen).requires_grad_(True)
    W = torch.randn(F, D, generator=gen).requires_grad_(True)
    probe = torch.randn(6, D, generator=gen)
    (sparse_decode(acts, idx, W) * probe).sum().backward()
    g_acts, g_W = acts.grad.clone(), W.grad.clone()
    acts.grad = W.grad = None
    dense_BF = torch.zeros(6, F).scatter(1, idx, acts)
    (dense_BF @ W * probe).sum().backward()
    torch.testing.assert_close(g_acts, acts.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g_W, W.grad, rtol=1e-5, atol=1e-6)


def test_topk_encoder_backward_equals_dense_autograd():
    sae = _sae(input_scale=1.5)
    x = torch.randn(16, D, generator=torch.Generator().manual_seed(2))
    probe = torch.randn(16, D, generator=torch.Generator().manual_seed(3))
    out = sae(x)
    (out.sae_out * probe).sum().backward()
    ours = _grads(sae)
    sae.zero_grad()
    _, x_hat = _dense_topk_reference(sae, x, out.latent_indices)
    (x_hat / sae.cfg.input_scale * probe).sum().backward()
    for name, p in sae.named_parameters():
        torch.testing.assert_close(ours[name], p.grad, rtol=1e-4, atol=1e-6, msg=f"grad of {name}")
    # the selection really is the per-row top-k
    pre = (x * 1.5 - sae.b_dec) @ sae.W_enc.t() + sae.b_enc
    assert torch.equal(out.latent_indices.sort(1).values, pre.topk(K, dim=1).indices.sort(1).values)


def test_input_gradient_of_sparse_encode():
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(5, D, generator=gen, requires_grad=True)
    W, b_enc, b_dec = torch.randn(F, D, generator=gen), torch.randn(F, generator=gen), torch.randn(D, generator=gen)
    acts, idx, _, _ = sparse_encode(x, b_dec, W, b_enc, topk_selection(K))
    weights = torch.randn(5, K, generator=gen)
    (acts * weights).sum().backward()
    ours = x.grad.clone()
    x.grad = None
    pre = (x - b_dec) @ W.t() + b_enc
    (torch.relu(pre.gather(1, idx)) * weights).sum().backward()
    torch.testing.assert_close(ours, x.grad, rtol=1e-5, atol=1e-6)


def test_auxk_gradient_reaches_dead_encoder_rows():
    sae = _sae(aux_coef=1.0, k_aux=6)
    x = torch.randn(32, D, generator=torch.Generator().manual_seed(5))
    # The dead latents: those never in the top-k of this batch, so only AuxK can train them.
    with torch.no_grad():
        live = sae(x).latent_indices.unique()
    dead = torch.ones(F, dtype=torch.bool)
    dead[live] = False
    assert dead.sum() >= 6
    out = sae(x, dead)
    auxk = out.terms["auxk_loss"]
    assert float(auxk.detach()) > 0
    auxk.backward()
    ours = _grads(sae)
    dead_rows = ours["W_enc"][dead].abs().sum(1)
    assert (dead_rows > 0).sum() >= 6, "AuxK gradient must reach the encoder rows of dead latents"
    assert torch.all(ours["W_enc"][~dead] == 0), "AuxK alone must not move live encoder rows"

    # Same gradient from dense autograd: top-k_aux pre-activations among dead latents.
    sae.zero_grad()
    pre_BF, x_hat = _dense_topk_reference(sae, x, out.latent_indices)
    masked = pre_BF.masked_fill(~dead, float("-inf"))
    aux_idx = masked.topk(6, dim=1).indices
    aux_BF = torch.zeros_like(pre_BF).scatter(1, aux_idx, torch.relu(pre_BF.gather(1, aux_idx)))
    x_s = x * sae.cfg.input_scale
    variance = (x_s - x_s.mean(0)).pow(2).sum()
    scale = min(int(dead.sum()) / 6, 1.0)
    ref = scale * (aux_BF @ sae.W_dec - (x_s - x_hat).detach()).pow(2).sum() / variance
    torch.testing.assert_close(auxk, ref, rtol=1e-5, atol=1e-7)
    ref.backward()
    for name, p in sae.named_parameters():
        torch.testing.assert_close(ours[name], p.grad, rtol=1e-4, atol=1e-6, msg=f"AuxK grad of {name}")


def test_encode_decode_round_trip_in_raw_units():
    sae = _sae(input_scale=4.0)
    x = torch.randn(8, D)
    latents = sae.encode(x)
    assert latents.acts_BK.shape == (8, K) and latents.indices_BK.dtype == torch.long
    out = sae.eval()(x)
    torch.testing.assert_close(sae.decode(*latents), out.sae_out)
    dense = sae.encode_dense(x)
    assert dense.shape == (8, F) and int((dense > 0).sum(1).max()) <= K
    torch.testing.assert_close(dense @ sae.W_dec / 4.0 + sae.b_dec / 4.0, out.sae_out, rtol=1e-5, atol=1e-6)


def test_relu_encode_pads_with_zeros():
    sae = _sae("relu")
    x = torch.randn(6, D)
    acts, idx = sae.encode(x)
    dense = torch.relu((x - sae.b_dec) @ sae.W_enc.t() + sae.b_enc)
    assert acts.shape[1] == int((dense > 0).sum(1).max())
    torch.testing.assert_close(sae.encode_dense(x), dense)
    assert torch.all(acts[acts == 0] == 0) and torch.all(idx[acts == 0] == 0)


def test_batchtopk_threshold_is_estimated_saved_and_used(tmp_path):
    from thumbsae.sae import load_sae, save_sae

    sae = _sae("batchtopk")
    gen = torch.Generator().manual_seed(6)
    assert float(sae.threshold) < 0
    sae.train()
    for _ in range(3):
        out = sae(torch.randn(20, D, generator=gen))
        assert int((out.latent_acts > 0).sum()) == 20 * K  # exactly B*k over the batch
    threshold = float(sae.threshold)
    assert threshold > 0
    save_sae(sae, tmp_path / "sae")
    loaded, _ = load_sae(tmp_path / "sae")
    assert float(loaded.threshold) == threshold
    x = torch.randn(10, D, generator=gen)
    acts, idx = loaded.encode(x)
    pre = (x - loaded.b_dec) @ loaded.W_enc.t() + loaded.b_enc
    expected = torch.where(pre > threshold, pre, torch.zeros_like(pre))
    torch.testing.assert_close(loaded.encode_dense(x), expected)
    assert int((acts > 0).sum()) == int((pre > threshold).sum())


def test_study_relu_recipe_and_ghost_grads_reach_dead_latents():
    cfg, optim = study_relu(D, ("sae.expansion_factor=4",))
    assert (cfg.arch, cfg.l1_coef, cfg.mse_norm, cfg.ghost_grads, cfg.dead_window_steps) == ("relu", 8e-5, "input_norm", True, 64)
    assert (optim.lr, optim.warmup_steps, cfg.b_dec_init, cfg.unit_norm_decoder) == (4e-4, 500, "mean", True)
    assert study_relu()[0].latents == 1024 * 64
    sae = SparseAutoencoder(cfg)
    x = torch.randn(16, D, generator=torch.Generator().manual_seed(10)) + 3.0
    dead = torch.zeros(cfg.latents, dtype=torch.bool)
    dead[:5] = True
    out = sae(x, dead)
    ghost = out.terms["ghost_loss"]
    assert float(ghost.detach()) > 0
    # The ghost term's value equals the MSE term (element-wise rescaling), its gradient is what counts.
    torch.testing.assert_close(ghost, out.mse_loss, rtol=1e-3, atol=1e-6)
    ghost.backward()
    assert torch.all(sae.W_enc.grad[:5].abs().sum(1) > 0)
    assert torch.all(sae.W_enc.grad[5:] == 0)
    expected_mse = ((out.sae_out - x).pow(2) / x.norm(dim=1, keepdim=True)).mean()
    torch.testing.assert_close(out.mse_loss, expected_mse)


def test_same_seed_same_weights_different_seed_different():
    a, b, c = _sae(seed=3), _sae(seed=3), _sae(seed=4)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(a.W_enc, c.W_enc)
    torch.testing.assert_close(a.W_dec.norm(dim=1), torch.ones(F))


def test_geometric_median_resists_outliers():
    x = torch.cat([torch.randn(50, 3) * 0.1, torch.full((5, 3), 100.0)])
    median = geometric_median(x)
    assert median.norm() < 1.0 < x.mean(0).norm()


def test_config_errors_are_one_line():
    with pytest.raises(ThumbsaeError, match="sae.arch"):
        sae_config_from_dict({"arch": "gated"})
    with pytest.raises(ThumbsaeError, match="unknown key.*expansion"):
        sae_config_from_dict({"expansion": 4})
    with pytest.raises(ThumbsaeError, match="ghost_grads"):
        sae_config_from_dict({"arch": "topk", "ghost_grads": True})
    with pytest.raises(ThumbsaeError, match="k=99"):
        TopKConfig(d_in=4, expansion_factor=2, k=99)
    with pytest.raises(ThumbsaeError, match="sae.arch='relu' does not match TopKConfig"):
        TopKConfig(arch="relu")
    with pytest.raises(ThumbsaeError, match="abstract"):
        SAEConfig()
    with pytest.raises(ThumbsaeError, match="sae.prefixes"):
        MatryoshkaBatchTopKConfig(d_in=4, expansion_factor=2, k=2, prefixes=(4, 2))
    with pytest.raises(ThumbsaeError, match="sae.target_l0"):
        JumpReLUConfig(d_in=4, expansion_factor=2, target_l0=100)
    with pytest.raises(ThumbsaeError, match="optim.lr"):
        optim_config_from_dict({"lr": 0})
    cfg = sae_config_from_dict({"_target_": "ignored", "arch": "relu", "d_in": 8})
    optim = optim_config_from_dict({"_target_": "ignored", "adam_betas": [0.0, 0.99]})
    assert optim.adam_betas == (0.0, 0.99) and cfg.latents == 8 * 32 and TopKConfig(d_in=8).aux_k == 4
    # every config survives its JSON form
    for c in (cfg, TopKConfig(d_in=8), MatryoshkaBatchTopKConfig(d_in=8, k=4, prefixes=[8, 64]), JumpReLUConfig(d_in=8)):
        assert sae_config_from_dict(c.to_dict()) == c


@pytest.mark.parametrize(("arch", "training"), [("topk", True), ("batchtopk", False), ("jumprelu", True), ("jumprelu", False)])
def test_row_chunked_encoder_matches_one_chunk(monkeypatch, arch, training):
    """Row chunks of a threshold selection hold different numbers of latents: same result."""
    import thumbsae.sae.sparse_ops as ops

    extra = {"aux_coef": 1.0, "k_aux": 5} if arch != "jumprelu" else {"init_threshold": 0.3, "bandwidth": 0.2}
    sae = _sae(arch, **extra)
    x = torch.randn(37, D, generator=torch.Generator().manual_seed(7))
    if arch == "batchtopk":
        sae.threshold.fill_(0.3)
    dead = torch.zeros(F, dtype=torch.bool)
    dead[::3] = True
    results = []
    sae.train(training)
    for chunk_elements in (2**25, 5 * F):  # one chunk, then chunks of 5 rows
        monkeypatch.setattr(ops, "_CHUNK_ELEMENTS", chunk_elements)
        sae.zero_grad()
        out = sae(x, dead)
        out.loss.backward()
        dense = torch.zeros(37, F).scatter_add(1, out.latent_indices, out.latent_acts.detach())
        results.append((dense, out.loss.detach(), _grads(sae)))
    (dense_a, loss_a, grads_a), (dense_b, loss_b, grads_b) = results
    assert torch.equal(dense_a > 0, dense_b > 0)  # the same latents
    torch.testing.assert_close(dense_a, dense_b, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loss_a, loss_b)
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], rtol=1e-5, atol=1e-6)


def test_bf16_autocast_forward_and_backward_track_float32():
    sae = _sae(aux_coef=1.0)
    x = torch.randn(24, D, generator=torch.Generator().manual_seed(8))
    dead = torch.zeros(F, dtype=torch.bool)
    dead[1::2] = True
    sae(x, dead).loss.backward()
    fp32 = _grads(sae)
    sae.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = sae(x, dead)
    out.loss.backward()
    assert out.sae_out.dtype == torch.float32
    for name, p in sae.named_parameters():
        assert p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all()
        cos = torch.nn.functional.cosine_similarity(p.grad.flatten(), fp32[name].flatten(), dim=0)
        assert cos > 0.9, f"bf16 gradient of {name} diverges from float32 (cos {float(cos):.3f})"


class _DenseJumpReLU(torch.autograd.Function):
    """Dense reference of the JumpReLU STE (Rajamanoharan et al. 2024, eqs. 11-12), thresholds [F]."""

    @staticmethod
    def forward(ctx, pre_BF, theta_F, eps):
        ctx.save_for_backward(pre_BF, theta_F)
        ctx.eps = eps
        return pre_BF * (pre_BF > theta_F).float()

    @staticmethod
    def backward(ctx, grad_BF):
        pre_BF, theta_F = ctx.saved_tensors
        kernel = ((pre_BF - theta_F) / ctx.eps).abs().lt(0.5).float()
        return grad_BF * (pre_BF > theta_F).float(), (-(theta_F / ctx.eps) * kernel * grad_BF).sum(0), None


class _DenseStep(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pre_BF, theta_F, eps):
        ctx.save_for_backward(pre_BF, theta_F)
        ctx.eps = eps
        return (pre_BF > theta_F).float()

    @staticmethod
    def backward(ctx, grad_BF):
        pre_BF, theta_F = ctx.saved_tensors
        kernel = ((pre_BF - theta_F) / ctx.eps).abs().lt(0.5).float()
        return None, (-(1 / ctx.eps) * kernel * grad_BF).sum(0), None


@pytest.mark.parametrize("target_l0", [None, 3.0])
def test_jumprelu_backward_equals_dense_autograd(target_l0):
    sae = _sae("jumprelu", input_scale=1.5, bandwidth=0.4, init_threshold=0.3, l0_coef=0.05, target_l0=target_l0)
    with torch.no_grad():  # distinct thresholds per latent
        sae.log_threshold.copy_(torch.linspace(0.1, 0.6, F).log())
    x = torch.randn(16, D, generator=torch.Generator().manual_seed(11))
    out = sae.train()(x)
    out.loss.backward()
    ours = _grads(sae)
    assert ours["log_threshold"].abs().sum() > 0, "the STE must reach the thresholds"
    sae.zero_grad()

    x_s = x * 1.5
    pre_BF = (x_s - sae.b_dec) @ sae.W_enc.t() + sae.b_enc
    theta_F = sae.log_threshold.exp()
    acts_BF = _DenseJumpReLU.apply(pre_BF, theta_F, 0.4)
    x_hat = acts_BF @ sae.W_dec + sae.b_dec
    fvu = (x_s - x_hat).pow(2).sum() / (x_s - x_s.mean(0)).pow(2).sum()
    l0_B = _DenseStep.apply(pre_BF, theta_F, 0.4).sum(1)
    penalty = l0_B.mean() if target_l0 is None else (2 / target_l0 * (l0_B - target_l0).pow(2)).mean()
    loss = fvu + 0.05 * penalty
    torch.testing.assert_close(out.loss, loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.sae_out, x_hat / 1.5, rtol=1e-5, atol=1e-6)
    loss.backward()
    for name, p in sae.named_parameters():
        torch.testing.assert_close(ours[name], p.grad, rtol=1e-4, atol=1e-6, msg=f"grad of {name}")
    # inference: exactly the latents above their own threshold, sparse end to end
    sae.eval()
    acts, idx = sae.encode(x)
    with torch.no_grad():
        expected = torch.where(pre_BF > theta_F, pre_BF, torch.zeros_like(pre_BF))
    torch.testing.assert_close(sae.encode_dense(x), expected)
    assert acts.shape[1] == int((expected > 0).sum(1).max())


def _dense_from_latents(sae, x_BD, acts_BK, idx_BK):
    """Dense autograd pre-activations and ReLU latents on the support our forward selected."""
    pre_BF = (x_BD * sae.cfg.input_scale - sae.b_dec) @ sae.W_enc.t() + sae.b_enc
    mask_BF = torch.zeros_like(pre_BF).scatter_add(1, idx_BK, (acts_BK > 0).float()) > 0
    return pre_BF, torch.relu(pre_BF) * mask_BF


@pytest.mark.parametrize("arch", ["batchtopk", "matryoshka"])
def test_batchtopk_and_matryoshka_backward_equal_dense_autograd(arch):
    extra = {"prefixes": (6, 18)} if arch == "matryoshka" else {}
    sae = _sae(arch, input_scale=0.5, **extra)
    x = torch.randn(20, D, generator=torch.Generator().manual_seed(12))
    out = sae.train()(x)
    assert int((out.latent_acts > 0).sum()) == 20 * K
    out.loss.backward()
    ours = _grads(sae)
    sae.zero_grad()

    x_s = x * 0.5
    variance = (x_s - x_s.mean(0)).pow(2).sum()
    _, acts_BF = _dense_from_latents(sae, x, out.latent_acts, out.latent_indices)
    sizes = (6, 18, F) if arch == "matryoshka" else (F,)
    loss = sum((x_s - (acts_BF[:, :m] @ sae.W_dec[:m] + sae.b_dec)).pow(2).sum() / variance for m in sizes)
    torch.testing.assert_close(out.loss, loss, rtol=1e-5, atol=1e-6)
    assert sorted(out.prefix_sae_out) == (list(sizes) if arch == "matryoshka" else [])
    for m, prefix_out in out.prefix_sae_out.items():
        torch.testing.assert_close(prefix_out, (acts_BF[:, :m] @ sae.W_dec[:m] + sae.b_dec).detach() / 0.5, rtol=1e-5, atol=1e-6)
    loss.backward()
    for name, p in sae.named_parameters():
        torch.testing.assert_close(ours[name], p.grad, rtol=1e-4, atol=1e-6, msg=f"grad of {name}")


@pytest.mark.parametrize("arch", ["batchtopk", "matryoshka"])
def test_inference_form_is_a_jumprelu_with_the_same_latents(arch):
    sae = _sae(arch, input_scale=2.0)
    with pytest.raises(ThumbsaeError, match="no inference threshold"):
        sae.inference_form()
    gen = torch.Generator().manual_seed(13)
    sae.train()
    for _ in range(3):
        sae(torch.randn(20, D, generator=gen))
    form = sae.inference_form().eval()
    assert form.cfg.arch == "jumprelu" and form.cfg.input_scale == 2.0
    torch.testing.assert_close(form.log_threshold.exp(), torch.full((F,), float(sae.threshold)))
    x = torch.randn(9, D, generator=gen)
    sae.eval()
    torch.testing.assert_close(form.encode_dense(x), sae.encode_dense(x))
    assert _sae("topk").inference_form().cfg.arch == "topk"


@pytest.mark.parametrize("crowded_row", [False, True])
def test_batch_topk_from_row_candidates_equals_the_whole_batch_topk(crowded_row):
    """Each row's 4k largest hold the batch's B*k largest unless a row is crowded; then the
    selection falls back to the whole batch's topk. Same entries either way."""
    from thumbsae.sae.sparse_ops import batch_topk_selection

    pre = torch.randn(30, 200, generator=torch.Generator().manual_seed(14))
    if crowded_row:
        pre[3] += 10.0  # row 3 alone holds more than 4k of the batch's largest
    acts, idx = batch_topk_selection(5)(pre)
    chosen = torch.zeros_like(pre).scatter_add(1, idx, acts)
    vals, flat = pre.reshape(-1).topk(30 * 5)
    expected = torch.zeros(30 * 200).index_put((flat,), vals.clamp_min(0)).reshape(30, 200)
    torch.testing.assert_close(chosen, expected, rtol=0, atol=0)
    assert int((chosen[3] > 0).sum()) > 20 if crowded_row else True
