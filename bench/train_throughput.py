"""Trainer throughput: tokenmill's FSDP2 trainer against Hugging Face transformers + torch.compile (and, with
`--titan`, torchtitan 0.3.0's Llama3 model through its own parallelize function), on the same real shards and
the same windows (the same initial weights too, but for torchtitan's), back to back in one call.

    python bench/train_throughput.py gpu --work /tmp/tm-bench [--variants default,mb16,fp8,fp8-mb16] [--profile default]
    python bench/train_throughput.py gpu --work /tmp/tm-bench --batch-tokens 131072 --steps 14 --warmup 2 --log-every 2
    python bench/train_throughput.py reader --work /tmp/tm-reader        # CPU: the mmap reader alone

`gpu` tokenizes Python sources found on the machine (standard library, then site-packages) with the mistral
sentencepiece model into a multi-shard manifest (manifests/documents.py; the GPU machine has no Ray for `tokenmill
build`), measures a bf16 matmul peak and the attention kernels, runs each tokenmill variant through `torchrun -m
trainer.train` and the
baseline in its own process, and prints one table: tokens/s/GPU sustained after warm-up, MFU against the 989
TFLOP/s datasheet peak and against the measured matmul peak, peak memory, share of time waiting for data, and
the mean loss of the last logged steps. TinyLlama-1.1B, context 2048, bf16 compute. With `--batch-tokens`
every run (the baseline too) takes optimizer steps of that many tokens, accumulating over micro-batches; the
same windows then make up each step whatever the micro-batch, so all runs' losses are comparable.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from trainer.config import PRESETS  # noqa: E402

PRESET = "tinyllama-1.1b"
CONTEXT = PRESETS[PRESET].context
DATASHEET_PEAK = 989e12  # H100 SXM / H200 dense bf16
# tokenmill variants: (micro-batch, extra trainer.train arguments[, environment]); everything else is the
# trainer's default. TOKENMILL_ATTENTION=fa4: FlashAttention-4's kernels (trainer/model.py; the package
# flash-attn-4 and its CuTe DSL must be importable, see BENCHMARKS.md's "Trainer on one H200"). The inductor
# variants change only how torch.compile tunes its kernels: coordinate-descent tuning of the fused elementwise
# and reduction kernels, and max-autotune of the matmuls it sees (Triton templates against cuBLAS).
FA4 = {"TOKENMILL_ATTENTION": "fa4"}
COORDINATE_DESCENT = {"TORCHINDUCTOR_COORDINATE_DESCENT_TUNING": "1"}
MAX_AUTOTUNE_GEMM = {"TORCHINDUCTOR_MAX_AUTOTUNE_GEMM": "1"}
VARIANTS = {
    "default": (8, []),
    "zero3": (8, ["--reshard-after-forward"]),
    "mb16": (16, []),
    "mb32": (32, []),
    "fp8": (8, ["--fp8"]),
    "fp8-mb16": (16, ["--fp8"]),
    "fa4-mb16": (16, [], FA4),
    "fa4-mb32": (32, [], FA4),
    "f32res-mb16": (16, ["--fp32-residual"]),
    "liger-mb16": (16, ["--kernels", "liger"]),
    "ligerce-mb16": (16, ["--kernels", "liger+ce"]),
    "fa4-liger-mb16": (16, ["--kernels", "liger"], FA4),
    "f32res-liger-mb16": (16, ["--fp32-residual", "--kernels", "liger"]),
    "fp8-liger-mb16": (16, ["--fp8", "--kernels", "liger"]),
    "cdtune-mb16": (16, [], COORDINATE_DESCENT),
    "autotune-mb16": (16, [], MAX_AUTOTUNE_GEMM),
}
# Kernel families in a profile, by name fragment (first match wins: inductor's names contain "copy" too).
KERNEL_FAMILIES = (
    ("attention", ("flash", "fmha", "cudnn", "attn")),
    ("matmul", ("gemm", "nvjet", "xmma", "cutlass", "sm90", "scaled_mm")),
    ("fused elementwise (inductor)", ("triton",)),
    ("optimizer", ("adam", "multi_tensor", "foreach")),
    ("copies", ("nccl", "memcpy", "memset", "copy", "chunk_cat")),
)


def python_sources(root: Path, max_bytes: int) -> list[tuple[str, str]]:
    """(relative path, text) of the .py files under root, in path order, until `max_bytes` of text."""
    texts, total = [], 0
    for path in sorted(root.rglob("*.py")):
        text = path.read_text(encoding="utf-8", errors="replace")
        if not text.strip():
            continue
        texts.append((str(path.relative_to(root)), text))
        total += len(text)
        if total >= max_bytes:
            break
    return texts


def corpus(work: Path, tokens: int, tokenizer: Path | None) -> Path:
    """A manifest of about `tokens` tokens of Python source in 4+ shards (built once per work folder), tokenized
    as `tokenmill build` does (EOS appended) with `tokenizer` (default: mistral-common's)."""
    import importlib.resources

    from manifests.documents import Documents, write_documents
    from manifests.manifest import load
    from manifests.outputs import MANIFEST
    from stages.tokenize import Tokenizer

    manifest = work / "corpus" / MANIFEST
    if manifest.exists():
        return manifest
    started, docs = time.perf_counter(), []
    for root in dict.fromkeys([sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["purelib"]]):
        docs += python_sources(Path(root), int(3.3 * tokens) - sum(len(t) for _, t in docs))  # ~3.3 bytes per token
    model = tokenizer or Path(str(importlib.resources.files("mistral_common") / "data/tokenizer.model.v1"))
    encoder = Tokenizer.from_bytes(model.read_bytes(), add_bos=False, add_eos=True)
    ids, lengths = encoder.encode([text for _, text in docs], num_threads=os.cpu_count())
    manifest = write_documents(
        work / "corpus",
        {"train": Documents([path for path, _ in docs], ids, lengths)},
        tokenizer=encoder.manifest_entry(str(model)),
        shard_tokens=tokens // 4,
        bytes_read=sum(len(text) for _, text in docs),
    )
    train = load(manifest).splits["train"]
    print(
        f"corpus: {train.tokens:,} tokens, {train.documents:,} files, {len(train.shards)} shards in "
        f"{time.perf_counter() - started:.0f} s",
        flush=True,
    )
    return manifest


def _median_seconds(fn, repeats: int = 10) -> float:
    import torch

    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return sorted(times)[len(times) // 2]


def _matmul_peak() -> float:
    """bf16 FLOP/s of an 8192^3 matrix product on random data (median of 20)."""
    import torch

    a, b = (torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    return 2 * 8192**3 / _median_seconds(lambda: a @ b, 20)


def kernels() -> dict:
    """The bf16 matmul peak (8192^3 on random data, median of 20); the rate of each of TinyLlama's matmuls at
    micro-batch 16 (forward, input gradient, weight gradient; the output layer per 16,384-row loss chunk); and
    the forward + backward time of its attention (micro-batch 8, 32 query / 4 KV heads, 2048 x 64, causal) per
    SDPA backend, K/V heads either repeated or shared through `enable_gqa`, and through FlexAttention."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    result = {"matmul_flops": _matmul_peak(), "device": torch.cuda.get_device_name(), "attention_ms": {}}
    result["linear_tflops"] = linear_rates()
    q = torch.randn(8, 32, 2048, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    k, v = (torch.randn(8, 4, 2048, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(2))

    def step(gqa: bool) -> None:
        keys, values = (k, v) if gqa else (k.repeat_interleave(8, 1), v.repeat_interleave(8, 1))
        torch.nn.functional.scaled_dot_product_attention(
            q, keys, values, is_causal=True, enable_gqa=gqa
        ).sum().backward()

    backends = {
        "default": None,
        "flash": SDPBackend.FLASH_ATTENTION,
        "cudnn": SDPBackend.CUDNN_ATTENTION,
        "efficient": SDPBackend.EFFICIENT_ATTENTION,
    }
    for name, backend in backends.items():
        for gqa in (False, True):
            key = f"{name}{'+enable_gqa' if gqa else '+repeat'}"
            try:
                with sdpa_kernel(backend) if backend else contextlib.nullcontext():
                    result["attention_ms"][key] = 1e3 * _median_seconds(lambda: step(gqa))
            except RuntimeError as e:  # a backend that refuses these shapes
                result["attention_ms"][key] = str(e).splitlines()[0][:100]
    result["attention_ms"].update(fa4_attention(q, k, v))
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        causal = create_block_mask(
            lambda b, h, q_index, k_index: q_index >= k_index, None, None, 2048, 2048, device="cuda"
        )
        flex = torch.compile(flex_attention, fullgraph=True)
        result["attention_ms"]["flex+enable_gqa"] = 1e3 * _median_seconds(
            lambda: flex(q, k, v, block_mask=causal, enable_gqa=True).sum().backward()
        )
    except Exception as e:  # noqa: BLE001 - an image without a working Triton still gets the other figures
        result["attention_ms"]["flex+enable_gqa"] = str(e).splitlines()[0][:100]
    return result


def fa4_attention(q, k, v) -> dict:
    """FlashAttention-4 through tokenmill's op (trainer.model.flash_attention), on the model's own
    (batch, time, heads, head_dim) layout: forward + backward time, and its output and gradients against
    PyTorch's SDPA in float32 on the same inputs (relative L2 error; cuDNN's bf16 against the same reference
    beside it)."""
    import torch
    import torch.nn.functional as F

    from trainer.model import flash_attention

    found = {}
    try:
        qt, kt, vt = (x.detach().transpose(1, 2).contiguous().requires_grad_() for x in (q, k, v))  # (b, t, h, d)
        found["fa4"] = 1e3 * _median_seconds(lambda: flash_attention(qt, kt, vt).sum().backward())
        grad = torch.randn_like(qt)
        refs = [x.detach().float().requires_grad_() for x in (qt, kt, vt)]
        ref = F.scaled_dot_product_attention(
            *(x.transpose(1, 2) for x in refs), is_causal=True, enable_gqa=True
        ).transpose(1, 2)
        ref_grads = torch.autograd.grad(ref, refs, grad.float())
        for name, fn in (
            ("fa4", flash_attention),
            (
                "sdpa",
                lambda a, b, c: F.scaled_dot_product_attention(
                    a.transpose(1, 2), b.transpose(1, 2), c.transpose(1, 2), is_causal=True, enable_gqa=True
                ).transpose(1, 2),
            ),
        ):
            ins = [x.detach().clone().requires_grad_() for x in (qt, kt, vt)]
            out = fn(*ins)
            grads = torch.autograd.grad(out, ins, grad)
            errors = [float((a.float() - b).norm() / b.norm()) for a, b in zip((out, *grads), (ref, *ref_grads))]
            found[f"{name} rel. error vs fp32 (out, dq, dk, dv)"] = " ".join(f"{e:.2e}" for e in errors)
    except Exception as e:  # noqa: BLE001 - no flash-attn-4 in the image: the other figures still count
        found["fa4"] = f"{type(e).__name__}: {str(e).splitlines()[0][:100] if str(e) else ''}"
    return found


def linear_rates(micro_batch: int = 16) -> dict:
    """TFLOP/s of each linear's three matmuls as the model runs them (x @ W.T, grad @ W, grad.T @ x), with the
    weight shapes of the model itself (built on the meta device: no memory, no initialisation)."""
    import torch

    from trainer.model import LOSS_CHUNK_ROWS, Llama

    with torch.device("meta"):
        model = Llama(PRESETS[PRESET])
    block = model.layers[0]
    linears = {
        "qkv": block.attn.qkv,
        "o": block.attn.o,
        "gate_up": block.mlp.gate_up,
        "down": block.mlp.down,
        "output": model.output,
    }
    rates = {}
    for name, linear in linears.items():
        fan_out, fan_in = linear.weight.shape
        rows = LOSS_CHUNK_ROWS if name == "output" else micro_batch * CONTEXT
        x, grad = (
            torch.randn(rows, fan_in, device="cuda", dtype=torch.bfloat16),
            torch.randn(rows, fan_out, device="cuda", dtype=torch.bfloat16),
        )
        weight = torch.randn(fan_out, fan_in, device="cuda", dtype=torch.bfloat16)
        flops = 2 * rows * fan_in * fan_out
        matmuls = {
            "forward": lambda: x @ weight.t(),
            "input grad": lambda: grad @ weight,
            "weight grad": lambda: grad.t() @ x,
        }
        rates[name] = {kind: round(flops / _median_seconds(fn, 20) / 1e12) for kind, fn in matmuls.items()}
    return rates


def batch_tokens(micro_batch: int, args) -> int:
    """Tokens per optimizer step: --batch-tokens, or one micro-batch on every GPU (no accumulation)."""
    return args.batch_tokens or micro_batch * CONTEXT * args.nproc


def summarize(records: list[dict], warmup: int, tokens_per_step: int, nproc: int, loss_steps: int = 50) -> dict:
    """Sustained figures over the logged intervals after `warmup` steps; the mean loss of the intervals in the
    last `loss_steps` steps."""
    after = [r for r in records if r["step"] > warmup]
    last = [r["loss"] for r in records if r["step"] > records[-1]["step"] - loss_steps]
    seconds = sum(r["interval_s"] for r in after)
    steps = sum(r["interval_steps"] for r in after)
    return {
        "steps_measured": steps,
        "tokens_per_s_per_gpu": steps * tokens_per_step / nproc / seconds,
        "data_wait": sum(r["data_wait"] * r["interval_s"] for r in after) / seconds,
        "mem_gib": max(r["mem_gib"] for r in records),
        "losses": [round(r["loss"], 4) for r in records],
        "grad_norms": [round(r["grad_norm"], 3) for r in records],
        "final_loss": records[-1]["loss"],
        "mean_loss_last": sum(last) / len(last),
    }


def trainer_args(name: str, manifest: Path, out: Path, args) -> list[str]:
    micro_batch, extra = VARIANTS[name][:2]
    return [
        "--manifest",
        str(manifest),
        "--preset",
        PRESET,
        "--out",
        str(out),
        "--steps",
        str(args.steps),
        "--micro-batch",
        str(micro_batch),
        "--batch-tokens",
        str(batch_tokens(micro_batch, args)),
        "--warmup-steps",
        str(args.lr_warmup),
        "--log-every",
        str(args.log_every),
        "--save-every",
        "0",
        "--seed",
        str(args.seed),
        *extra,
    ]


def run_tokenmill(name: str, manifest: Path, work: Path, args) -> dict:
    out = work / f"run-{name}"
    shutil.rmtree(out, ignore_errors=True)
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        str(args.nproc),
        "-m",
        "trainer.train",
    ]
    env = VARIANTS[name][2] if len(VARIANTS[name]) > 2 else {}
    _run_logged(torchrun + trainer_args(name, manifest, out, args), work / f"run-{name}.log", args.timeout, env)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    micro_batch, tokens = VARIANTS[name][0], batch_tokens(VARIANTS[name][0], args)
    return {
        "micro_batch": micro_batch,
        "accumulation": tokens // (micro_batch * CONTEXT * args.nproc),
        **summarize([r for r in records if r["kind"] == "train"], args.warmup, tokens, args.nproc),
    }


def profile(args) -> dict:
    """trainer.train's own model, optimizer and step function in this process (one rank): a few steps to warm
    up, then at least 3 micro-batches under torch.profiler. Returns the wall time per optimizer step, GPU time
    by kernel family and the top kernels (kernels, memcpys and memsets only: no annotations)."""
    import torch
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    from manifests.manifest import load
    from trainer import train
    from trainer.data import open_loader

    os.environ.update(VARIANTS[args.variant][2] if len(VARIANTS[args.variant]) > 2 else {})
    cfg = train.parse_config(trainer_args(args.variant, args.manifest, args.work / "profile", args))
    rt = train.init_distributed()
    _, runner, optimizer = train.build_model_and_optimizer(PRESETS[PRESET], cfg, rt)
    loader = open_loader(
        load(args.manifest),
        "train",
        context=CONTEXT,
        batch=cfg.micro_batch,
        seed=cfg.seed,
        rank=0,
        world_size=1,
        device=rt.device,
    )
    accumulation = cfg.accumulation(1)
    steps = max(2, -(-3 // accumulation))  # at least one step boundary inside the trace
    for _ in range(max(2, 8 // accumulation)):
        train.train_step(runner, optimizer, loader, accumulation, cfg.grad_clip)
    torch.cuda.synchronize()
    with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        started = time.perf_counter()
        for _ in range(steps):
            train.train_step(runner, optimizer, loader, accumulation, cfg.grad_clip)
        torch.cuda.synchronize()
        wall = time.perf_counter() - started
    loader.close()
    kernels: dict[str, float] = {}
    intervals = []
    for e in prof.events():
        if e.device_type == DeviceType.CUDA and not e.is_user_annotation:
            kernels[e.name] = kernels.get(e.name, 0.0) + e.time_range.elapsed_us() / 1e3 / steps
            intervals.append((e.time_range.start, e.time_range.end, e.name))
    families: dict[str, float] = {}
    for kernel, ms in kernels.items():
        family = next((f for f, fragments in KERNEL_FAMILIES if any(x in kernel.lower() for x in fragments)), "other")
        families[family] = families.get(family, 0.0) + ms
    return {
        "variant": args.variant,
        "accumulation": accumulation,
        "wall_ms_per_step": 1e3 * wall / steps,
        "gpu_ms_per_step": sum(kernels.values()),
        "ms_per_step_by_family": families,
        "top_kernels_ms_per_step": sorted(kernels.items(), key=lambda k: -k[1])[:40],
        **idle_gaps(intervals, steps),
    }


def idle_gaps(intervals: list[tuple[float, float, str]], steps: int, shown: int = 12) -> dict:
    """Where the GPU ran nothing (on any stream) between the first and last kernel: total per step, and the
    largest gaps with their offset into the trace and the kernels on either side."""
    intervals = sorted(intervals)
    first, end, before = intervals[0]
    gaps = []
    for start, stop, name in intervals[1:]:
        if start > end:
            gaps.append(
                {
                    "at_ms": round((end - first) / 1e3, 2),
                    "idle_ms": round((start - end) / 1e3, 3),
                    "after": before[:70],
                    "before": name[:70],
                }
            )
        if stop > end:
            end, before = stop, name
    return {
        "gpu_idle_ms_per_step": sum(g["idle_ms"] for g in gaps) / steps,
        "largest_idle_gaps": sorted(gaps, key=lambda g: -g["idle_ms"])[:shown],
    }


def _run_logged(command: list[str], log: Path, timeout: int, extra_env: dict | None = None) -> None:
    env = {
        **os.environ,
        **(extra_env or {}),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    started = time.perf_counter()
    with open(log, "w") as f:
        done = subprocess.run(command, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=REPO, timeout=timeout)
    print(f"  {log.name}: exit {done.returncode} after {time.perf_counter() - started:.0f} s", flush=True)
    if done.returncode:
        raise RuntimeError(
            f"{' '.join(command[:8])} ... exited {done.returncode}; last lines of {log}:\n"
            + "".join(log.read_text().splitlines(True)[-25:])
        )


def hf_baseline(args) -> dict:
    """LlamaForCausalLM (SDPA attention), fp32 weights + bf16 autocast, the loss compiled with the model
    (torch.compile), fused AdamW with tokenmill's parameter groups, schedule and clipping; the initial weights
    and the windows are tokenmill's for the same seed."""
    import torch
    import torch.nn.functional as F
    import transformers

    from trainer.export import hf_config, hf_state_dict
    from trainer.model import build

    cfg = PRESETS[PRESET]
    config = transformers.LlamaConfig(**hf_config(cfg, bos_id=1, eos_id=2, dtype="float32"))
    config._attn_implementation = "sdpa"
    with torch.device("cuda"):
        model = transformers.LlamaForCausalLM(config)
    model.load_state_dict(hf_state_dict(build(cfg, args.seed), torch.float32))

    @torch.compile
    def loss_of(inputs, targets):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = model(input_ids=inputs).logits
        return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())

    return _baseline_training(model, loss_of, args)


def _titan_on_older_torch() -> None:
    """Before torchtitan is imported, two stand-ins for what torch 2.11 lacks: `torch.distributed.fsdp.
    DataParallelMeshDims`, which torchtitan 0.3.0's FSDP module imports for its full-DTensor mode only (its
    partial-DTensor mode, used here, never passes one to fully_shard), and `create_block_mask`'s newer
    `separate_full_blocks` option, which torchtitan's FlexAttention masks pass (it only keeps the mask's full
    blocks apart from its partial ones; without it the mask is the same)."""
    import inspect

    import torch.distributed.fsdp as fsdp
    import torch.nn.attention.flex_attention as flex

    if not hasattr(fsdp, "DataParallelMeshDims"):
        fsdp.DataParallelMeshDims = type("DataParallelMeshDims", (), {})
    create_block_mask = flex.create_block_mask
    if "separate_full_blocks" not in inspect.signature(create_block_mask).parameters:  # a newer torch's option

        def older_create_block_mask(*args, separate_full_blocks=None, **kwargs):
            return create_block_mask(*args, **kwargs)

        flex.create_block_mask = older_create_block_mask


def titan_model(
    attention: str, *, layers: int, dim: int, heads: int, kv_heads: int, ffn: int, vocab: int, context: int
):
    """torchtitan 0.3.0's Llama3 model (its fused QKV, per-layer depth-scaled init) at the given shape: its own
    1B/8B recipes with TinyLlama's sizes, RoPE theta 10,000 unscaled, untied output. On the meta device."""
    import torch

    _titan_on_older_torch()
    from torchtitan.models.common import ComplexRoPE, Embedding, Linear, RMSNorm
    from torchtitan.models.llama3 import (
        _EMBEDDING_INIT,
        _NORM_INIT,
        Llama3Model,
        _build_llama3_layers,
        _output_linear_init,
    )

    config = Llama3Model.Config(
        dim=dim,
        vocab_size=vocab,
        tok_embeddings=Embedding.Config(num_embeddings=vocab, embedding_dim=dim, param_init=_EMBEDDING_INIT),
        norm=RMSNorm.Config(normalized_shape=dim, param_init=_NORM_INIT),
        lm_head=Linear.Config(in_features=dim, out_features=vocab, param_init=_output_linear_init(dim)),
        layers=_build_llama3_layers(
            n_layers=layers,
            dim=dim,
            n_heads=heads,
            n_kv_heads=kv_heads,
            hidden_dim=ffn,
            attn_backend=attention,
            rope=ComplexRoPE.Config(dim=dim // heads, max_seq_len=context, theta=10000.0),
        ),
    )
    with torch.device("meta"):
        return config.build()


def titan_parallelize(model, *, compile: bool):
    """torchtitan's own `parallelize_llama` on one GPU: per-block torch.compile (and the loss is compiled by the
    caller, as its trainer's `compile.components = ["model", "loss"]`), then FSDP2 with bf16 parameters and fp32
    gradient reduction (its MixedPrecisionPolicy), over a one-rank mesh; no activation checkpointing (as
    tokenmill at these micro-batches). Needs a process group."""
    _titan_on_older_torch()
    from torchtitan.config import CompileConfig, ParallelismConfig, TrainingConfig
    from torchtitan.distributed import ParallelDims
    from torchtitan.models.llama3 import parallelize_llama

    parallelism = ParallelismConfig(spmd_backend="partial_dtensor")
    training = TrainingConfig(mixed_precision_param="bfloat16", mixed_precision_reduce="float32")
    return parallelize_llama(
        model,
        parallel_dims=ParallelDims.from_config(parallelism, 1),
        training=training,
        parallelism=parallelism,
        compile_config=CompileConfig(enable=compile),
        ac_config=None,
        dump_folder=str(REPO / "runs"),
    )


def titan_baseline(args) -> dict:
    """torchtitan's model and parallelize function in this script's loop (its trainer needs its own data
    loaders and tokenizer files): the same windows, TinyLlama's shape, fused AdamW with tokenmill's parameter
    groups, schedule and clipping, the loss compiled. Its own initialisation (the losses are comparable
    in trend only)."""
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F

    os.environ.setdefault("LOCAL_RANK", "0")
    torch.cuda.set_device(0)
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
    cfg = PRESETS[PRESET]
    model = titan_model(
        args.titan_attention,
        layers=cfg.n_layers,
        dim=cfg.dim,
        heads=cfg.n_heads,
        kv_heads=cfg.n_kv_heads,
        ffn=cfg.ffn_dim,
        vocab=cfg.vocab_size,
        context=cfg.context,
    )
    model = titan_parallelize(model, compile=True)
    model.to_empty(device="cuda")
    with torch.no_grad():
        model.init_states(buffer_device=torch.device("cuda"))
    positions = torch.arange(cfg.context, device="cuda")[None].expand(args.micro_batch, -1)
    masks = model.get_attention_masks(positions)  # one document per window: causal, as tokenmill and HF train

    def loss(logits, targets):
        return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())

    cross_entropy = torch.compile(loss)

    def loss_of(inputs, targets):
        return cross_entropy(model(inputs, positions, masks), targets)

    result = _baseline_training(model, loss_of, args)
    dist.destroy_process_group()
    return result


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _baseline_training(model, loss_of, args) -> dict:
    """A baseline trained as trainer.train trains: tokenmill's windows for the seed, fused AdamW with its
    parameter groups, schedule and clipping; the sustained figures of the run."""
    import torch

    from manifests.manifest import load
    from trainer.config import TrainConfig
    from trainer.data import open_loader
    from trainer.optim import build_optimizer

    train_cfg = TrainConfig(
        manifest=args.manifest,
        preset=PRESET,
        out=args.work,
        steps=args.steps,
        warmup_steps=args.lr_warmup,
        micro_batch=args.micro_batch,
        batch_tokens=batch_tokens(args.micro_batch, args),
    )
    optimizer = build_optimizer(model, train_cfg, fused=True)
    loader = open_loader(
        load(args.manifest),
        "train",
        context=PRESETS[PRESET].context,
        batch=args.micro_batch,
        seed=args.seed,
        rank=0,
        world_size=1,
        device=torch.device("cuda"),
    )
    try:
        records = _hf_loop(model, optimizer, loader, loss_of, train_cfg, args.log_every)
    finally:
        loader.close()
    return {
        "micro_batch": args.micro_batch,
        "accumulation": train_cfg.accumulation(1),
        **summarize(records, args.warmup, train_cfg.batch_tokens, 1),
    }


def _hf_loop(model, optimizer, loader, loss_of, train_cfg, log_every: int) -> list[dict]:
    """trainer.train's step and logging for a plain (unsharded) module: accumulate, clip, AdamW, log."""
    import torch

    from trainer.optim import lr_at, set_lr

    records, loss_sum, norm_sum, waited, started = [], None, None, 0.0, time.perf_counter()
    for step in range(1, train_cfg.steps + 1):
        set_lr(optimizer, lr_at(step, train_cfg))
        accumulation = train_cfg.accumulation(1)
        for _ in range(accumulation):
            before = time.perf_counter()
            inputs, targets = next(loader)
            waited += time.perf_counter() - before
            loss = loss_of(inputs, targets) / accumulation
            loss.backward()
            loss_sum = loss.detach() if loss_sum is None else loss_sum + loss.detach()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), train_cfg.grad_clip, foreach=True)
        norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm  # torchtitan's FSDP: a DTensor
        norm_sum = norm if norm_sum is None else norm_sum + norm
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step % log_every == 0:
            loss_value, elapsed = (loss_sum / log_every).item(), time.perf_counter() - started
            grad_norm = (norm_sum / log_every).item()
            records.append(
                {
                    "step": step,
                    "loss": loss_value,
                    "grad_norm": grad_norm,
                    "interval_s": elapsed,
                    "interval_steps": log_every,
                    "data_wait": waited / elapsed,
                    "mem_gib": torch.cuda.max_memory_allocated() / 2**30,
                }
            )
            print(
                f"  hf step {step}: loss {loss_value:.4f}, gnorm {grad_norm:.3f}, "
                f"{log_every * train_cfg.batch_tokens / elapsed:,.0f} tok/s",
                flush=True,
            )
            loss_sum, norm_sum, waited, started = None, None, 0.0, time.perf_counter()
    return records


