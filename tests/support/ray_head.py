"""A Ray head of our own, started with infra/local/start-head.sh on 127.0.0.1 with free ports, its own short temp
dir and its own authentication token, and stopped by PID (never `ray stop`: other Ray instances on the machine
are not ours)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from bench.s3_store import free_port

PROJECT_ROOT = Path(__file__).resolve().parents[2]


class Head:
    """A Ray head of our own, and the `tokenmill` CLI pointed at it."""

    def __init__(self, root: Path, agent_port: int | None = None):
        self.root = root
        self.marker = uuid.uuid4().hex  # in the environment of every process the head starts
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        self.env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=uuid.uuid4().hex, TOKENMILL_TEST_HEAD=self.marker)
        self.dashboard_port = free_port()
        self.address = f"http://127.0.0.1:{self.dashboard_port}"
        command = [
            "bash",
            str(PROJECT_ROOT / "infra/local/start-head.sh"),
            "--port",
            str(free_port()),
            "--dashboard-port",
            str(self.dashboard_port),
            "--num-cpus",
            "2",
            "--temp-dir",
            str(root / "ray"),
            "--block",
            "--",
            "--dashboard-agent-listen-port",
            str(agent_port or free_port()),
            "--ray-client-server-port",
            str(free_port()),
        ]
        self.log = open(root / "head.log", "w")
        self.process = subprocess.Popen(
            command, cwd=PROJECT_ROOT, env=self.env, stdout=self.log, stderr=subprocess.STDOUT
        )

    def wait_until_up(self, timeout_s: float = 180) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"the head exited:\n{(self.root / 'head.log').read_text()[-3000:]}"
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.dashboard_port)) == 0:
                    return
            time.sleep(0.5)
        raise AssertionError(f"no dashboard on {self.address} after {timeout_s}s")

    def tokenmill(self, *args: str, timeout_s: float = 600) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "pipeline.cli", *args],
            cwd=PROJECT_ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )

    def jobs(self, *args: str) -> subprocess.CompletedProcess:
        return self.tokenmill("jobs", *args, "--address", self.address)

    def stop(self) -> None:
        """SIGTERM to `ray start --block`, which takes its processes down; whatever of ours is still there
        10 s later (found by the marker in its environment) gets SIGKILL, by PID."""
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()
        if self.all_gone_within(10):
            return
        for pid in self.our_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.all_gone_within(10)

    def all_gone_within(self, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while self.our_pids():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.2)
        return True

    def our_pids(self) -> list[int]:
        """Our processes: every one the head started carries the marker in its environment."""
        pids = []
        for proc in Path("/proc").iterdir():
            try:
                if (
                    proc.name.isdigit()
                    and f"TOKENMILL_TEST_HEAD={self.marker}".encode() in (proc / "environ").read_bytes()
                ):
                    pids.append(int(proc.name))
            except OSError:  # gone meanwhile, or not ours to read
                continue
        return pids


@contextlib.contextmanager
def running_head() -> Iterator[Head]:
    """A head up and answering, in a short temp dir of its own (Ray's unix socket paths live under it); at the
    end stopped, checked to have left no process of ours behind, and its folder removed."""
    head = Head(Path(tempfile.mkdtemp(prefix="tm", dir="/tmp")))
    try:
        head.wait_until_up()
        yield head
    finally:
        head.stop()
        shutil.rmtree(head.root, ignore_errors=True)
    assert head.our_pids() == [], "processes of the head outlived it"  # `ray start --block` took them down
