"""The work store: where every task writes, atomic writes with retries, and done records.

Every task writes its outputs into its own folder of the work dir and then, last, a `_DONE.json` record. A
folder is named by the fingerprint of everything its output was made from (`pipeline.build.registry`), so a relaunch
skips
exactly the tasks whose inputs and settings are unchanged, and a changed input set can never reuse an output
made from other inputs. A crash or Ctrl-C loses at most the tasks in flight. Writes go to a temporary name
and are renamed into place (on object stores a single PUT is already atomic), so a reader never sees half a file.

On an object store every request of a `Store` is retried here, and only here: a 503 SlowDown, a 500, a reset
connection or a timeout is retried with bounded exponential backoff and full jitter (`ATTEMPTS` tries, waits of
up to `BACKOFF_CAP_S`), and counted (`take_retries`; `mark_done` writes the count into the task's done record).
The client's own retries (s3fs's and botocore's) are off for these requests, so that every retry is one of
ours and counted; `Store.fs`, for callers that list or remove, keeps them. What fails after its last try
surfaces as an `OSError` naming the operation and the path, which the runner has Ray retry as a task.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import hashlib
import json
import os
import random
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

import fsspec
from fsspec.implementations.local import LocalFileSystem

from pipeline.work import meter

DONE = "_DONE.json"
DONE_READERS = 32  # done records looked up at a time on an object store, where each is a GET of ~15 ms

ATTEMPTS = 8  # tries per request: 7 retries, waits of at most 0.2 + 0.4 + ... + 12.8 s = 25 s in all
BACKOFF_S = 0.2
BACKOFF_CAP_S = 20.0
# what a retry cannot cure: the object is not there (a done record that does not exist yet), no access
_PERMANENT = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError, FileExistsError)
# s3fs and botocore retry on their own (5 x 5 tries, uncounted): off for our stores, so every retry is ours
_NO_BOTOCORE_RETRIES = {"retries": {"total_max_attempts": 1, "mode": "standard"}}  # total: the first try included
_OBJECT_STORES_WITH_OWN_RETRIES = ("s3", "s3a")
# stores without folders: a write needs no makedirs (s3fs's costs a HEAD of the bucket per write)
_FLAT_STORES = ("s3", "s3a", "gs", "gcs", "abfs", "az", "memory")

_retries = 0  # this process's retried store requests since the last take_retries()
T = TypeVar("T")


def take_retries() -> int:
    """The store requests this process retried since the last call (a task's, when called as it starts)."""
    global _retries
    taken, _retries = _retries, 0
    return taken


def retries_so_far() -> int:
    return _retries


@functools.cache
def _transient_errors() -> tuple[type[BaseException], ...]:
    """Errors a retry may cure: the network and the service. s3fs passes some through untranslated (a
    connection reset mid-body arrives as aiohttp's ClientPayloadError, a dropped connection as botocore's)."""
    found: list[type[BaseException]] = [OSError, TimeoutError, asyncio.TimeoutError]
    try:
        from fsspec.exceptions import FSTimeoutError

        found.append(FSTimeoutError)
    except ImportError:
        pass
    try:
        import botocore.exceptions

        found += [botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError]
    except ImportError:
        pass
    try:
        import aiohttp

        found.append(aiohttp.ClientError)
    except ImportError:
        pass
    return tuple(found)


def _without_own_retries(fs: fsspec.AbstractFileSystem) -> fsspec.AbstractFileSystem:
    """The same store with s3fs's and botocore's retries off (other filesystems as they are). Other client
    settings stay: the user's fsspec configuration and the filesystem's own options. s3fs's retry count is a
    class attribute, not an argument, so it is set on the instance, which fsspec caches per set of options
    (ours differ from anyone else's by the botocore retries, so no other user shares it)."""
    protocols = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
    if not set(protocols) & set(_OBJECT_STORES_WITH_OWN_RETRIES):
        return fs
    configured = {
        **fsspec.config.conf.get(protocols[0], {}).get("config_kwargs", {}),
        **fs.storage_options.get("config_kwargs", {}),
    }
    quiet = type(fs)(**{**fs.storage_options, "config_kwargs": {**configured, **_NO_BOTOCORE_RETRIES}})
    if hasattr(quiet, "retries"):
        quiet.retries = 1
    return quiet


@dataclass(slots=True)
class Store:
    """A folder on any fsspec filesystem (local, s3://, gs://, memory://). `fs` is the filesystem as the user
    configured it (for callers that list or remove); the Store's own requests go through `_io`, the same
    store with our retries in place of the client's."""

    fs: fsspec.AbstractFileSystem
    root: str
    _io: fsspec.AbstractFileSystem | None = field(default=None, repr=False, compare=False)

    @classmethod
    def at(cls, url: str) -> "Store":
        fs, root = fsspec.core.url_to_fs(url)
        return cls(fs, root.rstrip("/"))

    def __post_init__(self) -> None:
        if self._io is None:
            self._io = _without_own_retries(self.fs)

    def __reduce__(self):  # a task's copy makes its own `_io` (a client is not shipped)
        return Store, (self.fs, self.root)

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, LocalFileSystem)

    def path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def child(self, *parts: str) -> "Store":
        return Store(self.fs, self.path(*parts), self._io)

    def url(self, *parts: str) -> str:
        return self.fs.unstrip_protocol(self.path(*parts))

    def _retried(self, what: str, rel: str, request: Callable[[], T]) -> T:
        """`request()`, retried on a transient store error; on a local disk, once (a full disk stays full)."""
        if self.is_local:
            return request()
        global _retries
        transient = _transient_errors()
        for attempt in range(1, ATTEMPTS + 1):
            try:
                return request()
            except _PERMANENT:
                raise
            except transient as e:
                if attempt == ATTEMPTS:
                    code = e.errno if isinstance(e, OSError) and e.errno else errno.EIO
                    raise OSError(
                        code, f"{what} failed {ATTEMPTS} times, last: {type(e).__name__}: {e}", self.url(rel)
                    ) from e
                _retries += 1
                time.sleep(random.uniform(0, min(BACKOFF_CAP_S, BACKOFF_S * 2 ** (attempt - 1))))
        raise AssertionError("unreachable")

    def makedirs(self) -> None:
        """Create the folder (on an object store: its bucket, when missing)."""
        self._retried("makedirs", "", lambda: self._io.makedirs(self.root, exist_ok=True))

    def write_bytes(self, rel: str, data: bytes) -> None:
        target = self.path(rel)
        if not self.is_local:
            self._retried("write", rel, lambda: self._pipe(target, data))
            return
        self.fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
        tmp = f"{target}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException as e:
            if os.path.exists(tmp):
                os.remove(tmp)
            if isinstance(e, OSError) and e.filename is None:
                # a failed write() or fsync() (disk full, I/O error) does not say which file: name it
                raise OSError(e.errno, e.strerror or str(e), target) from e
            raise

    @contextlib.contextmanager
    def writer(self, rel: str):
        """A binary file to write in pieces (an output larger than a task should hold): locally a temporary name
        renamed at the end, on an object store a multipart upload that appears whole when it completes. Not
        retried (the pieces are gone): a failure fails the task, which Ray runs again."""
        target = self.path(rel)
        if not self.is_local:
            protocols = self._io.protocol if isinstance(self._io.protocol, (tuple, list)) else (self._io.protocol,)
            if not set(protocols) & set(_FLAT_STORES):
                self._io.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
            with self._io.open(target, "wb") as f:
                yield f
            self.fs.invalidate_cache(target)
            return
        self.fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
        tmp = f"{target}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            with open(tmp, "wb") as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)

    def _pipe(self, target: str, data: bytes) -> None:
        protocols = self._io.protocol if isinstance(self._io.protocol, (tuple, list)) else (self._io.protocol,)
        if not set(protocols) & set(_FLAT_STORES):
            self._io.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
        self._io.pipe_file(target, data)
        self.fs.invalidate_cache(target)  # a listing through `fs` (its own cache) must see the new object

    def write_json(self, rel: str, obj) -> None:
        self.write_bytes(rel, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode())

    def put_file(self, local: str, rel: str) -> None:
        """Upload (or copy) the local file `local` to `rel`, whole."""
        if self.is_local:
            with open(local, "rb") as f:
                self.write_bytes(rel, f.read())
            return
        self._retried("upload", rel, lambda: self._io.put_file(local, self.path(rel)))
        self.fs.invalidate_cache(self.path(rel))

    def read_bytes(self, rel: str) -> bytes:
        return self._retried("read", rel, lambda: self._io.cat_file(self.path(rel)))

    def read_range(self, rel: str, start: int, end: int) -> bytes:
        if end <= start:
            return b""
        return self._retried(
            f"read of bytes {start}-{end}", rel, lambda: self._io.cat_file(self.path(rel), start=start, end=end)
        )

    def read_batch(self, rel: str, starts: list[int], ends: list[int]) -> list[bytes]:
        """Byte ranges [start, end) of one file, requested concurrently on an object store (fsspec `cat_ranges`:
        one batch, not one round trip after another), retried as a batch; one after another locally."""
        if self.is_local or len(starts) < 2:
            return [self.read_range(rel, a, b) for a, b in zip(starts, ends)]
        path = self.path(rel)
        return self._retried(
            f"read of {len(starts)} ranges",
            rel,
            lambda: self._io.cat_ranges([path] * len(starts), list(starts), list(ends), on_error="raise"),
        )

    def read_ranges(self, rel: str, starts: list[int], ends: list[int], max_gap: int = 1 << 20) -> list[bytes]:
        """Byte ranges [start, end) of one file, in the order given. Ranges less than `max_gap` apart are read
        as one request (one GET per run of nearby documents, not one per document); a failed request is retried
        alone. Never returns an error in place of bytes (fsspec's `cat_ranges` does, by default)."""
        order = sorted(range(len(starts)), key=lambda i: starts[i])
        spans: list[list[int]] = []  # [start, end, first index into order, last index + 1]
        for k, i in enumerate(order):
            if spans and starts[i] <= spans[-1][1] + max_gap:
                spans[-1][1] = max(spans[-1][1], ends[i])
                spans[-1][3] = k + 1
            else:
                spans.append([starts[i], ends[i], k, k + 1])
        out: list[bytes] = [b""] * len(starts)
        for start, end, first, last in spans:
            blob = self.read_range(rel, start, end)
            for i in order[first:last]:
                out[i] = blob[starts[i] - start : ends[i] - start]
        return out

    def read_json(self, rel: str):
        return json.loads(self.read_bytes(rel))

    def exists(self, rel: str) -> bool:
        return self._retried("exists", rel, lambda: self._io.exists(self.path(rel)))

    def done(self, task: str) -> dict | None:
        """The done record of a task folder, or None when the task has not finished."""
        try:
            return self.read_json(f"{task}/{DONE}")
        except FileNotFoundError:
            return None

    def done_records(self, tasks: list[str], read: Callable[[str, dict], T]) -> list[T | None]:
        """`read(task, its done record)` of each task folder, None where it has not finished; each record is
        dropped once read, so a caller that keeps a little of each never holds them all whole. On an object store
        DONE_READERS runs of consecutive folders are read at a time (60k records one after another: ~15 minutes;
        a thread per record costs more than the read itself); on a local disk one after another."""

        def run(folders: list[str]) -> list[T | None]:
            return [None if (record := self.done(f)) is None else read(f, record) for f in folders]

        if self.is_local:
            return run(tasks)
        size = -(-len(tasks) // (4 * DONE_READERS)) or 1  # 4 runs a reader: one slow run does not hold up the rest
        with ThreadPoolExecutor(DONE_READERS) as pool:
            runs = pool.map(run, [tasks[i : i + size] for i in range(0, len(tasks), size)])
            return [found for one in runs for found in one]

    def mark_done(self, task: str, record: dict) -> None:
        """Writes the done record, with the store requests retried so far (`retries`) and, in a task the runner
        meters, its peak RSS and CPU seconds (`pipeline.work.meter`) added to it in place."""
        record["retries"] = retries_so_far()
        record.update(meter.reading())
        self.write_json(f"{task}/{DONE}", record)


def fingerprint(made_from) -> str:
    """A short stable name for what an output was made from (any JSON-able value)."""
    return hashlib.sha256(json.dumps(made_from, sort_keys=True, default=str).encode()).hexdigest()[:16]


USES = "uses"  # one record per manifest of the task folders its build used (`tokenmill work`)


def uses_record(manifest_url: str) -> str:
    """The record of which task folders the build writing `manifest_url` used."""
    return f"{USES}/{fingerprint(manifest_url)}.json"
