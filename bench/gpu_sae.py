"""TopK SAE training throughput on one GPU, thumbsae vs EleutherAI sparsify on the same activations.

    python bench/gpu_sae.py [--batch 8192] [--steps 60]
    python bench/gpu_sae.py --tiny      # the same code on the CPU, small (a smoke test)

d=1024, x64 (65,536 latents), k=32, as ViT-L/14's residual stream would be trained. Both train on
the same synthetic activations (sparse mixtures of a random dictionary, plus noise and an offset;
resident on the GPU, so no input pipeline is timed), the same batches, with fused Adam, AuxK for
a fixed half of the latents marked dead, the parallel decoder gradient removed and unit-norm
decoder rows; ours under bf16 autocast (as `trainer=gpu` runs it), sparsify under its own bf16
autocast and Triton kernels. Reported: tokens/s of each (timed steps after warm-up), FVU of each on
a held-out batch after the same steps, and the bound set by the bare bf16 encoder matmul alone.
Without CUDA: one line on stderr and a JSON line with `ratio: null`; without eai-sparsify
(`pip install eai-sparsify`): the same.

Last line: JSON with `ratio` (our tokens/s / sparsify's) and `target` (1.0).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch
import torch.nn.functional as F

TARGET = 1.0


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(step, batches: list[torch.Tensor], warmup: int, device: torch.device) -> float:
    """Seconds per step over `batches[warmup:]`, after `warmup` untimed steps."""
    for x in batches[:warmup]:
        step(x)
    synchronize(device)
    started = time.perf_counter()
    for x in batches[warmup:]:
        step(x)
    synchronize(device)
    return (time.perf_counter() - started) / max(1, len(batches) - warmup)


def activations(n: int, d: int, device: torch.device, seed: int = 0) -> torch.Tensor:
    """`[n, d]` float32 on `device`: each row 8 atoms of a 4d-atom dictionary with uniform weights."""
    gen = torch.Generator().manual_seed(seed)
    dictionary = F.normalize(torch.randn(4 * d, d, generator=gen), dim=1)
    idx = torch.randint(0, dictionary.shape[0], (n, 8), generator=gen)
    x = F.embedding_bag(idx, dictionary, per_sample_weights=torch.rand(n, 8, generator=gen), mode="sum")
    return (x + 0.05 * torch.randn(n, d, generator=gen) + 0.3).to(device)


def fvu(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    return float((x - x_hat.float()).pow(2).sum() / (x - x.mean(0)).pow(2).sum())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d", type=int, default=1024)
    parser.add_argument("--expansion", type=int, default=64)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--batch", type=int, default=8192)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="CPU, d=64, x8, 4 steps: checks the code runs")
    args = parser.parse_args()
    if args.tiny:
        args.device, args.d, args.expansion, args.k, args.batch, args.steps = "cpu", 64, 8, 8, 512, 4
        os.environ.setdefault("SPARSIFY_DISABLE_TRITON", "1")  # sparsify's CPU path
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_sae.py: no CUDA GPU here; run it on a GPU machine (or --tiny for a CPU smoke test)", file=sys.stderr)
        print(json.dumps({"ratio": None, "target": TARGET, "skipped": "no CUDA GPU"}))
        return 0
    try:
        from sparsify import SparseCoder, SparseCoderConfig
    except ImportError:
        print("gpu_sae.py: eai-sparsify is not installed (pip install eai-sparsify)", file=sys.stderr)
        print(json.dumps({"ratio": None, "target": TARGET, "skipped": "no eai-sparsify"}))
        return 0

    from thumbsae.sae import SAEConfig, SparseAutoencoder

    autocast_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    n_latents = args.d * args.expansion
    warmup = 3 if args.steps > 6 else 1
    data = activations((args.steps + 1) * args.batch, args.d, device)
    batches, held_out = list(data[: args.steps * args.batch].split(args.batch)), data[args.steps * args.batch :]
    dead = torch.zeros(n_latents, dtype=torch.bool, device=device)
    dead[::2] = True  # half the latents dead, so both run their AuxK pass

    torch.manual_seed(0)
    ours = SparseAutoencoder(SAEConfig(arch="topk", d_in=args.d, expansion_factor=args.expansion, k=args.k,
                                       aux_coef=1 / 32, dead_window_tokens=1)).to(device)
    ours.init_b_dec(batches[0], "mean")
    ours_opt = torch.optim.Adam(ours.parameters(), lr=1e-4, fused=True)

    def our_step(x: torch.Tensor) -> None:
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype != torch.float32):
            out = ours(x, dead)
        out.loss.backward()
        ours.remove_parallel_decoder_grad()
        ours_opt.step()
        ours_opt.zero_grad(set_to_none=True)
        ours.normalize_decoder()

    torch.manual_seed(0)
    coder = SparseCoder(args.d, SparseCoderConfig(expansion_factor=args.expansion, k=args.k), device=device)
    with torch.no_grad():
        coder.b_dec.copy_(batches[0].mean(0))
    coder_opt = torch.optim.Adam(coder.parameters(), lr=1e-4, fused=True)

    def sparsify_step(x: torch.Tensor) -> None:
        out = coder(x, dead_mask=dead)
        (out.fvu + out.auxk_loss / 32).backward()
        coder.remove_gradient_parallel_to_decoder_directions()
        coder_opt.step()
        coder_opt.zero_grad(set_to_none=True)
        coder.set_decoder_norm_to_unit_norm()

    # Alternate the two, twice, and keep each one's best: clocks and other tenants drift.
    half = len(batches) // 2
    ours_s, sparsify_s = [], []
    for part in (batches[:half], batches[half:]):
        ours_s.append(timed(our_step, part, warmup, device))
        sparsify_s.append(timed(sparsify_step, part, warmup, device))
    ours_tps, sparsify_tps = args.batch / min(ours_s), args.batch / min(sparsify_s)

    a = torch.randn(args.batch, args.d, device=device, dtype=autocast_dtype)
    w = torch.randn(args.d, n_latents, device=device, dtype=autocast_dtype)
    matmul_s = timed(lambda _: a @ w, batches[: warmup + 10], warmup, device)
    with torch.no_grad():
        ours_fvu = fvu(held_out, ours(held_out).sae_out)
        sparsify_fvu = fvu(held_out, coder(held_out).sae_out)

    print(f"TopK SAE d={args.d} x{args.expansion} k={args.k}: thumbsae {ours_tps:,.0f} tokens/s, sparsify "
          f"{sparsify_tps:,.0f}, encoder matmul alone {args.batch / matmul_s:,.0f}", file=sys.stderr)
    print(json.dumps({
        "ratio": ours_tps / sparsify_tps,
        "target": TARGET,
        "ours_tokens_per_s": ours_tps,
        "sparsify_tokens_per_s": sparsify_tps,
        "matmul_bound_tokens_per_s": args.batch / matmul_s,
        "ours_fraction_of_bound": matmul_s / min(ours_s),
        "ours_fvu": ours_fvu,
        "sparsify_fvu": sparsify_fvu,
        "d": args.d,
        "n_latents": n_latents,
        "k": args.k,
        "batch": args.batch,
        "steps": args.steps,
        "dtype": str(autocast_dtype).replace("torch.", ""),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
