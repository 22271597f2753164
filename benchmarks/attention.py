"""Attention kernels under CPU bf16: the measurements behind `models.videomae.attend`'s choice.

For each (batch, heads, tokens, head dim) shape, forward + backward of one attention in the
layout the model has (q, k, v views of one fused qkv projection, gradient arriving through the
output projection's layout), median of N repeats, 2 threads:

- fp32 fused: `scaled_dot_product_attention` in fp32 (what fp32 training runs);
- bf16 fused: the same kernel on bf16 inputs;
- bf16 fused in fp32: bf16 inputs cast to fp32 for the kernel and back;
- bf16 plain: `softmax(q k^T) v` as bf16 matmuls (AMX where the CPU has it);
- chosen: `models.videomae.attend`, what the model runs for that shape.

    python benchmarks/attention.py
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from models.videomae import attend  # noqa: E402

# (batch, heads, tokens, head dim): the presets' encoder and decoder sequences at 90% masking
SHAPES = [
    (2, 12, 160, 64),     # base encoder, batch 2
    (2, 6, 1568, 64),     # base decoder, batch 2
    (1, 6, 1568, 64),     # base decoder, batch 1
    (16, 12, 160, 64),    # base encoder, batch 16
    (64, 12, 160, 64),    # base encoder, batch 64
    (2, 6, 784, 64),      # 8-frame base decoder
    (8, 6, 784, 64),
    (16, 6, 784, 64),
    (32, 3, 392, 64),
    (64, 3, 392, 64),
]


def fused(q, k, v):
    return F.scaled_dot_product_attention(q, k, v)


def fused_in_fp32(q, k, v):
    return F.scaled_dot_product_attention(q.float(), k.float(), v.float()).to(q.dtype)


def plain(q, k, v):
    return ((q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)).softmax(dim=-1) @ v


def time_ms(kernel, shape: tuple[int, int, int, int], dtype: torch.dtype, repeats: int) -> float:
    batch, heads, tokens, dim = shape
    qkv = torch.randn(batch, tokens, 3, heads, dim, dtype=dtype, requires_grad=True)
    grad = torch.randn(batch, tokens, heads * dim, dtype=dtype)
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        kernel(q, k, v).transpose(1, 2).reshape(batch, tokens, -1).backward(grad)
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:]) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads; fwd + bwd, ms")
    print("| shape (B, H, N, d) | scores | fp32 fused | bf16 fused | bf16 fused in fp32 | bf16 plain | chosen |")
    print("|---|---|---|---|---|---|---|")
    for shape in SHAPES:
        cells = [time_ms(fused, shape, torch.float32, args.repeats)]
        cells += [time_ms(kernel, shape, torch.bfloat16, args.repeats) for kernel in (fused, fused_in_fp32, plain)]
        chosen_ms = time_ms(attend, shape, torch.bfloat16, args.repeats)
        scores = shape[0] * shape[1] * shape[2] ** 2 / 1e6
        print(f"| {shape} | {scores:.1f}M | " + " | ".join(f"{c:.1f}" for c in cells) + f" | {chosen_ms:.1f} |",
              flush=True)


if __name__ == "__main__":
    main()
