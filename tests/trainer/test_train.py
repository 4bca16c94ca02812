"""End to end on the CPU: real torchrun, 2 processes, gloo, the tiny preset, a real manifest."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import sentencepiece
import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor

from manifests.manifest import load as load_manifest
from manifests.manifest import write_local
from manifests.outputs import MANIFEST
from manifests.shards import read_shard
from trainer import checkpoint
from trainer.config import PRESETS, TrainConfig
from trainer.export import load_checkpoint_model
from trainer.export import main as export_main
from trainer.model import build
from trainer.optim import build_optimizer
from trainer.parallelize import apply_fp32_residual, apply_fsdp, parallelize
from trainer.train import train_step

SUPPORT = Path(__file__).parents[1] / "support"  # scripts the tests run under torchrun
STEPS = 40
# 2 ranks x micro-batch 2 x 64 tokens = 256 tokens per micro-step: 2 micro-steps of gradient accumulation.
TRAIN_ARGS = [
    "--preset",
    "tiny",
    "--steps",
    str(STEPS),
    "--batch-tokens",
    "512",
    "--micro-batch",
    "2",
    "--lr",
    "1e-2",
    "--min-lr",
    "1e-3",
    "--warmup-steps",
    "5",
    "--log-every",
    "1",
    "--save-every",
    "20",
    "--keep-last",
    "2",
    "--eval-every",
    "20",
    "--eval-windows",
    "8",
]


def torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *args]


def tokenmill(*args: str) -> list[str]:
    return [sys.executable, "-m", "pipeline.cli", *args]


def records(out: Path, kind: str = "train") -> list[dict]:
    lines = (out / "metrics.jsonl").read_text().splitlines() if (out / "metrics.jsonl").exists() else []
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def losses(out: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in records(out)}


@pytest.fixture(scope="module")
def uninterrupted(sample_manifest, tmp_path_factory) -> Path:
    """One run of all STEPS, started the by-hand way: torchrun -m trainer.train."""
    out = tmp_path_factory.mktemp("uninterrupted")
    done = subprocess.run(
        torchrun("-m", "trainer.train", "--manifest", str(sample_manifest), "--out", str(out), *TRAIN_ARGS),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def test_loss_falls_and_metrics_are_recorded(uninterrupted):
    train = records(uninterrupted)
    assert [r["step"] for r in train] == list(range(1, STEPS + 1))
    first, last = np.mean([r["loss"] for r in train[:5]]), np.mean([r["loss"] for r in train[-5:]])
    assert first > math.log(32000) - 0.5  # starts near uniform over the vocabulary
    assert last < first - 2.0
    assert all(r["tokens_per_s_per_gpu"] > 0 and 0 <= r["data_wait"] <= 1 and r["grad_norm"] > 0 for r in train)
    evals = records(uninterrupted, "eval")
    assert [r["step"] for r in evals] == [20, 40]
    assert evals[-1]["val_loss"] < math.log(32000) - 2.0
    # per domain (here the sources: the build has no domains): every target token counted for its document's
    for e in evals:
        by_domain, tokens = e["val_loss_by_domain"], e["val_tokens_by_domain"]
        assert (
            by_domain
            and set(by_domain) <= {"slimpajama", "starcoderdata"}
            and sum(tokens.values()) == e["val_windows"] * 64
        )
        assert sum(by_domain[d] * tokens[d] for d in by_domain) / sum(tokens.values()) == pytest.approx(
            e["val_loss"], rel=1e-9
        )
    assert [p.name for p in checkpoint.all_checkpoints(uninterrupted)] == ["step-000020", "step-000040"]


def test_ranks_read_disjoint_windows(sample_manifest, tmp_path):
    done = subprocess.run(
        torchrun(str(SUPPORT / "rank_windows.py"), str(sample_manifest), str(tmp_path)),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rank0, rank1 = np.load(tmp_path / "rank0.npy"), np.load(tmp_path / "rank1.npy")
    assert len(rank0) == len(rank1) > 100
    assert not set(rank0.tolist()) & set(rank1.tolist())
    assert len(set(rank0.tolist()) | set(rank1.tolist())) == len(rank0) + len(rank1)


def test_sigterm_saves_and_exits_0_and_resume_gives_the_uninterrupted_losses(sample_manifest, uninterrupted, tmp_path):
    out = tmp_path / "run"
    command = tokenmill("train", "--nproc", "2", "--manifest", str(sample_manifest), "--out", str(out), *TRAIN_ARGS)
    with open(tmp_path / "log", "w") as log:
        launcher = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while len(records(out)) < 2 and launcher.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        launcher.send_signal(signal.SIGTERM)
        assert launcher.wait(timeout=300) == 0, (tmp_path / "log").read_text()[-3000:]
    saved = checkpoint.all_checkpoints(out)[-1]
    meta = checkpoint.read_meta(saved)
    assert meta["reason"] == "preempted" and 2 <= meta["step"] < STEPS
    stopped_at = meta["step"]
    expected = losses(uninterrupted)
    assert losses(out) == {step: expected[step] for step in range(1, stopped_at + 1)}

    # As a user continues a run: the run folder, no --out (it defaults to the folder resumed).
    resume = tokenmill("train", "--nproc", "2", "--manifest", str(sample_manifest), "--resume", str(out), *TRAIN_ARGS)
    resumed = subprocess.run(resume, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert losses(out) == expected  # every step, bit for bit


def test_sigterm_in_a_long_step_saves_within_a_micro_batch_and_the_resume_runs_that_step_again(
    sample_manifest, tmp_path
):
    """A step of 40 micro-batches: the signal is not left waiting for its end."""
    args = [
        "--preset",
        "tiny",
        "--steps",
        "2",
        "--batch-tokens",
        str(2 * 64 * 40),
        "--micro-batch",
        "1",
        "--warmup-steps",
        "1",
        "--log-every",
        "1",
        "--save-every",
        "0",
    ]
    full = subprocess.run(
        tokenmill("train", "--nproc", "2", "--manifest", str(sample_manifest), "--out", str(tmp_path / "full"), *args),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert full.returncode == 0, full.stderr[-3000:]
    assert "done: steps 1-2" in full.stderr and "no checkpoint (--save-every 0)" in full.stderr
    step_s = records(tmp_path / "full")[-1]["interval_s"]

    out = tmp_path / "run"
    with open(tmp_path / "log", "w") as log:
        launcher = subprocess.Popen(
            tokenmill("train", "--nproc", "2", "--manifest", str(sample_manifest), "--out", str(out), *args),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 300
        while not records(out) and launcher.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(step_s / 4)  # into step 2
        launcher.send_signal(signal.SIGTERM)
        assert launcher.wait(timeout=300) == 0, (tmp_path / "log").read_text()[-3000:]
    meta = checkpoint.read_meta(checkpoint.all_checkpoints(out)[-1])
    assert (meta["step"], meta["reason"], meta["data"]["position"]) == (1, "preempted", 40 * 2)
    log = (tmp_path / "log").read_text()
    assert (
        "SIGTERM: step 2 was stopped between micro-batches and is dropped; continue with --resume "
        f"{out / 'step-000001'}" in log
    )

    resumed = subprocess.run(tokenmill("train", "--resume", str(out)), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert losses(out) == losses(tmp_path / "full")


def test_one_process_trains_on_a_replica_and_resumes_bit_for_bit(sample_manifest, tmp_path):
    args = [
        "--preset",
        "tiny",
        "--steps",
        "6",
        "--batch-tokens",
        "256",
        "--micro-batch",
        "1",
        "--lr",
        "1e-2",
        "--warmup-steps",
        "2",
        "--log-every",
        "1",
        "--save-every",
        "3",
    ]

    def train(out: Path, *extra: str) -> dict[int, float]:
        done = subprocess.run(
            tokenmill("train", "--nproc", "1", "--manifest", str(sample_manifest), "--out", str(out), *args, *extra),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return losses(out)

    uninterrupted = train(tmp_path / "full")
    assert uninterrupted[6] < uninterrupted[1]
    resumed = train(tmp_path / "resumed", "--resume", str(tmp_path / "full" / "step-000003"))
    assert resumed == {step: uninterrupted[step] for step in (4, 5, 6)}  # the replica took the loaded weights


# A resume on another rank count computes each step over the same windows (the global batch and the stream
# position are the same) but sums their losses and gradients in another order: FSDP reduce-scatters W partial
# sums, one rank accumulates its micro-batches. fp32 rounding then differs in the last bits, and Adam carries
# that forward. Measured over these 20 steps: at most 1.4e-7 relative (two fp32 ulps of a loss near 5), not
# growing; TOLERANCE leaves 70x room for other CPUs' kernels. A window read twice or skipped puts another window in a
# step:
# that is 1/8 of the step's loss, orders of magnitude above it.
TOLERANCE = 1e-5
WINDOWS_PER_STEP = 512 // 64


def resume_on(nproc: int, ckpt: Path, out: Path) -> dict[int, float]:
    """A resume gives only what changes: every other setting (manifest, preset, batch, schedule) is the checkpoint's."""
    command = tokenmill("train", "--nproc", str(nproc), "--resume", str(ckpt), "--out", str(out), "--save-every", "10")
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return losses(out)


