"""The public reader (`trainer.data.WindowDataset`) in a plain PyTorch loop on 2 gloo ranks under torchrun:
the ranks read disjoint windows, and a loop resumed from the reader's saved state reads exactly the windows,
and computes exactly the losses, of the loop that went on."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

SUPPORT = Path(__file__).parents[1] / "support"  # scripts the tests run under torchrun


def plain_loop(manifest: Path, out: Path, *resume: str) -> list[dict]:
    out.mkdir()
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        str(SUPPORT / "plain_loop.py"),
        str(manifest),
        str(out),
        *resume,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return [dict(np.load(out / f"rank{rank}.npz")) for rank in range(2)]


def test_a_plain_loop_reads_disjoint_windows_and_resumes_exactly(sample_manifest, tmp_path):
    full = plain_loop(sample_manifest, tmp_path / "full")
    windows = [row.tobytes() for rank in full for row in rank["inputs"].reshape(-1, 64)]
    assert len(windows) == 2 * 6 * 4 and len(set(windows)) == len(windows)
    resumed = plain_loop(sample_manifest, tmp_path / "resumed", str(tmp_path / "full" / "checkpoint.pt"))
    for rank in range(2):
        assert np.array_equal(resumed[rank]["inputs"], full[rank]["inputs"][3:])
        assert np.array_equal(resumed[rank]["losses"], full[rank]["losses"][3:])
