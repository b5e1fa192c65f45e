"""TopK SAE training throughput and quality: thumbsae vs EleutherAI sparsify, same data and steps;
and our other architectures at the same L0.

    SPARSIFY_DISABLE_TRITON=1 .venv/bin/python bench/sae_vs_sparsify.py [--steps 6] [--threads 2]
        [--archs batchtopk,matryoshka,jumprelu]

Both train a TopK SAE (d=768, 32x, k=32, batch 4096, Adam, unit-norm decoder with the parallel
gradient removed, b_dec = first batch mean, AuxK) on the same synthetic activations (>= 200k x 768,
sparse non-negative mixtures of a random dictionary, plus noise and an offset), for the same
steps and batches. Reported: tokens/s of each (timed steps, after one untimed warm-up step), FVU
of each on a held-out batch after the same tokens, ours as a fraction of the bound set by the
bare fp32 encoder matmul [B, d] x [d, F] alone, a bf16 attempt (autocast), and FLOPs per token at
d=1024, 64x, k=32. eai-sparsify is a bench-only extra (`pip install eai-sparsify`); without it the
anchor is a dense-backward TopK written here with plain autograd.

`--archs` also trains our BatchTopK (k per row on average), Matryoshka BatchTopK (prefixes 1/16 ..
1/1) and JumpReLU (thresholds calibrated to L0 = k on the first batch, quadratic penalty around
k) the same way, and reports each one's tokens/s, its ratio to the anchor, and its FVU and L0 on
the held-out batch (matched L0: k).

Last line: JSON with `ratio` (our tokens/s / sparsify's), `target` (1.5) and the details.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("SPARSIFY_DISABLE_TRITON", "1")  # sparsify's CPU path

import torch
import torch.nn.functional as F

from thumbsae.sae import JumpReLUConfig, SparseAutoencoder, sae_config_from_dict

TARGET = 1.5


def synthetic_activations(n: int, d: int, *, atoms: int = 4096, active: int = 8, seed: int = 0) -> torch.Tensor:
    """[n, d] float32: each row a sum of `active` dictionary atoms with exponential weights, + noise + offset."""
    gen = torch.Generator().manual_seed(seed)
    dictionary = F.normalize(torch.randn(atoms, d, generator=gen), dim=1)
    offset = torch.randn(d, generator=gen) * 0.5
    out = torch.empty(n, d)
    for start in range(0, n, 16384):
        m = min(16384, n - start)
        idx = torch.randint(0, atoms, (m, active), generator=gen)
        coef = torch.empty(m, active).exponential_(generator=gen)
        out[start : start + m] = F.embedding_bag(idx, dictionary, per_sample_weights=coef, mode="sum")
    return out + offset + 0.05 * torch.randn(n, d, generator=gen)


def fvu(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    return float((x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum())


def arch_config(arch: str, d: int, expansion: int, k: int, dead_tokens: int):
    """Our config of `arch` at L0 = k (per row, on average, or as JumpReLU's target)."""
    if arch == "jumprelu":
        return JumpReLUConfig(d_in=d, expansion_factor=expansion, init_l0=k, target_l0=k, l0_coef=0.1)
    return sae_config_from_dict(
        {"arch": arch, "d_in": d, "expansion_factor": expansion, "k": k, "aux_coef": 1 / 32, "dead_window_tokens": dead_tokens}
    )


class Ours:
    name = "thumbsae"

    def __init__(self, d: int, expansion: int, k: int, lr: float, dead_tokens: int, autocast: bool = False, arch: str = "topk"):
        self.sae = SparseAutoencoder(arch_config(arch, d, expansion, k, dead_tokens))
        self.opt = torch.optim.Adam(self.sae.parameters(), lr=lr, fused=True)  # as SAELitModule does
        self.since_fired = torch.zeros(self.sae.n_latents, dtype=torch.long)
        self.steps_since = torch.zeros(self.sae.n_latents, dtype=torch.long)
        self.autocast, self.started = autocast, False
        self.name = "thumbsae" if arch == "topk" else f"thumbsae {arch}"

    def step(self, x: torch.Tensor) -> None:
        if not self.started:
            self.sae.init_from_sample(x)  # b_dec = mean (and JumpReLU's thresholds)
            self.started = True
        dead = self.sae.dead_mask(self.since_fired, self.steps_since)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.autocast):
            out = self.sae(x, dead)
        out.loss.backward()
        self.sae.remove_parallel_decoder_grad()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.sae.normalize_decoder()
        with torch.no_grad():
            fired = out.latent_indices[out.latent_acts > 0]
            self.since_fired += x.shape[0]
            self.since_fired[fired] = 0
            self.steps_since += 1
            self.steps_since[fired] = 0

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.sae.eval()(x).sae_out

    @torch.no_grad()
    def l0(self, x: torch.Tensor) -> float:
        acts, _ = self.sae.eval().encode(x)
        return float((acts > 0).sum(1).float().mean())


