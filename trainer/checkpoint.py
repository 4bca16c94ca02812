"""Checkpoints: OUT/step-NNNNNN/ holds the sharded model and optimizer (torch.distributed.checkpoint, any rank
count can read the weights), one RNG file per rank, and meta.json (step, data position, configs, why it was
written). A checkpoint is written under a temporary name and renamed when complete, so a folder named
step-* is always whole; only the last `keep_last` are kept. The LR schedule is a function of the step, so the
step is its whole state.

Loading never unpickles an arbitrary object, so a checkpoint from elsewhere cannot run code: torch's reader
unpickles `.metadata` with plain pickle and the planner loads byte items with `weights_only=False`, so here
`.metadata` is unpickled with an allow-list of DCP's own metadata classes, and tensors, byte items (the
optimizer's hyperparameters) and RNG files with `torch.load(weights_only=True)`."""

from __future__ import annotations

import io
import json
import os
import pickle
import re
import shutil
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint import CheckpointException
from torch.distributed.checkpoint._traverse import set_element
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta
from torch.distributed.checkpoint.planner import ReadItem
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

_NAME = re.compile(r"^step-(\d{6,})$")
# Every global a `.metadata` written by dcp.save refers to (plus the dtypes, checked apart): constructors of
# plain records, a tuple subclass, a path, and a lookup of a layout by name. Nothing here runs code of the file.
_METADATA_GLOBALS = {
    ("torch.distributed.checkpoint.metadata", name)
    for name in (
        "Metadata",
        "MetadataIndex",
        "StorageMeta",
        "TensorProperties",
        "TensorStorageMetadata",
        "ChunkStorageMetadata",
        "BytesStorageMetadata",
        "_MEM_FORMAT_ENCODING",
    )
} | {
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),
    ("pathlib", "PosixPath"),
}


class CheckpointError(ValueError):
    pass


def name(step: int) -> str:
    return f"step-{step:06d}"


def save(
    out: Path, step: int, model: nn.Module, optimizer: torch.optim.Optimizer, *, meta: dict, keep_last: int
) -> Path:
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


def resolve(path: Path, *, what: str = "--resume") -> Path:
    """`path` itself if it is a checkpoint, else the newest checkpoint inside it; errors name `what` was given it."""
    if (path / "meta.json").exists():
        return path
    if not path.exists():
        raise CheckpointError(f"{what} {path}: does not exist")
    found = all_checkpoints(path)
    if not found:
        raise CheckpointError(
            f"{what} {path}: neither a checkpoint (no meta.json) nor a folder holding step-* checkpoints"
        )
    return found[-1]


def read_meta(path: Path) -> dict:
    return json.loads((path / "meta.json").read_text())


def read_metadata(path: Path) -> Metadata:
    """The checkpoint's DCP index, unpickled with the allow-list; CheckpointError naming the file otherwise."""
    file = path / ".metadata"
    try:
        with open(file, "rb") as f:
            metadata = _MetadataUnpickler(f).load()
    except OSError as e:
        raise CheckpointError(f"{file}: cannot be read ({e}); is {path} a whole checkpoint?") from e
    except Exception as e:  # the file is untrusted: whatever it makes the unpickler do wrong, it is refused
        raise CheckpointError(
            f"{file}: {e}; refusing to load this checkpoint (damaged, or not written by dcp.save)"
        ) from e
    if not isinstance(metadata, Metadata):
        raise CheckpointError(
            f"{file}: holds a {type(metadata).__name__}, not DCP metadata; refusing to load this checkpoint"
        )
    for info in (metadata.storage_data or {}).values():
        if Path(info.relative_path).name != info.relative_path:  # data files sit beside .metadata, nowhere else
            raise CheckpointError(
                f"{file}: names data file {info.relative_path!r} outside the checkpoint's folder; refusing to load it"
            )
    return metadata


