"""bench/train_throughput.py's torchtitan baseline: its model at TinyLlama's shape and its parallelize path,
checked on the CPU where torchtitan 0.3.0 is installed (the GPU run itself is the benchmark)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from trainer.config import PRESETS

pytest.importorskip("torchtitan", reason="torchtitan 0.3.0 not installed (pip install torchtitan==0.3.0 and its needs)")
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import train_throughput  # noqa: E402


def shape(cfg):
    return {
        "layers": cfg.n_layers,
        "dim": cfg.dim,
        "heads": cfg.n_heads,
        "kv_heads": cfg.n_kv_heads,
        "ffn": cfg.ffn_dim,
        "vocab": cfg.vocab_size,
        "context": cfg.context,
    }


def test_torchtitans_model_has_tinyllamas_parameters():
    cfg = PRESETS["tinyllama-1.1b"]
    model = train_throughput.titan_model("flex", **shape(cfg))
    assert sum(p.numel() for p in model.parameters()) == cfg.num_params() == 1_100_048_384


def test_torchtitans_parallelize_path_runs_a_forward_on_one_cpu_rank(tmp_path, monkeypatch):
    import torch.distributed as dist
    import torchtitan.distributed.parallel_dims as parallel_dims

    monkeypatch.setattr(parallel_dims, "device_type", "cpu")  # its mesh is on the GPU otherwise
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    try:
        cfg = PRESETS["tiny"]
        model = train_throughput.titan_parallelize(train_throughput.titan_model("flex", **shape(cfg)), compile=False)
        model.to_empty(device="cpu")
        assert all(p.dtype == torch.float32 for p in model.parameters())  # fp32 master weights, as tokenmill's
        with torch.no_grad():
            model.init_states(buffer_device=None)
            tokens = torch.randint(0, cfg.vocab_size, (2, cfg.context))
            positions = torch.arange(cfg.context)[None].expand(2, -1)
            logits = model(tokens, positions, model.get_attention_masks(positions))
        assert logits.shape == (2, cfg.context, cfg.vocab_size) and torch.isfinite(logits).all()
        assert logits.dtype == torch.bfloat16  # its MixedPrecisionPolicy: bf16 compute over fp32 parameters
    finally:
        dist.destroy_process_group()


def test_torchtitan_imports_where_torch_lacks_DataParallelMeshDims():
    """torch 2.11 (the GPU image's) has no torch.distributed.fsdp.DataParallelMeshDims, which torchtitan 0.3.0's
    FSDP module imports and which its model's import pulls in: the bench's stand-in must come first."""
    import subprocess

    code = (
        "import sys, torch.distributed.fsdp as f; del f.DataParallelMeshDims; sys.path.insert(0, 'bench');"
        "import train_throughput as t; t.titan_model('flex', layers=1, dim=64, heads=4, kv_heads=2, ffn=176,"
        " vocab=32000, context=64); import torchtitan.models.llama3.parallelize; print('imported')"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert done.returncode == 0 and "imported" in done.stdout, done.stderr[-2000:]