def in_subprocess(mode: str, args, extra: list[str]) -> dict:
    """Run one measurement in a fresh process (its own GPU memory and compile state); it writes JSON."""
    result = args.work / f"{mode}.json"
    result.unlink(missing_ok=True)
    _run_logged(
        [sys.executable, __file__, mode, "--json", str(result), *extra], args.work / f"{mode}.log", args.timeout
    )
    return json.loads(result.read_text())


def table(rows: dict[str, dict], peak: float) -> str:
    flops = PRESETS[PRESET].flops_per_token()
    lines = [
        f"{'run':<24} {'mb x acc':>8} {'tokens/s/GPU':>13} {'MFU vs 989 TF':>14} {'MFU vs matmul':>14} "
        f"{'peak mem GiB':>13} {'data wait':>10} {'loss (last log)':>15} {'mean loss, last 50 steps':>24}",
    ]
    for name, r in rows.items():
        if "error" in r:
            lines.append(f"{name:<24} failed: {r['error'].splitlines()[0][:90]}")
            continue
        tps = r["tokens_per_s_per_gpu"]
        lines.append(
            f"{name:<24} {str(r['micro_batch']) + ' x ' + str(r['accumulation']):>8} {tps:>13,.0f} "
            f"{100 * tps * flops / DATASHEET_PEAK:>13.1f}% {100 * tps * flops / peak:>13.1f}% "
            f"{r['mem_gib']:>13.1f} {100 * r['data_wait']:>9.2f}% {r['final_loss']:>15.4f} {r['mean_loss_last']:>24.4f}"
        )
    return "\n".join(lines)


