"""Faults during training: SIGTERM to one rank, SIGKILL of every process during a checkpoint write, shards
changed since the manifest, and a checkpoint carrying a pickle payload. The runs are the real `tokenmill train`
(torchrun, 2 gloo ranks on the CPU, the tiny preset) over the reference build's shards, compared with the
reference run's losses, bit for bit."""

from __future__ import annotations

import os
import pickle
import shutil
import signal
import subprocess

import pytest

from manifests.manifest import load
from manifests.outputs import MANIFEST
from tests.support.faults import (
    ROOT,
    TRAIN_STEPS,
    Payload,
    Run,
    kill_all,
    losses,
    rank_process,
    start_time,
    tokenmill,
    train_command,
    wait_for,
)
from trainer import checkpoint


@pytest.mark.slow
def test_sigterm_to_one_rank_saves_exits_0_and_the_resume_gives_the_uninterrupted_losses(
    reference_build, reference_training, tmp_path
):
    """One node's preemption notice: any rank's SIGTERM stops all ranks at the same step boundary."""
    out = tmp_path / "run"
    command = train_command(reference_build.out / MANIFEST, out)
    run = Run.start(command, tmp_path / "first.stderr")
    wait_for(lambda: len(losses(out)) >= 2, "2 logged steps", run, timeout=300)
    os.kill(rank_process(run, rank=1), signal.SIGTERM)
    assert run.wait() == 0, run.stderr()[-3000:]
    meta = checkpoint.read_meta(checkpoint.all_checkpoints(out)[-1])
    assert meta["reason"] == "preempted" and 2 <= meta["step"] < TRAIN_STEPS
    expected = losses(reference_training.out)
    assert losses(out) == {step: expected[step] for step in range(1, meta["step"] + 1)}

    resumed = Run.start(command + ["--resume", str(out)], tmp_path / "resumed.stderr")
    assert resumed.wait() == 0, resumed.stderr()[-3000:]
    assert losses(out) == expected


@pytest.mark.slow
def test_sigkill_during_a_checkpoint_write_keeps_the_previous_checkpoint_and_resumes_from_it(
    reference_build, reference_training, tmp_path
):
    """A machine lost while it writes step 6's checkpoint: step 3's stays whole and is the one resumed."""
    out = tmp_path / "run"
    command = train_command(reference_build.out / MANIFEST, out)
    run = Run.start(command, tmp_path / "first.stderr")
    writing = out / f".{checkpoint.name(6)}.tmp"
    wait_for(writing.exists, "the write of step 6's checkpoint", run, timeout=300, every=0.002)
    kill_all({pid: start_time(pid) for pid in run.tree()})  # launcher, torchrun and both ranks at once
    run.wait()
    assert writing.exists() and not (out / checkpoint.name(6)).exists(), "the kill did not land during the write"
    assert [p.name for p in checkpoint.all_checkpoints(out)] == [checkpoint.name(3)]

    resumed = Run.start(command + ["--resume", str(out)], tmp_path / "resumed.stderr")
    assert resumed.wait() == 0, resumed.stderr()[-3000:]
    assert losses(out) == losses(reference_training.out)


@pytest.mark.slow
@pytest.mark.parametrize("change", ["truncated", "byte flipped"])
def test_a_shard_changed_since_the_manifest_is_refused_before_training(change, build_copy, tmp_path):
    shard = load(build_copy).shards("train")[2].bin_path
    data = bytearray(shard.read_bytes())
    if change == "truncated":  # sizes are always checked
        del data[-2:]
        extra = []
    else:  # contents only on request
        data[len(data) // 2] ^= 0x40
        extra = ["--verify-checksums"]
    shard.write_bytes(bytes(data))
    out = tmp_path / "run"
    command = train_command(build_copy / MANIFEST, out, *extra, nproc=1)
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert f"{shard}: " in done.stderr and str(build_copy / MANIFEST) in done.stderr
    assert not (out / "metrics.jsonl").exists() and checkpoint.all_checkpoints(out) == []


@pytest.mark.slow
@pytest.mark.parametrize("loader", ["resume", "export"])
def test_loading_a_checkpoint_never_unpickles_arbitrary_objects(loader, reference_build, reference_training, tmp_path):
    ckpt = tmp_path / "ckpt" / checkpoint.name(TRAIN_STEPS)
    shutil.copytree(reference_training.out / checkpoint.name(TRAIN_STEPS), ckpt)
    marker = tmp_path / "payload-ran"
    (ckpt / ".metadata").write_bytes(pickle.dumps(Payload(marker)))
    if loader == "resume":
        # one step more than the checkpoint holds: a resume with nothing left to train is refused before loading
        command = train_command(
            reference_build.out / MANIFEST, tmp_path / "run", "--resume", str(ckpt), "--steps", str(TRAIN_STEPS + 1)
        )
    else:
        command = tokenmill("export", str(ckpt), "--hf", str(tmp_path / "hf"))
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert not marker.exists(), f"{loader} ran code from the checkpoint's .metadata"
    assert done.returncode != 0 and ".metadata" in done.stderr
