"""Fused Triton kernels for a block's normalisations (opt-in: TrainConfig.kernels), from liger-kernel.

Each kernel is a custom op pair (forward, backward), so a compiled block calls it as it is, and inductor fuses
the rest around it. On the CPU the same ops run `torch` reference arithmetic (what the tests compare against);
`check_kernels` refuses the option where the Triton kernels cannot run.

- `rms_norm`: x / rms(x) * weight in fp32, rounded once (liger's "gemma" casting mode, the same function as
  `trainer.model.RMSNorm`); the backward computes the weight's gradient from per-multiprocessor fp32 partial sums.
- `add_rms_norm`: s = x + delta and rms_norm(s) in one pass forward, and one pass backward that also adds the
  residual's gradient (liger's fused add + RMSNorm). The blocks then hand the residual add to the next norm
  (`trainer.model.Block` with `defer_residual`): no pass of its own for any of the 2 x 22 residual adds.
- `linear_cross_entropy` ("liger+ce" only): liger's fused linear cross-entropy, fp32 accumulation of the
  output layer's gradient, in place of `trainer.model.linear_cross_entropy`.

Not taken from liger, with the reason (TinyLlama at micro-batch 16 on one H200; BENCHMARKS.md's profile):
SwiGLU, whose compiled kernels already run at the HBM bound (22.2 ms forward, 37.2 ms backward per step against
22.6 and 37.7 ms for their bytes at 4.3 TB/s); liger's kernels move the same bytes, and its fused gate-up kernel
needs the halves layout where the model interleaves (gate, up) pairs. RoPE, whose compiled forward is at its
bound too (5.9 ms against 6.2), and liger's kernel wants contiguous q and k: a copy out of the fused qkv
output, i.e. twice the bytes of the compiled one.
"""

from __future__ import annotations

import importlib.util

import torch

from trainer.config import KERNELS, ConfigError

_GEMMA = 1  # liger's casting mode "gemma": everything in fp32, the output rounded once
_STAGES = 2  # liger's fused add + RMSNorm kernels' software-pipelining depth (its own default)


