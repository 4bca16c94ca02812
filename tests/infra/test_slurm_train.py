"""infra/slurm/train.sbatch: syntax, SLURM directives, and the commands it runs (--dry-run) — staging a
manifest from object storage, torchrun across the allocation's nodes, resuming from a checkpoint."""
from __future__ import annotations

import os
import shlex
import subprocess

from tests.infra.infra_checks import ROOT, cli_options, long_options

SCRIPT = "infra/slurm/train.sbatch"
IN_SLURM = {"SLURM_JOB_ID": "4242", "SLURM_NNODES": "4", "SLURMD_NODENAME": "gpu-a01", "SLURM_GPUS_ON_NODE": "8", "TMPDIR": "/local/nvme"}


def dry_run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM", "PRESET", "STAGE_DIR", "GPUS_PER_NODE", "RDZV_PORT"))}
    return subprocess.run(["bash", SCRIPT, "--dry-run", *args], cwd=ROOT, env={**clean, **(env or {})}, capture_output=True, text=True, timeout=60)


def test_script_parses():
    assert subprocess.run(["bash", "-n", SCRIPT], cwd=ROOT).returncode == 0


def test_directives_come_before_the_first_command():
    lines = (ROOT / SCRIPT).read_text().splitlines()
    first_command = next(i for i, line in enumerate(lines) if line.strip() and not line.startswith("#"))
    directives = [line for line in lines[:first_command] if line.startswith("#SBATCH")]
    assert not [line for line in lines[first_command:] if line.startswith("#SBATCH")]  # sbatch would ignore them
    options = dict(line.split()[1].lstrip("-").split("=", 1) if "=" in line else (line.split()[1].lstrip("-"), "") for line in directives)
    assert options["ntasks-per-node"] == "1"  # one torchrun per node, which starts one process per GPU
    assert {"nodes", "gpus-per-node", "requeue", "signal"} <= set(options)


def test_a_manifest_url_is_staged_on_every_node_then_trained_from():
    done = dry_run("s3://bucket/tl/manifest.json", "ckpt/tl", "--steps", "100", env=IN_SLURM)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "srun --nodes 4 --ntasks-per-node 1 --kill-on-bad-exit=1 tokenmill stage-in s3://bucket/tl/manifest.json /local/nvme/tokenmill-4242",
        "srun --nodes 4 --ntasks-per-node 1 --kill-on-bad-exit=1 torchrun --nnodes 4 --nproc-per-node 8 --rdzv-backend c10d "
        "--rdzv-endpoint gpu-a01:29500 --rdzv-id 4242 -m trainer.train --manifest /local/nvme/tokenmill-4242/manifest.json "
        "--preset tinyllama-1.1b --out ckpt/tl --steps 100",
    ]


def test_a_shared_path_is_used_as_it_is_and_a_checkpoint_is_resumed(tmp_path):
    ckpt = tmp_path / "ckpt dir"
    fresh = dry_run("/shared/runs/tl/manifest.json", str(ckpt), env={**IN_SLURM, "PRESET": "tiny", "GPUS_PER_NODE": "4"})
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
    outside = subprocess.run(["bash", SCRIPT, "runs/tl/manifest.json", "ckpt/tl"], cwd=ROOT, capture_output=True, text=True,
                             env={k: v for k, v in os.environ.items() if not k.startswith("SLURM")}, timeout=60)
    assert outside.returncode == 2 and "not inside a SLURM job" in outside.stderr
    missing = dry_run("runs/tl/manifest.json")
    assert missing.returncode == 2 and "usage: sbatch" in missing.stderr


def test_the_commands_pass_only_options_the_programs_know(trainer_options):
    stage, train = (shlex.split(line) for line in dry_run("s3://bucket/tl/manifest.json", "ckpt/tl", env=IN_SLURM).stdout.splitlines())
    assert long_options(stage[stage.index("stage-in") :]) <= cli_options("pipeline.cli", "stage-in")
    assert long_options(train[train.index("trainer.train") :]) <= trainer_options
