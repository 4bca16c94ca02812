"""trainer/kernels.py: the fused ops against the model's own arithmetic. On the CPU the ops run their torch
reference arithmetic (checked against float64 autograd and the plain model); on a GPU (`gpu` marker) liger's
Triton kernels are checked against the same references on fresh random inputs."""

from __future__ import annotations

import copy
import importlib.util
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from trainer import kernels
from trainer.config import PRESETS, ConfigError, TrainConfig
from trainer.model import RMSNorm, build, linear_cross_entropy
from trainer.parallelize import apply_fused_kernels, parallelize

EPS = 1e-5


def rms_norm_float64(x, weight):
    x64 = x.double()
    return x64 * torch.rsqrt(x64.pow(2).mean(-1, keepdim=True) + EPS) * weight.double()


@pytest.mark.parametrize("op", ["rms_norm", "add_rms_norm"])
def test_the_ops_gradients_match_float64_finite_differences(op):
    torch.manual_seed(0)
    x, delta = (torch.randn(3, 5, 16, dtype=torch.float64, requires_grad=True) for _ in range(2))
    weight = torch.randn(16, dtype=torch.float64, requires_grad=True)
    if op == "rms_norm":
        assert torch.autograd.gradcheck(lambda a, w: kernels.rms_norm(a, w, EPS), (x, weight))
    else:  # both outputs, and the norm alone (the final norm: no gradient reaches the sum)
        assert torch.autograd.gradcheck(lambda a, d, w: kernels.add_rms_norm(a, d, w, EPS), (x, delta, weight))
        assert torch.autograd.gradcheck(lambda a, d, w: kernels.add_rms_norm(a, d, w, EPS)[0], (x, delta, weight))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_ops_give_the_models_rms_norm_rounded_once(dtype):
    torch.manual_seed(1)
    norm = RMSNorm(64, EPS).to(dtype)
    with torch.no_grad():
        norm.weight.copy_(1 + 0.1 * torch.randn(64))
    x, delta = (3 * torch.randn(4, 7, 64)).to(dtype), torch.randn(4, 7, 64).to(dtype)
    want = norm(x)
    assert torch.equal(kernels.rms_norm(x, norm.weight, EPS), want)
    y, s = kernels.add_rms_norm(x, delta, norm.weight, EPS)
    assert torch.equal(s, x + delta) and torch.equal(y, norm(x + delta))
    # fp32 arithmetic, one rounding: within half a bf16 ulp of the float64 value
    error = (want.double() - rms_norm_float64(x, norm.weight)).abs().max()
    assert error <= (2**-8 * 8 if dtype == torch.bfloat16 else 1e-5)


def tiny_pair(n_layers: int = 3):
    cfg = replace(PRESETS["tiny"], n_layers=n_layers)
    plain, fused = build(cfg, seed=3), build(cfg, seed=3)
    apply_fused_kernels(fused, loss=True)
    return plain, fused


def test_deferred_residual_blocks_compute_the_plain_models_loss_and_gradients():
    """With the fused kernels each block hands its last residual add to the next block's norm: the same
    function, so the same loss and gradients (fp32, CPU reference ops)."""
    plain, fused = tiny_pair()
    assert (
        fused.defer_residual and all(b.defer_residual and b.attn_norm.fused for b in fused.layers) and fused.norm.fused
    )
    tokens = torch.randint(0, 32000, (2, 33), generator=torch.Generator().manual_seed(0))
    losses = {}
    for name, model in (("plain", plain), ("fused", fused)):
        losses[name] = model(tokens[:, :-1], tokens[:, 1:])
        losses[name].backward()
    torch.testing.assert_close(losses["fused"], losses["plain"], rtol=1e-6, atol=0)
    for (name, p), q in zip(plain.named_parameters(), fused.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-7, msg=name)
    with torch.no_grad():  # and the logits (no targets)
        torch.testing.assert_close(fused(tokens[:, :-1]), plain(tokens[:, :-1]), rtol=1e-5, atol=1e-6)


def test_the_option_is_refused_where_the_kernels_cannot_run(monkeypatch, tmp_path):
    with pytest.raises(ConfigError, match="need a CUDA device, this run is on cpu: use --kernels torch"):
        kernels.check_kernels("liger", "cpu")
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "liger_kernel" else real_find_spec(name, *a)
    )
    with pytest.raises(ConfigError, match=r"liger_kernel not installed; pip install 'tokenmill\[gpu\]'"):
        kernels.check_kernels("liger+ce", "cuda")
    kernels.check_kernels("torch", "cpu")  # the reference path runs anywhere
    with pytest.raises(ConfigError, match="--kernels 'triton': choose one of torch, liger, liger"):
        TrainConfig(manifest="m.json", preset="tiny", out=tmp_path, kernels="triton")


def test_parallelize_refuses_liger_on_a_cpu_mesh_before_touching_the_model(tmp_path):
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    try:
        model = build(PRESETS["tiny"], seed=1)
        with pytest.raises(ConfigError, match="need a CUDA device"):
            parallelize(
                model,
                init_device_mesh("cpu", (1,)),
                param_dtype=torch.float32,
                compile=False,
                ac_every=0,
                reshard_after_forward=False,
                fp8=False,
                fp32_residual=False,
                kernels="liger",
            )
        assert not model.defer_residual
    finally:
        dist.destroy_process_group()


