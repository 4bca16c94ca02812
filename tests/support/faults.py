"""Fault injection for the reliability tests: run `tokenmill build` and `tokenmill train` as real processes,
find their processes through /proc (Ray names each worker after the task it runs: `ray::dedupe/partition-00002`),
kill them, list the TCP ports they listen on, and compare what builds wrote.

Only processes these helpers started are ever signalled: a run's own process tree, found from its pid."""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from manifests.manifest import load, to_dict
from manifests.outputs import BUILD_LOG
from pipeline.work.store import DONE

ROOT = Path(__file__).resolve().parents[2]
_LISTEN = "0A"  # TCP state LISTEN in /proc/net/tcp


def tokenmill(*args: str) -> list[str]:
    return [sys.executable, "-m", "pipeline.cli", *args]


# ------------------------------------------------------------------------------------------------ processes


def children(pid: int) -> list[int]:
    """Direct children of `pid` (a child started by any of its threads is listed under that thread)."""
    found = []
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    for tid in threads:
        try:
            found += [int(c) for c in Path(f"/proc/{pid}/task/{tid}/children").read_text().split()]
        except OSError:
            pass
    return found


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants that are alive now."""
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        if alive(current):
            tree.append(current)
            todo += children(current)
    return tree


def title(pid: int) -> str:
    """argv[0], where Ray puts a worker's title (`ray::<task name>` while it runs a task, `ray::IDLE` between)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
    except OSError:
        return ""


