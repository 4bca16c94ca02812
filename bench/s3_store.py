"""A real S3 API on this machine, for the cluster tests and the request-counting benchmark (bench/s3_requests.py).

- `S3Server`: moto's S3 API server (`ThreadedMotoServer`) on 127.0.0.1, a random free port; clients reach it
  through `AWS_ENDPOINT_URL` with dummy credentials, exactly as they would reach S3.
- `FaultProxy`: a small HTTP proxy of our own in front of it (threads, 127.0.0.1) that answers a fraction of
  requests `503 SlowDown` with S3's XML error body and resets some connections in the middle of a response
  body; it counts what it did, and the requests by method (with no faults it is a request counter).
- `CORPUS`: where the sample corpus sits in the bucket (`pipeline.sample_corpus.sample_recipe(CORPUS, folder)`
  is the shipped sample recipe reading it from there).
- `free_port`: a TCP port free on 127.0.0.1 now (the tests' Ray heads and nodes take theirs from here too).
"""

from __future__ import annotations

import http.client
import random
import socket
import struct
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import fsspec

REGION = "us-east-1"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": REGION}
BUCKET = "tokenmill"
CORPUS = f"s3://{BUCKET}/sample"


def free_port() -> int:
    """A TCP port that nothing listens on at 127.0.0.1 now (the kernel's pick; free until someone binds it)."""
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
        self.fs = fsspec.filesystem(
            "s3",
            key="testing",
            secret="testing",
            skip_instance_cache=True,
            client_kwargs={"endpoint_url": self.endpoint},
        )

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

SLOWDOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code><Message>Please reduce your request '
    b"rate.</Message><RequestId>TOKENMILLFAULT</RequestId><HostId>tokenmill-fault-proxy</HostId></Error>"
)
_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "expect",
    "te",
    "trailer",
    "upgrade",
    "content-length",
}


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
            upstream.request(
                self.command, self.path, body=body if body or self.command in ("PUT", "POST") else None, headers=headers
            )
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
