"""Whether a build may write into `--out`: a new or empty folder, or one an earlier build wrote. A folder that holds
anything else is refused, never written into: a user's own `build_stats.json` is not overwritten."""

from __future__ import annotations

import re

from manifests.outputs import (
    BUILD_LOG,
    BUILD_STATS,
    DECONTAMINATION,
    DROPPED_SAMPLES,
    MANIFEST,
    QUARANTINE,
    SHARDS_PREFIX,
    TOKENIZER_MODEL,
)
from pipeline.work.store import Store

# what a build writes into its output folder (pipeline.build.finalize, the event log, the report, the work store)
BUILD_FILES = (
    MANIFEST,
    QUARANTINE,
    DROPPED_SAMPLES,
    DECONTAMINATION,
    BUILD_STATS,
    TOKENIZER_MODEL,
    BUILD_LOG,
    "report",
    "work",
)
# written by every build before anything else: a folder holding neither was not made by a build
BUILD_TRACES = (MANIFEST, BUILD_LOG)
_TEMPORARY = re.compile(r"\.tmp-[0-9a-f]{8}$")  # Store.write_bytes's temporary names, left by a crash


def _is_build_file(name: str) -> bool:
    return name in BUILD_FILES or name.startswith(SHARDS_PREFIX) or bool(_TEMPORARY.search(name))


def foreign_entries(out: Store) -> list[str]:
    """The names in `out` that no build writes, or every name when no build has written there; [] for a new or
    empty folder and for an earlier build's output."""
    try:
        names = sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in out.fs.ls(out.root, detail=False))
    except (FileNotFoundError, NotADirectoryError):
        return []
    names = [n for n in names if n and n != out.root.rsplit("/", 1)[-1]]  # some stores list the folder itself
    if not names:
        return []
    if not any(n in BUILD_TRACES for n in names):
        return names
    return [n for n in names if not _is_build_file(n)]


def out_refusal(out_url: str) -> str | None:
    """One line refusing an `--out` that holds files a build did not write, else None."""
    foreign = foreign_entries(Store.at(out_url))
    if not foreign:
        return None
    shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
    return (
        f"--out {out_url}: holds files a build did not write ({shown}), which a build would overwrite or mix with "
        "its own; give a new or empty folder, or an earlier build's output"
    )
