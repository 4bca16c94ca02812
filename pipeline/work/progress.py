"""Progress on the console (one line per update) and structured events in `build.log.jsonl`."""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field

from manifests.outputs import BUILD_LOG
from pipeline.work.store import Store


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return f"{n:.1f} TB"


@dataclass(slots=True)
class EventLog:
    """JSON lines: one event per finished task and stage, for machines; the console gets short lines.

    `path` is a local file, appended to line by line. For an output folder on an object store (`EventLog.at`),
    the lines are appended to a local spool file, which is uploaded whole as the remote log at every
    `stage_done` event, at most every `upload_every` seconds otherwise, and at close: a crashed driver loses
    at most the events since the last upload. The spool starts from the remote log of an earlier run, so a
    resumed build's log continues that run's, as a local one does."""

    path: str | None
    console: bool = True
    remote: tuple[Store, str] | None = None  # (output store, name of the log there), uploaded from `path`
    upload_every: float = 30.0
    _file: object = None
    _uploaded: float = 0.0

    @classmethod
    def at(cls, out: Store, name: str = BUILD_LOG, console: bool = True) -> "EventLog":
        if out.is_local:
            return cls(out.path(name), console)
        fd, spool = tempfile.mkstemp(prefix="tokenmill-log-", suffix=".jsonl")
        os.close(fd)
        try:
            with open(spool, "wb") as f:
                f.write(out.read_bytes(name))
        except FileNotFoundError:
            pass
        return cls(spool, console, remote=(out, name))

    def __post_init__(self) -> None:
        if self.path:
            self._file = open(self.path, "a", buffering=1)
        self._uploaded = time.monotonic()

    def event(self, kind: str, **fields) -> None:
        if self._file:
            self._file.write(
                json.dumps({"time": round(time.time(), 3), "event": kind, **fields}, sort_keys=True) + "\n"
            )
            if self.remote and (kind == "stage_done" or time.monotonic() - self._uploaded >= self.upload_every):
                self.upload()

    def upload(self) -> None:
        """Put the whole log in the remote output folder (one PUT; nothing to do for a local log)."""
        if self.remote and self._file:
            self._file.flush()
            store, name = self.remote
            store.put_file(self.path, name)
            self._uploaded = time.monotonic()

    def say(self, line: str) -> None:
        if self.console:
            print(line, file=sys.stderr, flush=True)

    def close(self) -> None:
        if not self._file:
            return
        try:
            self.upload()
        except OSError as e:  # the store went away: keep the spool (a failed build's log is worth having)
            self.say(f"could not upload {self.remote[1]} ({e}); the log is in {self.path}")
            self.remote = None
        self._file.close()
        self._file = None
        if self.remote:
            os.remove(self.path)


# No ETA before this many tasks of the stage have finished: the first ones also carry the workers' start-up
# (processes, imports), and a rate from them alone overestimates the rest several times over.
ETA_AFTER_TASKS = 3


def text_speed(text_bytes: float, seconds: float) -> str:
    """The process stage's speed, as the progress line, the build summary and the report all give it: MB of
    input text (decoded, before filters) per second of the stage's wall time."""
    return f"{text_bytes / 1e6 / seconds:.2f} MB/s of input text" if seconds > 0 else "-"


@dataclass(slots=True)
class StageProgress:
    """Tasks done, documents per second, the speed in MB/s of input text (when the tasks report their text
    bytes, `advance(text_bytes=)`; else the bytes of input files read, without a rate: compressed bytes per
    second would be a second, different speed), ETA; prints at most every `every` seconds."""

    stage: str
    total: int
    log: EventLog
    every: float = 2.0
    done: int = 0
    skipped: int = 0
    documents: int = 0
    bytes: int = 0
    text_bytes: int = 0
    started: float = field(default_factory=time.perf_counter)
    _last: float = 0.0
    _first: tuple[float, int] | None = None  # (time, tasks run) when the first task finished

    def skip(self, n: int) -> None:
        """`n` tasks whose output exists (same inputs, same settings): re-used, not run again."""
        self.skipped += n
        self.done += n
        if n == self.total:
            self.log.say(f"[{self.stage}] re-used all {n} task outputs: inputs and settings unchanged")
        elif n:
            self.log.say(
                f"[{self.stage}] re-used {n} of {self.total} task outputs; running the {self.total - n} whose inputs "
                "or settings are new"
            )

    def advance(self, documents: int = 0, nbytes: int = 0, force: bool = False, text_bytes: int = 0) -> None:
        self.done += 1
        self.documents += documents
        self.bytes += nbytes
        self.text_bytes += text_bytes
        now = time.perf_counter()
        if self._first is None:
            self._first = (now, self.done - self.skipped)
        if force or now - self._last >= self.every or self.done == self.total:
            self._last = now
            self.log.say(self.line())

    def eta(self) -> float | None:
        """Seconds left, at the pace since the first task finished (the workers' start-up excluded); None until
        ETA_AFTER_TASKS tasks have run."""
        ran = self.done - self.skipped
        if self._first is None or ran < ETA_AFTER_TASKS or self.done >= self.total:
            return None
        since, first_ran = self._first
        pace = (ran - first_ran) / max(time.perf_counter() - since, 1e-9)
        return (self.total - self.done) / pace if pace else None

    def line(self) -> str:
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        parts = [f"[{self.stage}] {self.done}/{self.total} tasks", f"{elapsed:6.1f}s"]
        if self.documents:
            parts.append(f"{self.documents / elapsed:,.0f} docs/s")
        if self.text_bytes:
            parts.append(f"{text_speed(self.text_bytes, elapsed)} ({human_bytes(self.text_bytes)} so far)")
        elif self.bytes:
            parts.append(f"{human_bytes(self.bytes)} of input files read")
        eta = self.eta()
        if eta is not None:
            parts.append(f"ETA {eta:.0f}s")
        return "  ".join(parts)
