"""pipeline/work/progress.py: StageProgress (no ETA from the first tasks alone, the speed in one unit) and EventLog
(build.log.jsonl in a local folder, appended line by line, and on a store without local files: a spool uploaded
at every finished stage and at close, continuing an earlier run's log)."""

from __future__ import annotations

import json
import os
import re
import uuid

from manifests.outputs import BUILD_LOG
from pipeline.work.progress import EventLog, StageProgress, text_speed
from pipeline.work.store import Store


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_eta_waits_for_a_few_tasks_and_leaves_the_start_up_out(monkeypatch):
    clock = Clock()
    monkeypatch.setattr("pipeline.work.progress.time.perf_counter", clock)
    progress = StageProgress("process", 12, EventLog(None, console=False), started=0.0)
    clock.now = 7.0  # the workers' start-up: the first task finishes late
    progress.advance()
    clock.now = 8.0  # from here one task a second
    progress.advance()
    assert progress.eta() is None and "ETA" not in progress.line()
    clock.now = 9.0
    progress.advance()
    assert progress.eta() == 9.0  # 9 tasks left at 1 task/s: not (12 - 3) / (3 / 9 s) = 27 s
    clock.now = 10.0
    progress.advance()
    assert progress.eta() == 8.0


def test_the_speed_is_mb_per_second_of_input_text(monkeypatch):
    clock = Clock()
    monkeypatch.setattr("pipeline.work.progress.time.perf_counter", clock)
    progress = StageProgress("process", 2, EventLog(None, console=False), started=0.0)
    clock.now = 2.0
    progress.advance(documents=10, nbytes=400_000, text_bytes=3_000_000)
    assert re.search(r"1\.50 MB/s of input text \(3\.0 MB so far\)", progress.line())
    assert text_speed(3_000_000, 2.0) == "1.50 MB/s of input text"
    without_text = StageProgress("keys", 2, EventLog(None, console=False))
    without_text.advance(nbytes=400_000)
    assert "400.0 KB of input files read" in without_text.line() and "/s of" not in without_text.line()


def lines(store: Store) -> list[dict]:
    return [json.loads(line) for line in store.read_bytes(BUILD_LOG).decode().splitlines()]


def test_a_remote_log_is_uploaded_per_stage_and_continues_an_earlier_runs():
    out = Store.at(f"memory://log-{uuid.uuid4().hex}")
    log = EventLog.at(out, console=False)
    log.event("task_done", stage="process", task="process/a")
    assert not out.exists(BUILD_LOG)  # nothing uploaded between stages (at most every upload_every s)
    log.event("stage_done", stage="process", tasks=1)
    assert [e["event"] for e in lines(out)] == ["task_done", "stage_done"]
    log.event("task_done", stage="dedupe", task="dedupe/x")
    spool = log.path
    log.close()
    assert [e.get("task") for e in lines(out)] == ["process/a", None, "dedupe/x"]
    assert not os.path.exists(spool)
    resumed = EventLog.at(out, console=False)  # a relaunch of the same build
    resumed.event("stage_done", stage="dedupe", tasks=1)
    resumed.close()
    assert [e["event"] for e in lines(out)] == ["task_done", "stage_done", "task_done", "stage_done"]


def test_a_local_log_is_appended_line_by_line(tmp_path):
    out = Store.at(str(tmp_path))
    log = EventLog.at(out, console=False)
    log.event("task_done", stage="process", task="process/a")
    assert json.loads((tmp_path / BUILD_LOG).read_text())["task"] == "process/a"  # before any close
    log.close()
    assert log.remote is None and (tmp_path / BUILD_LOG).exists()