def load(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Collective: restore model, optimizer and this rank's RNG state in place, on any number of ranks (DCP
    reshards the weights and the optimizer state: FSDP shards or one rank's whole tensors either way)."""
    _create_optimizer_state(optimizer)
    model_state, optim_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optim": optim_state}
    _safe_load(state, path, no_dist=False)
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    rank, saved_ranks = dist.get_rank(), len(list(path.glob("rng-rank*.pt")))
    if saved_ranks != dist.get_world_size():
        # Written by another number of ranks: this rank has no random stream of its own to continue. Nothing in
        # the model draws from it (no dropout); a seed from (step, rank) keeps the run reproducible all the same.
        torch.manual_seed(int(np.random.SeedSequence([read_meta(path)["step"], rank]).generate_state(1)[0]))
        return
    rng_file = path / f"rng-rank{rank:05d}.pt"
    if not rng_file.exists():
        raise CheckpointError(
            f"{rng_file}: missing, although the checkpoint holds {saved_ranks} RNG files; it is damaged, resume an "
            "earlier one"
        )
    _set_rng_state(torch.load(rng_file, weights_only=True))


@torch.no_grad()
def _create_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """DCP loads into the optimizer state that exists, and a fresh optimizer has none before its first step.
    DCP creates it with a zero-gradient step, but only when no gradient is allocated, and a replica's are
    (`trainer.replica`). So create it here: a step at learning rate 0 leaves the parameters as they are, and
    the load then replaces all the state it wrote."""
    if optimizer.state:
        return
    freed = [p for group in optimizer.param_groups for p in group["params"] if p.grad is None]
    for p in freed:
        p.grad = torch.zeros_like(p)
    lrs = [group["lr"] for group in optimizer.param_groups]
    for group in optimizer.param_groups:
        group["lr"] = 0.0
    optimizer.step()
    for group, lr in zip(optimizer.param_groups, lrs):
        group["lr"] = lr
    for p in freed:
        p.grad = None


def load_model_weights(path: Path, model: nn.Module) -> None:
    """Weights only, into an ordinary (not sharded) model in this process: no process group needed."""
    state = {"model": model.state_dict()}
    with warnings.catch_warnings():  # DCP warns that it "assumes the intent is to load in a single process": it is
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
        _safe_load(state, path, no_dist=True)
    model.load_state_dict(state["model"])


def _safe_load(state: dict, path: Path, *, no_dist: bool) -> None:
    metadata = read_metadata(path)  # read here, so that a bad file fails with its name on every rank
    _check_weight_names(path, state["model"], metadata)
    reader = _Reader(path, metadata)
    with _own_errors_alone():
        dcp.load(state, storage_reader=reader, planner=_Planner(), no_dist=no_dist)


def _check_weight_names(path: Path, model_state: dict, metadata: Metadata) -> None:
    """Every weight the model has is in the checkpoint, or a CheckpointError says which are not."""
    held = {key.removeprefix("model.") for key in metadata.state_dict_metadata if key.startswith("model.")}
    missing, foreign = sorted(set(model_state) - held), sorted(held - set(model_state))
    if missing:
        raise CheckpointError(
            f"{path}: has no weights named {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''} but holds "
            f"{', '.join(foreign[:3]) or 'no others'}{' ...' if len(foreign) > 3 else ''}: it was written for another "
            "layout of the model (a tokenmill from before the fused QKV and gate/up weights, for instance); resume or "
            "export it with the tokenmill that wrote it"
        )


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _METADATA_GLOBALS or (
            module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)
        ):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refers to {module}.{name}, which is not part of a checkpoint's metadata")


class _Reader(dcp.FileSystemReader):
    """torch's reader (it loads tensors with weights_only=True already) with the metadata read by read_metadata.
    No **kwargs: with them DCP would fall back to unpickling per-rank `__N.metadata` files."""

    def __init__(self, path: Path, metadata: Metadata) -> None:
        super().__init__(path)
        self.metadata = metadata

    def read_metadata(self) -> Metadata:
        if self.metadata.storage_meta is None:
            self.metadata.storage_meta = StorageMeta()
        self.metadata.storage_meta.load_id = self.load_id
        return self.metadata


class _Planner(DefaultLoadPlanner):
    """Byte items (the optimizer's param_groups: floats, tuples, bools, names) with weights_only=True."""

    def load_bytes(self, read_item: ReadItem, value: io.BytesIO) -> None:
        try:
            loaded = torch.load(value, weights_only=True)
        except pickle.UnpicklingError as e:
            file = self.metadata.storage_data[read_item.storage_index].relative_path
            raise CheckpointError(
                f"{file}: item {read_item.dest_index.fqn} is not plain data ({e}); refusing to load this checkpoint"
            ) from e
        set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], loaded)


@contextmanager
def _own_errors_alone():
    """DCP reports a failure on any rank as one CheckpointException holding every rank's traceback; a
    CheckpointError among them is raised alone, so that the user reads one line."""
    try:
        yield
    except CheckpointException as e:
        ours = [error for error, _ in e.failures.values() if isinstance(error, CheckpointError)]
        if ours:
            raise ours[0] from None
        raise


def _rng_state() -> dict:
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
