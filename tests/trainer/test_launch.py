"""trainer/launch.py: the rendezvous store of a one-machine run listens on 127.0.0.1 only, the ranks are pointed
at it and at the loopback interface, and the supervision of real processes: a failed rank stops the others and
gives its exit status, signals reach every rank, and a rank that ignores the stop is killed after the grace.
(`tokenmill train` end to end: tests/trainer/test_train.py, tests/reliability/.)"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist

from tests.support.faults import listening_sockets
from trainer import launch

WAIT_FOR_STOP = """
import signal, sys, time
signal.signal(signal.SIGTERM, {on_term})
print("ready", flush=True)
time.sleep(120)
"""


def rank(on_term: str = "lambda *_: sys.exit(0)") -> subprocess.Popen:
    """A process that stays up until SIGTERM (and then does `on_term`); returned once its handler is set."""
    process = subprocess.Popen(
        [sys.executable, "-c", WAIT_FOR_STOP.format(on_term=on_term)], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout.readline() == "ready\n"
    return process


def test_the_store_listens_on_loopback_only_and_serves_the_ranks():
    store, port = launch.loopback_store()
    assert {(address, p) for address, p, _ in listening_sockets([os.getpid()]) if p == port} == {("127.0.0.1", port)}
    client = dist.TCPStore("127.0.0.1", port, is_master=False)
    client.set("rank-1", "joined")
    assert store.get("rank-1") == b"joined"


def test_ranks_are_pointed_at_the_loopback_store_and_a_users_interface_wins():
    user = {"PATH": "/usr/bin", "MASTER_ADDR": "10.0.0.1", "RANK": "7", "NCCL_SOCKET_IFNAME": "ib0"}
    env = launch.rank_environment(1, 4, 29511, user)
    assert {
        k: env[k] for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    } == {
        "RANK": "1",
        "LOCAL_RANK": "1",
        "WORLD_SIZE": "4",
        "LOCAL_WORLD_SIZE": "4",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": "29511",
    }
    assert env["TORCHELASTIC_USE_AGENT_STORE"] == "True"  # every rank a client of the launcher's store, none a server
    assert env["GLOO_SOCKET_IFNAME"] == "lo" and env["NCCL_SOCKET_IFNAME"] == "ib0" and env["PATH"] == "/usr/bin"
    assert env["OMP_NUM_THREADS"] == "1" and "OMP_NUM_THREADS" not in launch.rank_environment(0, 1, 29511, user)


def test_a_failed_rank_stops_the_others_and_gives_its_exit_status():
    waiting = rank()
    failing = subprocess.Popen([sys.executable, "-c", "import sys; sys.exit(3)"])
    assert launch.supervise([waiting, failing], signals=[]) == 3
    assert waiting.returncode == 0  # it got SIGTERM and exited as a rank does after its checkpoint


def test_a_signal_reaches_every_rank():
    ranks = [rank(), rank()]
    assert launch.supervise(ranks, signals=[signal.SIGTERM]) == 0
    assert [r.returncode for r in ranks] == [0, 0]


def test_a_rank_that_ignores_the_stop_is_killed_after_the_grace_and_that_is_said(monkeypatch, capsys):
    monkeypatch.setattr(launch, "SHUTDOWN_TIMEOUT_S", 0.5)
    stubborn = rank(on_term="signal.SIG_IGN")
    assert launch.supervise([stubborn], signals=[signal.SIGTERM]) == 128 + signal.SIGKILL
    assert stubborn.returncode == -signal.SIGKILL
    assert capsys.readouterr().err.startswith(
        "tokenmill train: ranks still running 0.5 s after the stop are killed (SIGKILL); TORCH_ELASTIC_SHUTDOWN_TIMEOUT"
    )


def _imports_after(argv: list[str]) -> subprocess.CompletedProcess:
    """`tokenmill ARGV` in a fresh interpreter; prints whether torch was imported by the time it ended."""
    code = (
        "import sys\nfrom pipeline.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
        "print('torch imported' if 'torch' in sys.modules else 'no torch', file=sys.stderr)"
    )
    return subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120)


def test_train_and_export_help_answer_without_importing_torch():
    """`train --help` and `export --help` took 3-5 s of imports; help needs no torch."""
    import time

    for command in ("train", "export"):
        started = time.perf_counter()
        done = _imports_after([command, "--help"])
        assert done.stderr.strip() == "no torch" and f"usage: tokenmill {command}" in done.stdout
        assert time.perf_counter() - started < 1.5 * 4  # generous: the interpreter's start on 2 busy cores
    # a wrong argument is refused before torch loads too
    assert "no torch" in _imports_after(["train", "--steps", "many"]).stderr


def test_nproc_defaults_to_one_process_per_gpu_or_one(tmp_path):
    from trainer.options import train_parser

    assert train_parser().parse_args(["--manifest", "m.json"]).__dict__.get("nproc") is None
    cfg = type("Cfg", (), {"resume": None})()
    assert launch._default_nproc(cfg) == (torch.cuda.device_count() if torch.cuda.is_available() else 1)


def test_the_console_line_names_the_unit_of_a_cpu_run_and_gives_an_eta():
    from trainer.metrics import console_line

    record = {
        "kind": "train",
        "step": 10,
        "steps": 110,
        "loss": 9.1,
        "lr": 3e-4,
        "grad_norm": 0.7,
        "tokens_per_s_per_gpu": 1069.0,
        "mfu": None,
        "peak_name": "cpu",
        "peak_flops": None,
        "data_wait": 0.01,
        "mem_gib": 0.6,
        "interval_steps": 10,
        "interval_s": 20.0,
    }
    line = console_line(record)
    assert "1,069 tok/s/process" in line and "tok/s/gpu" not in line and line.endswith("ETA 3m20s")
    gpu = console_line({**record, "peak_name": "NVIDIA H100 80GB HBM3", "mfu": 0.4, "peak_flops": 989e12, "step": 110})
    assert "tok/s/gpu" in gpu and "ETA" not in gpu  # the last step: nothing left


def test_train_without_nproc_runs_one_process_on_a_cpu(sample_manifest, tmp_path):
    """Item 10: `tokenmill train` without --nproc printed a usage dump; on a CPU it now runs one process, and its
    console names tokens/s per process and the time left."""
    if torch.cuda.is_available():
        pytest.skip("on a GPU machine the default is one process per GPU")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline.cli",
            "train",
            "--manifest",
            str(sample_manifest),
            "--preset",
            "tiny",
            "--out",
            str(tmp_path / "run"),
            "--steps",
            "3",
            "--batch-tokens",
            "512",
            "--micro-batch",
            "2",
            "--warmup-steps",
            "1",
            "--log-every",
            "1",
            "--save-every",
            "0",
            "--no-compile",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "1 rank (cpu)" in done.stderr and "tok/s/process" in done.stderr and "ETA " in done.stderr