# --- on a GPU: liger's kernels against the references -------------------------------------------------------

gpu = pytest.mark.skipif(
    not torch.cuda.is_available() or importlib.util.find_spec("liger_kernel") is None,
    reason="needs a CUDA device and liger-kernel (pip install 'tokenmill[gpu]')",
)


def rel_error(got: torch.Tensor, want: torch.Tensor) -> float:
    assert torch.isfinite(got).all()
    got, want = got.detach().double().cpu(), want.detach().double().cpu()
    return float((got - want).norm() / want.norm())


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("residual_dtype", [torch.bfloat16, torch.float32])
def test_liger_norms_match_the_reference_on_the_gpu(residual_dtype):
    """Forward and backward of both ops on TinyLlama's width, against the CPU reference arithmetic run on the
    same inputs in float64 (bf16 outputs: one rounding, so ~2e-3 relative; gradients of the weight summed over
    the rows in fp32)."""
    torch.manual_seed(2)
    rows, dim = 4 * 2048, 2048
    x = (2 * torch.randn(rows, dim, device="cuda")).to(residual_dtype)
    delta = torch.randn(rows, dim, device="cuda", dtype=torch.bfloat16)
    weight = (1 + 0.1 * torch.randn(dim, device="cuda")).to(torch.bfloat16)
    grad_y, grad_s = (
        torch.randn(rows, dim, device="cuda", dtype=residual_dtype),
        torch.randn(rows, dim, device="cuda", dtype=residual_dtype),
    )

    def run(fn, inputs, grad_outs):
        leaves = [t.detach().clone().requires_grad_() for t in inputs]
        outs = fn(*leaves)
        outs = outs if isinstance(outs, tuple) else (outs,)
        grads = torch.autograd.grad(outs, leaves, grad_outs[: len(outs)])
        return outs, grads

    def cpu64(tensors):
        return [t.detach().cpu().double() for t in tensors]

    for name, fn, inputs in (
        ("rms_norm", lambda a, w: kernels.rms_norm(a, w, EPS), (x, weight)),
        ("add_rms_norm", lambda a, d, w: kernels.add_rms_norm(a, d, w, EPS), (x, delta, weight)),
    ):
        outs, grads = run(fn, inputs, (grad_y, grad_s))
        want_outs, want_grads = run(fn, cpu64(inputs), cpu64((grad_y, grad_s)))
        for got, want in zip(outs + grads, want_outs + want_grads):
            assert rel_error(got, want) < (4e-3 if got.dtype == torch.bfloat16 else 1e-5), (name, got.dtype)


@pytest.mark.gpu
@gpu
def test_liger_linear_cross_entropy_matches_the_models_on_the_gpu():
    torch.manual_seed(3)
    rows, dim, vocab = 2 * 16384 + 77, 2048, 32000
    h = torch.randn(rows, dim, device="cuda", dtype=torch.bfloat16)
    weight = (0.02 * torch.randn(vocab, dim, device="cuda")).to(torch.bfloat16)
    targets = torch.randint(0, vocab, (rows,), device="cuda")
    results = []
    for fn in (kernels.linear_cross_entropy, linear_cross_entropy):
        hh, ww = h.clone().requires_grad_(), weight.clone().requires_grad_()
        loss = fn(hh, ww, targets)
        results.append((loss, *torch.autograd.grad(loss * 3.0, (hh, ww))))
    full = F.cross_entropy((h.float() @ weight.float().t()), targets)
    assert abs(results[0][0].item() - full.item()) < 2e-3 and abs(results[1][0].item() - full.item()) < 2e-3
    for got, want in zip(results[0][1:], results[1][1:]):
        assert rel_error(got, want) < 1e-2


@pytest.mark.gpu
@gpu
def test_compiled_fused_blocks_train_like_the_compiled_plain_ones_on_the_gpu():
    """The TinyLlama block shape at 4 layers in bf16, each block compiled (fullgraph, as the trainer does): the
    liger path's loss and gradients against the plain path's."""
    from trainer.parallelize import apply_compile

    cfg = replace(PRESETS["tinyllama-1.1b"], n_layers=4)
    plain = build(cfg, seed=4).to(device="cuda", dtype=torch.bfloat16)
    fused = copy.deepcopy(plain)
    apply_fused_kernels(fused, loss=False)
    tokens = torch.randint(0, cfg.vocab_size, (2, cfg.context + 1), device="cuda")
    found = []
    for model in (plain, fused):
        apply_compile(model)
        loss = model(tokens[:, :-1], tokens[:, 1:])
        found.append((loss, torch.autograd.grad(loss, list(model.parameters()))))
    assert abs(found[0][0].item() - found[1][0].item()) < 1e-2
    for got, want in zip(found[1][1], found[0][1]):
        assert rel_error(got, want) < 3e-2
