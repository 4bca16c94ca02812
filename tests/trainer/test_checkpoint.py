"""trainer/checkpoint.py: a checkpoint written by `save` loads back whole (weights, optimizer state and
hyperparameters, RNG), and loading never unpickles an arbitrary object: a `.metadata` or a byte item that names
code is refused, naming the file, and the code does not run. One real gloo rank in this process."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict

from tests.support.faults import Payload
from trainer import checkpoint
from trainer.checkpoint import CheckpointError
from trainer.config import PRESETS, TrainConfig
from trainer.model import build
from trainer.optim import build_optimizer


@pytest.fixture
def one_rank(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def trained(seed: int, lr: float, tmp_path: Path) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """The tiny model after one AdamW step, so that the optimizer has state."""
    model = build(PRESETS["tiny"], seed=seed)
    optimizer = build_optimizer(model, TrainConfig(manifest="m.json", preset="tiny", out=tmp_path, lr=lr), fused=False)
    tokens = torch.randint(0, 32000, (2, 16), generator=torch.Generator().manual_seed(seed))
    model(tokens).float().square().mean().backward()
    optimizer.step()
    return model, optimizer


def saved(tmp_path: Path) -> Path:
    model, optimizer = trained(1, 0.0123, tmp_path)
    return checkpoint.save(tmp_path / "run", 5, model, optimizer, meta={"reason": "periodic"}, keep_last=2)


def test_save_then_load_restores_weights_optimizer_and_rng(one_rank, tmp_path):
    model, optimizer = trained(1, 0.0123, tmp_path)
    torch.manual_seed(7)
    path = checkpoint.save(tmp_path / "run", 5, model, optimizer, meta={"reason": "periodic"}, keep_last=2)
    next_draw = torch.rand(4)

    fresh, fresh_optimizer = trained(2, 0.5, tmp_path)
    torch.manual_seed(99)
    checkpoint.load(path, fresh, fresh_optimizer)
    assert torch.equal(torch.rand(4), next_draw)
    for (name, expected), got in zip(model.state_dict().items(), fresh.state_dict().values(), strict=True):
        assert torch.equal(got, expected), name
    # byte items (the param groups' hyperparameters) came back through weights_only loading
    assert [(g["lr"], g["betas"], g["weight_decay"]) for g in fresh_optimizer.param_groups] == [
        (g["lr"], g["betas"], g["weight_decay"]) for g in optimizer.param_groups
    ]
    for param, fresh_param in zip(model.parameters(), fresh.parameters(), strict=True):
        assert torch.equal(fresh_optimizer.state[fresh_param]["exp_avg"], optimizer.state[param]["exp_avg"])

    plain = build(PRESETS["tiny"], seed=3)  # what `tokenmill export` does, without a process group
    checkpoint.load_model_weights(path, plain)
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), model.state_dict().values(), strict=True))


@pytest.mark.parametrize("loader", ["resume", "export"])
def test_a_metadata_pickle_naming_code_is_refused_and_never_runs(loader, one_rank, tmp_path):
    path = saved(tmp_path)
    marker = tmp_path / "payload-ran"
    (path / ".metadata").write_bytes(pickle.dumps(Payload(marker)))
    with pytest.raises(
        CheckpointError,
        match=rf"^{path / '.metadata'}: refers to \w+\.open, which is not part of a checkpoint's metadata",
    ):
        if loader == "resume":
            checkpoint.load(path, *trained(2, 0.5, tmp_path))
        else:
            checkpoint.load_model_weights(path, build(PRESETS["tiny"], seed=3))
    assert not marker.exists()


def test_a_byte_item_naming_code_is_refused_and_never_runs(one_rank, tmp_path):
    model, optimizer = trained(1, 0.0123, tmp_path)
    model_state, optim_state = get_state_dict(model, optimizer)
    marker = tmp_path / "payload-ran"
    optim_state["param_groups"][0]["lr"] = Payload(marker)  # saved with torch.save, as DCP saves every non-tensor
    path = tmp_path / "planted"
    dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=path)
    with pytest.raises(CheckpointError, match=r"^__0_0\.distcp: item optim\.param_groups\.0\.lr is not plain data"):
        checkpoint.load(path, *trained(2, 0.5, tmp_path))
    assert not marker.exists()


def test_metadata_naming_a_data_file_outside_its_folder_is_refused(one_rank, tmp_path):
    path = saved(tmp_path)
    metadata = checkpoint.read_metadata(path)
    next(iter(metadata.storage_data.values())).relative_path = "../elsewhere.distcp"
    (path / ".metadata").write_bytes(pickle.dumps(metadata))
    with pytest.raises(
        CheckpointError, match=r"names data file '\.\./elsewhere\.distcp' outside the checkpoint's folder"
    ):
        checkpoint.load(path, *trained(2, 0.5, tmp_path))


@pytest.mark.parametrize("damage", ["truncated", "missing"])
def test_a_damaged_or_missing_metadata_is_named(damage, tmp_path):
    path = tmp_path / checkpoint.name(5)
    path.mkdir()
    if damage == "truncated":
        (path / ".metadata").write_bytes(pickle.dumps({"storage_data": {}})[:-3])
    with pytest.raises(CheckpointError, match=rf"^{path / '.metadata'}: "):
        checkpoint.load_model_weights(path, build(PRESETS["tiny"], seed=3))


def test_a_checkpoint_of_another_weight_layout_is_refused_naming_the_weights(one_rank, tmp_path):
    """A checkpoint with the unfused q/k/v weights of earlier versions: refused by name, before any read."""
    model, optimizer = trained(1, 0.0123, tmp_path)
    model_state, optim_state = get_state_dict(model, optimizer)
    unfused = {name.replace("attn.qkv", "attn.q"): tensor for name, tensor in model_state.items()}
    path = tmp_path / "unfused"
    dcp.save({"model": unfused, "optim": optim_state}, checkpoint_id=path)
    expected = (
        r"has no weights named layers\.0\.attn\.qkv\.weight, layers\.1\.attn\.qkv\.weight "
        r"but holds layers\.0\.attn\.q\.weight"
    )
    with pytest.raises(
        CheckpointError, match=rf"^{path}: {expected}.*resume or export it with the tokenmill that wrote it"
    ):
        checkpoint.load_model_weights(path, build(PRESETS["tiny"], seed=3))
    with pytest.raises(CheckpointError, match=expected):
        checkpoint.load(path, *trained(2, 0.5, tmp_path))
