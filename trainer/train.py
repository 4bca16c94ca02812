"""Train a Llama from a manifest's shards: FSDP2 over several devices, a replica in the compute dtype on one
(`trainer.parallelize`). Run under torchrun, one process per GPU (or CPU process):

    torchrun --nproc-per-node 8 -m trainer.train --manifest runs/tl/manifest.json --preset tinyllama-1.1b --out ckpt/tl

(`tokenmill train ... --nproc 8` does the same.) CUDA runs use NCCL, bf16 compute, fp32 weights and fp32
gradients; CPU runs use gloo and fp32. SIGTERM saves a checkpoint at the end of the current step and exits 0.
The file reads top to bottom: arguments, process group, checks, model, optimizer, data, resume, loop.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor

from manifests.manifest import Manifest, ManifestError
from manifests.manifest import load as load_manifest
from manifests.shards import ShardFormatError
from trainer import checkpoint
from trainer.config import ConfigError, ModelConfig, TrainConfig, preset
from trainer.data import DataError, TokenWindows, WindowLoader, check_shards, open_loader
from trainer.metrics import MetricsLogger, datasheet_peak, memory_gib
from trainer.model import Llama, build
from trainer.optim import build_optimizer, lr_at, set_lr
from trainer.parallelize import parallelize

# Mistakes a user can fix from the message alone: reported in one line, exit 2, no traceback.
USER_ERRORS = (ConfigError, ManifestError, DataError, ShardFormatError, checkpoint.CheckpointError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trainer.train", description=__doc__.split("\n\n")[0], allow_abbrev=False)
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    for name, field in fields.items():
        flag = "--" + name.replace("_", "-")
        if field.type == "bool":
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=field.default)
        elif field.default is dataclasses.MISSING:
            parser.add_argument(flag, required=True, type=str)
        else:
            kind = {"int": int, "float": float}.get(field.type, str)
            parser.add_argument(flag, type=kind, default=field.default, help=f"default: {field.default}")
    return parser


def parse_config(argv: list[str] | None) -> TrainConfig:
    return TrainConfig(**vars(build_parser().parse_args(argv)))


@dataclass(slots=True)
class Runtime:
    rank: int
    world_size: int
    device: torch.device
    stop_group: dist.ProcessGroup  # gloo, so agreeing on a stop never waits for the GPU


def init_distributed() -> Runtime:
    """The process group torchrun describes in the environment (a single process without torchrun)."""
    for key, value in (("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0"), ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", "29500")):
        os.environ.setdefault(key, value)
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
        stop_group = dist.new_group(backend="gloo")
    else:
        device = torch.device("cpu")
        dist.init_process_group("gloo")
        stop_group = dist.group.WORLD
    return Runtime(dist.get_rank(), dist.get_world_size(), device, stop_group)


def check_data(cfg: TrainConfig, model_cfg: ModelConfig, manifest: Manifest, *, checksums: bool, rank: int = 0, world_size: int = 1) -> None:
    """The preset's vocabulary covers the tokenizer's; the shards are the manifest's (sizes; sha256 with `checksums`)."""
    if model_cfg.vocab_size < manifest.vocab_size:
        raise ConfigError(
            f"preset {model_cfg.name} has a vocabulary of {model_cfg.vocab_size}, smaller than the tokenizer's "
            f"{manifest.vocab_size} in {manifest.path}; use a preset whose vocab_size is at least {manifest.vocab_size}"
        )
    splits = [cfg.train_split] + ([cfg.val_split] if cfg.eval_every else [])
    for split in splits:
        check_shards(manifest, split, checksums=checksums, rank=rank, world_size=world_size)


def build_model_and_optimizer(model_cfg: ModelConfig, cfg: TrainConfig, rt: Runtime) -> tuple[Llama, Llama, torch.optim.Optimizer]:
    """(model, runner, optimizer). The model holds the parameters (the optimizer's, the checkpoints'); the
    runner runs the micro-batches: on several devices the FSDP-sharded model itself, on one a replica in the
    compute dtype that follows the model's steps and loads (`trainer.parallelize`). Initialised on the CPU from
    the seed: the same weights for any device and rank count."""
    model = build(model_cfg, cfg.seed)
    mesh = init_device_mesh(rt.device.type, (rt.world_size,))
    cuda = rt.device.type == "cuda"
    model, replica = parallelize(
        model,
        mesh,
        param_dtype=torch.bfloat16 if cuda else torch.float32,
        compile=cfg.compile and cuda,
        ac_every=cfg.ac_every,
        reshard_after_forward=cfg.reshard_after_forward,
        fp8=cfg.fp8,
    )
    optimizer = build_optimizer(model, cfg, fused=cuda)
    if replica is None:
        return model, model, optimizer
    replica.follow(optimizer)
    return model, replica.module, optimizer


