from __future__ import annotations

import torch

from trainer.config import PRESETS
from trainer.float8 import E4M3, Float8Linear, convert_to_float8, to_float8
from trainer.model import build


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.float() - want.float()).norm() / want.float().norm()).item()


def test_float8_linear_is_close_to_the_exact_product_forward_and_backward():
    torch.manual_seed(0)
    x = torch.randn(256, 128, requires_grad=True)
    w = torch.randn(64, 128) * 0.02
    linear = Float8Linear(128, 64, bias=False)
    linear.weight = torch.nn.Parameter(w.clone())
    grad_out = torch.randn(256, 64)
    out = linear(x)
    out.backward(grad_out)
    x64, w64 = x.detach().double().requires_grad_(), w.double().requires_grad_()
    (x64 @ w64.t()).backward(grad_out.double())
    assert out.dtype == torch.bfloat16
    assert relative_error(out, x64 @ w64.t()) < 0.06  # e4m3 has 3 mantissa bits: a few % per element, less in sums
    assert relative_error(x.grad, x64.grad) < 0.1  # e5m2 gradients: 2 mantissa bits
    assert relative_error(linear.weight.grad, w64.grad) < 0.1


def test_to_float8_uses_the_whole_range_and_never_overflows():
    x = torch.randn(1000) * 1e-3
    x8, inverse = to_float8(x, E4M3)
    assert x8.float().abs().max().item() == torch.finfo(E4M3).max
    assert torch.isfinite(x8.float()).all()
    assert relative_error(x8.float() * inverse, x) < 0.05


def test_conversion_keeps_the_parameters_and_checkpoint_names():
    model = build(PRESETS["tiny"], seed=0)
    before = dict(model.named_parameters())
    convert_to_float8(model.layers)
    after = dict(model.named_parameters())
    assert before.keys() == after.keys() and all(before[k] is after[k] for k in before)
    assert isinstance(model.layers[0].attn.qkv, Float8Linear) and isinstance(model.layers[1].mlp.down, Float8Linear)
    assert type(model.output) is torch.nn.Linear  # the output projection stays bf16
