"""How the benchmarks measure a build: its wall time (`timed_build`), and each of its tasks alone
(`MeasuringRunner`).

`MeasuringRunner` is the build's Runner with another placement: `pipeline.build.driver.run_stages` plans its
stages, names its work folders and makes its tasks exactly as in a real build, and `Runner.run` keeps its books,
but each pending task runs in a fresh Python process of its own, `workers` at a time, instead of on Ray. A fresh
process's peak RSS (VmHWM) is then the task's own: exec gives a process a fresh one, whereas getrusage's
ru_maxrss of a forked child also counts the parent. When the build's Store is a `CountingStore`, each task's
store requests and bytes are counted too.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.work import meter
from pipeline.work.runner import BuildError, Runner, Task
from pipeline.work.store import DONE, Store

REPO = Path(__file__).resolve().parents[1]


def status(pid: int | str = "self") -> dict[str, float]:
    """VmHWM (peak RSS), VmRSS, RssAnon, RssFile of a process, MiB; {} once it has gone."""
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
                out[key] = int(value.split()[0]) / 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return out


def timed_build(recipe, out: Path, workers: int) -> tuple[float, dict]:
    """(wall seconds, manifest) of `pipeline.build.driver.build` on a fresh embedded Ray, started before the clock
    (a cluster is up before a build starts)."""
    import ray

    from pipeline.build.driver import build

    ray.init(num_cpus=workers, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    try:
        started = time.perf_counter()
        build(recipe, str(out), workers=workers, console=False)
        seconds = time.perf_counter() - started
    finally:
        ray.shutdown()
    return seconds, json.loads((out / "manifest.json").read_text())


class CountingStore(Store):
    """A Store that counts its requests and bytes (per process) and takes the object-store code paths."""

    counts = {"reads": 0, "read_bytes": 0, "writes": 0, "write_bytes": 0, "lists": 0}
    # seconds each request waits first, as an object store's round trip would (set in the driver's process only:
    # the driver's waits between stages at an object store's latency, its tasks at the disk's speed)
    latency = 0.0

    def __reduce__(self):  # Store's own pickles as a plain Store: a task's copy must count too
        return CountingStore, (self.fs, self.root)

    def child(self, *parts: str) -> "Store":
        return CountingStore(self.fs, self.path(*parts), self._io)

    def read_batch(self, rel: str, starts: list[int], ends: list[int]) -> list[bytes]:
        data = [super(CountingStore, self).read_range(rel, a, b) for a, b in zip(starts, ends)]  # one request each
        self.counts["reads"] += sum(b > a for a, b in zip(starts, ends))
        self.counts["read_bytes"] += sum(map(len, data))
        return data

    @property
    def is_local(self) -> bool:
        return False

    def read_bytes(self, rel: str) -> bytes:
        time.sleep(self.latency)
        self.counts["reads"] += 1  # a request, found or not (a done record looked up before its task ran)
        data = super().read_bytes(rel)
        self.counts["read_bytes"] += len(data)
        return data

    def read_range(self, rel: str, start: int, end: int) -> bytes:
        time.sleep(self.latency if end > start else 0)
        data = super().read_range(rel, start, end)
        self.counts["reads"] += int(end > start)
        self.counts["read_bytes"] += len(data)
        return data

    def write_bytes(self, rel: str, data: bytes) -> None:
        time.sleep(self.latency)
        super().write_bytes(rel, data)
        self.counts["writes"] += 1
        self.counts["write_bytes"] += len(data)

    def exists(self, rel: str) -> bool:
        time.sleep(self.latency)
        self.counts["lists"] += 1
        return super().exists(rel)


def task_child(path: str) -> None:
    """In a fresh process: one task function with its arguments (pickled by `MeasuringRunner`), as a Ray worker
    runs it; prints its memory, store counts and seconds as the last line."""
    with open(path, "rb") as f:
        fn, args = pickle.load(f)
    started, cpu = time.perf_counter(), time.process_time()
    meter.start()  # as the build's runner does: the done record carries the task's peak RSS and CPU seconds
    record = fn(*args)
    print(
        json.dumps(
            {
                **status(),
                **CountingStore.counts,
                "seconds": time.perf_counter() - started,
                "cpu_seconds": time.process_time() - cpu,
                "logged_peak_rss_mib": record.get("peak_rss_mib"),
            }
        )
    )


@dataclass(slots=True)
class StageMeasure:
    tasks: int = 0
    wall: float = 0.0
    child_seconds: float = 0.0  # per task: its interpreter start + imports + the task
    task_seconds: float = 0.0  # the task function alone, wall
    task_cpu: float = 0.0  # the task function alone, CPU (the machine is shared: wall seconds wait for other work)
    peak_hwm: float = 0.0  # MiB, the largest task's VmHWM (anonymous + file-backed pages)
    peak_anon: float = 0.0  # MiB, the largest RssAnon seen while polling
    reads: int = 0
    read_bytes: int = 0
    max_task_read_bytes: int = 0
    writes: int = 0
    write_bytes: int = 0
    max_args_bytes: int = 0  # what the driver ships to one task (pickled)
    per_task: list = field(
        default_factory=list
    )  # (folder, VmHWM MiB, reads, read bytes, CPU s, its done record's peak RSS)

    def brief(self) -> dict:
        """Tasks run, the stage's wall seconds and its largest task's peak RSS in MiB."""
        return {"tasks": self.tasks, "seconds": round(self.wall, 2), "peak_rss_mib": round(self.peak_hwm, 1)}


class Enough(Exception):
    """Raised by MeasuringRunner after `stop_after`: the measurement needs no more of the build."""


_LOCK = threading.Lock()


@dataclass(slots=True)
class MeasuringRunner(Runner):
    """See the module docstring. `measures[stage]`: what its tasks took; `folders[stage]`: every task's folder.
    With `stop_after`, the build ends after that stage (`Enough`), and `only` may limit that stage's tasks to
    some task numbers."""

    only: dict[str, set[int]] = field(default_factory=dict)
    stop_after: str = ""
    measures: dict[str, StageMeasure] = field(default_factory=dict)
    folders: dict[str, list[str]] = field(default_factory=dict)

    def _run_pending(self, stage: str, tasks: list[Task], pending: list[int]):
        m = self.measures.setdefault(stage, StageMeasure())
        chosen = [i for i in pending if stage not in self.only or i in self.only[stage]]
        started = time.perf_counter()
        with ThreadPoolExecutor(self.workers) as pool:
            list(pool.map(lambda i: _measure(stage, tasks[i], m), chosen))
        m.wall += time.perf_counter() - started
        self.folders.setdefault(stage, []).extend(task.folder for task in tasks)  # a stage run in rounds: all of them
        if stage == self.stop_after:
            raise Enough
        for i in pending:  # as ray.get returns it: read past the store, so a CountingStore does not count it
            yield i, json.loads(Path(self.work.path(tasks[i].folder, DONE)).read_text())


def _measure(stage: str, task: Task, m: StageMeasure) -> None:
    with tempfile.NamedTemporaryFile(suffix=".pkl", delete=False) as f:
        pickle.dump((task.fn, _resolved(task.args)), f)
        args_path, args_bytes = f.name, f.tell()
    code = (
        f"import sys; sys.path.insert(0, {str(REPO)!r}); from bench.measure import task_child; task_child(sys.argv[1])"
    )
    started = time.perf_counter()
    child = subprocess.Popen(
        [sys.executable, "-c", code, args_path], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    anon = 0.0
    while child.poll() is None:
        anon = max(anon, status(child.pid).get("RssAnon", 0.0))
        time.sleep(0.02)
    stdout, stderr = child.communicate()
    os.unlink(args_path)
    if child.returncode:
        raise BuildError(f"[{stage}] task {task.folder} failed:\n{stderr[-3000:]}")
    r = json.loads(stdout.strip().splitlines()[-1])
    with _LOCK:
        m.tasks += 1
        m.child_seconds += time.perf_counter() - started
        m.task_seconds += r["seconds"]
        m.task_cpu += r["cpu_seconds"]
        m.peak_hwm, m.peak_anon = max(m.peak_hwm, r["VmHWM"]), max(m.peak_anon, anon, r.get("RssAnon", 0.0))
        m.reads += r["reads"]
        m.read_bytes += r["read_bytes"]
        m.max_task_read_bytes = max(m.max_task_read_bytes, r["read_bytes"])
        m.writes += r["writes"]
        m.write_bytes += r["write_bytes"]
        m.max_args_bytes = max(m.max_args_bytes, args_bytes)
        m.per_task.append(
            (
                task.folder,
                round(r["VmHWM"], 1),
                r["reads"],
                r["read_bytes"],
                round(r["cpu_seconds"], 2),
                r.get("logged_peak_rss_mib"),
            )
        )


def _resolved(args: tuple) -> tuple:
    """Ray object refs among a task's arguments replaced by their values, as Ray does (there are none where the
    driver's `ray.put` is replaced by the identity, as bench/build_scale.py does)."""
    ray = sys.modules.get("ray")
    ref = getattr(ray, "ObjectRef", None)
    return tuple(ray.get(a) if ref is not None and isinstance(a, ref) else a for a in args)
