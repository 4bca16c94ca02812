"""A plain PyTorch loop on tokenmill's public reader, as README.md's "Training with another framework" shows it: DDP
over a tiny model,
a DataLoader over `WindowDataset`, rank and world size from the process group. Rank 0 saves the model, the
optimizer and the reader's state after step SAVE_AT (one copy: the reader's state is every rank's); given that
file the loop resumes from it. Every rank writes OUT/rank{r}.npz: the inputs of each step it ran, and the losses.
Run by test_reader.py: torchrun --nproc-per-node 2 plain_loop.py MANIFEST OUT [CHECKPOINT]"""

from __future__ import annotations

import sys

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from trainer.data import WindowDataset

STEPS, SAVE_AT = 6, 3


def main(manifest: str, out: str, resume: str | None = None) -> None:
    dist.init_process_group("gloo")
    torch.manual_seed(0)
    model = DistributedDataParallel(torch.nn.Sequential(torch.nn.Embedding(32000, 16), torch.nn.Linear(16, 32000)))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    dataset = WindowDataset(manifest, "train", context=64, seed=5)
    start = 0
    if resume:
        saved = torch.load(resume, weights_only=True)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        dataset.load_state_dict(saved["data"])
        start = saved["step"]
    inputs_read, losses = [], []
    for step, (inputs, targets) in zip(range(start + 1, STEPS + 1), torch.utils.data.DataLoader(dataset, batch_size=4)):
        loss = F.cross_entropy(model(inputs).flatten(0, 1), targets.flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        inputs_read.append(inputs.numpy())
        losses.append(loss.item())
        if step == SAVE_AT and dist.get_rank() == 0:
            torch.save(
                {
                    "step": step,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "data": dataset.state_dict(),
                },
                f"{out}/checkpoint.pt",
            )
    np.savez(f"{out}/rank{dist.get_rank()}.npz", inputs=np.stack(inputs_read), losses=np.array(losses))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:])
