"""TopK SAE training throughput on one GPU in bf16: d=1024, 64x (65,536 latents), k=32.

    .venv/bin/python bench/sae_gpu.py [--batch 8192] [--steps 50]

Times our training step (bf16 autocast forward, sparse backward, AuxK with a live dead mask,
fused Adam, unit-norm decoder) against the bound set by the bare bf16 encoder matmul
[B, 1024] x [1024, 65536] alone, on the same GPU in the same run. If eai-sparsify is installed, its
SparseCoder (Triton kernels, bf16 autocast) is timed too, for reference. Exits with a clear
message, a JSON line with `ratio: null` and status 0 when no GPU is present (`--device cpu` runs the same code small, as a smoke test).

Last line: JSON with `ratio` (our tokens/s / matmul-only bound) and `target`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from thumbsae.sae import SparseAutoencoder, TopKConfig

TARGET = 0.5  # at least half of what the encoder matmul alone allows


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, steps: int, device: torch.device) -> float:
    """Seconds per call of `fn` over `steps` calls, after two warm-up calls."""
    for _ in range(2):
        fn()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    synchronize(device)
    return (time.perf_counter() - start) / steps


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d", type=int, default=1024)
    parser.add_argument("--expansion", type=int, default=64)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--batch", type=int, default=8192)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("sae_gpu.py: no CUDA GPU here; run it on a GPU machine (or --device cpu for a smoke test)", file=sys.stderr)
        print(json.dumps({"ratio": None, "target": TARGET, "skipped": "no CUDA GPU"}))
        return 0
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    n_latents = args.d * args.expansion

    gen = torch.Generator(device="cpu").manual_seed(0)
    basis = torch.nn.functional.normalize(torch.randn(4 * args.d, args.d, generator=gen), dim=1)
    idx = torch.randint(0, basis.shape[0], (args.batch, 8), generator=gen)
    x = torch.nn.functional.embedding_bag(idx, basis, per_sample_weights=torch.rand(args.batch, 8, generator=gen), mode="sum")
    x = (x + 0.05 * torch.randn(args.batch, args.d, generator=gen)).to(device)

    cfg = TopKConfig(d_in=args.d, expansion_factor=args.expansion, k=args.k, dead_window_tokens=1)
    sae = SparseAutoencoder(cfg).to(device)
    sae.init_b_dec(x, "mean")
    optimizer = torch.optim.Adam(sae.parameters(), lr=1e-4, fused=True)
    dead = torch.zeros(n_latents, dtype=torch.bool, device=device)
    dead[::2] = True  # half the latents dead, so the AuxK path (and its encoder gradient) runs

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            out = sae(x, dead)
        out.loss.backward()
        sae.remove_parallel_decoder_grad()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sae.normalize_decoder()

    a = torch.randn(args.batch, args.d, device=device, dtype=dtype)
    w = torch.randn(args.d, n_latents, device=device, dtype=dtype)
    matmul_s = timed(lambda: a @ w, args.steps, device)
    ours_s = timed(step, args.steps, device)
    report = {
        "ratio": matmul_s / ours_s,
        "target": TARGET,
        "ours_tokens_per_s": args.batch / ours_s,
        "matmul_bound_tokens_per_s": args.batch / matmul_s,
        "dtype": str(dtype).replace("torch.", ""),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "d": args.d,
        "n_latents": n_latents,
        "k": args.k,
        "batch": args.batch,
        "steps": args.steps,
    }
    try:
        if device.type != "cuda":
            raise ImportError("sparsify's Triton kernels need a GPU")
        from sparsify import SparseCoder, SparseCoderConfig

        coder = SparseCoder(args.d, SparseCoderConfig(expansion_factor=args.expansion, k=args.k), device=device)
        coder_opt = torch.optim.Adam(coder.parameters(), lr=1e-4)

        def sparsify_step() -> None:
            out = coder(x, dead_mask=dead)
            (out.fvu + out.auxk_loss / 32).backward()
            coder.remove_gradient_parallel_to_decoder_directions()
            coder_opt.step()
            coder_opt.zero_grad(set_to_none=True)
            coder.set_decoder_norm_to_unit_norm()

        report["sparsify_tokens_per_s"] = args.batch / timed(sparsify_step, args.steps, device)
    except ImportError:
        pass
    except Exception as err:  # a reference only: its failure must not hide our numbers
        print(f"sae_gpu.py: sparsify reference failed: {type(err).__name__}: {err}", file=sys.stderr)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
