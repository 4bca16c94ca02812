"""`tokenmill train --nproc N [trainer.train arguments]`: runs `torchrun --standalone --nproc-per-node N -m
trainer.train ...` on this machine and supervises it.

Why supervise rather than exec: torchrun answers SIGTERM by forwarding it to the workers (which save a
checkpoint and exit 0) and then exits 1 itself, whatever the workers did. This launcher forwards SIGTERM and
SIGINT to torchrun and exits 0 when the workers completed a preemption checkpoint during this run. For several
machines, run torchrun yourself with `-m trainer.train` (same arguments but --nproc).
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time

from pipeline.manifest import load as load_manifest
from trainer import checkpoint
from trainer.config import preset
from trainer.train import USER_ERRORS, build_parser, check_data, parse_config

# torchrun's grace period between forwarding SIGTERM and SIGKILL: long enough for a checkpoint of a big model.
SHUTDOWN_TIMEOUT_S = "600"


def _add_nproc(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--nproc", type=int, required=True, help="processes on this machine, one per GPU")
    return parser


def torchrun_command(nproc: int, train_argv: list[str]) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc), "-m", "trainer.train", *train_argv]


def main(argv: list[str]) -> int:
    full = _add_nproc(build_parser())
    full.prog = "tokenmill train"
    full.parse_args(argv)  # --help, and every argument checked before any process starts
    known, train_argv = _add_nproc(argparse.ArgumentParser(add_help=False, allow_abbrev=False)).parse_known_args(argv)
    if known.nproc < 1:
        full.error(f"--nproc {known.nproc}: must be at least 1")
    try:  # the common mistakes, reported once before any process starts (checksums are the ranks' job)
        cfg = parse_config(train_argv)
        cfg.accumulation(known.nproc)
        check_data(cfg, preset(cfg.preset), load_manifest(cfg.manifest), checksums=False)
    except USER_ERRORS as e:
        print(f"tokenmill train: {e}", file=sys.stderr)
        return 2
    started = time.time()
    env = {**os.environ, "TORCH_ELASTIC_SHUTDOWN_TIMEOUT": os.environ.get("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", SHUTDOWN_TIMEOUT_S)}
    forwarded: list[int] = []
    children: list[subprocess.Popen] = []

    def forward(signum, frame) -> None:
        forwarded.append(signum)
        for child in children:
            child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    # A session of its own: a terminal's Ctrl-C or a group kill reaches torchrun once, through us.
    children.append(subprocess.Popen(torchrun_command(known.nproc, train_argv), env=env, start_new_session=True))
    if forwarded:  # a signal that came while torchrun was starting
        children[0].send_signal(forwarded[-1])
    code = children[0].wait()
    if forwarded and _preempted_since(cfg, started):
        return 0
    return code


def _preempted_since(cfg, started: float) -> bool:
    found = checkpoint.all_checkpoints(cfg.out)
    if not found:
        return False
    meta = checkpoint.read_meta(found[-1])
    return meta["reason"] == "preempted" and meta["saved_at"] >= started
