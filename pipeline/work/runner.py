"""Ray placement: start or join Ray, and run a stage's tasks with at most `workers` in flight.

A task is a stage's plain function (`pipeline.build.registry`) plus its arguments; the runner skips every task whose
done
record exists (its folder is keyed by what it is made from, so an existing record is a valid output) and
wraps the rest in 1-CPU Ray tasks that Ray retries on `OSError` (a store that went away for a moment).
"""

from __future__ import annotations

import collections
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pipeline.work import meter, store
from pipeline.work.progress import EventLog, StageProgress
from pipeline.work.store import Store

if TYPE_CHECKING:
    from pipeline.build.registry import Stage


class BuildError(RuntimeError):
    pass


class MissingOutputs(BuildError):
    """A stage the build may only re-use (`Runner.reuse_only`) lacks outputs in the work store."""

    def __init__(self, stage: str, missing: int, tasks: int) -> None:
        super().__init__(f"the work store lacks {missing} of the {tasks} outputs of stage `{stage}`")
        self.stage, self.missing, self.tasks = stage, missing, tasks


class OutdatedOutputs(BuildError):
    """The work store holds a stage's outputs whose done records an older tokenmill wrote, without a field this
    one plans from: they cannot be re-used, and the build stops before it plans from them."""

    def __init__(self, work: Store, folder: str, field: str) -> None:
        stale = folder.rsplit("/", 1)[0] if folder.count("/") > 1 else folder  # the key's folder: all its parts
        super().__init__(
            f"{work.url(folder)} was made by an older tokenmill (its done record has no `{field}`): remove "
            f"{work.url(stale)} so that its stage runs again, or build with a fresh --work"
        )


@dataclass(frozen=True, slots=True)
class Task:
    folder: str  # its folder in the work layout; also its Ray task name (`ray::process/...` in ps and the dashboard)
    fn: Callable[..., dict]  # returns exactly the done record it wrote
    args: tuple
    input_bytes: int = 0
    input: str = ""  # what it reads, in words (an input file's URL); its folder when empty


@dataclass(slots=True)
class Runner:
    work: Store
    workers: int
    log: EventLog
    timings: dict[str, dict] = field(default_factory=dict)
    used: list[str] = field(default_factory=list)  # every task folder this build used, run or re-used
    # stages whose outputs must all be in the work store already (a sweep's proxy builds run the mix only)
    reuse_only: frozenset[str] = frozenset()
    # when the last task finished (or the runner was made): the driver's wait before the next task starts here
    idle_since: float = field(default_factory=time.perf_counter, repr=False)

    def run(
        self, of: Stage, tasks: list[Task], keep: Callable[[dict], dict] | None = None, needs: tuple[str, ...] = ()
    ) -> list[dict]:
        """Each task's done record, in task order: read back for finished tasks, returned by the others; with
        `keep`, only what it keeps of each (the driver then holds no more of a record than it needs). `needs`:
        fields the driver plans from, which a record read back must have (`OutdatedOutputs` if not)."""
        stage = of.name
        progress = StageProgress(stage, len(tasks), self.log)
        self.used += [t.folder for t in tasks]
        keep = keep or (lambda record: record)

        def read_back(folder: str, record: dict) -> tuple[dict, dict]:
            missing = [k for k in needs if k not in record]
            if missing:
                raise OutdatedOutputs(self.work, folder, missing[0])
            return keep(record), _measured(record)

        looked_up = time.perf_counter()
        found = self.work.done_records([t.folder for t in tasks], read_back)
        looked_up = time.perf_counter() - looked_up
        records: list[dict | None] = [f[0] if f else None for f in found]
        measured = [f[1] if f else None for f in found]
        del found
        if stage in self.reuse_only and None in records:
            raise MissingOutputs(stage, records.count(None), len(tasks))
        progress.skip(sum(r is not None for r in records))
        pending = [i for i, r in enumerate(records) if r is None]
        started = time.perf_counter()
        # the driver's own time between the last task it saw finish and this stage's first: planning this stage,
        # looking up its done records (a stage whose tasks are all re-used adds to the next stage's)
        waited = {"gap_seconds": round(started - self.idle_since, 3)} if pending else {}
        retries = store.take_retries()  # the driver's own store requests (done records) count too
        for i, record in self._run_pending(stage, tasks, pending):
            records[i], measured[i] = keep(record), _measured(record)
            retries += record.get("retries", 0)
            meter_fields = {k: record[k] for k in ("peak_rss_mib", "cpu_seconds") if k in record}
            self.log.event(
                "task_done",
                stage=stage,
                task=tasks[i].folder,
                seconds=round(record.get("seconds", 0), 3),
                retries=record.get("retries", 0),
                **meter_fields,
            )
            text_bytes = sum(f.get("bytes_read", 0) for f in record.get("funnels", {}).values())  # process tasks only
            progress.advance(record.get("documents", 0), tasks[i].input_bytes, text_bytes=text_bytes)
        if pending:
            self.idle_since = time.perf_counter()
        timing = {
            **waited,
            "done_lookup_seconds": round(looked_up, 3),
            "seconds": round(time.perf_counter() - started, 3),
            "task_seconds": round(sum(r.get("seconds", 0) for r in measured), 3),
            "tasks": len(tasks),
            "skipped": progress.skipped,
            "documents": sum(r.get("documents", 0) for r in measured),
            "input_bytes": sum(t.input_bytes for t in tasks),
            "retries": retries + store.take_retries(),  # store requests retried by this run's tasks and driver
            "cpu_seconds": round(sum(r.get("cpu_seconds", 0) for r in measured), 3),
            **_largest(tasks, measured),
        }
        self.timings[stage] = _merge_timings(self.timings.get(stage), timing)  # a stage run in rounds: their sum
        self.log.event("stage_done", stage=stage, **timing)
        return records

    def share(self, value):
        """One copy of `value` in Ray's object store for every task that takes it, instead of one per task."""
        import ray

        return ray.put(value)

    def _run_pending(self, stage: str, tasks: list[Task], pending: list[int]):
        """Yields (task number, done record) as tasks finish, keeping at most `workers` in flight."""
        import ray

        remote = ray.remote(num_cpus=1, max_retries=3, retry_exceptions=[OSError])(_call)
        in_flight: dict = {}
        pending = collections.deque(pending)  # a stage of 60k tasks: popping the front of a list is quadratic
        while pending or in_flight:
            while pending and len(in_flight) < self.workers:
                i = pending.popleft()
                in_flight[remote.options(name=tasks[i].folder).remote(tasks[i].fn, *tasks[i].args)] = i
            ready, _ = ray.wait(list(in_flight), num_returns=1)
            i = in_flight.pop(ready[0])
            try:
                yield i, ray.get(ready[0])
            except Exception as e:  # a task that failed after its retries: name it and stop
                # an OSError (disk full, store unreachable) names its path, which is all a person needs; anything
                # else is a bug and keeps Ray's remote traceback
                cause = getattr(e, "cause", None)
                raise BuildError(
                    f"[{stage}] task {tasks[i].folder} failed: {cause if isinstance(cause, OSError) else e}"
                ) from e


