"""The build's ledger: the work layout (where each task writes), atomic writes, and done records.

Every task writes its outputs into its own folder of the work dir and then, last, a `_DONE.json` record. A
folder is named by the fingerprint of everything its output was made from (`WorkLayout`), so a relaunch skips
exactly the tasks whose inputs and settings are unchanged, and a changed input set can never reuse an output
made from other inputs. A crash or Ctrl-C loses at most the tasks in flight. Writes go to a temporary name
and are renamed into place (on object stores a single PUT is already atomic), so a reader never sees half a file.
"""
from __future__ import annotations

import hashlib
import json
import os
import uuid
from dataclasses import dataclass

import fsspec
from fsspec.implementations.local import LocalFileSystem

DONE = "_DONE.json"


@dataclass(slots=True)
class Store:
    """A folder on any fsspec filesystem (local, s3://, gs://, memory://)."""

    fs: fsspec.AbstractFileSystem
    root: str

    @classmethod
    def at(cls, url: str) -> "Store":
        fs, root = fsspec.core.url_to_fs(url)
        return cls(fs, root.rstrip("/"))

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, LocalFileSystem)

    def path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def child(self, *parts: str) -> "Store":
        return Store(self.fs, self.path(*parts))

    def url(self, *parts: str) -> str:
        return self.fs.unstrip_protocol(self.path(*parts))

    def write_bytes(self, rel: str, data: bytes) -> None:
        target = self.path(rel)
        self.fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
        if not self.is_local:
            self.fs.pipe_file(target, data)
            return
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

    def write_json(self, rel: str, obj) -> None:
        self.write_bytes(rel, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode())

    def read_bytes(self, rel: str) -> bytes:
        return self.fs.cat_file(self.path(rel))

    def read_range(self, rel: str, start: int, end: int) -> bytes:
        return self.fs.cat_file(self.path(rel), start=start, end=end) if end > start else b""

    def read_json(self, rel: str):
        return json.loads(self.read_bytes(rel))

    def exists(self, rel: str) -> bool:
        return self.fs.exists(self.path(rel))

    def done(self, task: str) -> dict | None:
        """The done record of a task folder, or None when the task has not finished."""
        try:
            return self.read_json(f"{task}/{DONE}")
        except FileNotFoundError:
            return None

    def mark_done(self, task: str, record: dict) -> None:
        self.write_json(f"{task}/{DONE}", record)


def fingerprint(made_from) -> str:
    """A short stable name for what an output was made from (any JSON-able value)."""
    return hashlib.sha256(json.dumps(made_from, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class WorkLayout:
    """Every task folder of the work dir: the one place that formats a work path. Each key is a `fingerprint`
    of what the output was made from (see `pipeline.build` for what goes into each)."""

    def process(self, key: str) -> str:
        return f"process/{key}"

    def key_group(self, key: str) -> str:
        return f"keys/{key}"

    def dedupe_partition(self, key: str, partition: int) -> str:
        return f"dedupe/{key}/partition-{partition:05d}"

    def resolved(self, key: str) -> str:
        return f"dedupe/{key}/resolved"

    def verify_partition(self, key: str, partition: int) -> str:
        return f"verify/{key}/partition-{partition:05d}"

    def verified(self, key: str) -> str:
        return f"verify/{key}/verified"

    def count(self, key: str) -> str:
        return f"count/{key}"

    def mix_group(self, key: str, split: str, group: int) -> str:
        return f"mix/{key}/{split}-{group:05d}"

    def uses(self, manifest_url: str) -> str:
        """The record of which task folders the build writing `manifest_url` used (`tokenmill work`)."""
        return f"uses/{fingerprint(manifest_url)}.json"


SHARDS_PREFIX = "shards-"  # OUT/shards-<mix key>/<split>/<split>-NNNNN.bin: one folder per mix of an output


def shards_folder(mix_key: str) -> str:
    """Where an output's shards of one mix go: a new mix never overwrites the files an earlier manifest lists."""
    return f"{SHARDS_PREFIX}{mix_key[:12]}"
