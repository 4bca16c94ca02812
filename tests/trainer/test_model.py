from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from manifests.manifest import load
from trainer.config import PRESETS, ConfigError, ModelConfig, TrainConfig
from trainer.model import LOSS_CHUNK_ROWS, build, linear_cross_entropy, swiglu
from trainer.train import check_data


def test_linear_cross_entropy_matches_full_logits_value_and_gradients():
    torch.manual_seed(0)
    rows = 2 * LOSS_CHUNK_ROWS + 77  # three chunks, the last one partial
    h = torch.randn(rows, 16, requires_grad=True)
    w = torch.randn(50, 16, requires_grad=True)
    targets = torch.randint(0, 50, (rows,))
    h64, w64 = h.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    expected = F.cross_entropy(h64 @ w64.t(), targets)  # float64 reference over the full logits
    expected_grads = torch.autograd.grad(expected * 3.0, (h64, w64))
    loss = linear_cross_entropy(h, w, targets)
    grads = torch.autograd.grad(loss * 3.0, (h, w))
    torch.testing.assert_close(loss, expected.float(), rtol=1e-5, atol=1e-6)
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want.float(), rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_swiglu_over_interleaved_pairs_matches_autograd_of_the_formula(dtype):
    """bf16 goes through the 32-bit word path: it must give autograd's values, rounded once to bf16."""
    torch.manual_seed(0)
    pairs = (3 * torch.randn(5, 7, 2 * 48)).to(dtype).requires_grad_()
    grad_out = torch.randn(5, 7, 48).to(dtype)
    reference = pairs.detach().double().requires_grad_()
    want = F.silu(reference[..., 0::2]) * reference[..., 1::2]
    (want_grad,) = torch.autograd.grad(want, reference, grad_out.double())
    got = swiglu(pairs)
    (got_grad,) = torch.autograd.grad(got, pairs, grad_out)
    assert got.dtype == got_grad.dtype == dtype
    # Computed in fp32 from the exact inputs, then one rounding to dtype: within one ulp of the float64 result.
    tolerance = {"rtol": 2**-8, "atol": 1e-6} if dtype == torch.bfloat16 else {"rtol": 1e-5, "atol": 1e-6}
    torch.testing.assert_close(got.double(), want, **tolerance)
    torch.testing.assert_close(got_grad.double(), want_grad, **tolerance)