def versions() -> str:
    import importlib.metadata

    import torch

    found = [f"python {sys.version.split()[0]}", f"torch {torch.__version__} (CUDA {torch.version.cuda})"]
    for package in ("triton", "transformers", "numpy"):
        try:
            found.append(f"{package} {importlib.metadata.version(package)}")
        except importlib.metadata.PackageNotFoundError:
            found.append(f"{package} absent")
    return ", ".join(found)


def gpu(args) -> None:
    args.work.mkdir(parents=True, exist_ok=True)
    print(versions(), flush=True)
    manifest = corpus(args.work, args.tokens, args.tokenizer)
    if not args.kernels:  # a short call's seconds go to training; MFU against the measured peak then reads nan
        peak = {"matmul_flops": float("nan"), "device": "not measured", "linear_tflops": {}, "attention_ms": {}}
    else:
        peak = in_subprocess("kernels", args, [])
    print(f"matmul peak: {peak['matmul_flops'] / 1e12:.0f} TFLOP/s bf16 on {peak['device']}", flush=True)
    for name, rates in peak["linear_tflops"].items():
        print(
            f"  {name:<8} matmuls, TFLOP/s: " + ", ".join(f"{kind} {rate}" for kind, rate in rates.items()), flush=True
        )
    for key, value in peak["attention_ms"].items():
        print(f"  attention fwd+bwd {key:<24} {value if isinstance(value, str) else f'{value:.2f} ms'}", flush=True)
    common = [
        "--work",
        str(args.work),
        "--manifest",
        str(manifest),
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
        "--micro-batch",
        str(args.micro_batch),
        "--seed",
        str(args.seed),
        "--lr-warmup",
        str(args.lr_warmup),
        "--batch-tokens",
        str(args.batch_tokens),
        "--log-every",
        str(args.log_every),
    ]
    rows = {}

    def row_name(name: str) -> str:  # a variant named twice runs twice (run-to-run spread): "name#2"
        return next(n for n in (name, *(f"{name}#{i}" for i in range(2, 100))) if n not in rows)

    for name in filter(None, args.variants.split(",")):
        row = row_name(f"tokenmill:{name}")
        rows[row] = _attempt(lambda: run_tokenmill(name, manifest, args.work, args))
        print(json.dumps({row: rows[row]}), flush=True)
    for _ in range(args.baseline):
        row = row_name("hf+compile")
        rows[row] = _attempt(lambda: in_subprocess("hf", args, common))
        print(json.dumps({row: rows[row]}), flush=True)
    for run in filter(None, args.titan.split(",")):  # attention:micro-batch
        attention, micro_batch = run.split(":")
        row = f"torchtitan:{attention}-mb{micro_batch}"
        extra = ["--titan-attention", attention, "--micro-batch", micro_batch]
        rows[row] = _attempt(lambda: in_subprocess("titan", args, common + extra))
        print(json.dumps({row: rows[row]}), flush=True)
    results = {"matmul": peak, "runs": rows, "args": {k: str(v) for k, v in vars(args).items()}}
    (args.work / "results.json").write_text(json.dumps(results, indent=2))
    report(rows, peak["matmul_flops"], args)
    for name in filter(None, args.profile.split(",")):  # last: a profile cut short by the time limit costs no row
        results.setdefault("profiles", {})[name] = _attempt(
            lambda: in_subprocess("profile", args, common + ["--variant", name])
        )
        print(json.dumps({f"profile:{name}": results["profiles"][name]}), flush=True)
        (args.work / "results.json").write_text(json.dumps(results, indent=2))


