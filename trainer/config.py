"""Model presets and the training configuration: two small dataclasses, validated on construction."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from manifests.config import ConfigError

# TrainConfig.kernels: compiled PyTorch, or liger-kernel's Triton kernels (trainer/kernels.py).
KERNELS = ("torch", "liger", "liger+ce")


@dataclass(kw_only=True, slots=True, frozen=True)
class ModelConfig:
    """A Llama-2 architecture: RMSNorm pre-norm, RoPE, SwiGLU, grouped-query attention, untied output."""

    name: str
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    ffn_dim: int
    vocab_size: int
    context: int
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0

    def __post_init__(self) -> None:
        if self.dim % self.n_heads:
            raise ConfigError(f"preset {self.name}", f"dim {self.dim} is not a multiple of n_heads {self.n_heads}")
        if self.n_heads % self.n_kv_heads:
            raise ConfigError(
                f"preset {self.name}", f"n_heads {self.n_heads} is not a multiple of n_kv_heads {self.n_kv_heads}"
            )
        if self.head_dim % 2:
            raise ConfigError(f"preset {self.name}", f"head_dim {self.head_dim} must be even for RoPE")
        for field_name in ("n_layers", "ffn_dim", "vocab_size", "context"):
            if getattr(self, field_name) < 1:
                raise ConfigError(f"preset {self.name}", f"{field_name} must be positive")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    def matmul_params(self) -> int:
        """Parameters that take part in a matrix product: every weight but the embedding table (a lookup)."""
        kv_dim = self.n_kv_heads * self.head_dim
        attention = 2 * self.dim * self.dim + 2 * self.dim * kv_dim
        mlp = 3 * self.dim * self.ffn_dim
        norms = 2 * self.dim
        return self.n_layers * (attention + mlp + norms) + self.dim + self.vocab_size * self.dim

    def num_params(self) -> int:
        return self.matmul_params() + self.vocab_size * self.dim

    def flops_per_token(self) -> int:
        """Training FLOPs per token: 6·N for the weights (forward 2, backward 4) plus 12·L·d·T for attention
        scores and values (PaLM's count, which ignores the causal mask's saving). N = `matmul_params()`."""
        return 6 * self.matmul_params() + 12 * self.n_layers * self.dim * self.context


PRESETS: dict[str, ModelConfig] = {
    preset.name: preset
    for preset in (
        # TinyLlama-1.1B (Zhang et al. 2024): Llama-2's architecture and tokenizer at 1.1B parameters.
        ModelConfig(
            name="tinyllama-1.1b",
            dim=2048,
            n_layers=22,
            n_heads=32,
            n_kv_heads=4,
            ffn_dim=5632,
            vocab_size=32000,
            context=2048,
        ),
        # For CPU tests: every feature of the big one (GQA, SwiGLU, RoPE) at a size that trains in seconds.
        ModelConfig(
            name="tiny", dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=176, vocab_size=32000, context=64
        ),
        # For mixture sweeps on the CPU over a corpus with a small trained tokenizer (`tokenizer.train: {vocab_size:
        # 2048}`): `tiny` with a 2k vocabulary, whose output layer no longer costs 15x the blocks.
        ModelConfig(
            name="tiny-2k", dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=176, vocab_size=2048, context=64
        ),
    )
}


def preset(name: str) -> ModelConfig:
    if name not in PRESETS:
        raise ConfigError(f"--preset {name!r}", f"unknown; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]


# Training defaults that fit each preset (TrainConfig's batch_tokens and warmup_steps when not given): TinyLlama's
# own, 1024 windows of 2048 tokens and 2000 warm-up steps; for `tiny`, 64 windows of 64 tokens (a step a CPU
# takes in a second) and a warm-up of 2% of the default 1000 steps.
PRESET_TRAINING: dict[str, dict[str, int]] = {
    "tinyllama-1.1b": {"batch_tokens": 2048 * 1024, "warmup_steps": 2000},
    "tiny": {"batch_tokens": 64 * 64, "warmup_steps": 20},
    "tiny-2k": {"batch_tokens": 64 * 64, "warmup_steps": 20},
}


def _opt(default, help: str):
    """A TrainConfig field with its option's help sentence (`trainer.train.build_parser` makes the options)."""
    return field(default=default, metadata={"help": help})


