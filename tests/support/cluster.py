"""A real object store and a real multi-node Ray cluster on this machine, for the cluster tests.

- `ObjectStore`: moto's S3 API server and the fault-injecting proxy in front of it (`bench.s3_store`, which the
  request-counting benchmark uses too).
- `RayCluster`: `ray start --head` plus worker nodes (`ray start --address ...`), 1 CPU each, each with its own
  short `--temp-dir`, every server bound to 127.0.0.1. Every process a node starts carries the node's marker
  in its environment, so a node (or the whole cluster) is stopped by PID: never `ray stop`, which would take
  down every other Ray on the machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import fsspec

from bench.s3_store import FaultProxy, S3Server, free_port
from manifests.manifest import parse, to_dict
from manifests.outputs import BUILD_LOG, MANIFEST
from tests.support.faults import ROOT, Run, stable, tokenmill
from tests.support.faults import title as process_title

RAY_NODE = [sys.executable, str(Path(__file__).with_name("ray_node.py"))]  # `ray start`, kept on 127.0.0.1


# ------------------------------------------------------------------------------------------------ ray cluster


def _environ(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:  # gone meanwhile, or not ours to read
        return b""


class RayCluster:
    """A head and `workers` worker nodes of 1 CPU each, on 127.0.0.1, in temp dirs under a short /tmp folder
    (Ray's unix sockets live there and AF_UNIX paths must stay under 108 bytes). `env` goes to every node and
    so to every task's worker process."""

    def __init__(self, env: dict[str, str], workers: int = 2) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="tmr-", dir="/tmp"))
        self.marker = uuid.uuid4().hex
        base = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "AWS_"))}
        # token authentication, the token of this cluster alone (as infra/local/start-head.sh does)
        self.env = {
            **base,
            **env,
            "TOKENMILL_TEST_CLUSTER": self.marker,
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": uuid.uuid4().hex,
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # every server on 127.0.0.1 (see ray_node.py)
            # a killed node is declared dead after ~3 s instead of ~30 s
            "RAY_health_check_period_ms": "1000",
            "RAY_health_check_timeout_ms": "1000",
            "RAY_health_check_failure_threshold": "3",
        }
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.nodes: dict[str, subprocess.Popen] = {}
        self._logs: list = []
        self.workers = workers

    def start(self, timeout: float = 120) -> None:
        self._start(
            "head",
            [
                "--head",
                "--port",
                str(self.port),
                "--include-dashboard",
                "false",
                "--ray-client-server-port",
                str(free_port()),
            ],
        )
        self._wait_for(lambda: self._listening(self.port), "the head's GCS port", timeout)
        for n in range(1, self.workers + 1):
            self._start_worker(f"w{n}", n + 1, timeout)

    def _start_worker(self, name: str, nodes: int, timeout: float) -> None:
        """One worker node, registered (`nodes` in all) before the next starts. Ray gives a new node a fixed 30 s
        to appear in the GCS; on a loaded 2-core machine that can pass ("timed out during startup": the node
        exits) while the GCS is busy: such a node is started once more."""
        for attempt in (1, 2):
            self._start(name, ["--address", self.address])
            try:
                self._wait_for(lambda: self.registered_nodes() >= nodes, f"{nodes} nodes registered", timeout)
                return
            except AssertionError:
                if attempt == 2 or "timed out during startup" not in self.log(name):
                    raise
                self.nodes.pop(name).wait()
                for pid in self.pids(name):  # whatever of the failed node's processes is left
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)

    def _start(self, name: str, args: list[str]) -> None:
        temp = self.root / name
        temp.mkdir(exist_ok=True)  # a node started again keeps its folder
        command = [
            *RAY_NODE,
            "start",
            *args,
            "--node-ip-address",
            "127.0.0.1",
            "--num-cpus",
            "1",
            "--temp-dir",
            str(temp),
            "--object-store-memory",
            str(100 * 2**20),
            "--disable-usage-stats",
            "--block",
            "--dashboard-agent-listen-port",
            str(free_port()),
            "--dashboard-agent-grpc-port",
            str(free_port()),
            "--runtime-env-agent-port",
            str(free_port()),
            "--metrics-export-port",
            str(free_port()),
        ]
        log = open(self.root / f"{name}.log", "w")
        self._logs.append(log)
        self.nodes[name] = subprocess.Popen(
            command,
            cwd=ROOT,
            env={**self.env, "TOKENMILL_TEST_NODE": name},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def _wait_for(self, condition, what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            for name, process in self.nodes.items():
                if process.poll() is not None:
                    raise AssertionError(f"ray node {name} exited while waiting for {what}:\n{self.log(name)[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: not after {timeout}s\n{self.log('head')[-3000:]}")
            time.sleep(0.2)

    @staticmethod
    def _listening(port: int) -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    def registered_nodes(self) -> int:
        """Nodes that have registered with the head's GCS (its log says so for each)."""
        logs = list((self.root / "head").glob("session_*/logs/gcs_server.out"))
        return logs[0].read_text(errors="replace").count("Registering new node") if logs else 0

    def log(self, name: str) -> str:
        return (self.root / f"{name}.log").read_text(errors="replace")

    def pids(self, node: str | None = None, title: str = "") -> list[int]:
        """Our processes (of one node, when given), by the markers in their environment; optionally only those
        whose title (argv[0]) contains `title`."""
        cluster = f"TOKENMILL_TEST_CLUSTER={self.marker}\0".encode()
        mine = f"TOKENMILL_TEST_NODE={node}\0".encode() if node else b""
        found = []
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit() and proc.name != str(os.getpid()):
                environ = _environ(int(proc.name)) + b"\0"
                if cluster in environ and mine in environ and title in process_title(int(proc.name)):
                    found.append(int(proc.name))
        return found

    def task_titles(self) -> dict[str, set[str]]:
        """Per node, the Ray task names its worker processes run now (`process/...`, `shard/...`)."""
        return {
            node: {
                t.removeprefix("ray::") for pid in self.pids(node, "ray::") if (t := process_title(pid)) != "ray::IDLE"
            }
            for node in self.nodes
        }

    def kill_node(self, name: str) -> list[int]:
        """SIGKILL every process of node `name` (its `ray start`, raylet, agents and workers), by PID."""
        killed: list[int] = []
        deadline = time.monotonic() + 10
        while (pids := self.pids(name)) and time.monotonic() < deadline:  # again: one may have been starting a worker
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            killed += pids
            time.sleep(0.1)
        self.nodes[name].wait(timeout=30)
        return killed

    def stop(self, grace: float = 5) -> None:
        """SIGTERM to each node's `ray start --block` (it takes its processes down); whatever of ours is left
        `grace` seconds later gets SIGKILL, by PID. Then the temp dirs go."""
        for process in self.nodes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        while self.pids() and time.monotonic() < deadline:
            time.sleep(0.2)
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for process in self.nodes.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=10)
        for log in self._logs:
            log.close()
        shutil.rmtree(self.root, ignore_errors=True)


# ------------------------------------------------------------------------------------------------ builds


@dataclass(frozen=True, slots=True)
class ObjectStore:
    server: S3Server
    proxy: FaultProxy

    def env(self) -> dict[str, str]:
        """Environment of every build process and cluster node: S3 is the proxy, the project is this checkout."""
        return {**self.server.env(self.proxy.endpoint), "PYTHONPATH": str(ROOT)}


def build_env(store: ObjectStore, *extra: dict[str, str]) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "AWS_"))}
    return {**base, **store.env(), **{k: v for e in extra for k, v in e.items()}}