class Preemption:
    """SIGTERM asks for a stop; ranks agree at a step boundary (any rank's signal stops all)."""

    def __init__(self, rt: Runtime) -> None:
        self.rt, self.signalled = rt, False
        signal.signal(signal.SIGTERM, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        self.signalled = True

    def requested(self) -> bool:
        flag = torch.tensor([int(self.signalled)])
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.rt.stop_group)
        return bool(flag.item())


def clip_grad_norm(optimizer: torch.optim.Optimizer, max_norm: float) -> torch.Tensor:
    """Global gradient norm of the optimizer's parameters over all shards (a tensor, left on the device);
    clips when max_norm > 0."""
    params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    norm = torch.nn.utils.get_total_norm([p.grad for p in params], foreach=True)
    if isinstance(norm, DTensor):
        norm = norm.full_tensor()
    if max_norm > 0:
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm, foreach=True)
    return norm


def train_step(model: Llama, optimizer: torch.optim.Optimizer, batches: WindowLoader, accumulation: int, grad_clip: float, *, keep_gathered: bool = True):
    """One optimizer step over `accumulation` micro-batches of `model` (the FSDP model, or a replica's module).
    Returns (mean loss, grad norm) as device tensors (no host sync) and the seconds spent waiting for data."""
    loss_sum, waited = accumulate_gradients(model, batches, accumulation, keep_gathered=keep_gathered)
    grad_norm = clip_grad_norm(optimizer, grad_clip)
    optimizer.step()
    # A replica's matmuls write into the fp32 gradients: they stay allocated (trainer.replica).
    optimizer.zero_grad(set_to_none=isinstance(model, FSDPModule))
    return loss_sum, grad_norm, waited


def accumulate_gradients(model: Llama, batches, accumulation: int, *, keep_gathered: bool = True) -> tuple[torch.Tensor, float]:
    """Forward and backward over `accumulation` micro-batches, gradients summed. Returns the mean loss (a device
    tensor) and the seconds spent waiting for data.

    Under FSDP, gradients are reduce-scattered once, after the last micro-batch; until then FSDP accumulates
    them unsharded in fp32. With `keep_gathered` the gathered bf16 weights also stay between micro-batches
    (nothing changes them before the optimizer step), so only the first micro-batch all-gathers: the per-step
    copies and casts are paid once per optimizer step, not once per micro-batch."""
    fsdp = isinstance(model, FSDPModule)
    loss_sum, waited = None, 0.0
    for micro in range(accumulation):
        last = micro == accumulation - 1
        started = time.perf_counter()
        inputs, targets = next(batches)
        waited += time.perf_counter() - started
        if fsdp:
            model.set_requires_gradient_sync(last)
            model.set_reshard_after_backward(last or not keep_gathered)
        loss = model(inputs, targets) / accumulation
        loss.backward()
        loss_sum = loss.detach() if loss_sum is None else loss_sum + loss.detach()
    return loss_sum, waited


