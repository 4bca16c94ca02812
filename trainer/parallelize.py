"""How the model runs, as torchtitan orders it: FP8 matmuls (opt-in), activation checkpointing, then on one
device a replica in the compute dtype (`trainer.replica`) and on several FSDP2 (`fully_shard` per block and
finally the root), torch.compile per block of whichever module runs the micro-batches. Each step is one
function."""

from __future__ import annotations

import torch
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

from trainer.float8 import convert_to_float8
from trainer.kernels import check_kernels
from trainer.model import Llama, cross_entropy_chunk
from trainer.replica import Replica


def parallelize(
    model: Llama,
    mesh: DeviceMesh,
    *,
    param_dtype: torch.dtype,
    compile: bool,
    ac_every: int,
    reshard_after_forward: bool,
    fp8: bool,
    fp32_residual: bool,
    kernels: str = "torch",
) -> tuple[Llama, Replica | None]:
    """Returns (the model, its replica): the model holds the parameters (optimizer, checkpoints); micro-batches
    run on the replica's module on one device, on the FSDP-sharded model itself on several (replica None)."""
    check_kernels(kernels, mesh.device_type)
    if kernels != "torch":
        apply_fused_kernels(model, loss=kernels == "liger+ce")
    if fp8:
        convert_to_float8(model.layers)
    if fp32_residual:
        apply_fp32_residual(model, param_dtype)
    if ac_every:
        apply_activation_checkpointing(model, every=ac_every)
    if mesh.size() == 1:
        # FSDP on one device only casts and copies (BENCHMARKS.md): a replica does the casting in one pass per step.
        replica = Replica(model.to(mesh.device_type), param_dtype)
        if compile:
            apply_compile(replica.module)
        return model, replica
    if compile:
        apply_compile(model)
    apply_fsdp(
        model,
        mesh,
        param_dtype=param_dtype,
        reshard_after_forward=reshard_after_forward,
        cast_block_inputs=not fp32_residual,
    )
    return model, None


def apply_fused_kernels(model: Llama, *, loss: bool) -> None:
    """liger-kernel's fused add + RMSNorm in every norm (trainer.kernels): each block leaves its last residual add
    to the next block's first norm, the last to the final norm; with `loss`, liger's fused linear cross-entropy."""
    model.defer_residual = True
    model.fused_loss = loss
    for block in model.layers:
        block.defer_residual = True
        block.attn_norm.fused = block.mlp_norm.fused = True
    model.norm.fused = True


def apply_fp32_residual(model: Llama, param_dtype: torch.dtype) -> None:
    """Keep the residual stream in fp32 (Megatron's fp32_residual_connection): the blocks compute in
    `param_dtype` and their outputs are added to fp32. FSDP then must not cast the blocks' inputs (apply_fsdp's
    cast_block_inputs), so the RoPE tables are rounded to `param_dtype` here, as that cast (and the replica) would."""
    model.residual_dtype = torch.float32
    model.rope_cos, model.rope_sin = model.rope_cos.to(param_dtype), model.rope_sin.to(param_dtype)


def apply_activation_checkpointing(model: Llama, *, every: int) -> None:
    """Recompute every `every`-th block's activations in backward instead of storing them (1: all blocks)."""
    for i, block in enumerate(model.layers):
        if i % every == 0:
            model.layers[i] = checkpoint_wrapper(block, preserve_rng_state=False)  # no dropout: no RNG to replay


def apply_compile(model: Llama) -> None:
    """Compile each block in place (the blocks are identical, so one graph serves all of them, and FSDP's
    hooks stay outside the compiled code), the final norm (eager, it is ~7 kernels forward and ~12 backward
    over fp32 copies of the residual stream) and the loss's per-chunk softmax arithmetic (one fused pass)."""
    for block in model.layers:
        block.compile(fullgraph=True)
    model.norm.compile(fullgraph=True)
    model.cross_entropy_chunk = torch.compile(cross_entropy_chunk, fullgraph=True)


def apply_fsdp(
    model: Llama,
    mesh: DeviceMesh,
    *,
    param_dtype: torch.dtype,
    reshard_after_forward: bool,
    cast_block_inputs: bool = True,
) -> None:
    """One FSDP unit per block (its all-gather overlaps the previous block's compute), then the root for the
    embedding, final norm and output. Parameters are gathered in `param_dtype`, gradients reduced in fp32; the
    blocks' inputs are cast to `param_dtype` unless `cast_block_inputs` is off (an fp32 residual stream)."""
    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    block_policy = MixedPrecisionPolicy(
        param_dtype=param_dtype, reduce_dtype=torch.float32, cast_forward_inputs=cast_block_inputs
    )
    for block in model.layers:
        fully_shard(block, mesh=mesh, mp_policy=block_policy, reshard_after_forward=reshard_after_forward)
    # The root's weights (embedding, norm, output) are the first needed in backward: keep them gathered.
    fully_shard(model, mesh=mesh, mp_policy=policy, reshard_after_forward=False)
