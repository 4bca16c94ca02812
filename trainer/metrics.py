"""What a run reports: JSON lines always (OUT/metrics.jsonl), TensorBoard when it is installed, and one console
line per log step. Throughput is tokens/s per GPU; MFU is against the detected GPU's datasheet bf16 peak."""

from __future__ import annotations

import json
import resource
import sys
from pathlib import Path

import torch

# Dense bf16 tensor-core peaks from NVIDIA's datasheets (no sparsity), by device-name fragment, first match wins.
DATASHEET_BF16_PEAKS = (
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),  # SXM5, which CUDA names "NVIDIA H100 80GB HBM3"
    ("H200", 989e12),
    ("H800", 989e12),
    ("A100", 312e12),
)


def datasheet_peak(device: torch.device) -> tuple[str, float | None]:
    """(name, FLOP/s) of the device's bf16 peak; (name, None) where none is known (CPUs, unlisted GPUs)."""
    if device.type != "cuda":
        return "cpu", None
    name = torch.cuda.get_device_name(device)
    for fragment, peak in DATASHEET_BF16_PEAKS:
        if fragment in name:
            return name, peak
    return name, None


def memory_gib(device: torch.device) -> dict[str, float]:
    """Peak memory of this process: allocated and reserved on the GPU, resident set on the CPU."""
    if device.type == "cuda":
        return {
            "mem_gib": torch.cuda.max_memory_allocated(device) / 2**30,
            "mem_reserved_gib": torch.cuda.max_memory_reserved(device) / 2**30,
        }
    return {"mem_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


class MetricsLogger:
    """Rank 0's record of the run; on other ranks every method is a no-op."""

    def __init__(self, out: Path, *, enabled: bool) -> None:
        self.enabled = enabled
        self.jsonl = open(out / "metrics.jsonl", "a") if enabled else None
        self.tensorboard = _tensorboard(out / "tensorboard") if enabled else None

    def log(self, record: dict) -> None:
        if not self.enabled:
            return
        self.jsonl.write(json.dumps(record) + "\n")
        self.jsonl.flush()
        if self.tensorboard is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key != "step":
                    self.tensorboard.add_scalar(key, value, record["step"])
            for name, value in record.get("val_loss_by_domain", {}).items():
                self.tensorboard.add_scalar(f"val_loss/{name}", value, record["step"])
        print(console_line(record), file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.jsonl is not None:
            self.jsonl.close()
        if self.tensorboard is not None:
            self.tensorboard.close()


def console_line(record: dict) -> str:
    if record.get("kind") == "eval":
        by_domain = record.get("val_loss_by_domain", {})
        domains = (
            " | " + ", ".join(f"{name} {loss:.4f}" for name, loss in by_domain.items()) if len(by_domain) > 1 else ""
        )
        loss = f"validation loss {record['val_loss']:.4f} over {record['val_windows']} windows"
        return f"step {record['step']} | {loss}{domains}"
    parts = [
        f"step {record['step']}/{record['steps']}",
        f"loss {record['loss']:.4f}",
        f"lr {record['lr']:.2e}",
        f"gnorm {record['grad_norm']:.3f}",
        f"{record['tokens_per_s_per_gpu']:,.0f} tok/s/{'process' if record.get('peak_name') == 'cpu' else 'gpu'}",
    ]
    if record.get("mfu") is not None:
        parts.append(f"mfu {100 * record['mfu']:.1f}% of {record['peak_flops'] / 1e12:.0f} TF ({record['peak_name']})")
    parts += [f"data wait {100 * record['data_wait']:.2f}%", f"mem {record['mem_gib']:.1f} GiB"]
    eta = eta_seconds(record)
    if eta is not None:
        parts.append(f"ETA {duration(eta)}")
    return " | ".join(parts)


def eta_seconds(record: dict) -> float | None:
    """The steps left at the last interval's pace (evaluation and checkpoints not counted); None when unknown."""
    if not record.get("interval_steps") or record.get("interval_s") is None or record["step"] >= record["steps"]:
        return None
    return (record["steps"] - record["step"]) * record["interval_s"] / record["interval_steps"]


def duration(seconds: float) -> str:
    """12s, 4m05s, 3h07m."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _tensorboard(folder: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # TensorBoard is optional; the JSON lines hold everything
        return None
    return SummaryWriter(str(folder))