@torch.no_grad()
def evaluate(model: Llama, windows: TokenWindows, cfg: TrainConfig, rt: Runtime) -> float:
    """Mean loss over the same `eval_windows` validation windows every time (fixed seed, position 0)."""
    per_rank = max(1, cfg.eval_windows // rt.world_size)
    loader = WindowLoader(windows, batch=min(cfg.micro_batch, per_rank), seed=cfg.seed, rank=rt.rank, world_size=rt.world_size, device=rt.device)
    batches = -(-per_rank // loader.batch)
    total = torch.zeros((), device=rt.device)
    for _ in range(batches):
        inputs, targets = next(loader)
        total += model(inputs, targets)
    loader.close()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total.item() / (batches * rt.world_size)


class Interval:
    """Sums between two log lines; `record` syncs with the device once."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.steps, self.loss, self.grad_norm, self.waited, self.started = 0, None, None, 0.0, time.perf_counter()

    @contextmanager
    def paused(self):
        """Time inside (evaluation, checkpoints) does not count as training time."""
        paused_at = time.perf_counter()
        yield
        self.started += time.perf_counter() - paused_at

    def add(self, loss: torch.Tensor, grad_norm: torch.Tensor, waited: float) -> None:
        self.steps += 1
        self.waited += waited
        self.loss = loss if self.loss is None else self.loss + loss
        self.grad_norm = grad_norm if self.grad_norm is None else self.grad_norm + grad_norm

    def record(self, step: int, lr: float, cfg: TrainConfig, model_cfg: ModelConfig, rt: Runtime) -> dict:
        loss = self.loss / self.steps
        dist.all_reduce(loss, op=dist.ReduceOp.SUM)  # gloo has no AVG
        loss_value = loss.item() / rt.world_size
        elapsed = time.perf_counter() - self.started
        tokens_per_s = self.steps * cfg.batch_tokens / rt.world_size / elapsed
        peak_name, peak = datasheet_peak(rt.device)
        record = {
            "kind": "train", "step": step, "steps": cfg.steps, "loss": loss_value, "lr": lr,
            "grad_norm": (self.grad_norm / self.steps).item(), "tokens_per_s_per_gpu": tokens_per_s,
            "mfu": tokens_per_s * model_cfg.flops_per_token() / peak if peak else None,
            "peak_name": peak_name, "peak_flops": peak, "data_wait": self.waited / elapsed,
            "interval_steps": self.steps, "interval_s": elapsed, **memory_gib(rt.device),
        }
        self.reset()
        return record


def resume(cfg: TrainConfig, model_cfg: ModelConfig, model: Llama, optimizer: torch.optim.Optimizer, loader: WindowLoader) -> int:
    """Restore a checkpoint in place; returns the step it was written after."""
    path = checkpoint.resolve(cfg.resume)
    meta = checkpoint.read_meta(path)
    if meta["model"] != dataclasses.asdict(model_cfg):
        raise ConfigError(f"--resume {path}: written for model {meta['model']['name']} {meta['model']}, this run is {model_cfg}; use --preset {meta['model']['name']}")
    loader.load_state_dict(meta["data"])
    checkpoint.load(path, model, optimizer)
    return int(meta["step"])


def run_metadata(cfg: TrainConfig, model_cfg: ModelConfig, manifest: Manifest, rt: Runtime) -> dict:
    """What every checkpoint of this run records besides its step and data position."""
    tokenizer = {k: manifest.data["tokenizer"][k] for k in ("uri", "sha256", "vocab_size", "bos_id", "eos_id")}
    return {
        "world_size": rt.world_size, "model": dataclasses.asdict(model_cfg), "manifest": str(cfg.manifest.resolve()), "tokenizer": tokenizer,
        "train": {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(cfg).items()},
    }


def save(cfg: TrainConfig, step: int, model: Llama, optimizer, loader: WindowLoader, run_meta: dict, reason: str) -> Path:
    meta = {**run_meta, "reason": reason, "data": loader.state_dict()}
    return checkpoint.save(cfg.out, step, model, optimizer, meta=meta, keep_last=cfg.keep_last)


def main(argv: list[str] | None = None) -> int:
    try:
        cfg = parse_config(argv)
    except ConfigError as e:
        print(f"trainer.train: {e}", file=sys.stderr)
        return 2
    rt = init_distributed()
    try:
        return train(cfg, rt)
    except USER_ERRORS as e:
        print(f"trainer.train: rank {rt.rank}: {e}", file=sys.stderr)
        return 2
    finally:
        dist.destroy_process_group()


def train(cfg: TrainConfig, rt: Runtime) -> int:
    model_cfg, manifest = preset(cfg.preset), load_manifest(cfg.manifest)
    check_data(cfg, model_cfg, manifest, checksums=cfg.verify_checksums, rank=rt.rank, world_size=rt.world_size)
    accumulation = cfg.accumulation(rt.world_size)
    cfg.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    model, runner, optimizer = build_model_and_optimizer(model_cfg, cfg, rt)
    loader = open_loader(manifest, cfg.train_split, context=model_cfg.context, batch=cfg.micro_batch, seed=cfg.seed, rank=rt.rank, world_size=rt.world_size, device=rt.device, prefetch=cfg.prefetch)
    val_windows = TokenWindows(manifest, cfg.val_split, model_cfg.context) if cfg.eval_every else None
    start = resume(cfg, model_cfg, model, optimizer, loader) if cfg.resume else 0
    run_meta = run_metadata(cfg, model_cfg, manifest, rt)
    logger, preemption, interval = MetricsLogger(cfg.out, enabled=rt.rank == 0), Preemption(rt), Interval()
    try:
        for step in range(start + 1, cfg.steps + 1):
            lr = lr_at(step, cfg)
            set_lr(optimizer, lr)
            interval.add(*train_step(runner, optimizer, loader, accumulation, cfg.grad_clip, keep_gathered=not cfg.reshard_after_forward))
            if step % cfg.log_every == 0 or step == cfg.steps:
                logger.log(interval.record(step, lr, cfg, model_cfg, rt))
            if cfg.eval_every and (step % cfg.eval_every == 0 or step == cfg.steps):
                with interval.paused():
                    logger.log({"kind": "eval", "step": step, "val_loss": evaluate(runner, val_windows, cfg, rt), "val_windows": cfg.eval_windows})
            if preemption.requested():
                path = save(cfg, step, model, optimizer, loader, run_meta, "preempted")
                print(f"rank {rt.rank}: SIGTERM: saved {path}, exiting", file=sys.stderr, flush=True)
                return 0
            if cfg.save_every and (step % cfg.save_every == 0 or step == cfg.steps):
                with interval.paused():
                    save(cfg, step, model, optimizer, loader, run_meta, "final" if step == cfg.steps else "periodic")
    finally:
        loader.close()
        logger.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
