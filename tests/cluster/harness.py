"""A real object store and a real multi-node Ray cluster on this machine, for the cluster tests.

- `S3Server`: moto's S3 API server (`ThreadedMotoServer`) on 127.0.0.1, a random free port; clients reach it
  through `AWS_ENDPOINT_URL` with dummy credentials, exactly as they would reach S3.
- `FaultProxy`: a small HTTP proxy of our own in front of it (threads, 127.0.0.1) that answers a fraction of
  requests `503 SlowDown` with S3's XML error body and resets some connections in the middle of a response
  body; it counts what it did, and the requests by method (with no faults it is a request counter).
- `RayCluster`: `ray start --head` plus worker nodes (`ray start --address ...`), 1 CPU each, each with its own
  short `--temp-dir`, every server bound to 127.0.0.1. Every process a node starts carries the node's marker
  in its environment, so a node (or the whole cluster) is stopped by PID: never `ray stop`, which would take
  down every other Ray on the machine.
"""
from __future__ import annotations

import contextlib
import http.client
import json
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import fsspec
import yaml

from manifests.manifest import parse, to_dict
from manifests.outputs import BUILD_LOG, MANIFEST
from tests.reliability.faults import ROOT, SAMPLE_RECIPE, Run, stable, tokenmill

REGION = "us-east-1"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": REGION}
RAY_NODE = [sys.executable, str(Path(__file__).with_name("ray_node.py"))]  # `ray start`, kept on 127.0.0.1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------------------------ object store


class S3Server:
    """moto's S3 server on 127.0.0.1 in this process (threads); `fs` talks to it directly."""

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._server.start()
        self.port = self._server.get_host_and_port()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.fs = fsspec.filesystem("s3", key="testing", secret="testing", skip_instance_cache=True,
                                    client_kwargs={"endpoint_url": self.endpoint})

    def env(self, endpoint: str | None = None) -> dict[str, str]:
        """What a process needs to use this server (or a proxy in front of it) as S3."""
        return {**CREDENTIALS, "AWS_ENDPOINT_URL": endpoint or self.endpoint}

    def upload(self, local: Path, url: str) -> None:
        """Every file under `local` to the folder `url` (s3://bucket/prefix), the bucket created first."""
        bucket = url.removeprefix("s3://").split("/", 1)[0]
        if not self.fs.exists(bucket):
            self.fs.mkdir(bucket)
        for path in sorted(p for p in local.rglob("*") if p.is_file()):
            self.fs.put_file(str(path), f"{url.removeprefix('s3://')}/{path.relative_to(local)}")

    def stop(self) -> None:
        self._server.stop()


# ------------------------------------------------------------------------------------------------ flaky store

SLOWDOWN = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code><Message>Please reduce your request '
            b"rate.</Message><RequestId>TOKENMILLFAULT</RequestId><HostId>tokenmill-fault-proxy</HostId></Error>")
_HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "expect", "te", "trailer", "upgrade", "content-length"}


