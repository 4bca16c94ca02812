"""The Llama-2 architecture in one file (in the spirit of nanoGPT): RMSNorm pre-norm, rotary position
embeddings, SwiGLU feed-forward, grouped-query attention through `F.scaled_dot_product_attention`.

RoPE uses the "rotate half" layout (the first and second halves of each head are the pairs), the layout of
Hugging Face's Llama, so `trainer.export` permutes no head dimension: it renames weights and splits the two
fused matrices (`attn.qkv`, `mlp.gate_up`) into Hugging Face's separate projections.

`Llama.forward(tokens)` returns logits; `Llama.forward(tokens, targets)` returns the mean cross-entropy through
`linear_cross_entropy`, which never materialises the logits of the whole batch.
"""

from __future__ import annotations

import math
import os

import torch
import torch.nn.functional as F
from torch import nn

from trainer import kernels
from trainer.config import ModelConfig

INIT_STD = 0.02  # Llama / TinyLlama / Hugging Face `initializer_range`
# Rows of logits per chunk of the loss: 16384 x 32000 bf16 logits and their gradient are 2 GB alive at once.
# Each chunk adds its part of the output layer's gradient to an fp32 accumulator (vocab x dim: a 1.3 GB
# read-modify-write, ~0.4 ms on an H100), so few large chunks: 4096-row chunks spent 0.8% of a step on it.
LOSS_CHUNK_ROWS = 16384
# Attention kernel: "sdpa" (PyTorch's scaled_dot_product_attention: cuDNN's kernels on an H100/H200) or "fa4"
# (FlashAttention-4's CuTe-DSL kernels, package flash-attn-4, whose SM90 path is FlashAttention-3's design;
# `flash_attention` below). Read when a model is built, so a process sets it in its environment.
ATTENTION_ENV = "TOKENMILL_ATTENTION"
ATTENTION_KERNELS = ("sdpa", "fa4")


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.fused = False  # trainer.parallelize.apply_fused_kernels: liger's kernels (trainer.kernels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x normalised and scaled, in the weight's dtype (the compute dtype), whatever x's dtype (an fp32
        residual stream goes into bf16 matmuls)."""
        if self.fused:
            return kernels.rms_norm(x, self.weight, self.eps).to(self.weight.dtype)
        # Normalise and scale in fp32, rounding once: bf16 sums of squares lose the small components.
        xf = x.float()
        normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (normed * self.weight.float()).to(self.weight.dtype)

    def add_forward(self, x: torch.Tensor, delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(this norm of x + delta, x + delta): the residual add and the norm after it, in one kernel when fused."""
        if self.fused:
            y, s = kernels.add_rms_norm(x, delta, self.weight, self.eps)
            return y.to(self.weight.dtype), s
        s = x + delta
        return self(s), s


