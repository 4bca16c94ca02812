"""A build Runner that runs each task in the calling process: the build's own tasks, records, rounds and stage
bookkeeping, without Ray's placement (which the builds on a real Ray test)."""

from __future__ import annotations

from pipeline.work.progress import EventLog
from pipeline.work.runner import Runner
from pipeline.work.store import Store


class InProcessRunner(Runner):
    def __init__(self, work: Store, workers: int = 1):
        super().__init__(work, workers, EventLog(None, console=False))

    def _run_pending(self, stage, tasks, pending):
        for i in pending:
            yield i, tasks[i].fn(*tasks[i].args)