class Sparsify:
    """sparsify's SparseCoder driven the way its Trainer drives it (loss_fn=fvu, Adam)."""

    name = "sparsify"

    def __init__(self, d: int, expansion: int, k: int, lr: float, dead_tokens: int):
        from sparsify import SparseCoder, SparseCoderConfig

        torch.manual_seed(0)
        self.sae = SparseCoder(d, SparseCoderConfig(expansion_factor=expansion, k=k))
        self.opt = torch.optim.Adam(self.sae.parameters(), lr=lr)
        self.since_fired = torch.zeros(self.sae.num_latents, dtype=torch.long)
        self.dead_tokens, self.started = dead_tokens, False

    def step(self, x: torch.Tensor) -> None:
        if not self.started:
            self.sae.b_dec.data = x.mean(0)
            self.started = True
        self.sae.set_decoder_norm_to_unit_norm()
        out = self.sae(x, dead_mask=self.since_fired > self.dead_tokens)
        (out.fvu + out.auxk_loss / 32).backward()
        self.sae.remove_gradient_parallel_to_decoder_directions()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            self.since_fired += x.shape[0]
            self.since_fired[out.latent_indices.flatten()] = 0

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        self.sae.set_decoder_norm_to_unit_norm()
        return self.sae(x).sae_out