def start_cluster_build(recipe: Path, out: str, cluster: RayCluster, store: ObjectStore, log: Path) -> Run:
    """`tokenmill build RECIPE --out OUT --address <cluster>` as a process of its own (a driver off the cluster)."""
    auth = {k: cluster.env[k] for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")}
    return Run.start(
        [*tokenmill("build", str(recipe), "--out", out, "--address", cluster.address, "--no-report")],
        log,
        env=build_env(store, auth),
    )


# ------------------------------------------------------------------------------------------------ outputs


def shard_bytes(fs: fsspec.AbstractFileSystem, out: str) -> dict[str, bytes]:
    """Every shard file that out/manifest.json lists, by its path there (any fsspec filesystem)."""
    manifest = parse(fs.cat_file(f"{out}/{MANIFEST}"), f"{out}/{MANIFEST}")
    listed = [path for split in manifest.splits.values() for s in split.shards for path in (s.bin, s.idx)]
    return {path: fs.cat_file(f"{out}/{path}") for path in listed}


def stable_manifest(fs: fsspec.AbstractFileSystem, out: str) -> dict:
    """The manifest without what differs between runs (see tests.support.faults.stable_manifest)."""
    return stable(to_dict(parse(fs.cat_file(f"{out}/{MANIFEST}"), f"{out}/{MANIFEST}")))


def events(fs: fsspec.AbstractFileSystem, out: str) -> list[dict]:
    return [json.loads(line) for line in fs.cat_file(f"{out}/{BUILD_LOG}").decode().splitlines()]
