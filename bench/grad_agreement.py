"""Does one device compute the gradients several devices would? For a few optimizer steps of the one-device path
(the compiled bf16 replica, `trainer.replica`), rebuild references from the fp32 weights of that moment and
compare their gradients of the same micro-batches: FSDP2 in bf16 (what several devices run), the replica
without compile, and an fp32 replica (the exact function). Prints relative L2 errors per parameter family.

    python3 bench/grad_agreement.py            # GPU: TinyLlama-1.1B, 4 micro-batches of 1 x 2048 tokens
    python3 bench/grad_agreement.py --steps 2  # CPU: the tiny preset

bf16 runs differ from fp32 by a few % at initialisation whatever the implementation (rounding in 22 layers of
forward); what matters is that the replica is no further from fp32 than FSDP is, and that nothing grows from
step to step (stale weights or gradients left from the previous step would)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from trainer.config import PRESETS, TrainConfig  # noqa: E402
from trainer.model import build  # noqa: E402
from trainer.optim import build_optimizer  # noqa: E402
from trainer.parallelize import apply_compile, apply_fsdp, parallelize  # noqa: E402
from trainer.train import accumulate_gradients, clip_grad_norm  # noqa: E402

FAMILIES = ("block matrices", "norms", "embed", "output")


def family(name: str) -> str:
    if name.startswith("layers.") and not name.endswith("norm.weight"):
        return "block matrices"
    return "norms" if name.endswith("norm.weight") else name.split(".")[0]


def micro_batches(tokens: torch.Tensor, step: int, micro_batch: int, accumulation: int):
    for i in range(accumulation):
        rows = tokens[(step * accumulation + i) * micro_batch : (step * accumulation + i + 1) * micro_batch]
        yield rows[:, :-1], rows[:, 1:]


def gradients(model, runner, batches, accumulation: int) -> dict[str, torch.Tensor]:
    """The step's accumulated gradients by parameter name (full tensors, fp32, on the CPU), left in place."""
    accumulate_gradients(runner, batches, accumulation)
    grads = {}
    for name, param in model.named_parameters():
        grad = param.grad.full_tensor() if hasattr(param.grad, "full_tensor") else param.grad
        grads[name.replace("_checkpoint_wrapped_module.", "")] = grad.float().cpu()  # the GPU holds the next reference
    return grads


def reference(kind: str, state: dict, args, mesh, batches) -> dict[str, torch.Tensor]:
    model = build(PRESETS[args.preset], seed=1)
    model.load_state_dict(state)
    cuda = mesh.device_type == "cuda"
    if kind == "fsdp bf16":
        if cuda:
            apply_compile(model)
        apply_fsdp(model, mesh, param_dtype=torch.bfloat16, reshard_after_forward=False)
        runner = model
    else:
        dtype = torch.float32 if kind == "replica fp32" else torch.bfloat16
        model, replica = parallelize(
            model,
            mesh,
            param_dtype=dtype,
            compile=False,
            ac_every=0,
            reshard_after_forward=False,
            fp8=False,
            fp32_residual=False,
        )
        runner = replica.module
    return gradients(model, runner, batches, args.accumulation)


def relative_errors(got: dict, ref: dict) -> list[float]:
    errors = []
    for fam in FAMILIES:
        names = [n for n in ref if family(n) == fam]
        squared = sum(((got[n] - ref[n]) ** 2).sum() for n in names)
        errors.append((squared / sum((ref[n] ** 2).sum() for n in names)).sqrt().item())
    return errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument(
        "--micro-batch",
        type=int,
        default=1,
        help="fp32 attention runs on the math kernel, which stores the attention matrices",
    )
    parser.add_argument("--accumulation", type=int, default=4)
    args = parser.parse_args()
    for key, value in (("RANK", "0"), ("WORLD_SIZE", "1"), ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", "29531")):
        os.environ.setdefault(key, value)
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(0)
        dist.init_process_group("nccl", device_id=torch.device("cuda", 0))
    else:
        dist.init_process_group("gloo")
    device = "cuda" if cuda else "cpu"
    mesh = init_device_mesh(device, (1,))
    args.preset = "tinyllama-1.1b" if cuda else "tiny"
    cfg = TrainConfig(manifest="unused", preset=args.preset, out=Path("unused"), lr=4e-4, warmup_steps=0)
    rows = args.steps * args.accumulation * args.micro_batch
    tokens = torch.randint(
        0, 32000, (rows, PRESETS[args.preset].context + 1), generator=torch.Generator().manual_seed(0)
    ).to(device)

    model, replica = parallelize(
        build(PRESETS[args.preset], seed=1),
        mesh,
        param_dtype=torch.bfloat16,
        compile=cuda,
        ac_every=0,
        reshard_after_forward=False,
        fp8=False,
        fp32_residual=False,
    )
    optimizer = build_optimizer(model, cfg, fused=cuda)
    replica.follow(optimizer)
    print(
        f"{args.preset}, {args.accumulation} micro-batches of {args.micro_batch} x {PRESETS[args.preset].context} "
        "tokens per step; relative L2 error of the gradients"
    )
    print(
        f"{'step':>4}  {'replica (compiled) vs' if cuda else 'replica vs':22s}" + "".join(f"{f:>16s}" for f in FAMILIES)
    )
    for step in range(args.steps):
        got = gradients(
            model, replica.module, micro_batches(tokens, step, args.micro_batch, args.accumulation), args.accumulation
        )
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        fp32 = reference(
            "replica fp32", state, args, mesh, micro_batches(tokens, step, args.micro_batch, args.accumulation)
        )
        for kind in ("replica fp32", "fsdp bf16", "replica bf16 eager"):
            ref = (
                fp32
                if kind == "replica fp32"
                else reference(
                    kind, state, args, mesh, micro_batches(tokens, step, args.micro_batch, args.accumulation)
                )
            )
            print(f"{step + 1:>4}  {kind:22s}" + "".join(f"{e:16.2e}" for e in relative_errors(got, ref)), flush=True)
            if kind == "fsdp bf16":
                print(
                    f"{'':>4}  {'(fsdp bf16 vs fp32)':22s}" + "".join(f"{e:16.2e}" for e in relative_errors(ref, fp32)),
                    flush=True,
                )
            if cuda:
                torch.cuda.empty_cache()
        clip_grad_norm(optimizer, cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=False)
        zeroed = all(torch.count_nonzero(p.grad) == 0 for p in model.parameters())
        refreshed = all(torch.equal(tensor, param.detach().to(tensor.dtype)) for tensor, param in replica.pairs)
        print(
            f"{'':>4}  after the step: gradients zeroed {zeroed}, replica == bf16(fp32 weights) {refreshed}", flush=True
        )
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