def assert_continues(out: Path, start: int, expected: dict[int, float]) -> None:
    """Steps start+1..STEPS within TOLERANCE of `expected`, and the checkpoints' data positions are those of the
    uninterrupted run: WINDOWS_PER_STEP windows of the one stream per step, on any rank count."""
    got = losses(out)
    assert sorted(got) == list(range(start + 1, STEPS + 1))
    for step in got:
        assert got[step] == pytest.approx(expected[step], rel=TOLERANCE), step
    for ckpt in checkpoint.all_checkpoints(out):
        meta = checkpoint.read_meta(ckpt)
        assert (meta["data"]["epoch"], meta["data"]["position"]) == (0, meta["step"] * WINDOWS_PER_STEP)


@pytest.fixture(scope="module")
def resumed_on_one_rank(sample_manifest, uninterrupted, tmp_path_factory) -> Path:
    """The uninterrupted 2-rank (FSDP) run continued from step 20 on one rank (the replica), saving at 30."""
    out = tmp_path_factory.mktemp("one-rank")
    resume_on(1, uninterrupted / "step-000020", out)
    return out


def test_a_two_rank_checkpoint_resumes_on_one_rank(uninterrupted, resumed_on_one_rank):
    assert_continues(resumed_on_one_rank, 20, losses(uninterrupted))