class FaultProxy:
    """An HTTP/1.1 proxy on 127.0.0.1 in front of `upstream_port`. Of the requests it relays, a fraction
    `slowdown` is answered 503 SlowDown without reaching the server, and a fraction `reset` of the GETs with a
    body get half their body and then a TCP reset. Both are 0 until a test sets them; `injected` counts faults."""

    def __init__(self, upstream_port: int, seed: int = 0) -> None:
        self.upstream_port = upstream_port
        self.slowdown = 0.0
        self.reset = 0.0
        self.injected: Counter[str] = Counter()
        self.requests = 0
        self.by_method: Counter[str] = Counter()  # requests relayed or answered, by HTTP method
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        handler = type("Handler", (_ProxyHandler,), {"proxy": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="fault-proxy", daemon=True)
        self._thread.start()

    def faults(self, slowdown: float = 0.0, reset: float = 0.0) -> None:
        with self._lock:
            self.slowdown, self.reset = slowdown, reset
            self.injected.clear()
            self.by_method.clear()
            self.requests = 0

    def draw(self, method: str) -> str | None:
        with self._lock:
            self.requests += 1
            self.by_method[method] += 1
            roll = self._random.random()
            if roll < self.slowdown:
                fault = "slowdown"
            elif method == "GET" and roll < self.slowdown + self.reset:
                fault = "reset"
            else:
                return None
            self.injected[fault] += 1
            return fault

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    proxy: FaultProxy

    def log_message(self, format, *args) -> None:  # quiet: the tests read the counts instead
        pass

    def do_GET(self) -> None:
        self._relay()

    do_PUT = do_POST = do_HEAD = do_DELETE = do_GET

    def _request_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                        pass
                    return bytes(body)
                body += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _relay(self) -> None:
        body = self._request_body()
        fault = self.proxy.draw(self.command)
        if fault == "slowdown":
            self.send_response(503, "Slow Down")
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(SLOWDOWN)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(SLOWDOWN)
            return
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
        upstream = http.client.HTTPConnection("127.0.0.1", self.proxy.upstream_port, timeout=120)
        try:
            upstream.request(self.command, self.path, body=body if body or self.command in ("PUT", "POST") else None, headers=headers)
            response = upstream.getresponse()
            data = response.read()
        finally:
            upstream.close()
        self.send_response(response.status, response.reason)
        for name, value in response.getheaders():
            if name.lower() not in _HOP_BY_HOP and name.lower() not in ("server", "date"):
                self.send_header(name, value)
        length = response.getheader("Content-Length") if self.command == "HEAD" else str(len(data))
        self.send_header("Content-Length", length or "0")
        self.end_headers()
        if self.command == "HEAD":
            return
        if fault == "reset" and len(data) > 1:
            self.wfile.write(data[: len(data) // 2])
            # SO_LINGER 0: close() sends a TCP reset, not an orderly end; the client sees its body cut short
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            self.connection.close()
            return
        if fault == "reset":
            with self.proxy._lock:  # nothing to cut: not a fault after all
                self.proxy.injected["reset"] -= 1
        self.wfile.write(data)


# ------------------------------------------------------------------------------------------------ ray cluster


def _environ(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:  # gone meanwhile, or not ours to read
        return b""


def _title(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
    except OSError:
        return ""


class RayCluster:
    """A head and `workers` worker nodes of 1 CPU each, on 127.0.0.1, in temp dirs under a short /tmp folder
    (Ray's unix sockets live there and AF_UNIX paths must stay under 108 bytes). `env` goes to every node and
    so to every task's worker process."""

    def __init__(self, env: dict[str, str], workers: int = 2) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="tmr-", dir="/tmp"))
        self.marker = uuid.uuid4().hex
        base = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "AWS_"))}
        # token authentication, the token of this cluster alone (as infra/local/start-head.sh does)
        self.env = {**base, **env, "TOKENMILL_TEST_CLUSTER": self.marker, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": uuid.uuid4().hex,
                    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # every server on 127.0.0.1 (see ray_node.py)
                    # a killed node is declared dead after ~3 s instead of ~30 s
                    "RAY_health_check_period_ms": "1000", "RAY_health_check_timeout_ms": "1000", "RAY_health_check_failure_threshold": "3"}
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.nodes: dict[str, subprocess.Popen] = {}
        self._logs: list = []
        self.workers = workers

    def start(self, timeout: float = 120) -> None:
        self._start("head", ["--head", "--port", str(self.port), "--include-dashboard", "false",
                             "--ray-client-server-port", str(free_port())])
        self._wait_for(lambda: self._listening(self.port), "the head's GCS port", timeout)
        for n in range(1, self.workers + 1):
            self._start(f"w{n}", ["--address", self.address])
        self._wait_for(lambda: self.registered_nodes() == self.workers + 1, f"{self.workers + 1} nodes registered", timeout)

    def _start(self, name: str, args: list[str]) -> None:
        temp = self.root / name
        temp.mkdir()
        command = [*RAY_NODE, "start", *args, "--node-ip-address", "127.0.0.1", "--num-cpus", "1", "--temp-dir", str(temp),
                   "--object-store-memory", str(100 * 2**20), "--disable-usage-stats", "--block",
                   "--dashboard-agent-listen-port", str(free_port()), "--dashboard-agent-grpc-port", str(free_port()),
                   "--runtime-env-agent-port", str(free_port()), "--metrics-export-port", str(free_port())]
        log = open(self.root / f"{name}.log", "w")
        self._logs.append(log)
        self.nodes[name] = subprocess.Popen(command, cwd=ROOT, env={**self.env, "TOKENMILL_TEST_NODE": name},
                                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

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
                if cluster in environ and mine in environ and title in _title(int(proc.name)):
                    found.append(int(proc.name))
        return found

    def task_titles(self) -> dict[str, set[str]]:
        """Per node, the Ray task names its worker processes run now (`process/...`, `shard/...`)."""
        return {node: {t.removeprefix("ray::") for pid in self.pids(node, "ray::") if (t := _title(pid)) != "ray::IDLE"} for node in self.nodes}

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

BUCKET = "tokenmill"
CORPUS = f"s3://{BUCKET}/sample"


@dataclass(frozen=True, slots=True)
class ObjectStore:
    server: S3Server
    proxy: FaultProxy

    def env(self) -> dict[str, str]:
        """Environment of every build process and cluster node: S3 is the proxy, the project is this checkout."""
        return {**self.server.env(self.proxy.endpoint), "PYTHONPATH": str(ROOT)}


def s3_recipe(folder: Path) -> Path:
    """The shipped sample recipe with both sources' roots in the bucket (5 train shards, as in the fault tests)."""
    data = {
        "extends": str(SAMPLE_RECIPE),
        "sources": [{"name": "slimpajama", "root": f"{CORPUS}/SlimPajama-627B"}, {"name": "starcoderdata", "root": f"{CORPUS}/starcoderdata"}],
        "mix": {"shard_tokens": 60_000},
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def build_env(store: ObjectStore, *extra: dict[str, str]) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "AWS_"))}
    return {**base, **store.env(), **{k: v for e in extra for k, v in e.items()}}


