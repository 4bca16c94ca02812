"""trainer/launch.py: the rendezvous store of a one-machine run listens on 127.0.0.1 only, the ranks are pointed
at it and at the loopback interface, and the supervision of real processes: a failed rank stops the others and
gives its exit status, signals reach every rank, and a rank that ignores the stop is killed after the grace.
(`tokenmill train` end to end: tests/trainer/test_train.py, tests/reliability/.)"""
from __future__ import annotations

import os
import signal
import subprocess
import sys

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
    process = subprocess.Popen([sys.executable, "-c", WAIT_FOR_STOP.format(on_term=on_term)], stdout=subprocess.PIPE, text=True)
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
    assert {k: env[k] for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")} == {
        "RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "4", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29511",
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
    assert capsys.readouterr().err.startswith("tokenmill train: ranks still running 0.5 s after the stop are killed (SIGKILL); TORCH_ELASTIC_SHUTDOWN_TIMEOUT")
