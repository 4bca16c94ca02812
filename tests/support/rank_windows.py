"""Run by test_train.py under torchrun (gloo): every rank reads batches through trainer.data's prefetching
loader, checks they are the windows its index sequence names, and saves its first epoch's window indices to
OUT/rank{r}.npy for the test to compare across ranks.

usage: torchrun --nproc-per-node N rank_windows.py MANIFEST OUT"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from manifests.manifest import load
from trainer.data import open_loader


def main(manifest_path: str, out: str) -> None:
    dist.init_process_group("gloo")
    rank, world_size = dist.get_rank(), dist.get_world_size()
    loader = open_loader(
        load(manifest_path),
        "train",
        context=64,
        batch=4,
        seed=11,
        rank=rank,
        world_size=world_size,
        device=torch.device("cpu"),
    )
    batches = 25
    read = np.concatenate([next(loader)[0].numpy() for _ in range(batches)])
    loader.close()
    expected = loader.dataset.read(0, batches * 4)[:, :-1]
    if not np.array_equal(read, expected):
        raise SystemExit(f"rank {rank}: the prefetched batches are not the windows of its index sequence")
    np.save(Path(out) / f"rank{rank}.npy", loader.dataset.indices(0, len(loader.windows) // world_size))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:])
