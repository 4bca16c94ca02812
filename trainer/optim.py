"""AdamW with decoupled weight decay on matrices only, and the learning-rate schedule as a pure function of the
step (so the schedule's checkpointed state is just the step number)."""

from __future__ import annotations

import math

import torch
from torch import nn

from trainer.config import TrainConfig


def build_optimizer(model: nn.Module, cfg: TrainConfig, *, fused: bool) -> torch.optim.AdamW:
    """Weight decay on matrices (projections and the embedding), none on norm gains (as nanoGPT and Llama)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    # fused: one kernel for the whole update on CUDA; foreach elsewhere (bit-for-bit reproducible on CPU).
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=1e-8, fused=fused, foreach=not fused)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate of optimizer step `step` (1-based): linear warm-up to `lr` over `warmup_steps`, then a
    cosine from `lr` down to `min_lr` at `steps`."""
    if step <= cfg.warmup_steps:
        return cfg.lr * step / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