def test_model_loss_and_gradients_match_a_plain_float64_reference(monkeypatch):
    """The training loss (`model(tokens, targets)`: the chunked, fused `_LinearCrossEntropy` with its own
    backward) and the no-grad evaluation loss, against plain PyTorch on a float64 copy of the model: full logits
    from its output layer, log-softmax picked at the targets, autograd for the gradients. Three loss chunks,
    the last partial, so the chunking and the 1/rows scale of every chunk are in play."""
    from trainer import model as model_module

    monkeypatch.setattr(model_module, "LOSS_CHUNK_ROWS", 48)  # 2 x 64 = 128 rows: chunks of 48, 48, 32
    torch.manual_seed(0)
    model = build(PRESETS["tiny"], seed=3)
    reference = build(PRESETS["tiny"], seed=3).double()
    tokens = torch.randint(0, 32000, (2, 65))
    inputs, targets = tokens[:, :-1], tokens[:, 1:]

    logits = reference(inputs).flatten(0, 1)  # (128, 32000) float64
    want = -logits.log_softmax(dim=-1).gather(1, targets.flatten()[:, None]).mean()
    want_grads = torch.autograd.grad(want, list(reference.parameters()))
    loss = model(inputs, targets)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    with torch.no_grad():
        eval_loss = model(inputs, targets)

    torch.testing.assert_close(loss.double(), want.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(eval_loss.double(), want.detach(), rtol=1e-5, atol=1e-6)
    for (name, _), got, expected in zip(model.named_parameters(), grads, want_grads, strict=True):
        scale = expected.abs().max().item()
        torch.testing.assert_close(got.double(), expected, rtol=1e-3, atol=1e-4 * scale, msg=lambda m: f"{name}: {m}")


def test_same_seed_same_weights_and_different_seed_different_weights():
    a, b, c = build(PRESETS["tiny"], seed=1), build(PRESETS["tiny"], seed=1), build(PRESETS["tiny"], seed=2)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(a.embed.weight, c.embed.weight)


def test_tinyllama_and_tiny_parameter_counts():
    cfg = PRESETS["tinyllama-1.1b"]
    assert cfg.num_params() == 1_100_048_384  # TinyLlama-1.1B's published count
    tiny = build(PRESETS["tiny"], 0)
    assert PRESETS["tiny"].num_params() == sum(p.numel() for p in tiny.parameters())


def test_flops_per_token_is_what_a_training_step_computes():
    """PyTorch's FLOP counter over a real forward and backward of the tiny model (it counts attention without the
    causal mask's saving, as the formula does) agrees with `flops_per_token` within 1%: the formula also counts
    the norms' weights, which take part in no matrix product."""
    cfg = PRESETS["tiny"]
    model = build(cfg, 0)
    tokens = torch.randint(0, cfg.vocab_size, (2, cfg.context))
    with FlopCounterMode(display=False) as counter:
        model(tokens).float().sum().backward()
    measured = counter.get_total_flops() / tokens.numel()
    assert measured == pytest.approx(cfg.flops_per_token(), rel=0.01)


def test_preset_vocabulary_smaller_than_the_tokenizer_is_refused(sample_manifest, tmp_path):
    small = ModelConfig(
        name="small-vocab", dim=64, n_layers=1, n_heads=4, n_kv_heads=2, ffn_dim=128, vocab_size=1000, context=64
    )
    cfg = TrainConfig(manifest=sample_manifest, preset="tiny", out=tmp_path)
    with pytest.raises(ConfigError, match="vocabulary of 1000, smaller than the tokenizer's 32000"):
        check_data(cfg, small, load(sample_manifest), checksums=False)


def test_out_defaults_to_the_run_being_resumed_and_is_otherwise_required(tmp_path):
    (tmp_path / "step-000010").mkdir()
    (tmp_path / "step-000010" / "meta.json").write_text("{}")
    assert TrainConfig(manifest="m.json", preset="tiny", resume=tmp_path).out == tmp_path
    assert TrainConfig(manifest="m.json", preset="tiny", resume=tmp_path / "step-000010").out == tmp_path
    with pytest.raises(ConfigError, match="--out: required"):
        TrainConfig(manifest="m.json", preset="tiny")


def test_batch_tokens_must_split_into_micro_batches():
    cfg = TrainConfig(manifest="m.json", preset="tinyllama-1.1b", out="o", batch_tokens=2048 * 8 * 3, micro_batch=8)
    assert cfg.accumulation(world_size=1) == 3
    with pytest.raises(ConfigError, match="use 32768 or 65536"):
        cfg.accumulation(world_size=2)


@pytest.mark.parametrize("kv_heads", [1, 2, 4])
def test_flash_attention_op_matches_sdpa_value_and_gradients(kv_heads):
    """The `fa4` attention path as a custom op with its own autograd (on the CPU its float64 reference: the
    same formulas the kernels implement, the backward from the saved output and logsumexp) against autograd
    through PyTorch's causal SDPA in float64, with fresh random inputs and grouped K/V heads."""
    from trainer.model import flash_attention

    torch.manual_seed(kv_heads)
    q = torch.randn(2, 37, 4, 16, requires_grad=True)
    k, v = (torch.randn(2, 37, kv_heads, 16, requires_grad=True) for _ in range(2))
    grad_out = torch.randn(2, 37, 4, 16)
    out = flash_attention(q, k, v)
    grads = torch.autograd.grad(out, (q, k, v), grad_out)
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    expected = F.scaled_dot_product_attention(
        q64.transpose(1, 2), k64.transpose(1, 2), v64.transpose(1, 2), is_causal=True, enable_gqa=kv_heads != 4
    ).transpose(1, 2)
    expected_grads = torch.autograd.grad(expected, (q64, k64, v64), grad_out.double())
    assert out.shape == q.shape and out.dtype == q.dtype
    torch.testing.assert_close(out, expected.float(), rtol=1e-5, atol=1e-6)
    for got, want in zip(grads, expected_grads):
        assert got.shape == want.shape
        torch.testing.assert_close(got, want.float(), rtol=1e-5, atol=1e-6)


def test_model_with_fa4_attention_computes_the_sdpa_model(monkeypatch):
    """TOKENMILL_ATTENTION=fa4 changes the kernel, not the function: same loss and gradients as SDPA."""
    cfg = PRESETS["tiny"]
    tokens = torch.randint(0, cfg.vocab_size, (2, cfg.context + 1))
    results = []
    for kernel in ("sdpa", "fa4"):
        monkeypatch.setenv("TOKENMILL_ATTENTION", kernel)
        model = build(cfg, seed=3)
        assert model.layers[0].attn.kernel == kernel
        loss = model(tokens[:, :-1], tokens[:, 1:])
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    (loss_sdpa, grads_sdpa), (loss_fa4, grads_fa4) = results
    torch.testing.assert_close(loss_fa4, loss_sdpa, rtol=1e-5, atol=1e-6)
    for got, want in zip(grads_fa4, grads_sdpa):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
