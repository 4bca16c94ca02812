"""Checkpoints: OUT/step-NNNNNN/ holds the sharded model and optimizer (torch.distributed.checkpoint, any rank
count can read the weights), one RNG file per rank, and meta.json (step, data position, configs, why it was
written). A checkpoint is written under a temporary name and renamed when complete, so a folder named
step-* is always whole; only the last `keep_last` are kept. The LR schedule is a function of the step, so the
step is its whole state."""
from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

_NAME = re.compile(r"^step-(\d{6,})$")


class CheckpointError(ValueError):
    pass


def name(step: int) -> str:
    return f"step-{step:06d}"


def save(out: Path, step: int, model: nn.Module, optimizer: torch.optim.Optimizer, *, meta: dict, keep_last: int) -> Path:
    """Collective: every rank calls it. Returns the checkpoint's folder."""
    rank = dist.get_rank()
    final, tmp = out / name(step), out / f".{name(step)}.tmp"
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)  # a save that died half-way
        tmp.mkdir(parents=True)
    dist.barrier()
    model_state, optim_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=tmp)
    torch.save(_rng_state(), tmp / f"rng-rank{rank:05d}.pt")
    dist.barrier()
    if rank == 0:
        (tmp / "meta.json").write_text(json.dumps({**meta, "step": step, "saved_at": time.time()}, indent=2) + "\n")
        if final.exists():  # the same step saved again after a resume
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in all_checkpoints(out)[:-keep_last]:
            shutil.rmtree(old)
    dist.barrier()
    return final


def all_checkpoints(out: Path) -> list[Path]:
    """Complete checkpoints under `out`, oldest first."""
    if not out.is_dir():
        return []
    found = [p for p in out.iterdir() if _NAME.match(p.name) and (p / "meta.json").exists()]
    return sorted(found, key=lambda p: int(_NAME.match(p.name).group(1)))


def resolve(path: Path) -> Path:
    """`path` itself if it is a checkpoint, else the newest checkpoint inside it."""
    if (path / "meta.json").exists():
        return path
    found = all_checkpoints(path)
    if not found:
        raise CheckpointError(f"--resume {path}: neither a checkpoint (no meta.json) nor a folder holding step-* checkpoints")
    return found[-1]


def read_meta(path: Path) -> dict:
    return json.loads((path / "meta.json").read_text())


def load(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Collective: restore model, optimizer and this rank's RNG state in place."""
    model_state, optim_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optim": optim_state}
    dcp.load(state, checkpoint_id=path)
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    rng_file = path / f"rng-rank{dist.get_rank():05d}.pt"
    if not rng_file.exists():
        raise CheckpointError(f"{rng_file}: missing; the checkpoint was written by fewer ranks, resume with its rank count")
    _set_rng_state(torch.load(rng_file, weights_only=True))


def load_model_weights(path: Path, model: nn.Module) -> None:
    """Weights only, into an ordinary (not sharded) model in this process: no process group needed."""
    state = {"model": model.state_dict()}
    dcp.load(state, checkpoint_id=path, no_dist=True)
    model.load_state_dict(state["model"])


def _rng_state() -> dict:
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