@dataclass(kw_only=True, slots=True)
class TrainConfig:
    """Everything `trainer.train` needs besides the model preset. Defaults are TinyLlama's, but for the batch and
    the warm-up, which are the preset's (PRESET_TRAINING)."""

    manifest: Path | None = _opt(
        None, "the build's manifest.json; required, unless --resume names a checkpoint (then the checkpoint's)"
    )
    preset: str | None = _opt(
        None,
        f"model size: one of {', '.join(PRESETS)}; required, unless --resume names a checkpoint (then the "
        "checkpoint's)",
    )
    out: Path | None = _opt(
        None, "folder for checkpoints and metrics.jsonl; default: the run folder that --resume continues"
    )
    resume: Path | None = _opt(
        None,
        "continue from a step-* checkpoint or a run folder (its newest); every option not given again is the "
        "checkpoint's",
    )
    steps: int = _opt(1000, "optimizer steps of the whole run")
    batch_tokens: int | None = _opt(
        None,
        "global batch per optimizer step, in tokens (kept across a resume on another number of ranks); default: the "
        "preset's",
    )
    micro_batch: int = _opt(8, "windows per rank per forward/backward; the rest of the batch is gradient accumulation")
    lr: float = _opt(4e-4, "peak learning rate (AdamW)")
    min_lr: float = _opt(4e-5, "learning rate at the end of the cosine schedule")
    warmup_steps: int | None = _opt(None, "linear warm-up steps; default: the preset's")
    weight_decay: float = _opt(0.1, "AdamW weight decay (not on norms and embeddings)")
    beta1: float = _opt(0.9, "AdamW beta1")
    beta2: float = _opt(0.95, "AdamW beta2")
    grad_clip: float = _opt(1.0, "clip the global gradient norm to this")
    seed: int = _opt(1234, "seed of the initial weights and of the data order")
    train_split: str = _opt("train", "the manifest split to train on")
    val_split: str = _opt("validation", "the manifest split for --eval-every")
    eval_every: int = _opt(0, "validation loss every N steps; 0: none")
    eval_windows: int = _opt(64, "validation windows per evaluation, over all ranks")
    save_every: int = _opt(1000, "checkpoint every N steps and at the last; 0: only on SIGTERM (benchmarks)")
    keep_last: int = _opt(3, "checkpoints kept (the oldest removed)")
    log_every: int = _opt(10, "a console line and a metrics.jsonl record every N steps")
    compile: bool = _opt(True, "torch.compile each block (CUDA only; CPU runs stay eager)")
    ac_every: int = _opt(0, "activation checkpointing of every k-th block; 0: none, 1: all")
    fp8: bool = _opt(False, "FP8 matmuls in the blocks (trainer/float8.py); compare its loss curve with bf16 first")
    kernels: str = _opt(
        "torch",
        "the blocks' RMSNorms and residual adds: torch (compiled PyTorch, also the CPU "
        "path), liger (liger-kernel's fused add + RMSNorm, CUDA only) or liger+ce (and its fused "
        "linear cross-entropy)",
    )
    fp32_residual: bool = _opt(
        False,
        "keep the residual stream between blocks in fp32 (as Hugging Face under autocast and Megatron's "
        "fp32_residual_connection); the blocks still compute in bf16",
    )
    # FSDP (several devices; one device runs a replica and gathers nothing): keeping each block's gathered bf16
    # weights from forward to backward gathers once per step instead of twice, at the cost of the bf16 model in
    # memory (2.2 GB at 1.1B): +1.7% on one H100 (BENCHMARKS.md).
    reshard_after_forward: bool = _opt(
        False,
        "FSDP: free each block's gathered weights after forward (for models whose gathered weights do not fit beside "
        "the activations)",
    )
    verify_checksums: bool = _opt(
        False, "check every shard's sha256 against the manifest before training (sizes are always checked)"
    )
    allow_manifest_change: bool = _opt(
        False,
        "with --resume: continue although the manifest's shards differ from the checkpoint's, saying what changed",
    )
    prefetch: int = _opt(4, "batches the background reader keeps ready")

    def __post_init__(self) -> None:
        for name in ("manifest", "preset"):
            if getattr(self, name) is None:
                raise ConfigError(
                    f"--{name}", "required, unless --resume names a checkpoint (it then defaults to the checkpoint's)"
                )
        self.manifest = Path(self.manifest)
        self.resume = Path(self.resume) if self.resume is not None else None
        if self.out is None and self.resume is None:
            raise ConfigError(
                "--out", "required (where checkpoints and metrics go), unless --resume names the run to continue"
            )
        if self.out is None:
            self.out = self.resume.parent if (self.resume / "meta.json").exists() else self.resume
        self.out = Path(self.out)
        preset(self.preset)
        for name, value in PRESET_TRAINING[self.preset].items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        positive = ("steps", "batch_tokens", "micro_batch", "keep_last", "log_every", "prefetch", "eval_windows")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} {getattr(self, name)}", "must be at least 1")
        for name in ("warmup_steps", "eval_every", "save_every", "ac_every", "weight_decay", "grad_clip"):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{name.replace('_', '-')} {getattr(self, name)}", "must not be negative")
        if self.kernels not in KERNELS:  # whether they can run on the device: trainer.kernels.check_kernels
            raise ConfigError(f"--kernels {self.kernels!r}", f"choose one of {', '.join(KERNELS)}")
        if not 0 < self.min_lr <= self.lr:
            raise ConfigError(f"--min-lr {self.min_lr}", f"must be in (0, --lr {self.lr}]")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise ConfigError(f"--beta1 {self.beta1} / --beta2 {self.beta2}", "must be in [0, 1)")

    def accumulation(self, world_size: int) -> int:
        """Micro-steps per optimizer step so that one step sees exactly `batch_tokens` tokens on `world_size`
        ranks. When they cannot, the error shows the arithmetic and what would keep this global batch (a resume on
        another rank count must keep it: the schedule and the data position count in its steps)."""
        context = preset(self.preset).context
        if self.batch_tokens % context:
            lower = self.batch_tokens // context * context
            raise ConfigError(
                f"--batch-tokens {self.batch_tokens}",
                f"not a whole number of {context}-token windows; use "
                f"{_either([lower, lower + context] if lower else [context])}",
            )
        windows = self.batch_tokens // context
        if windows % world_size:
            ranks = [n for n in range(1, windows + 1) if windows % n == 0]
            raise ConfigError(
                f"--batch-tokens {self.batch_tokens}",
                f"{windows} windows of {context} tokens, which {world_size} ranks cannot share "
                f"({windows} / {world_size} is not whole); keep this global batch on {_either(ranks)} ranks, or in a "
                "new run use a "
                f"multiple of {context * world_size} tokens: {max(1, windows // world_size) * context * world_size}",
            )
        per_rank = windows // world_size
        if per_rank % self.micro_batch:
            per_micro_step = self.micro_batch * context * world_size
            lower = max(per_micro_step, self.batch_tokens // per_micro_step * per_micro_step)
            raise ConfigError(
                f"--batch-tokens {self.batch_tokens}",
                f"{windows} windows of {context} tokens = {per_rank} per rank on {world_size} ranks, "
                f"which --micro-batch {self.micro_batch} does not divide: use --micro-batch "
                f"{_either([m for m in range(1, per_rank + 1) if per_rank % m == 0])} "
                f"(the same global batch), or in a new run a multiple of {per_micro_step} tokens: use {lower} or "
                f"{lower + per_micro_step}",
            )
        return per_rank // self.micro_batch


def _either(values: list[int]) -> str:
    """Values as in "1, 2 or 4"."""
    return " or ".join([", ".join(map(str, values[:-1])), str(values[-1])] if len(values) > 1 else [str(values[0])])