def check_kernels(kernels: str, device_type: str) -> None:
    """Refuse `kernels` where it cannot run, with the fix in the message."""
    if kernels not in KERNELS:
        raise ConfigError(f"--kernels {kernels!r}", f"choose one of {', '.join(KERNELS)}")
    if kernels == "torch":
        return
    if device_type != "cuda":
        raise ConfigError(
            f"--kernels {kernels}",
            f"liger-kernel's Triton kernels need a CUDA device, this run is on {device_type}: use --kernels torch",
        )
    missing = [name for name in ("triton", "liger_kernel") if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(
            f"--kernels {kernels}",
            f"{' and '.join(missing)} not installed; pip install 'tokenmill[gpu]' (liger-kernel), or use --kernels "
            "torch",
        )


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x / rms(x) * weight over the last dimension, in fp32, rounded once to x's dtype."""
    return _rms_norm(x, weight, eps)[0]


def add_rms_norm(
    x: torch.Tensor, delta: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(rms_norm(x + delta), x + delta), the sum in x's dtype."""
    y, s, _ = _add_rms_norm(x, delta, weight, eps)
    return y, s


def _wide(t: torch.Tensor) -> torch.Tensor:
    """t in fp32, or wider if it is (float64 for gradcheck)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def _rms_reference(s: torch.Tensor, weight: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The kernels' arithmetic in torch: (normalised and scaled in fp32, rounded to s's dtype; 1/rms per row)."""
    sf = _wide(s)
    rstd = torch.rsqrt(sf.pow(2).mean(-1) + eps)
    return (sf * rstd[..., None] * _wide(weight)).to(s.dtype), rstd.flatten()


def _rms_backward_reference(grad: torch.Tensor, s: torch.Tensor, weight: torch.Tensor, rstd: torch.Tensor):
    """(grad of s, grad of weight) from y = s * rstd * weight, rstd = 1/rms(s), in fp32."""
    dim = s.shape[-1]
    rstd = rstd.view(*s.shape[:-1], 1)
    normed = _wide(s) * rstd
    grad_normed = _wide(grad) * _wide(weight)
    grad_s = rstd * (grad_normed - normed * (grad_normed * normed).sum(-1, keepdim=True) / dim)
    grad_weight = (_wide(grad) * normed).reshape(-1, dim).sum(0)
    return grad_s, grad_weight.to(weight.dtype)


@torch.library.custom_op("tokenmill::rms_norm", mutates_args=())
def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    if x.is_cuda:
        from liger_kernel.ops.rms_norm import rms_norm_forward

        y, _, rstd, *_ = rms_norm_forward(x.contiguous(), weight, eps, 0.0, _GEMMA, None)
        return y, rstd
    return _rms_reference(x, weight, eps)


@_rms_norm.register_fake
def _(x, weight, eps):
    return torch.empty_like(x), x.new_empty(x.numel() // x.shape[-1], dtype=torch.float32)


@torch.library.custom_op("tokenmill::rms_norm_backward", mutates_args=())
def _rms_norm_backward(
    grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, rstd: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    if grad.is_cuda:
        from liger_kernel.ops.rms_norm import rms_norm_backward
        from liger_kernel.ops.utils import calculate_settings

        block, warps = calculate_settings(x.shape[-1])
        grad_x, grad_weight = rms_norm_backward(
            grad.contiguous(),
            x.contiguous().view(-1, x.shape[-1]),
            weight,
            rstd,
            0.0,
            _GEMMA,
            block,
            warps,
            False,
            None,
        )
        return grad_x, grad_weight
    grad_x, grad_weight = _rms_backward_reference(grad, x, weight, rstd)
    return grad_x.to(grad.dtype), grad_weight


@_rms_norm_backward.register_fake
def _(grad, x, weight, rstd):
    return torch.empty_like(grad), torch.empty_like(weight)


def _rms_norm_setup(ctx, inputs, output) -> None:
    x, weight, _ = inputs
    ctx.save_for_backward(x, weight, output[1])


def _rms_norm_grad(ctx, grad_y, grad_rstd):
    x, weight, rstd = ctx.saved_tensors
    grad_x, grad_weight = _rms_norm_backward(grad_y, x, weight, rstd)
    return grad_x, grad_weight, None


_rms_norm.register_autograd(_rms_norm_grad, setup_context=_rms_norm_setup)


@torch.library.custom_op("tokenmill::add_rms_norm", mutates_args=())
def _add_rms_norm(
    x: torch.Tensor, delta: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(normalised x + delta in x's dtype, x + delta in x's dtype, 1/rms per row in fp32)."""
    if x.is_cuda:
        from liger_kernel.ops.fused_add_rms_norm import fused_add_rms_norm_forward

        y, s, rstd, *_ = fused_add_rms_norm_forward(x.contiguous(), delta.contiguous(), weight, eps, 0.0, _GEMMA)
        return y, s, rstd
    s = (x + delta).to(x.dtype)
    y, rstd = _rms_reference(s, weight, eps)
    return y, s, rstd


@_add_rms_norm.register_fake
def _(x, delta, weight, eps):
    return torch.empty_like(x), torch.empty_like(x), x.new_empty(x.numel() // x.shape[-1], dtype=torch.float32)


@torch.library.custom_op("tokenmill::add_rms_norm_backward", mutates_args=())
def _add_rms_norm_backward(
    grad_y: torch.Tensor, grad_s: torch.Tensor | None, s: torch.Tensor, weight: torch.Tensor, rstd: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(gradient of x and of delta, which are the same tensor; gradient of weight)."""
    if grad_y.is_cuda:
        from liger_kernel.ops.fused_add_rms_norm import fused_add_rms_norm_backward
        from liger_kernel.ops.utils import calculate_settings

        block, warps = calculate_settings(s.shape[-1])
        grad_x, _, grad_weight = fused_add_rms_norm_backward(
            grad_y.contiguous(),
            None if grad_s is None else grad_s.contiguous(),
            s,
            weight,
            rstd,
            0.0,
            _GEMMA,
            block,
            warps,
            _STAGES,
            False,
        )
        return grad_x, grad_weight
    grad_x, grad_weight = _rms_backward_reference(grad_y, s, weight, rstd)
    if grad_s is not None:
        grad_x = grad_x + _wide(grad_s)
    return grad_x.to(grad_y.dtype), grad_weight


@_add_rms_norm_backward.register_fake
def _(grad_y, grad_s, s, weight, rstd):
    return torch.empty_like(grad_y), torch.empty_like(weight)


def _add_rms_norm_setup(ctx, inputs, output) -> None:
    _, _, weight, _ = inputs
    _, s, rstd = output
    ctx.save_for_backward(s, weight, rstd)


def _add_rms_norm_grad(ctx, grad_y, grad_s, grad_rstd):
    s, weight, rstd = ctx.saved_tensors
    grad_x, grad_weight = _add_rms_norm_backward(grad_y, grad_s, s, weight, rstd)
    return grad_x, grad_x, grad_weight, None


_add_rms_norm.register_autograd(_add_rms_norm_grad, setup_context=_add_rms_norm_setup)


def linear_cross_entropy(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """mean(cross_entropy(h @ weight.T, targets)) through liger's fused linear cross-entropy (CUDA), the
    output layer's gradient accumulated over its chunks in fp32; elsewhere `trainer.model.linear_cross_entropy`."""
    if not h.is_cuda:
        from trainer.model import linear_cross_entropy as reference

        return reference(h, weight, targets)
    from liger_kernel.ops.fused_linear_cross_entropy import LigerFusedLinearCrossEntropyFunction

    # (input, weight, target, bias, ce_weight, ignore_index, lse_square_scale, label_smoothing, reduction, softcap,
    # return_z_loss, accum_dtype)
    loss, *_ = LigerFusedLinearCrossEntropyFunction.apply(
        h, weight, targets, None, None, -100, 0.0, 0.0, "mean", None, False, torch.float32
    )
    return loss
