"""Train a Llama from a manifest's shards: FSDP2 over several devices, a replica in the compute dtype on one
(`trainer.parallelize`). Run under torchrun, one process per GPU (or CPU process):

    torchrun --nproc-per-node 8 -m trainer.train --manifest runs/tl/manifest.json --preset tinyllama-1.1b --out ckpt/tl

(`tokenmill train ... --nproc 8` does the same.) CUDA runs use NCCL, bf16 compute, fp32 weights and fp32
gradients; CPU runs use gloo and fp32. SIGTERM or SIGINT saves a checkpoint and exits 0 within a micro-batch: a
step stopped half-way is dropped (the checkpoint is the step before, and the resume runs it again).
The file reads top to bottom: arguments, process group, checks, model, optimizer, data, resume, loop.
"""

from __future__ import annotations

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
import torch.nn.functional as F
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor

from manifests.manifest import Manifest, ManifestError
from manifests.manifest import load as load_manifest
from manifests.shards import ShardFormatError
from trainer import checkpoint
from trainer.config import ConfigError, ModelConfig, TrainConfig, preset
from trainer.data import DataError, WindowDataset, WindowLoader, check_shards, check_state, manifest_change, open_loader
from trainer.metrics import MetricsLogger, datasheet_peak, memory_gib
from trainer.model import Llama, build
from trainer.optim import build_optimizer, lr_at, set_lr
from trainer.options import build_parser
from trainer.parallelize import parallelize

# Mistakes a user can fix from the message alone: reported in one line, exit 2, no traceback.
USER_ERRORS = (ConfigError, ManifestError, DataError, ShardFormatError, checkpoint.CheckpointError)


def parse_config(argv: list[str] | None) -> TrainConfig:
    given = vars(build_parser().parse_args(argv))
    return TrainConfig(**{**resumed_settings(given.get("resume")), **given})


def resumed_settings(resume: str | None) -> dict:
    """The settings of the run that `--resume` continues, for every option not given again: a resume needs only
    `--resume`. Not inherited: where the checkpoint came from (`resume`, `out`: the folder resumed) and the
    one-time consent `allow_manifest_change`; the manifest is the absolute path the run resolved."""
    if resume is None:
        return {}
    meta = checkpoint.read_meta(checkpoint.resolve(Path(resume)))
    names = {f.name for f in dataclasses.fields(TrainConfig)} - {"resume", "out", "allow_manifest_change"}
    return {**{k: v for k, v in meta["train"].items() if k in names}, "manifest": meta["manifest"]}


@dataclass(slots=True)
class Runtime:
    rank: int
    world_size: int
    device: torch.device
    stop_group: dist.ProcessGroup  # gloo, so agreeing on a stop never waits for the GPU


def init_distributed() -> Runtime:
    """The process group torchrun describes in the environment (a single process without torchrun)."""
    for key, value in (
        ("RANK", "0"),
        ("WORLD_SIZE", "1"),
        ("LOCAL_RANK", "0"),
        ("MASTER_ADDR", "127.0.0.1"),
        ("MASTER_PORT", "29500"),
    ):
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


def check_data(
    cfg: TrainConfig, model_cfg: ModelConfig, manifest: Manifest, *, checksums: bool, rank: int = 0, world_size: int = 1
) -> None:
    """The preset's vocabulary covers the tokenizer's; the shards are the manifest's (sizes; sha256 with
    `checksums`)."""
    if model_cfg.vocab_size < manifest.tokenizer.vocab_size:
        raise ConfigError(
            f"preset {model_cfg.name}",
            f"a vocabulary of {model_cfg.vocab_size}, smaller than the tokenizer's "
            f"{manifest.tokenizer.vocab_size} in {manifest.path}; use a preset whose vocab_size is at least "
            f"{manifest.tokenizer.vocab_size}",
        )
    splits = [cfg.train_split] + ([cfg.val_split] if cfg.eval_every else [])
    for split in splits:
        check_shards(manifest, split, checksums=checksums, rank=rank, world_size=world_size)


def build_model_and_optimizer(
    model_cfg: ModelConfig, cfg: TrainConfig, rt: Runtime
) -> tuple[Llama, Llama, torch.optim.Optimizer]:
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
        fp32_residual=cfg.fp32_residual,
        kernels=cfg.kernels,
    )
    optimizer = build_optimizer(model, cfg, fused=cuda)
    if replica is None:
        return model, model, optimizer
    replica.follow(optimizer)
    return model, replica.module, optimizer