def report(rows: dict[str, dict], peak: float, args) -> None:
    step_tokens = (
        f"{args.batch_tokens:,} tokens per optimizer step"
        if args.batch_tokens
        else "one micro-batch per optimizer step"
    )
    print(
        f"\nTinyLlama-1.1B, context 2048, {args.nproc} GPU, {step_tokens}, {args.steps} steps, "
        f"sustained over steps {args.warmup + 1}-{args.steps}; hf micro-batch {args.micro_batch}; matmul peak "
        f"{peak / 1e12:.0f} TFLOP/s"
    )
    print(table(rows, peak), flush=True)
    titan = [r for name, r in rows.items() if name.startswith("torchtitan:") and "error" not in r]
    hf = [r for name, r in rows.items() if name.startswith("hf+compile") and "error" not in r]
    bases = {
        "hf+compile (its first run)": hf[0] if hf else None,
        "torchtitan (its best row)": max(titan, key=lambda r: r["tokens_per_s_per_gpu"], default=None),
    }
    for base_name, base in bases.items():
        if base is None or "error" in base:
            continue
        for name, r in rows.items():
            if name.startswith("tokenmill:") and "error" not in r:
                ratio = r["tokens_per_s_per_gpu"] / base["tokens_per_s_per_gpu"]
                print(
                    f"{name}: {ratio:.3f}x {base_name}; loss over the last {args.log_every} steps "
                    f"{r['final_loss']:.4f} vs {base['final_loss']:.4f}",
                    flush=True,
                )


