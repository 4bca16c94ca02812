"""Mixed precision on one device, without FSDP. The model keeps its fp32 parameters (what the optimizer updates
and checkpoints hold); the micro-batches run on a replica of it in the compute dtype, refreshed after every
optimizer step. FSDP2 on a single GPU does the same job at ~34 ms per TinyLlama step (2%, BENCHMARKS.md),
most of it in passes over memory that add each micro-batch's bf16 gradients to fp32 ones.

Here the block matrices' weight gradients (88% of TinyLlama's parameters) never exist in bf16: the
weight-gradient matmul adds its product to the fp32 gradient in place (cuBLAS with beta = 1; Megatron calls
it gradient accumulation fusion), which costs no extra pass over memory and rounds once per step instead of
once per micro-batch. The other parameters (embedding, norms, output) get gradients in the compute dtype that
a hook adds to the fp32 ones after each backward.

The fp32 gradients stay allocated between steps (the matmuls write into them): zero them with
`optimizer.zero_grad(set_to_none=False)`; a step whose gradients were freed is refused."""

from __future__ import annotations

import copy
from functools import partial

import torch
from torch import nn

from trainer.model import Llama


@torch.library.custom_op("tokenmill::accumulate_weight_grad", mutates_args=("main_grad",))
def accumulate_weight_grad(main_grad: torch.Tensor, grad_out: torch.Tensor, inputs: torch.Tensor) -> None:
    """main_grad += grad_out.T @ inputs (rows x out, rows x in), products summed in main_grad's dtype. A custom
    op so that compiled blocks keep it as one call that mutates its first argument."""
    if grad_out.dtype == main_grad.dtype:
        main_grad.addmm_(grad_out.t(), inputs)
    elif main_grad.is_cuda:
        torch.addmm(main_grad, grad_out.t(), inputs, out_dtype=main_grad.dtype, out=main_grad)
    else:  # the CPU has no mixed-dtype matmul
        main_grad.addmm_(grad_out.t().to(main_grad.dtype), inputs.to(main_grad.dtype))


class _AccumulatingMatmul(torch.autograd.Function):
    """x @ weight.T; backward returns x's gradient and adds weight's to `main_grad` instead of returning it."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, main_grad: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, weight, main_grad)
        return x @ weight.t()

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        x, weight, main_grad = ctx.saved_tensors
        accumulate_weight_grad(main_grad, grad_out.flatten(0, -2), x.flatten(0, -2))
        return grad_out @ weight, None, None


class AccumulatingLinear(nn.Module):
    """A bias-free linear layer of a replica: its weight is a buffer in the compute dtype, and its weight
    gradient goes into `main_grad`, the fp32 parameter's gradient."""

    def __init__(self, weight: torch.Tensor, main_grad: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("weight", weight, persistent=False)
        self.main_grad = main_grad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _AccumulatingMatmul.apply(x, self.weight, self.main_grad)


def _add_grad_into(main_grad: torch.Tensor, param: torch.Tensor) -> None:
    main_grad.add_(param.grad)
    param.grad = None


class Replica:
    """`module`: a copy of `model` (blocks, activation checkpointing and FP8 layers included) whose parameters
    are in `dtype`, to run forward and backward; the gradients land in `model`'s fp32 `.grad`. Refreshed
    whenever a state dict is loaded into `model` (a resume) and, once it `follow`s the optimizer, after every
    optimizer step."""

    def __init__(self, model: Llama, dtype: torch.dtype) -> None:
        self.module = copy.deepcopy(model)
        # FSDP2 casts each block's floating-point inputs to the compute dtype, the RoPE tables among them (and Hugging
        # Face's Llama rounds them too): cast here as well, so that one device and several compute the same function.
        self.module.rope_cos, self.module.rope_sin = self.module.rope_cos.to(dtype), self.module.rope_sin.to(dtype)
        self.pairs: list[tuple[torch.Tensor, nn.Parameter]] = []  # (replica tensor, model parameter)
        for name, param in model.named_parameters():
            param.grad = torch.zeros_like(param)
            owner_name, _, attr = name.rpartition(".")
            owner = self.module.get_submodule(owner_name)
            if type(owner) is nn.Linear and owner.bias is None and owner_name.startswith("layers."):
                linear = AccumulatingLinear(param.detach().to(dtype), param.grad)
                self.module.set_submodule(owner_name, linear)
                self.pairs.append((linear.weight, param))
            else:
                copied = nn.Parameter(param.detach().to(dtype))
                copied.register_post_accumulate_grad_hook(partial(_add_grad_into, param.grad))
                setattr(owner, attr, copied)
                self.pairs.append((copied, param))
        self.grads = [param.grad for _, param in self.pairs]
        model.register_load_state_dict_post_hook(lambda *_: self.refresh())

    @torch.no_grad()
    def refresh(self) -> None:
        """Copy the model's parameters into the replica (after an optimizer step or a checkpoint load)."""
        torch._foreach_copy_([tensor for tensor, _ in self.pairs], [param for _, param in self.pairs])

    def follow(self, optimizer: torch.optim.Optimizer) -> None:
        """Refresh after every step of `optimizer`, and refuse a step whose gradients are not the ones the
        replica writes into."""
        optimizer.register_step_pre_hook(lambda *_: self._check_grads())
        optimizer.register_step_post_hook(lambda *_: self.refresh())

    def _check_grads(self) -> None:
        if any(param.grad is not grad for (_, param), grad in zip(self.pairs, self.grads)):
            raise RuntimeError(
                "the replica's fp32 gradients were replaced or freed (optimizer.zero_grad(set_to_none=True)?): "
                "a Replica writes into them across steps; zero them with optimizer.zero_grad(set_to_none=False)"
            )