class Preemption:
    """SIGTERM or SIGINT (Ctrl-C, forwarded by `tokenmill train`) asks for a stop; ranks agree on it between
    micro-batches and at step boundaries (any rank's signal stops all)."""

    def __init__(self, rt: Runtime) -> None:
        self.rt, self.signalled = rt, None
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        self.signalled = signal.Signals(signum).name

    def requested(self) -> bool:
        flag = torch.tensor([int(self.signalled is not None)])
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


def train_step(
    model: Llama,
    optimizer: torch.optim.Optimizer,
    batches: WindowLoader,
    accumulation: int,
    grad_clip: float,
    *,
    keep_gathered: bool = True,
    stop=None,
):
    """One optimizer step over `accumulation` micro-batches of `model` (the FSDP model, or a replica's module).
    Returns (mean loss, grad norm) as device tensors (no host sync) and the seconds spent waiting for data; loss
    and grad norm are None when `stop()` (a collective) asked to stop between micro-batches: then nothing was
    updated, and the gradients are half-accumulated."""
    loss_sum, waited = accumulate_gradients(model, batches, accumulation, keep_gathered=keep_gathered, stop=stop)
    if loss_sum is None:
        return None, None, waited
    grad_norm = clip_grad_norm(optimizer, grad_clip)
    optimizer.step()
    # A replica's matmuls write into the fp32 gradients: they stay allocated (trainer.replica).
    optimizer.zero_grad(set_to_none=isinstance(model, FSDPModule))
    return loss_sum, grad_norm, waited


def accumulate_gradients(
    model: Llama, batches, accumulation: int, *, keep_gathered: bool = True, stop=None
) -> tuple[torch.Tensor | None, float]:
    """Forward and backward over `accumulation` micro-batches, gradients summed. Returns the mean loss (a device
    tensor; None if `stop()` asked to stop before a micro-batch after the first) and the seconds spent waiting
    for data.

    Under FSDP, gradients are reduce-scattered once, after the last micro-batch; until then FSDP accumulates
    them unsharded in fp32. With `keep_gathered` the gathered bf16 weights also stay between micro-batches
    (nothing changes them before the optimizer step), so only the first micro-batch all-gathers: the per-step
    copies and casts are paid once per optimizer step, not once per micro-batch."""
    fsdp = isinstance(model, FSDPModule)
    loss_sum, waited = None, 0.0
    for micro in range(accumulation):
        if micro and stop is not None and stop():
            return None, waited
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


EVAL_LOGIT_ELEMENTS = 1 << 28  # logits evaluated at once (1 GiB in fp32): a few windows at TinyLlama's context