def _stat(pid: int) -> list[str]:
    """/proc/PID/stat after the command name: [state, ppid, pgrp, ...]; [] when the process is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


def alive(pid: int) -> bool:
    """Running, not a zombie waiting to be reaped."""
    stat = _stat(pid)
    return bool(stat) and stat[0] != "Z"


def start_time(pid: int) -> int:
    """Clock ticks after boot at which `pid` started: with the pid, it names one process (pids are reused)."""
    stat = _stat(pid)
    return int(stat[19]) if stat else -1


def kill_all(processes: dict[int, int]) -> None:
    """SIGKILL each pid of {pid: start time} that is still that same process."""
    for pid, started in processes.items():
        if alive(pid) and start_time(pid) == started:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return inodes
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def _address(hex_address: str) -> str:
    """/proc/net/tcp{,6} addresses: 32-bit words in host (little-endian) order."""
    raw = bytes.fromhex(hex_address)
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6, words)


def listening_sockets(pids: list[int]) -> set[tuple[str, int, str]]:
    """(address, port, process title) of every TCP socket in LISTEN state held by `pids`."""
    owner = {inode: pid for pid in pids for inode in _socket_inodes(pid)}
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == _LISTEN and inode in owner:
                host, port = local.split(":")
                found.add((_address(host), int(port, 16), title(owner[inode])))
    return found


def is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or bool(mapped and mapped.is_loopback)


# ------------------------------------------------------------------------------------------------ runs


@dataclass(slots=True)
class Run:
    """A command started in a session of its own, its stderr in a file, and every pid ever seen in its tree (so
    that stragglers can be killed at the end, and only they)."""

    process: subprocess.Popen
    log: Path
    seen: dict[int, int] = field(default_factory=dict)  # pid -> start time

    @classmethod
    def start(cls, command: list[str], log: Path, env: dict | None = None) -> "Run":
        with open(log, "w") as stderr:
            process = subprocess.Popen(
                command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=stderr, env=env, start_new_session=True
            )
        return cls(process, log)

    @property
    def pid(self) -> int:
        return self.process.pid

    def running(self) -> bool:
        return self.process.poll() is None

    def tree(self) -> list[int]:
        pids = process_tree(self.pid)
        self.seen.update((pid, start_time(pid)) for pid in pids if pid not in self.seen)
        return pids

    def wait(self, timeout: float = 300) -> int:
        try:
            return self.process.wait(timeout=timeout)
        finally:
            self.stop()

    def stop(self) -> None:
        """Kill whatever is left of the run: the command, then anything it started that is still alive."""
        if self.running():
            self.tree()
            self.process.kill()
            self.process.wait()
        kill_all(self.seen)

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")

    def kill_first(self, prefix: str | tuple[str, ...], timeout: float = 120) -> tuple[int, str]:
        """SIGKILL the first process of this run whose title starts with `prefix` (or one of several), the moment
        it appears; returns (pid, title). Polls titles every ~0.5 ms: a dedupe task of the sample lives for a few
        milliseconds."""
        deadline = time.monotonic() + timeout
        pids, refreshed = [], 0.0
        while self.running() and time.monotonic() < deadline:
            if time.monotonic() - refreshed > 0.05:  # walking the tree is slow; titles change faster than the tree
                pids, refreshed = self.tree(), time.monotonic()
            for pid in pids:
                name = title(pid)
                if name.startswith(prefix):
                    os.kill(pid, signal.SIGKILL)
                    return pid, name
            time.sleep(0.0005)
        raise AssertionError(
            f"no process titled {prefix}* appeared before the run ended; stderr:\n{self.stderr()[-3000:]}"
        )


def start_build(recipe: Path, out: Path, *args: str) -> Run:
    out.parent.mkdir(parents=True, exist_ok=True)
    return Run.start(
        tokenmill("build", str(recipe), "--out", str(out), "--no-report", *args), out.parent / f"{out.name}.stderr"
    )


def wait_for(condition, what: str, run: Run, timeout: float = 120, every: float = 0.01) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if not run.running() or time.monotonic() > deadline:
            raise AssertionError(
                f"{what} did not happen (run ended or {timeout}s passed); stderr:\n{run.stderr()[-3000:]}"
            )
        time.sleep(every)


# ------------------------------------------------------------------------------------------------ outputs


def shard_bytes(out: Path) -> dict[str, bytes]:
    """Every shard file that out/manifest.json lists, by its path there."""
    listed = [path for split in load(out).splits.values() for s in split.shards for path in (s.bin, s.idx)]
    return {path: (out / path).read_bytes() for path in listed}


# what legitimately differs between two runs of one build: when, how fast, how much an earlier run had done, and
# how often the object store had to be asked twice, and the timings of the earlier run that made what it re-used
RUN_DEPENDENT = (
    "seconds",
    "task_seconds",
    "gap_seconds",
    "done_lookup_seconds",
    "skipped",
    "retries",
    "cpu_seconds",
    "peak_rss_mib",
    "largest_task",
    "made_by",
)


def stable_manifest(out: Path) -> dict:
    """The manifest without what legitimately differs between runs: the creation time, the stage timings and
    resume counts (tasks, documents and bytes per stage stay), and where the work dir is and how much of it was
    re-used (`provenance.work`, `provenance.reused`)."""
    return stable(to_dict(load(out)))


def stable(manifest: dict) -> dict:
    """`manifest` without what legitimately differs between runs (see `stable_manifest`)."""
    data = {k: v for k, v in manifest.items() if k != "created_at"}
    data["stages"] = {
        name: {k: v for k, v in stage.items() if k not in RUN_DEPENDENT} for name, stage in data["stages"].items()
    }
    if "provenance" in data:
        data["provenance"] = {k: v for k, v in data["provenance"].items() if k not in ("work", "reused")}
    return data


def done_tasks(out: Path) -> set[str]:
    """Task folders (`process/<key>`, `dedupe/<key>/partition-00001`, ...) with a done record."""
    return {str(p.parent.relative_to(out / "work")) for p in (out / "work").glob(f"**/{DONE}")}


def tasks_run(out: Path, since_line: int = 0) -> list[str]:
    """Tasks that ran (not skipped) according to build.log.jsonl, from line `since_line` on."""
    lines = (out / BUILD_LOG).read_text().splitlines()[since_line:]
    return [event["task"] for event in map(json.loads, lines) if event["event"] == "task_done"]


# ------------------------------------------------------------------------------------------------ training

TRAIN_STEPS = 10
# 2 ranks x micro-batch 2 x 64 tokens = one 256-token step; a checkpoint every 3 steps and at the end
TRAIN_ARGS = [
    "--preset",
    "tiny",
    "--steps",
    str(TRAIN_STEPS),
    "--batch-tokens",
    "256",
    "--micro-batch",
    "2",
    "--lr",
    "1e-2",
    "--min-lr",
    "1e-3",
    "--warmup-steps",
    "2",
    "--log-every",
    "1",
    "--save-every",
    "3",
    "--keep-last",
    "3",
]


def train_command(manifest: Path, out: Path, *extra: str, nproc: int = 2) -> list[str]:
    return tokenmill(
        "train", "--nproc", str(nproc), "--manifest", str(manifest), "--out", str(out), *TRAIN_ARGS, *extra
    )


def losses(out: Path) -> dict[int, float]:
    """Training loss by step from metrics.jsonl; a step logged again after a resume keeps its last value."""
    path = out / "metrics.jsonl"
    records = map(json.loads, path.read_text().splitlines()) if path.exists() else []
    return {r["step"]: r["loss"] for r in records if r["kind"] == "train"}


def rank_process(run: Run, rank: int) -> int:
    """The pid of the trainer process of `rank` (torchrun puts RANK in each worker's environment)."""
    for pid in run.tree():
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"trainer.train" in Path(f"/proc/{pid}/cmdline").read_bytes() and f"RANK={rank}".encode() in environ:
            return pid
    raise AssertionError(f"no trainer process of rank {rank} in the run's process tree")


# ------------------------------------------------------------------------------------------------ checkpoints


class Payload:
    """A pickle that names code: unpickling it creates `marker`, proof that a loader ran code named by a file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")
