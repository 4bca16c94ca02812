"""Opt-in FP8 matmuls (`--fp8`) for the linear layers inside the blocks, with dynamic tensor-wise scaling (the
recipe torchao calls "tensorwise"): forward operands in e4m3, output gradients in e5m2, each tensor scaled so
its absolute max lands on the format's largest value, products accumulated in fp32 by `torch._scaled_mm`.
The embedding, the output projection, attention and norms stay bf16; parameters, gradients and optimizer
state keep their dtypes, so checkpoints are the same with or without it. Compare its loss curve with bf16 on
the same data before trusting it (bench/train_throughput.py does)."""

from __future__ import annotations

import torch
from torch import nn

E4M3, E5M2 = torch.float8_e4m3fn, torch.float8_e5m2


def to_float8(x: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(x scaled to the format's range and cast, the inverse scale that undoes it)."""
    largest = torch.finfo(dtype).max
    scale = largest / x.abs().max().float().clamp(min=1e-12)
    # Clamp: rounding can push the largest element just past the format's range, which would become NaN.
    return (x.float() * scale).clamp(-largest, largest).to(dtype), scale.reciprocal()


def _scaled_mm(a: torch.Tensor, a_inverse: torch.Tensor, b: torch.Tensor, b_inverse: torch.Tensor) -> torch.Tensor:
    """a @ b in bf16; `_scaled_mm` wants a row-major and b column-major. Precise accumulation in all three
    matmuls: the H100's fast FP8 accumulation (torchao's default for the forward) measured no faster in a
    TinyLlama step (BENCHMARKS.md), and it is the one part of FP8 a CPU run cannot reproduce."""
    return torch._scaled_mm(a, b, scale_a=a_inverse, scale_b=b_inverse, out_dtype=torch.bfloat16, use_fast_accum=False)


class _Float8Matmul(torch.autograd.Function):
    """x (rows, in) @ weight (out, in).T with FP8 operands in forward and backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        x8, x_inverse = to_float8(x, E4M3)
        w8, w_inverse = to_float8(weight, E4M3)
        ctx.save_for_backward(x8, x_inverse, w8, w_inverse)  # saved in FP8: half the activation memory
        ctx.weight_dtype = weight.dtype
        return _scaled_mm(x8, x_inverse, w8.t(), w_inverse)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        x8, x_inverse, w8, w_inverse = ctx.saved_tensors
        g8, g_inverse = to_float8(grad_out, E5M2)
        grad_x = _scaled_mm(g8, g_inverse, w8.t().contiguous().t(), w_inverse)
        grad_w = _scaled_mm(g8.t().contiguous(), g_inverse, x8.t().contiguous().t(), x_inverse)
        return grad_x, grad_w.to(ctx.weight_dtype)


class Float8Linear(nn.Linear):
    """nn.Linear (no bias) whose matmul runs in FP8."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = _Float8Matmul.apply(x.reshape(-1, x.shape[-1]), self.weight)
        return out.reshape(*x.shape[:-1], out.shape[-1])


def convert_to_float8(blocks: nn.Module) -> None:
    """Replace every bias-free nn.Linear under `blocks` by a Float8Linear holding the same weight Parameter."""
    for module in list(blocks.modules()):
        for name, child in list(module.named_children()):
            if type(child) is nn.Linear and child.bias is None:
                fp8 = Float8Linear(child.in_features, child.out_features, bias=False, device="meta")
                fp8.weight = child.weight
                setattr(module, name, fp8)