class DenseAutograd:
    """Anchor when sparsify is absent: the same TopK with plain autograd (dense backward)."""

    name = "dense-autograd TopK"

    def __init__(self, d: int, expansion: int, k: int, lr: float, dead_tokens: int):
        gen = torch.Generator().manual_seed(0)
        n = d * expansion
        W = (torch.rand(n, d, generator=gen) * 2 - 1) / d**0.5
        self.W_enc, self.b_enc = W.clone().requires_grad_(), torch.zeros(n, requires_grad=True)
        self.W_dec = F.normalize(W, dim=1).requires_grad_()
        self.b_dec = torch.zeros(d, requires_grad=True)
        self.k, self.started = k, False
        self.opt = torch.optim.Adam([self.W_enc, self.b_enc, self.W_dec, self.b_dec], lr=lr)

    def _forward(self, x):
        pre = torch.addmm(self.b_enc, x - self.b_dec, self.W_enc.t())
        vals, idx = pre.topk(self.k, dim=1, sorted=False)
        return F.embedding_bag(idx, self.W_dec, per_sample_weights=vals.relu(), mode="sum") + self.b_dec

    def step(self, x: torch.Tensor) -> None:
        if not self.started:
            self.b_dec.data = x.mean(0)
            self.started = True
        x_hat = self._forward(x)
        ((x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum()).backward()
        with torch.no_grad():
            self.W_dec.grad -= (self.W_dec.grad * self.W_dec).sum(1, keepdim=True) * self.W_dec
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            self.W_dec /= self.W_dec.norm(dim=1, keepdim=True)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward(x)


def train(impl, data: torch.Tensor, steps: int, batch: int) -> tuple[float, float]:
    """One untimed warm-up step, then `steps` timed steps; returns (tokens/s, seconds)."""
    impl.step(data[:batch])
    start = time.perf_counter()
    for i in range(1, steps + 1):
        impl.step(data[i * batch : (i + 1) * batch])
    seconds = time.perf_counter() - start
    return steps * batch / seconds, seconds


def matmul_seconds(batch: int, d: int, n: int, *, bf16: bool = False, repeats: int = 3) -> float:
    """Seconds of the encoder's product `addmm(b, x_BD, W_FD.t())`, fp32 or under bf16 autocast."""
    gen = torch.Generator().manual_seed(0)
    x, W, b = torch.randn(batch, d, generator=gen), torch.randn(n, d, generator=gen), torch.zeros(n)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        torch.addmm(b, x, W.t())
        start = time.perf_counter()
        for _ in range(repeats):
            torch.addmm(b, x, W.t())
    return (time.perf_counter() - start) / repeats


def flops_per_token(d: int, n: int, k: int) -> dict[str, float]:
    """Multiply-adds x2 per token (Adam's per-parameter work excluded: it is per step, not token)."""
    return {
        "encoder_forward_matmul": 2 * n * d,
        "decoder_forward_sparse": 2 * k * d,
        "backward_sparse_ours": 3 * 2 * k * d,  # grad W_enc rows, grad W_dec rows, grad acts (+AuxK entries when dead)
        "backward_dense_autograd": 2 * 2 * n * d,  # grad W_enc = G^T x and grad x = G W_enc, both dense
        "ours_total": 2 * n * d + 4 * 2 * k * d,
        "dense_autograd_total": 3 * 2 * n * d + 2 * 2 * k * d,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--d", type=int, default=768)
    parser.add_argument("--expansion", type=int, default=32)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=6, help="timed steps (after one warm-up step)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--lr", type=float, default=None, help="default: sparsify's Adam rule 2e-4/sqrt(F/2^14)")
    parser.add_argument("--dead-tokens", type=int, default=10_000_000, help="AuxK dead window, both sides")
    parser.add_argument("--bf16-steps", type=int, default=0, help="timed bf16-autocast steps of ours (slow on CPUs without bf16 units)")
    parser.add_argument("--archs", default="batchtopk,matryoshka,jumprelu", help="our other architectures to time at L0 = k ('' for none)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    n_latents = args.d * args.expansion
    lr = args.lr or 2e-4 / (n_latents / 2**14) ** 0.5
    need = (args.steps + 2) * args.batch
    rows = synthetic_activations(max(args.rows, need) + args.batch, args.d)
    data, heldout = rows[: -args.batch], rows[-args.batch :]  # same distribution, unseen rows

    try:
        import sparsify  # noqa: F401

        anchor_cls = Sparsify
    except ImportError:
        print("eai-sparsify not installed (pip install eai-sparsify): anchoring on a dense-autograd TopK", file=sys.stderr)
        anchor_cls = DenseAutograd

    sizes = (args.d, args.expansion, args.k, lr, args.dead_tokens)
    results = {}
    for impl in (Ours(*sizes), anchor_cls(*sizes)):
        tps, seconds = train(impl, data, args.steps, args.batch)
        results[impl.name] = {"tokens_per_s": tps, "seconds": seconds, "fvu": fvu(heldout, impl.reconstruct(heldout))}
        if isinstance(impl, Ours):
            results[impl.name]["l0"] = impl.l0(heldout)
        print(f"{impl.name:>22}: {tps:9.1f} tokens/s  FVU {results[impl.name]['fvu']:.4f}  ({seconds:.1f} s)", file=sys.stderr)
    ours, anchor = results["thumbsae"], results[anchor_cls.name]
    architectures = {"topk": {**ours, "ratio_to_anchor": ours["tokens_per_s"] / anchor["tokens_per_s"]}}
    for arch in [a for a in args.archs.split(",") if a]:
        impl = Ours(*sizes, arch=arch)
        tps, seconds = train(impl, data, args.steps, args.batch)
        row = {"tokens_per_s": tps, "seconds": seconds, "fvu": fvu(heldout, impl.reconstruct(heldout)), "l0": impl.l0(heldout)}
        row["ratio_to_anchor"] = tps / anchor["tokens_per_s"]
        architectures[arch] = row
        print(f"{impl.name:>22}: {tps:9.1f} tokens/s  FVU {row['fvu']:.4f}  L0 {row['l0']:.1f}  ({seconds:.1f} s)", file=sys.stderr)

    bound_tps = args.batch / matmul_seconds(args.batch, args.d, n_latents)
    report = {
        "ratio": ours["tokens_per_s"] / anchor["tokens_per_s"],
        "target": TARGET,
        "anchor": anchor_cls.name,
        "ours_tokens_per_s": ours["tokens_per_s"],
        "anchor_tokens_per_s": anchor["tokens_per_s"],
        "fvu_ours": ours["fvu"],
        "fvu_anchor": anchor["fvu"],
        "fvu_relative_difference": (ours["fvu"] - anchor["fvu"]) / anchor["fvu"],
        "matmul_bound_tokens_per_s": bound_tps,
        "ours_fraction_of_matmul_bound": ours["tokens_per_s"] / bound_tps,
        "anchor_fraction_of_matmul_bound": anchor["tokens_per_s"] / bound_tps,
        "steps": args.steps,
        "batch": args.batch,
        "d": args.d,
        "n_latents": n_latents,
        "k": args.k,
        "threads": args.threads,
        "flops_per_token_d1024_x64_k32": flops_per_token(1024, 1024 * 64, 32),
        "architectures": architectures,
    }
    # bf16: the encoder product under autocast on a small batch says whether this CPU has fast bf16
    # at all (without AVX512-BF16 / AMX it is many times slower than fp32).
    probe = 64
    bf16_s = matmul_seconds(probe, args.d, n_latents, bf16=True, repeats=1)
    report["bf16_matmul_bound_tokens_per_s"] = probe / bf16_s
    report["bf16_over_fp32_matmul_speed"] = matmul_seconds(probe, args.d, n_latents, repeats=1) / bf16_s
    print(f"{'bf16 matmul bound':>22}: {report['bf16_matmul_bound_tokens_per_s']:9.1f} tokens/s", file=sys.stderr)
    if args.bf16_steps > 0:
        bf16 = Ours(*sizes, autocast=True)
        tps, _ = train(bf16, data, args.bf16_steps, args.batch)
        report.update(bf16_ours_tokens_per_s=tps, bf16_fvu=fvu(heldout, bf16.reconstruct(heldout)))
        print(f"{'thumbsae bf16':>22}: {tps:9.1f} tokens/s", file=sys.stderr)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
