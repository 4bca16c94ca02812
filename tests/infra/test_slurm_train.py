"""infra/slurm/train.sbatch: syntax, SLURM directives, and the commands it runs (--dry-run) — staging a
manifest from object storage, torchrun across the allocation's nodes, resuming from a checkpoint."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench.s3_store import free_port
from tests.support.infra import ROOT, cli_options, long_options
from tests.support.small_build import write_small_build

SCRIPT = "infra/slurm/train.sbatch"
IN_SLURM = {
    "SLURM_JOB_ID": "4242",
    "SLURM_NNODES": "4",
    "SLURMD_NODENAME": "gpu-a01",
    "SLURM_GPUS_ON_NODE": "8",
    "TMPDIR": "/local/nvme",
}


def dry_run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SLURM", "PRESET", "STAGE_DIR", "GPUS_PER_NODE", "RDZV_PORT"))
    }
    return subprocess.run(
        ["bash", SCRIPT, "--dry-run", *args],
        cwd=ROOT,
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_in_a_slurm_job_it_runs_its_commands_through_srun(tmp_path):
    """Not a dry run, with the variables SLURM gives a batch script: past its checks, the first thing it runs is
    srun, with the stage-in on every node (this machine has no SLURM: bash then finds no srun, exit 127)."""
    if shutil.which("srun"):
        pytest.skip("a real SLURM here: the test would submit steps to it")
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM", "PRESET", "STAGE_DIR", "GPUS_PER_NODE"))}
    env = {**clean, **IN_SLURM, "TMPDIR": str(tmp_path)}
    done = subprocess.run(
        ["bash", "-x", SCRIPT, "s3://bucket/tl/manifest.json", str(tmp_path / "ckpt")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 127 and "srun: command not found" in done.stderr, done.stderr
    traced = [line for line in done.stderr.splitlines() if line.startswith("+ srun ")]
    assert traced == [
        f"+ srun --nodes 4 --ntasks-per-node 1 --kill-on-bad-exit=1 tokenmill stage-in s3://bucket/tl/manifest.json "
        f"{tmp_path}/tokenmill-4242"
    ]
    assert not (tmp_path / "ckpt").exists()


def test_directives_come_before_the_first_command():
    lines = (ROOT / SCRIPT).read_text().splitlines()
    first_command = next(i for i, line in enumerate(lines) if line.strip() and not line.startswith("#"))
    directives = [line for line in lines[:first_command] if line.startswith("#SBATCH")]
    assert not [line for line in lines[first_command:] if line.startswith("#SBATCH")]  # sbatch would ignore them
    options = dict(
        line.split()[1].lstrip("-").split("=", 1) if "=" in line else (line.split()[1].lstrip("-"), "")
        for line in directives
    )
    assert options["ntasks-per-node"] == "1"  # one torchrun per node, which starts one process per GPU
    assert {"nodes", "gpus-per-node", "requeue", "signal"} <= set(options)


def test_a_manifest_url_is_staged_on_every_node_then_trained_from():
    done = dry_run("s3://bucket/tl/manifest.json", "ckpt/tl", "--steps", "100", env=IN_SLURM)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "srun --nodes 4 --ntasks-per-node 1 --kill-on-bad-exit=1 tokenmill stage-in s3://bucket/tl/manifest.json "
        "/local/nvme/tokenmill-4242",
        "srun --nodes 4 --ntasks-per-node 1 --kill-on-bad-exit=1 torchrun --nnodes 4 --nproc-per-node 8 --rdzv-backend "
        "c10d "
        "--rdzv-endpoint gpu-a01:29500 --rdzv-id 4242 -m trainer.train --manifest "
        "/local/nvme/tokenmill-4242/manifest.json "
        "--preset tinyllama-1.1b --out ckpt/tl --steps 100",
    ]


def test_a_shared_path_is_used_as_it_is_and_a_checkpoint_is_resumed(tmp_path):
    ckpt = tmp_path / "ckpt dir"
    fresh = dry_run(
        "/shared/runs/tl/manifest.json", str(ckpt), env={**IN_SLURM, "PRESET": "tiny", "GPUS_PER_NODE": "4"}
    )
    assert fresh.returncode == 0, fresh.stderr
    [command] = fresh.stdout.splitlines()
    argv = shlex.split(command)
    assert argv[argv.index("--manifest") + 1] == "/shared/runs/tl/manifest.json"
    assert argv[argv.index("--nproc-per-node") + 1] == "4" and argv[argv.index("--preset") + 1] == "tiny"
    assert "--resume" not in argv

    (ckpt / ".step-000300.tmp").mkdir(parents=True)  # a save that died half-way is no checkpoint
    assert "--resume" not in dry_run("/shared/runs/tl/manifest.json", str(ckpt), env=IN_SLURM).stdout
    (ckpt / "step-000200").mkdir()
    (ckpt / "step-000200" / "meta.json").write_text("{}")
    [command] = dry_run("/shared/runs/tl/manifest.json", str(ckpt), env=IN_SLURM).stdout.splitlines()
    argv = shlex.split(command)
    assert argv[argv.index("--resume") + 1] == str(ckpt) == argv[argv.index("--out") + 1]


def test_refuses_to_run_outside_slurm_and_without_arguments():
    outside = subprocess.run(
        ["bash", SCRIPT, "runs/tl/manifest.json", "ckpt/tl"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("SLURM")},
        timeout=60,
    )
    assert outside.returncode == 2 and "not inside a SLURM job" in outside.stderr
    missing = dry_run("runs/tl/manifest.json")
    assert missing.returncode == 2 and "usage: sbatch" in missing.stderr


def test_the_commands_pass_only_options_the_programs_know(trainer_options):
    stage, train = (
        shlex.split(line)
        for line in dry_run("s3://bucket/tl/manifest.json", "ckpt/tl", env=IN_SLURM).stdout.splitlines()
    )
    assert long_options(stage[stage.index("stage-in") :]) <= cli_options("pipeline.cli", "stage-in")
    assert long_options(train[train.index("trainer.train") :]) <= trainer_options


def run_training_line(env: dict, ckpt: Path, manifest: Path, *trainer_args: str) -> subprocess.CompletedProcess:
    """The script's torchrun line, as srun starts it on every node, run here: `torchrun` is this Python's."""
    [line] = dry_run(str(manifest), str(ckpt), *trainer_args, env=env).stdout.splitlines()
    argv = shlex.split(line)
    argv = [sys.executable, "-m", "torch.distributed.run", *argv[argv.index("torchrun") + 1 :]]
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_the_training_line_trains_and_a_requeued_job_resumes(tmp_path):
    """One node with 2 CPU processes (gloo), the tiny preset, a small real manifest: the c10d rendezvous on the
    batch host works, and a second run of the script finds the checkpoint and continues from it."""
    manifest = write_small_build(tmp_path / "build")
    ckpt = tmp_path / "ckpt"
    env = {
        "SLURM_JOB_ID": "4242",
        "SLURM_NNODES": "1",
        "SLURMD_NODENAME": "127.0.0.1",
        "GPUS_PER_NODE": "2",
        "PRESET": "tiny",
        "RDZV_PORT": str(free_port()),
    }
    small = [
        "--batch-tokens",
        "256",
        "--micro-batch",
        "2",
        "--save-every",
        "2",
        "--log-every",
        "1",
        "--eval-every",
        "1000",
    ]

    first = run_training_line(env, ckpt, manifest, "--steps", "2", *small)
    assert first.returncode == 0, first.stderr[-3000:]
    assert (ckpt / "step-000002" / "meta.json").is_file()
    second = run_training_line({**env, "RDZV_PORT": str(free_port())}, ckpt, manifest, "--steps", "4", *small)
    assert second.returncode == 0, second.stderr[-3000:]
    steps = [
        json.loads(line)["step"]
        for line in (ckpt / "metrics.jsonl").read_text().splitlines()
        if json.loads(line)["kind"] == "train"
    ]
    assert steps == [1, 2, 3, 4]  # 3 and 4 by the resumed run, nothing done twice
