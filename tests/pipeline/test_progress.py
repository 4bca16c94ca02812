"""`pipeline.progress.EventLog`: build.log.jsonl in a local folder (appended line by line) and on a store
without local files (a spool uploaded at every finished stage and at close, continuing an earlier run's log)."""
from __future__ import annotations

import json
import os
import uuid

from pipeline.ledger import Store
from pipeline.progress import EventLog


def lines(store: Store) -> list[dict]:
    return [json.loads(line) for line in store.read_bytes("build.log.jsonl").decode().splitlines()]


def test_a_remote_log_is_uploaded_per_stage_and_continues_an_earlier_runs():
    out = Store.at(f"memory://log-{uuid.uuid4().hex}")
    log = EventLog.at(out, console=False)
    log.event("task_done", stage="process", task="process/a")
    assert not out.exists("build.log.jsonl")  # nothing uploaded between stages (at most every upload_every s)
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
    assert json.loads((tmp_path / "build.log.jsonl").read_text())["task"] == "process/a"  # before any close
    log.close()
    assert log.remote is None and (tmp_path / "build.log.jsonl").exists()