def _attempt(measure) -> dict:
    try:
        return measure()
    except Exception as e:  # one failed variant must not cost the others their device time
        return {"error": str(e)}


def reader(args) -> None:
    """CPU: windows/s and tokens/s through the prefetching mmap reader, one process, page cache warm."""
    import torch

    from manifests.manifest import load
    from trainer.data import open_loader

    args.work.mkdir(parents=True, exist_ok=True)
    manifest = load(corpus(args.work, args.tokens, args.tokenizer))
    loader = open_loader(
        manifest,
        "train",
        context=CONTEXT,
        batch=args.micro_batch,
        seed=args.seed,
        rank=0,
        world_size=1,
        device=torch.device("cpu"),
    )
    next(loader)
    started, batches = time.perf_counter(), 0
    while time.perf_counter() - started < args.seconds:
        next(loader)
        batches += 1
    elapsed = time.perf_counter() - started
    loader.close()
    windows = batches * args.micro_batch
    print(
        f"reader: {len(manifest.shards('train'))} shards, {len(loader.windows):,} windows of {CONTEXT + 1} tokens, "
        f"batch {args.micro_batch}: "
        f"{windows / elapsed:,.0f} windows/s, {windows * CONTEXT / elapsed / 1e6:,.1f} M tokens/s over {elapsed:.1f} s"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=["gpu", "reader", "kernels", "hf", "titan", "profile"])
    parser.add_argument("--work", type=Path, default=Path("/tmp/tm-bench"))
    parser.add_argument("--tokens", type=int, default=20_000_000, help="corpus size to build")
    parser.add_argument("--variants", default="default", help=f"comma-separated, from {', '.join(VARIANTS)}")
    parser.add_argument(
        "--kernels",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="measure the matmul peak and attention kernels first (26 s on an H200)",
    )
    parser.add_argument("--baseline", type=int, default=1, help="runs of Hugging Face + torch.compile (0: none)")
    parser.add_argument(
        "--no-baseline", dest="baseline", action="store_const", const=0, help="the same as --baseline 0"
    )
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument(
        "--warmup", type=int, default=10, help="steps left out of the sustained figures (compilation, allocator)"
    )
    parser.add_argument(
        "--lr-warmup", type=int, default=10, help="LR warm-up steps, so the loss moves within a short run"
    )
    parser.add_argument(
        "--micro-batch", type=int, default=8, help="hf baseline and reader (tokenmill variants set their own)"
    )
    parser.add_argument(
        "--batch-tokens",
        type=int,
        default=0,
        help="tokens per optimizer step, every run (0: one micro-batch, no accumulation)",
    )
    parser.add_argument("--log-every", type=int, default=10, help="optimizer steps per logged interval")
    parser.add_argument(
        "--titan",
        default="",
        help="torchtitan 0.3.0 baselines to run: comma-separated attention:micro-batch (attention: flex or varlen)",
    )
    parser.add_argument("--titan-attention", default="flex", help="titan: torchtitan's attention backend")
    parser.add_argument("--profile", default="", help="variants to profile first (comma-separated)")
    parser.add_argument("--variant", default="default", help="profile: the variant")
    parser.add_argument("--nproc", type=int, default=1)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--seconds", type=float, default=10.0, help="reader: how long to read")
    parser.add_argument("--timeout", type=int, default=420, help="seconds allowed to each run")
    parser.add_argument(
        "--tokenizer", type=Path, help="sentencepiece model (default: mistral-common's, where installed)"
    )
    parser.add_argument("--manifest", type=Path, help="hf: the corpus manifest")
    parser.add_argument("--json", type=Path, help="kernels / hf / profile: where to write the result")
    args = parser.parse_args(argv)
    if args.mode == "gpu":
        gpu(args)
    elif args.mode == "reader":
        reader(args)
    else:
        measure = {"kernels": kernels, "hf": hf_baseline, "titan": titan_baseline, "profile": profile}[args.mode]
        args.json.write_text(json.dumps(measure(args) if args.mode != "kernels" else measure()))


if __name__ == "__main__":
    main()