def _measured(record: dict) -> dict:
    """What the stage's timings sum of a done record."""
    return {k: record[k] for k in ("peak_rss_mib", "cpu_seconds", "seconds", "documents") if k in record}


def _largest(tasks: list[Task], records: list[dict]) -> dict:
    """The stage's task of the largest peak RSS (re-used ones too: their records keep what they measured), with
    its input: which node size the stage needs, and for which input."""
    measured = [(r["peak_rss_mib"], i) for i, r in enumerate(records) if "peak_rss_mib" in r]
    if not measured:
        return {}
    peak, i = max(measured)
    task = tasks[i]
    return {
        "peak_rss_mib": peak,
        "largest_task": {
            "task": task.folder,
            "input": task.input or task.folder,
            "input_bytes": task.input_bytes,
            "peak_rss_mib": peak,
            "cpu_seconds": records[i].get("cpu_seconds", 0.0),
        },
    }


_LARGEST = ("peak_rss_mib", "gap_seconds")  # a stage's rounds: not summed


def _merge_timings(earlier: dict | None, later: dict) -> dict:
    """A stage run in rounds: their sums, the largest task's peak and the longest wait before a round."""
    if earlier is None:
        return later
    merged = {
        k: round(earlier.get(k, 0) + v, 3) if isinstance(v, (int, float)) and k not in _LARGEST else v
        for k, v in later.items()
    }
    if "gap_seconds" in earlier or "gap_seconds" in later:
        merged["gap_seconds"] = max(earlier.get("gap_seconds", 0), later.get("gap_seconds", 0))
    if earlier.get("peak_rss_mib", -1) >= later.get("peak_rss_mib", -1):
        merged.update({k: earlier[k] for k in ("peak_rss_mib", "largest_task") if k in earlier})
    return merged


def _call(fn, *args):
    store.take_retries()  # a worker runs one task at a time: count this task's retries from zero
    meter.start()  # its peak RSS and CPU seconds, written into its done record by `Store.mark_done`
    try:
        return fn(*args)
    finally:
        meter.stop()


def start_ray(address: str | None, workers: int | None) -> int:
    """Join the cluster at `address` (or RAY_ADDRESS, set inside a Ray job), else start an embedded Ray private
    to this machine. Returns the number of tasks to keep in flight."""
    address = address or os.environ.get("RAY_ADDRESS")
    if not address and "ray" not in sys.modules:
        # On Linux a local Ray takes the machine's network address (ray.init turns 127.0.0.1 into it) and its
        # GCS, raylet, workers and agents listen on every interface. With this flag off, read when Ray is first
        # imported (so only before that), the embedded Ray is private to this machine: every server binds to
        # 127.0.0.1. A user who sets the variable keeps their choice; a build that joins a cluster never sets it.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        # token authentication on, as Ray's default is, said explicitly so an embedded build does not print
        # Ray's notice about that default on every start; read only before Ray is imported
        os.environ.setdefault("RAY_AUTH_MODE", "token")
    import ray

    if not ray.is_initialized():
        if address:
            ray.init(address=address, logging_level="WARNING", log_to_driver=True)
        else:
            # Embedded, private to this process: no dashboard.
            ray.init(
                num_cpus=workers or os.cpu_count(), include_dashboard=False, logging_level="WARNING", log_to_driver=True
            )
    return workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