@torch.no_grad()
def evaluate(model: Llama, dataset: WindowDataset, cfg: TrainConfig, rt: Runtime) -> dict:
    """Mean loss over the same validation windows every time: the validation stream's first `eval_windows`
    (rounded down to a multiple of the rank count, at least one a rank), the same windows on any rank count;
    and the mean loss of the tokens of each domain (each source, for a build without domains) in them, each
    token counted for the document it belongs to. Returns the eval record's fields."""
    per_rank = max(1, cfg.eval_windows // rt.world_size)
    names = dataset.manifest.domain_names
    windows = torch.from_numpy(dataset.read(0, per_rank))
    labels = torch.from_numpy(dataset.read_domains(0, per_rank)).clamp_(max=len(names))  # an unknown id: its own bucket
    sums = torch.zeros(len(names) + 1, dtype=torch.float64, device=rt.device)
    counts = torch.zeros(len(names) + 1, dtype=torch.float64, device=rt.device)
    rows = max(1, min(cfg.micro_batch, EVAL_LOGIT_ELEMENTS // (windows.shape[1] * model.cfg.vocab_size)))
    for batch, label in zip(windows.split(rows), labels.split(rows)):
        batch, label = batch.to(rt.device), label.to(rt.device).flatten()
        logits = model(batch[:, :-1])
        losses = F.cross_entropy(logits.flatten(0, 1).float(), batch[:, 1:].flatten(), reduction="none")
        sums.index_add_(0, label, losses.double())
        counts.index_add_(0, label, torch.ones_like(losses, dtype=torch.float64))
    dist.all_reduce(sums, op=dist.ReduceOp.SUM)
    dist.all_reduce(counts, op=dist.ReduceOp.SUM)
    sums, counts = sums.tolist(), counts.tolist()
    present = [(name, i) for i, name in enumerate(names) if counts[i]]
    return {
        "val_loss": sum(sums) / sum(counts),
        "val_windows": per_rank * rt.world_size,
        "val_loss_by_domain": {name: sums[i] / counts[i] for name, i in present},
        "val_tokens_by_domain": {name: int(counts[i]) for name, i in present},
    }


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
            "kind": "train",
            "step": step,
            "steps": cfg.steps,
            "loss": loss_value,
            "lr": lr,
            "grad_norm": (self.grad_norm / self.steps).item(),
            "tokens_per_s_per_gpu": tokens_per_s,
            "mfu": tokens_per_s * model_cfg.flops_per_token() / peak if peak else None,
            "peak_name": peak_name,
            "peak_flops": peak,
            "data_wait": self.waited / elapsed,
            "interval_steps": self.steps,
            "interval_s": elapsed,
            **memory_gib(rt.device),
        }
        self.reset()
        return record


def check_resume(cfg: TrainConfig, model_cfg: ModelConfig, manifest: Manifest) -> tuple[Path, dict, str | None]:
    """The checkpoint `--resume` names, its meta.json and what changed in the manifest's shards since (None:
    nothing), if this run can continue it: the same model, the same global batch (its steps, schedule and data
    position count in it), the same data seed and, unless --allow-manifest-change, the same shards. The rank
    count may differ: the micro-batch and the accumulation then do (`TrainConfig.accumulation` says whether this
    rank count can keep the batch)."""
    path = checkpoint.resolve(cfg.resume)
    meta = checkpoint.read_meta(path)
    if meta["model"]["name"] != model_cfg.name:
        raise ConfigError(
            f"--resume {path}",
            f"written for preset {meta['model']['name']}, this run is {model_cfg.name}; use --preset "
            f"{meta['model']['name']} (or leave --preset out)",
        )
    if meta["model"] != dataclasses.asdict(model_cfg):
        differ = ", ".join(
            f"{k} {v} vs {getattr(model_cfg, k)}" for k, v in meta["model"].items() if getattr(model_cfg, k, None) != v
        )
        raise ConfigError(
            f"--resume {path}",
            f"its {model_cfg.name} model differs from this tokenmill's {model_cfg.name} preset ({differ}); resume it "
            "with the tokenmill that wrote it",
        )
    if meta["step"] >= cfg.steps:
        raise ConfigError(
            f"--resume {path}",
            f"already at step {meta['step']} of --steps {cfg.steps}, nothing to train; give a larger --steps to train "
            "on",
        )
    if meta["train"]["batch_tokens"] != cfg.batch_tokens:
        raise ConfigError(
            f"--resume {path}",
            f"written with --batch-tokens {meta['train']['batch_tokens']}, this run has {cfg.batch_tokens}; a run "
            "keeps "
            "its global batch (its steps, schedule and data position count in it): resume with --batch-tokens "
            f"{meta['train']['batch_tokens']}",
        )
    check_state(
        meta["data"],
        manifest,
        cfg.train_split,
        seed=cfg.seed,
        context=model_cfg.context,
        allow_manifest_change=cfg.allow_manifest_change,
    )
    return path, meta, manifest_change(meta["data"], manifest, cfg.train_split)


def check_out(cfg: TrainConfig) -> None:
    """A new run (no --resume) gets a folder of its own: in an earlier run's it would append to its metrics and,
    its steps being lower, have its own checkpoints deleted first by --keep-last."""
    if cfg.resume is not None:
        return
    found = checkpoint.all_checkpoints(cfg.out)
    if found:
        raise ConfigError(
            f"--out {cfg.out}",
            f"holds checkpoints up to step {checkpoint.read_meta(found[-1])['step']}; use --resume {cfg.out} to "
            "continue that run, or a new --out",
        )
    if (cfg.out / "metrics.jsonl").exists():
        raise ConfigError(
            f"--out {cfg.out}",
            "holds the metrics.jsonl of an earlier run (which saved no checkpoint); use a new --out, or delete that "
            "folder",
        )


def resume(
    cfg: TrainConfig,
    model_cfg: ModelConfig,
    manifest: Manifest,
    model: Llama,
    optimizer: torch.optim.Optimizer,
    loader: WindowLoader,
    rt: Runtime,
) -> int:
    """Restore a checkpoint written on any number of ranks in place; returns the step it was written after."""
    path, meta, change = check_resume(cfg, model_cfg, manifest)
    loader.load_state_dict(meta["data"], allow_manifest_change=cfg.allow_manifest_change)
    checkpoint.load(path, model, optimizer)
    if rt.rank == 0 and change:
        print(f"trainer.train: --allow-manifest-change: {change}", file=sys.stderr, flush=True)
    return int(meta["step"])


def run_metadata(cfg: TrainConfig, model_cfg: ModelConfig, manifest: Manifest, rt: Runtime) -> dict:
    """What every checkpoint of this run records besides its step and data position."""
    tokenizer = {k: getattr(manifest.tokenizer, k) for k in ("uri", "sha256", "vocab_size", "bos_id", "eos_id")}
    return {
        "world_size": rt.world_size,
        "model": dataclasses.asdict(model_cfg),
        "manifest": str(cfg.manifest.resolve()),
        "tokenizer": tokenizer,
        "train": {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(cfg).items()},
    }


def save(
    cfg: TrainConfig, step: int, model: Llama, optimizer, loader: WindowLoader, run_meta: dict, reason: str, rt: Runtime
) -> Path:
    meta = {**run_meta, "reason": reason, "data": loader.state_dict()}
    path = checkpoint.save(cfg.out, step, model, optimizer, meta=meta, keep_last=cfg.keep_last)
    say(rt, f"saved {path} ({reason})")
    return path


def say(rt: Runtime, line: str) -> None:
    """One line for the user, from rank 0 (beside the metrics' console lines)."""
    if rt.rank == 0:
        print(line, file=sys.stderr, flush=True)


def plan(
    cfg: TrainConfig, model_cfg: ModelConfig, rt: Runtime, accumulation: int, start: int, windows: int
) -> list[str]:
    """The start line, and warnings for a plan that cannot train as the user expects."""
    data_tokens, planned = windows * model_cfg.context, (cfg.steps - start) * cfg.batch_tokens
    lines = [
        f"{rt.world_size} rank{'s' if rt.world_size > 1 else ''} ({rt.device.type}), {model_cfg.name} "
        f"({model_cfg.num_params() / 1e6:,.1f}M parameters), "
        f"{cfg.batch_tokens:,} tokens a step ({rt.world_size} x micro-batch {cfg.micro_batch} x {model_cfg.context} "
        f"tokens x {accumulation} accumulation), "
        f"steps {start + 1}-{cfg.steps}: {planned:,} tokens, {planned / data_tokens:.2f} epochs of {cfg.train_split}'s "
        f"{data_tokens:,}; output {cfg.out}"
    ]
    if cfg.batch_tokens > data_tokens:
        lines.append(
            f"warning: one step ({cfg.batch_tokens:,} tokens) is more than all of split {cfg.train_split} "
            f"({data_tokens:,}): every step repeats data; use a smaller --batch-tokens"
        )
    if cfg.warmup_steps >= cfg.steps:
        lines.append(
            f"warning: --warmup-steps {cfg.warmup_steps} is not shorter than the run (--steps {cfg.steps}): the "
            f"learning rate never reaches --lr {cfg.lr}"
        )
    return lines


def drop_step(model: Llama, loader: WindowLoader, consumed: int) -> None:
    """Forget a step stopped between micro-batches: its windows are read again on resume (the data position goes
    back to the step's start), and FSDP's weights, gathered between micro-batches, are sharded again for saving.
    The optimizer has not stepped; the half-accumulated gradients are not saved."""
    loader.dataset.consumed = consumed  # the loader is not read again: the run is ending
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


def main(argv: list[str] | None = None) -> int:
    try:
        cfg = parse_config(argv)
    except USER_ERRORS as e:
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
    check_out(cfg)
    dist.barrier(group=rt.stop_group)  # every rank has looked at --out before any writes into it
    accumulation = cfg.accumulation(rt.world_size)
    cfg.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    model, runner, optimizer = build_model_and_optimizer(model_cfg, cfg, rt)
    loader = open_loader(
        manifest,
        cfg.train_split,
        context=model_cfg.context,
        batch=cfg.micro_batch,
        seed=cfg.seed,
        rank=rt.rank,
        world_size=rt.world_size,
        device=rt.device,
        prefetch=cfg.prefetch,
    )
    val_data = (
        WindowDataset(
            manifest, cfg.val_split, context=model_cfg.context, seed=cfg.seed, rank=rt.rank, world_size=rt.world_size
        )
        if cfg.eval_every
        else None
    )
    start = resume(cfg, model_cfg, manifest, model, optimizer, loader, rt) if cfg.resume else 0
    run_meta = run_metadata(cfg, model_cfg, manifest, rt)
    logger, preemption, interval = MetricsLogger(cfg.out, enabled=rt.rank == 0), Preemption(rt), Interval()
    for line in plan(cfg, model_cfg, rt, accumulation, start, len(loader.windows)):
        say(rt, line)
    started, last, last_eval = time.perf_counter(), None, None
    try:
        for step in range(start + 1, cfg.steps + 1):
            lr = lr_at(step, cfg)
            set_lr(optimizer, lr)
            step_start = loader.dataset.consumed
            loss, grad_norm, waited = train_step(
                runner,
                optimizer,
                loader,
                accumulation,
                cfg.grad_clip,
                keep_gathered=not cfg.reshard_after_forward,
                stop=preemption.requested,
            )
            if loss is None:
                drop_step(model, loader, step_start)
                return stop_for_signal(
                    cfg,
                    step - 1,
                    model,
                    optimizer,
                    loader,
                    run_meta,
                    rt,
                    preemption,
                    f"step {step} was stopped between micro-batches and is dropped",
                )
            interval.add(loss, grad_norm, waited)
            if step % cfg.log_every == 0 or step == cfg.steps:
                last = interval.record(step, lr, cfg, model_cfg, rt)
                logger.log(last)
            if cfg.eval_every and (step % cfg.eval_every == 0 or step == cfg.steps):
                with interval.paused():
                    last_eval = {"kind": "eval", "step": step, **evaluate(runner, val_data, cfg, rt)}
                    logger.log(last_eval)
            if preemption.requested():
                return stop_for_signal(
                    cfg, step, model, optimizer, loader, run_meta, rt, preemption, f"step {step} was complete"
                )
            if cfg.save_every and (step % cfg.save_every == 0 or step == cfg.steps):
                with interval.paused():
                    save(
                        cfg, step, model, optimizer, loader, run_meta, "final" if step == cfg.steps else "periodic", rt
                    )
    finally:
        loader.close()
        logger.close()
    newest = checkpoint.all_checkpoints(cfg.out)
    say(
        rt,
        (
            f"done: steps {start + 1}-{cfg.steps} in {time.perf_counter() - started:,.0f} s, loss {last['loss']:.4f}; "
            + (f"{eval_summary(last_eval)}; " if last_eval else "")
            + (
                f"newest checkpoint {newest[-1]}; a Hugging Face model: tokenmill export {cfg.out} --hf DIR"
                if newest
                else f"no checkpoint (--save-every 0); metrics in {cfg.out / 'metrics.jsonl'}"
            )
        ),
    )
    return 0


def eval_summary(record: dict) -> str:
    """The last evaluation in the run's closing line: the validation loss, and per domain."""
    by_domain = ", ".join(f"{name} {loss:.4f}" for name, loss in record["val_loss_by_domain"].items())
    return f"validation loss {record['val_loss']:.4f} ({by_domain})"


def stop_for_signal(
    cfg: TrainConfig,
    step: int,
    model: Llama,
    optimizer,
    loader: WindowLoader,
    run_meta: dict,
    rt: Runtime,
    preemption: Preemption,
    why: str,
) -> int:
    """Save after `step` for a signal and say where; the run then exits 0, to be continued with --resume."""
    path = save(cfg, step, model, optimizer, loader, run_meta, "preempted", rt)
    say(rt, f"{preemption.signalled or 'a signal to another rank'}: {why}; continue with --resume {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