def rope_tables(cfg: ModelConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of every (position, rotary frequency), shape (context, head_dim), fp32."""
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, cfg.head_dim, 2, dtype=torch.float32) / cfg.head_dim))
    angles = torch.outer(torch.arange(cfg.context, dtype=torch.float32), inv_freq)
    angles = torch.cat((angles, angles), dim=-1)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: (batch, time, heads, head_dim), cos/sin: (time, 1, head_dim); rotates in fp32, returns x's dtype."""
    xf = x.float()
    first, second = xf.chunk(2, dim=-1)
    rotated = torch.cat((-second, first), dim=-1)
    return (xf * cos + rotated * sin).type_as(x)


def attention_kernel() -> str:
    kernel = os.environ.get(ATTENTION_ENV, "sdpa")
    if kernel not in ATTENTION_KERNELS:
        raise ValueError(f"{ATTENTION_ENV}={kernel!r}: choose one of {', '.join(ATTENTION_KERNELS)}")
    return kernel


def flash_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal attention over (batch, time, heads, head_dim) tensors, each group of n_heads / n_kv_heads query
    heads sharing one K/V head; the output in the same layout. On CUDA FlashAttention-4's kernels, elsewhere
    `_reference_attention` (float64 arithmetic): a custom op, so a compiled block calls the kernels as they are."""
    return _flash_attention(q, k, v)[0]


@torch.library.custom_op("tokenmill::flash_attention", mutates_args=())
def _flash_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(output, logsumexp of each query's scaled scores: (batch, heads, time), fp32)."""
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    if q.is_cuda:
        from flash_attn.cute.interface import _flash_attn_fwd

        out, lse, *_ = _flash_attn_fwd(q, k, v, causal=True, return_lse=True)
        return out, lse
    return _reference_attention(q, k, v)


@_flash_attention.register_fake
def _(q, k, v):
    batch, time, heads, _ = q.shape
    return q.new_empty(q.shape), q.new_empty((batch, heads, time), dtype=torch.float32)


@torch.library.custom_op("tokenmill::flash_attention_backward", mutates_args=())
def _flash_attention_backward(
    grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, lse: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    grad_out = grad_out.contiguous()
    if q.is_cuda:
        from flash_attn.cute.interface import _flash_attn_bwd

        dq, dk, dv = _flash_attn_bwd(q, k, v, out, grad_out, lse, None, True)  # softmax_scale: default, causal
        return dq, dk, dv
    return _reference_attention_backward(grad_out, q, k, v, out, lse)


@_flash_attention_backward.register_fake
def _(grad_out, q, k, v, out, lse):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _flash_attention_setup(ctx, inputs, output) -> None:
    q, k, v = inputs
    out, lse = output
    ctx.save_for_backward(q.contiguous(), k.contiguous(), v.contiguous(), out, lse)


def _flash_attention_grad(ctx, grad_out, grad_lse):
    # The logsumexp is an internal output (flash_attention returns only the attention output): no gradient.
    return _flash_attention_backward(grad_out, *ctx.saved_tensors)


_flash_attention.register_autograd(_flash_attention_grad, setup_context=_flash_attention_setup)


def _scores(q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """float64 (batch, heads, time, head_dim) q and K heads repeated per group, and the causally masked scaled
    scores q k^T / sqrt(head_dim)."""
    group = q.shape[2] // k.shape[2]
    q64 = q.double().transpose(1, 2)
    k64 = k.double().repeat_interleave(group, dim=2).transpose(1, 2)
    scores = q64 @ k64.transpose(-1, -2) / math.sqrt(q.shape[-1])
    time_q, time_k = scores.shape[-2:]
    future = torch.ones(time_q, time_k, dtype=torch.bool, device=q.device).triu(1)
    return q64, k64, scores.masked_fill(future, float("-inf"))


def _reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """What the kernel computes, written out in float64 (the CPU path of `flash_attention`, and its test's
    subject): softmax(q k^T / sqrt(d), causal) v, and the logsumexp of each row of scores."""
    group = q.shape[2] // k.shape[2]
    _, _, scores = _scores(q, k)
    lse = torch.logsumexp(scores, dim=-1)
    v64 = v.double().repeat_interleave(group, dim=2).transpose(1, 2)
    out = torch.exp(scores - lse[..., None]) @ v64
    return out.transpose(1, 2).to(q.dtype).contiguous(), lse.float()


def _reference_attention_backward(grad_out, q, k, v, out, lse):
    """FlashAttention's backward in float64, from the saved output and logsumexp (no softmax stored): P =
    exp(S - lse), dV = P^T dO, dP = dO V^T, dS = P (dP - rowsum(dO * O)), dQ = dS K / sqrt(d), dK = dS^T Q /
    sqrt(d); K/V gradients summed over the query heads of each group."""
    batch, time, heads, head_dim = q.shape
    kv_heads = k.shape[2]
    group = heads // kv_heads
    q64, k64, scores = _scores(q, k)
    p = torch.exp(scores - lse.double()[..., None])
    v64 = v.double().repeat_interleave(group, dim=2).transpose(1, 2)
    do = grad_out.double().transpose(1, 2)
    o = out.double().transpose(1, 2)
    dv = p.transpose(-1, -2) @ do
    ds = p * (do @ v64.transpose(-1, -2) - (do * o).sum(-1, keepdim=True))
    scale = 1.0 / math.sqrt(head_dim)
    dq = ds @ k64 * scale
    dk = ds.transpose(-1, -2) @ q64 * scale

    def per_kv_head(g: torch.Tensor) -> torch.Tensor:  # (batch, heads, time, d) -> (batch, time, kv_heads, d)
        return g.view(batch, kv_heads, group, time, head_dim).sum(2).transpose(1, 2).contiguous()

    return dq.transpose(1, 2).to(q.dtype).contiguous(), per_kv_head(dk).to(k.dtype), per_kv_head(dv).to(v.dtype)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.kernel = attention_kernel()
        # Q, K and V in one matrix (rows: the query heads, then the key heads, then the value heads): one
        # matmul instead of three, two of them thin (2048 -> 256 for TinyLlama), and one input gradient
        # instead of three summed. `trainer.export` splits it into Hugging Face's q/k/v_proj.
        self.qkv = nn.Linear(cfg.dim, (cfg.n_heads + 2 * cfg.n_kv_heads) * cfg.head_dim, bias=False)
        self.o = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.dim, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        batch, time, _ = x.shape
        heads = self.qkv(x).view(batch, time, -1, self.head_dim)
        q, k, v = heads.split([self.n_heads, self.n_kv_heads, self.n_kv_heads], dim=2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        # A dense copy of v (1/10 of the qkv output): saved for backward as the view it was, v kept the whole qkv
        # output alive until then (3 GiB at micro-batch 16 for TinyLlama, BENCHMARKS.md).
        v = v.contiguous()
        if self.kernel == "fa4":  # (batch, time, heads, head_dim) in and out: no transposes
            return self.o(flash_attention(q, k, v).reshape(batch, time, -1))
        # SDPA takes (batch, heads, time, head_dim) views of these (batch, time, heads, head_dim) tensors, and
        # cuDNN attention writes its output in the query's memory layout: the reshape for the output
        # projection below is then a view, and its gradient needs no transposing copy either.
        # enable_gqa: query heads share K/V heads inside the kernel, no repeated copies (9% faster forward +
        # backward than repeating them, measured on an H100 with cuDNN attention: BENCHMARKS.md).
        y = F.scaled_dot_product_attention(
            q.transpose(1, 2),
            k.transpose(1, 2),
            v.transpose(1, 2),
            is_causal=True,
            enable_gqa=self.n_kv_heads != self.n_heads,
        )
        return self.o(y.transpose(1, 2).reshape(batch, time, -1))


class FeedForward(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        # gate and up projections in one matrix, their rows interleaved (gate 0, up 0, gate 1, up 1, ...): one
        # matmul and one input gradient, and each (gate, up) pair is adjacent in memory for `swiglu`.
        self.gate_up = nn.Linear(cfg.dim, 2 * cfg.ffn_dim, bias=False)
        self.down = nn.Linear(cfg.ffn_dim, cfg.dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(swiglu(self.gate_up(x)))


def swiglu(pairs: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up for interleaved (gate, up) pairs along the last dimension, computed in fp32."""
    return _SwiGLU.apply(pairs)


def _split_pairs(pairs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(gate, up) in fp32. A bf16 pair is read as one 32-bit word, gate in its low half (little-endian), and a
    bf16 is the top half of the fp32 of the same value: one 4-byte load and two bit operations per pair. Read
    as two strided bf16 values instead, compiled SwiGLU took 41 ms of an H100 step against 31 ms for the
    same bytes contiguous (BENCHMARKS.md)."""
    if pairs.dtype == torch.bfloat16:
        words = pairs.view(torch.int32)
        return (words << 16).view(torch.float32), (words & -65536).view(torch.float32)
    return pairs[..., 0::2].float(), pairs[..., 1::2].float()


def _join_pairs(gate: torch.Tensor, up: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The inverse of `_split_pairs`: interleaves gate and up, rounded to `dtype`, written as 32-bit words for bf16."""
    if dtype == torch.bfloat16:
        low = gate.to(dtype).view(torch.int16).to(torch.int32) & 0xFFFF
        high = up.to(dtype).view(torch.int16).to(torch.int32) << 16
        return (low | high).view(dtype)
    return torch.stack((gate, up), dim=-1).flatten(-2).to(dtype)


class _SwiGLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pairs: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(pairs)
        gate, up = _split_pairs(pairs)
        return (F.silu(gate) * up).to(pairs.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (pairs,) = ctx.saved_tensors
        gate, up = _split_pairs(pairs)
        grad = grad.float()
        sigmoid = torch.sigmoid(gate)
        grad_gate = grad * up * sigmoid * (1 + gate * (1 - sigmoid))
        return _join_pairs(grad_gate, grad * gate * sigmoid, pairs.dtype)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.mlp_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.mlp = FeedForward(cfg)

        # trainer.parallelize.apply_fused_kernels: each block returns (residual, its MLP's output) and leaves
        # that add to the next block's first norm (RMSNorm.add_forward), so that every add runs inside a norm.
        self.defer_residual = False

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, delta: torch.Tensor | None = None):
        """x + this block's contributions; with `defer_residual`, (x + delta + the attention's output, the MLP's
        output), whose sum is the same."""
        if not self.defer_residual:
            x = x + self.attn(self.attn_norm(x), cos, sin)
            return x + self.mlp(self.mlp_norm(x))
        h, x = (self.attn_norm(x), x) if delta is None else self.attn_norm.add_forward(x, delta)
        h, x = self.mlp_norm.add_forward(x, self.attn(h, cos, sin))
        return x, self.mlp(h)


class Llama(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.output = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        self.cross_entropy_chunk = cross_entropy_chunk  # trainer.parallelize.apply_compile swaps in a compiled one
        # The residual stream's dtype; None: the embedding's (the compute dtype). trainer.parallelize's
        # apply_fp32_residual sets float32: the blocks' outputs are then added to an fp32 stream, as under
        # Hugging Face's autocast with fp32 weights, instead of being rounded to bf16 at every addition.
        self.residual_dtype: torch.dtype | None = None
        self.fused_loss = False  # trainer.parallelize.apply_fused_kernels: liger's fused linear cross-entropy
        self.defer_residual = False  # the blocks' too (Block.forward)
        # Derived from the config, so not saved in checkpoints (persistent=False).
        cos, sin = rope_tables(cfg)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    @torch.no_grad()
    def init_weights(self, generator: torch.Generator) -> None:
        """Every matrix ~ N(0, 0.02), norms 1. Drawn from `generator` in a fixed order, so a seed gives the
        same model on any device and any number of ranks."""
        for name, param in self.named_parameters():
            if name.endswith("norm.weight"):
                param.fill_(1.0)
            else:
                param.normal_(0.0, INIT_STD, generator=generator)
        self.rope_cos, self.rope_sin = rope_tables(self.cfg)

    def forward(self, tokens: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        time = tokens.shape[1]
        if time > self.cfg.context:
            raise ValueError(f"{time} tokens per row, but preset {self.cfg.name} has context {self.cfg.context}")
        cos, sin = self.rope_cos[:time, None], self.rope_sin[:time, None]  # (time, 1, head_dim): over the heads
        h = self.embed(tokens)
        if self.residual_dtype is not None:
            h = h.to(self.residual_dtype)
        if self.defer_residual:
            delta = None
            for layer in self.layers:
                h, delta = layer(h, cos, sin, delta)
            h = self.norm.add_forward(h, delta)[0]
        else:
            for layer in self.layers:
                h = layer(h, cos, sin)
            h = self.norm(h)
        if targets is None:
            return self.output(h)
        if self.fused_loss:
            return kernels.linear_cross_entropy(h.flatten(0, 1), self.output.weight, targets.flatten())
        return linear_cross_entropy(h.flatten(0, 1), self.output.weight, targets.flatten(), self.cross_entropy_chunk)


def build(cfg: ModelConfig, seed: int) -> Llama:
    """The initialised model on the CPU, in fp32 (see `Llama.init_weights`)."""
    with torch.device("meta"):
        model = Llama(cfg)
    model.to_empty(device="cpu")
    model.init_weights(torch.Generator().manual_seed(seed))
    return model


def cross_entropy_chunk(logits: torch.Tensor, targets: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """For one chunk of logits: the summed cross-entropy, and scale x its gradient with respect to the logits
    (softmax - one_hot(target)) in the logits' dtype. Elementwise work only: compiled, it is one pass."""
    logits32 = logits.float()
    logsumexp = torch.logsumexp(logits32, dim=-1, keepdim=True)
    loss_sum = (logsumexp.squeeze(1) - logits32.gather(1, targets[:, None]).squeeze(1)).sum()
    one_hot = torch.arange(logits.shape[1], device=logits.device)[None, :] == targets[:, None]
    grad = (torch.exp(logits32 - logsumexp) - one_hot.float()) * scale
    return loss_sum, grad.to(logits.dtype)


def linear_cross_entropy(
    h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk_math=cross_entropy_chunk
) -> torch.Tensor:
    """mean(cross_entropy(h @ weight.T, targets)), LOSS_CHUNK_ROWS rows of logits at a time, softmax in fp32.

    With gradients enabled, the gradients of h and weight are computed in the same pass over the chunks (the
    approach of Liger-Kernel's fused linear cross-entropy), so neither the (rows x vocab) logits nor their
    gradient is ever stored: at 8 x 2048 tokens and a 32k vocabulary that is 2 GB of fp32 logits saved.
    `chunk_math` is where a compiled `cross_entropy_chunk` goes."""
    if torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad):
        return _LinearCrossEntropy.apply(h, weight, targets, chunk_math)
    loss_sum = torch.zeros((), dtype=torch.float32, device=h.device)
    for start in range(0, h.shape[0], LOSS_CHUNK_ROWS):
        logits = (h[start : start + LOSS_CHUNK_ROWS] @ weight.t()).float()
        loss_sum += F.cross_entropy(logits, targets[start : start + LOSS_CHUNK_ROWS], reduction="sum")
    return loss_sum / h.shape[0]


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk_math) -> torch.Tensor:
        rows = h.shape[0]
        loss_sum = torch.zeros((), dtype=torch.float32, device=h.device)
        grad_h = torch.empty_like(h)
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        for start in range(0, rows, LOSS_CHUNK_ROWS):
            h_chunk = h[start : start + LOSS_CHUNK_ROWS]
            chunk_loss, grad_logits = chunk_math(
                h_chunk @ weight.t(), targets[start : start + LOSS_CHUNK_ROWS], 1.0 / rows
            )
            loss_sum += chunk_loss
            grad_h[start : start + LOSS_CHUNK_ROWS] = grad_logits @ weight
            grad_w += (grad_logits.t() @ h_chunk).float()
        ctx.save_for_backward(grad_h, grad_w.to(weight.dtype))
        return loss_sum / rows

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):
        grad_h, grad_w = ctx.saved_tensors
        return grad_h * grad_loss.to(grad_h.dtype), grad_w * grad_loss.to(grad_w.dtype), None, None