def test_a_one_rank_checkpoint_resumes_on_two_ranks(sample_manifest, uninterrupted, resumed_on_one_rank, tmp_path):
    resume_on(2, resumed_on_one_rank / "step-000030", tmp_path / "back")
    assert_continues(tmp_path / "back", 30, losses(uninterrupted))


def test_a_two_rank_checkpoint_resumes_on_four_ranks(sample_manifest, uninterrupted, tmp_path):
    resume_on(4, uninterrupted / "step-000020", tmp_path / "four")
    assert_continues(tmp_path / "four", 20, losses(uninterrupted))
    assert records(tmp_path / "four", "eval")[-1]["val_loss"] == pytest.approx(
        records(uninterrupted, "eval")[-1]["val_loss"], rel=TOLERANCE
    )


@pytest.mark.parametrize(
    "change, message",
    [
        (
            ["--nproc", "3"],
            "512: 8 windows of 64 tokens, which 3 ranks cannot share .* keep this global batch on 1, 2, 4 or 8 ranks",
        ),
        (
            ["--nproc", "4", "--micro-batch", "4"],
            "= 2 per rank on 4 ranks, which --micro-batch 4 does not divide: use --micro-batch 1 or 2",
        ),
        (
            ["--nproc", "2", "--batch-tokens", "1024"],
            "written with --batch-tokens 512, this run has 1024; .* resume with --batch-tokens 512",
        ),
    ],
)
def test_a_resume_that_cannot_keep_the_global_batch_is_refused_once_with_the_arithmetic(
    sample_manifest, uninterrupted, tmp_path, change, message
):
    command = tokenmill(
        "train",
        "--manifest",
        str(sample_manifest),
        "--resume",
        str(uninterrupted / "step-000020"),
        "--out",
        str(tmp_path),
        *TRAIN_ARGS,
        *change,
    )
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and len(done.stderr.splitlines()) == 1, done.stderr[-3000:]
    assert re.search(message, done.stderr), done.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--nproc", "2", "--out", "{run}", *TRAIN_ARGS],
            "--out {run}: holds checkpoints up to step 40; use --resume {run} to continue that run, or a new --out",
        ),
        (
            ["--resume", "{run}"],
            "--resume {run}/step-000040: already at step 40 of --steps 40, nothing to train; give a larger --steps",
        ),
        (
            ["--resume", "{run}", "--preset", "tinyllama-1.1b", "--out", "{tmp}"],
            "--resume {run}/step-000040: written for preset tiny, this run is tinyllama-1.1b; use --preset tiny",
        ),
    ],
)
def test_mistakes_with_an_earlier_run_are_refused_once_before_any_rank_starts(
    sample_manifest, uninterrupted, tmp_path, args, message
):
    args = [a.format(run=uninterrupted, tmp=tmp_path) for a in args]
    done = subprocess.run(
        tokenmill("train", "--manifest", str(sample_manifest), *args), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 2 and done.stderr.startswith(f"tokenmill train: {message.format(run=uninterrupted)}"), (
        done.stderr
    )
    assert len(done.stderr.splitlines()) == 1 and not (tmp_path / "metrics.jsonl").exists(), done.stderr


def test_a_resume_against_other_shards_is_refused_unless_allowed_and_says_what_changed(
    sample_manifest, uninterrupted, tmp_path
):
    changed = tmp_path / "build"
    changed.mkdir()
    for entry in sample_manifest.parent.iterdir():
        if entry.name != MANIFEST:
            (changed / entry.name).symlink_to(entry)
    manifest = load_manifest(sample_manifest)
    removed = manifest.splits["train"].shards.pop().bin
    write_local(manifest, changed / MANIFEST)
    command = tokenmill(
        "train",
        "--nproc",
        "2",
        "--manifest",
        str(changed / MANIFEST),
        "--resume",
        str(uninterrupted / "step-000020"),
        "--out",
        str(tmp_path / "run"),
        *TRAIN_ARGS,
        "--steps",
        "21",
    )
    refused = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and len(refused.stderr.splitlines()) == 1, refused.stderr[-3000:]
    assert f"1 removed ({removed})" in refused.stderr and "--allow-manifest-change" in refused.stderr
    allowed = subprocess.run(command + ["--allow-manifest-change"], capture_output=True, text=True, timeout=300)
    assert allowed.returncode == 0, allowed.stderr[-3000:]
    assert (
        allowed.stderr.count(
            f"--allow-manifest-change: the shards of split 'train' in {changed / MANIFEST} changed since the "
            f"checkpoint: 1 removed ({removed})"
        )
        == 1
    )
    assert sorted(losses(tmp_path / "run")) == [21]


def test_export_loads_in_transformers_with_the_same_logits_and_tokenizer(sample_manifest, uninterrupted, tmp_path):
    transformers = pytest.importorskip("transformers")
    done = subprocess.run(
        tokenmill("export", str(uninterrupted), "--hf", str(tmp_path / "hf")),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0 and done.stderr == "", done.stderr
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "hf" / "model.safetensors").stat().st_mode & 0o777 == 0o666 & ~umask
    hf = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "hf").eval()
    ours = load_checkpoint_model(checkpoint.all_checkpoints(uninterrupted)[-1]).eval()
    tokens = torch.randint(0, 32000, (2, 64), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, got = ours(tokens), hf(tokens).logits
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert hf.num_parameters() == ours.cfg.num_params()

    # The tokenizer encodes text as the build's sentencepiece model did: prose, code (runs of spaces), edges.
    manifest = load_manifest(sample_manifest)
    sp = sentencepiece.SentencePieceProcessor(model_file=str(manifest.tokenizer_path()))
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    texts = ["", " x", "a  b   c", "tail  ", "\n    indented\ttab", "Ünïcödé 日本語 🙂"]
    for shard in manifest.shards("train"):
        index, stream = read_shard(shard.bin_path, shard.idx_path)
        texts += [
            sp.decode(stream[slice(*index.doc_span(i))][:-1].tolist())
            for i in range(0, index.documents, max(1, index.documents // 20))
        ]
    assert sum("    " in text for text in texts) > 5  # code among them
    assert [tokenizer(text)["input_ids"] for text in texts] == [sp.encode(text) for text in texts]
    assert tokenizer.eos_token_id == manifest.tokenizer.eos_id


def test_export_names_what_it_was_given(tmp_path, capsys):
    assert export_main([str(tmp_path / "nothing"), "--hf", str(tmp_path / "hf")]) == 2
    assert capsys.readouterr().err == f"tokenmill export: export {tmp_path / 'nothing'}: does not exist\n"


@pytest.fixture
def one_rank(tmp_path):
    """A real gloo process group of one rank in this process, and its device mesh."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    yield init_device_mesh("cpu", (1,))
    dist.destroy_process_group()


def fsdp_on_one_rank(mesh, param_dtype):
    """What the trainer runs on several devices, here on one rank: (model, runner, optimizer)."""
    model = build(PRESETS["tiny"], seed=1)
    apply_fsdp(model, mesh, param_dtype=param_dtype, reshard_after_forward=False)
    return model, model, build_optimizer(model, CFG, fused=False)


def replica_on_one_rank(mesh, param_dtype, *, fp8=False):
    """What the trainer runs on one device: (model, the replica's module, optimizer)."""
    model, replica = parallelize(
        build(PRESETS["tiny"], seed=1),
        mesh,
        param_dtype=param_dtype,
        compile=False,
        ac_every=0,
        reshard_after_forward=False,
        fp8=fp8,
        fp32_residual=False,
    )
    optimizer = build_optimizer(model, CFG, fused=False)
    replica.follow(optimizer)
    return model, replica.module, optimizer


CFG = TrainConfig(manifest="m.json", preset="tiny", out=Path("unused"), lr=1e-2, warmup_steps=0)
TOKENS = torch.randint(0, 32000, (4, 65), generator=torch.Generator().manual_seed(0))


def micro_batches(accumulation: int, before_later=lambda: None):
    rows = len(TOKENS) // accumulation
    for i in range(accumulation):
        if i:
            before_later()
        yield TOKENS[i * rows : (i + 1) * rows, :-1], TOKENS[i * rows : (i + 1) * rows, 1:]


@pytest.mark.parametrize("param_dtype", [torch.float32, torch.bfloat16])  # bf16: the GPU's fp32 gradient accumulation
@pytest.mark.parametrize("keep_gathered", [True, False])
def test_fsdp_accumulated_step_equals_one_big_batch_and_reduces_once(one_rank, param_dtype, keep_gathered):
    def one_step(accumulation: int):
        model, runner, optimizer = fsdp_on_one_rank(one_rank, param_dtype)
        between = []  # (weights still gathered, some gradient already reduced) before each later micro-batch

        def record():
            between.append(
                (
                    not any(isinstance(p, DTensor) for p in model.parameters()),
                    any(isinstance(p.grad, DTensor) for p in model.parameters()),
                )
            )

        loss, grad_norm, _ = train_step(
            runner,
            optimizer,
            micro_batches(accumulation, record),
            accumulation,
            CFG.grad_clip,
            keep_gathered=keep_gathered,
        )
        return loss, grad_norm, [p.full_tensor() for p in model.parameters()], between

    big_loss, big_norm, big_params, _ = one_step(1)
    loss, grad_norm, params, between = one_step(4)
    assert between == [(keep_gathered, False)] * 3  # no reduce-scatter before the last micro-batch
    torch.testing.assert_close(loss, big_loss, rtol=1e-6, atol=0)
    torch.testing.assert_close(grad_norm, big_norm, rtol=1e-4, atol=0)
    if param_dtype == torch.float32:  # bf16 rounds each micro-batch's gradient, which Adam's first step magnifies
        torch.testing.assert_close(params, big_params, rtol=0, atol=1e-4)


@pytest.mark.parametrize("param_dtype", [torch.float32, torch.bfloat16])
def test_replica_step_matches_fsdp_and_accumulates_into_the_fp32_gradients(one_rank, param_dtype):
    def one_step(build_runner, accumulation: int):
        model, runner, optimizer = build_runner(one_rank, param_dtype)
        loss, grad_norm, _ = train_step(runner, optimizer, micro_batches(accumulation), accumulation, CFG.grad_clip)
        return model, runner, optimizer, loss, grad_norm

    _, _, _, fsdp_loss, fsdp_norm = one_step(fsdp_on_one_rank, 4)
    model, runner, optimizer, loss, grad_norm = one_step(replica_on_one_rank, 4)
    torch.testing.assert_close(
        loss, fsdp_loss, rtol=1e-6, atol=0
    )  # the same function, RoPE tables rounded as FSDP rounds them
    # The replica's block matrices sum the micro-batches in fp32 inside the matmul, FSDP rounds each to bf16 first.
    bf16 = param_dtype == torch.bfloat16
    torch.testing.assert_close(grad_norm, fsdp_norm, rtol=1e-5 if bf16 else 1e-6, atol=0)
    _, _, _, big_loss, big_norm = one_step(replica_on_one_rank, 1)
    torch.testing.assert_close(loss, big_loss, rtol=1e-6, atol=0)
    torch.testing.assert_close(grad_norm, big_norm, rtol=1e-4, atol=0)

    # After the step: fp32 parameters updated, the replica holds them in the compute dtype, gradients zeroed in place.
    replica_tensors = dict(runner.named_parameters()) | dict(runner.named_buffers())
    for name, param in model.named_parameters():
        assert param.dtype == torch.float32 and torch.count_nonzero(param.grad) == 0
        assert torch.equal(replica_tensors[name], param.detach().to(param_dtype)), name
    assert all(p.grad is None for p in runner.parameters())

    # A load into the model (a resume) reaches the replica; freed gradients are refused, not silently skipped.
    fresh = build(PRESETS["tiny"], seed=2)
    model.load_state_dict(fresh.state_dict())
    assert torch.equal(replica_tensors["layers.0.attn.qkv.weight"], fresh.layers[0].attn.qkv.weight.to(param_dtype))
    optimizer.zero_grad(set_to_none=True)
    with pytest.raises(RuntimeError, match="set_to_none=False"):
        train_step(runner, optimizer, micro_batches(1), 1, CFG.grad_clip)


def test_fp8_layers_train_on_the_replica(one_rank):
    model, runner, optimizer = replica_on_one_rank(one_rank, torch.bfloat16, fp8=True)
    before = model.layers[0].mlp.down.weight.detach().clone()
    losses = [train_step(runner, optimizer, micro_batches(2), 2, CFG.grad_clip)[0].item() for _ in range(3)]
    assert type(runner.layers[0].mlp.down).__name__ == "Float8Linear"  # its bf16 gradient reaches fp32 by the hook
    assert not torch.equal(model.layers[0].mlp.down.weight, before)
    assert losses[2] < losses[0]


def test_fp32_residual_stream_is_closer_to_fp32_and_the_same_on_the_replica_and_under_fsdp(one_rank):
    """--fp32-residual: the blocks take and return an fp32 stream while computing in bf16, on one device's
    replica and under FSDP alike (equal losses and gradient norms after a step), and the stream the final norm
    sees is nearer the fp32 model's than with the bf16 stream (8 blocks, so that the roundings add up)."""
    cfg = replace(PRESETS["tiny"], n_layers=8)
    tokens = TOKENS[:, :65]

    def final_stream(model):
        seen = {}
        block_input = model.layers[1].register_forward_pre_hook(
            lambda m, args: seen.update(block_input_dtype=args[0].dtype)
        )
        stream = model.norm.register_forward_hook(lambda m, args, out: seen.update(stream=args[0].float()))
        with torch.no_grad():
            model(tokens[:, :-1])
        block_input.remove(), stream.remove()
        return seen

    def replica(fp32_residual: bool):
        model, replica = parallelize(
            build(cfg, seed=1),
            one_rank,
            param_dtype=torch.bfloat16,
            compile=False,
            ac_every=0,
            reshard_after_forward=False,
            fp8=False,
            fp32_residual=fp32_residual,
        )
        optimizer = build_optimizer(model, CFG, fused=False)
        replica.follow(optimizer)
        return replica.module, optimizer

    reference = final_stream(build(cfg, seed=1))["stream"]
    errors = {}
    for fp32_residual in (False, True):
        seen = final_stream(replica(fp32_residual)[0])
        assert seen["block_input_dtype"] == (torch.float32 if fp32_residual else torch.bfloat16)
        errors[fp32_residual] = float((seen["stream"] - reference).norm() / reference.norm())
    assert errors[True] < 0.85 * errors[False], errors  # 1.3-1.5x smaller over seeds 0-4

    sharded = build(cfg, seed=1)
    apply_fp32_residual(sharded, torch.bfloat16)
    apply_fsdp(sharded, one_rank, param_dtype=torch.bfloat16, reshard_after_forward=False, cast_block_inputs=False)
    seen = []
    sharded.layers[1].register_forward_pre_hook(lambda m, args: seen.append(args[0].dtype))
    fsdp_loss, fsdp_norm, _ = train_step(
        sharded, build_optimizer(sharded, CFG, fused=False), micro_batches(2), 2, CFG.grad_clip
    )
    assert seen == [torch.float32, torch.float32]
    runner, optimizer = replica(True)
    loss, grad_norm, _ = train_step(runner, optimizer, micro_batches(2), 2, CFG.grad_clip)
    torch.testing.assert_close(loss, fsdp_loss, rtol=1e-6, atol=0)
    # The replica sums the two micro-batches' block gradients in fp32, FSDP rounds each to bf16 first.
    torch.testing.assert_close(grad_norm, fsdp_norm, rtol=1e-4, atol=0)
