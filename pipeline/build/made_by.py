"""The timings of the runs that made a build's re-used outputs.

A build that re-uses every output of a stage spends no time on it; its report would show that stage at 0 s and
no process speed. The build that made those outputs recorded its timings in its manifest, and the work store
records which task folders each live manifest used (`tokenmill work`): a manifest that used every task folder
this build's stage used made (or itself re-used) exactly these outputs, so its timings of that stage are
carried into this build's as `made_by`, with when that build was made. The report shows those."""

from __future__ import annotations

import json

import fsspec

from pipeline.work.commands import live_uses
from pipeline.work.store import Store

_CARRIED = ("seconds", "task_seconds", "tasks", "documents", "input_bytes", "text_bytes", "skipped")


def add_made_by(timings: dict[str, dict], used: list[str], work: Store) -> None:
    """Sets `made_by` on every stage of `timings` whose outputs were all re-used (in place), where a live
    manifest of the work store recorded the stage's timings."""
    reused = [name for name, t in timings.items() if t.get("tasks") and t.get("skipped") == t["tasks"]]
    if not reused:
        return
    live = live_uses(work)
    for name in reused:
        mine = {folder for folder in used if folder.split("/", 1)[0] == name}
        for manifest_url, folders in sorted(live.items()):
            made = _stage_timing(manifest_url, name) if mine <= folders else None
            if made is not None:
                timings[name]["made_by"] = made
                break


def _stage_timing(manifest_url: str, name: str) -> dict | None:
    """The timings of stage `name` of the build that wrote `manifest_url`, carried on from the build that made
    its outputs when that build re-used them too; None when they are unknown."""
    try:
        with fsspec.open(manifest_url, "rb") as f:
            manifest = json.loads(f.read())
    except (OSError, ValueError):
        return None
    stage = manifest.get("stages", {}).get(name)
    if not stage:
        return None
    if "made_by" in stage:
        return stage["made_by"]
    if stage.get("skipped") == stage.get("tasks"):  # re-used there too, by a build no longer known
        return None
    return {
        **{k: stage[k] for k in _CARRIED if k in stage},
        "created_at": manifest.get("created_at"),
        "manifest": manifest_url,
    }
