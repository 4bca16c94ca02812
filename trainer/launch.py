"""`tokenmill train --nproc N [trainer.train arguments]`: starts N `python -m trainer.train` processes on this
machine and supervises them as torchrun would, with nothing listening beyond 127.0.0.1.

Why not torchrun: its rendezvous TCPStore listens on every interface whatever address it is given (seen on `::`
with --standalone, with --rdzv-endpoint 127.0.0.1:PORT --local-addr 127.0.0.1, and with --master-addr
127.0.0.1), so a one-machine run would take connections from the network. Here the launcher serves the store
from a socket it bound to 127.0.0.1 and the ranks join it as torchrun's workers join torchrun's
(TORCHELASTIC_USE_AGENT_STORE); gloo and NCCL are told to use the loopback interface.

Supervision: SIGTERM and SIGINT are forwarded to every rank (on SIGTERM they save a checkpoint and exit 0), and
when a rank fails the others get SIGTERM; ranks still running SHUTDOWN_TIMEOUT_S later are killed. The exit
status is 0 when every rank exited 0, or when a forwarded signal ended the run with a preemption checkpoint;
otherwise the first failed rank's. For several machines, run torchrun yourself with `-m trainer.train` (same
arguments but --nproc), as infra/slurm/train.sbatch and infra/k8s/train.yaml do: there the store has to be
reachable from the other machines.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from typing import TYPE_CHECKING

from trainer.options import add_nproc, train_parser

if TYPE_CHECKING:
    import torch.distributed as dist

# Grace between asking ranks to stop and SIGKILL: long enough for a checkpoint of a big model. The variable is
# torchrun's, so a setting made for torchrun keeps its meaning.
SHUTDOWN_TIMEOUT_S = float(os.environ.get("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", "600"))
LOOPBACK_INTERFACE = "lo"  # Linux's name for it
_POLL_S = 0.1


def loopback_store() -> tuple[dist.TCPStore, int]:
    """A TCPStore served from a socket bound to 127.0.0.1 (given a port alone, TCPStore binds every interface),
    and its port."""
    import torch.distributed as dist

    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    # detach: the store owns the socket from here on
    return dist.TCPStore(
        "127.0.0.1", port, is_master=True, wait_for_workers=False, master_listen_fd=listener.detach()
    ), port


def rank_environment(rank: int, nproc: int, port: int, base: dict[str, str]) -> dict[str, str]:
    """What torchrun gives its workers on one machine, pointed at the loopback store. The interface and thread
    settings are defaults: a user's own value wins (OMP_NUM_THREADS=1 is torchrun's default for several ranks,
    so that a run started either way computes the same)."""
    defaults = {
        "GLOO_SOCKET_IFNAME": LOOPBACK_INTERFACE,
        "NCCL_SOCKET_IFNAME": LOOPBACK_INTERFACE,
        "TORCH_NCCL_ASYNC_ERROR_HANDLING": "1",
    }
    if nproc > 1:
        defaults["OMP_NUM_THREADS"] = "1"
    return {
        **defaults,
        **base,
        "RANK": str(rank),
        "LOCAL_RANK": str(rank),
        "GROUP_RANK": "0",
        "WORLD_SIZE": str(nproc),
        "LOCAL_WORLD_SIZE": str(nproc),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
        "TORCHELASTIC_USE_AGENT_STORE": "True",
    }


def rank_command(train_argv: list[str]) -> list[str]:
    return [sys.executable, "-m", "trainer.train", *train_argv]


def main(argv: list[str]) -> int:
    full = train_parser()
    full.parse_args(argv)  # --help, and every argument checked before any process starts (and before torch loads)
    known, train_argv = add_nproc(argparse.ArgumentParser(add_help=False, allow_abbrev=False)).parse_known_args(argv)
    from manifests.manifest import load as load_manifest
    from trainer.config import preset
    from trainer.train import USER_ERRORS, check_data, check_out, check_resume, parse_config

    try:  # the common mistakes, reported once before any process starts (checksums are the ranks' job)
        cfg = parse_config(train_argv)
        nproc = known.nproc if known.nproc is not None else _default_nproc(cfg)
        if nproc < 1:
            full.error(f"--nproc {nproc}: must be at least 1")
        manifest = load_manifest(cfg.manifest)
        if cfg.resume:
            check_resume(cfg, preset(cfg.preset), manifest)
        cfg.accumulation(nproc)
        check_data(cfg, preset(cfg.preset), manifest, checksums=False)
        check_out(cfg)
    except USER_ERRORS as e:
        print(f"tokenmill train: {e}", file=sys.stderr)
        return 2
    started = time.time()
    signals: list[int] = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda signum, frame: signals.append(signum))
    store, port = loopback_store()
    # A session of each rank's own: a terminal's Ctrl-C or a group kill reaches the ranks once, through us.
    ranks = [
        subprocess.Popen(
            rank_command(train_argv), env=rank_environment(rank, nproc, port, dict(os.environ)), start_new_session=True
        )
        for rank in range(nproc)
    ]
    code = supervise(ranks, signals)
    del store  # held until the ranks are gone: they meet in it to set up their process groups
    if signals and _preempted_since(cfg, started):
        return 0
    return code


def _default_nproc(cfg) -> int:
    """--nproc when it was not given: the rank count of the checkpoint --resume names, else one process per GPU
    of this machine, else (no GPU) one."""
    import torch

    from trainer import checkpoint

    if cfg.resume is not None:
        return int(checkpoint.read_meta(checkpoint.resolve(cfg.resume))["world_size"])
    return torch.cuda.device_count() if torch.cuda.is_available() else 1


def supervise(ranks: list[subprocess.Popen], signals: list[int]) -> int:
    """Waits for every rank; forwards each signal appended to `signals`, stops the others when one fails, kills
    what still runs SHUTDOWN_TIMEOUT_S after either. Returns 0 or the first failed rank's exit status."""
    forwarded, deadline, failed = 0, None, None
    while any(rank.poll() is None for rank in ranks):
        if len(signals) > forwarded:
            for signum in signals[forwarded:]:
                _signal_running(ranks, signum)
            forwarded = len(signals)
            deadline = deadline or time.monotonic() + SHUTDOWN_TIMEOUT_S
        if failed is None and (failed := _first_failed(ranks)) is not None:
            others = "; stopping the other ranks" if any(rank.poll() is None for rank in ranks) else ""
            print(
                f"tokenmill train: rank {failed} exited with {_exit_status(ranks[failed].returncode)}{others}",
                file=sys.stderr,
                flush=True,
            )
            _signal_running(ranks, signal.SIGTERM)
            deadline = deadline or time.monotonic() + SHUTDOWN_TIMEOUT_S
        if deadline is not None and time.monotonic() > deadline and any(rank.poll() is None for rank in ranks):
            # said before the kill, so that the exit status 137 that follows does not read as a crash
            print(
                f"tokenmill train: ranks still running {SHUTDOWN_TIMEOUT_S:g} s after the stop are killed (SIGKILL); "
                "TORCH_ELASTIC_SHUTDOWN_TIMEOUT sets how long to wait",
                file=sys.stderr,
                flush=True,
            )
            _signal_running(ranks, signal.SIGKILL)
            deadline = float("inf")
        time.sleep(_POLL_S)
    failed = _first_failed(ranks) if failed is None else failed
    return 0 if failed is None else _exit_status(ranks[failed].returncode)


def _first_failed(ranks: list[subprocess.Popen]) -> int | None:
    return next((i for i, rank in enumerate(ranks) if rank.poll() not in (None, 0)), None)


def _signal_running(ranks: list[subprocess.Popen], signum: int) -> None:
    for rank in ranks:
        if rank.poll() is None:
            rank.send_signal(signum)


def _exit_status(returncode: int) -> int:
    """A shell's convention: a process killed by signal N exits with 128 + N."""
    return 128 - returncode if returncode < 0 else returncode


def _preempted_since(cfg, started: float) -> bool:
    from trainer import checkpoint

    found = checkpoint.all_checkpoints(cfg.out)
    if not found:
        return False
    meta = checkpoint.read_meta(found[-1])
    return meta["reason"] == "preempted" and meta["saved_at"] >= started