def start_cluster_build(recipe: Path, out: str, cluster: RayCluster, store: ObjectStore, log: Path) -> Run:
    """`tokenmill build RECIPE --out OUT --address <cluster>` as a process of its own (a driver off the cluster)."""
    auth = {k: cluster.env[k] for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")}
    return Run.start([*tokenmill("build", str(recipe), "--out", out, "--address", cluster.address, "--no-report")], log, env=build_env(store, auth))


# ------------------------------------------------------------------------------------------------ outputs


def shard_bytes(fs: fsspec.AbstractFileSystem, out: str) -> dict[str, bytes]:
    """Every shard file that out/manifest.json lists, by its path there (any fsspec filesystem)."""
    manifest = parse(fs.cat_file(f"{out}/{MANIFEST}"), f"{out}/{MANIFEST}")
    listed = [path for split in manifest.splits.values() for s in split.shards for path in (s.bin, s.idx)]
    return {path: fs.cat_file(f"{out}/{path}") for path in listed}


def stable_manifest(fs: fsspec.AbstractFileSystem, out: str) -> dict:
    """The manifest without what differs between runs (see tests.reliability.faults.stable_manifest)."""
    return stable(to_dict(parse(fs.cat_file(f"{out}/{MANIFEST}"), f"{out}/{MANIFEST}")))


def events(fs: fsspec.AbstractFileSystem, out: str) -> list[dict]:
    return [json.loads(line) for line in fs.cat_file(f"{out}/{BUILD_LOG}").decode().splitlines()]
