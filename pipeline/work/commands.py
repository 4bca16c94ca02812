"""`tokenmill work ls|prune WORK`: what a work store holds, which builds use it, and removing what none uses.

A work store (OUT/work, or any folder given to `tokenmill build --work`) holds task outputs keyed by what they
were made from; each build records which task folders it used in `uses/` (`pipeline.work.store.uses_record`). An output
is
in use while a manifest that recorded it still exists and is the one that recorded it (same `created_at`).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field

from manifests.manifest import ManifestError, load
from pipeline.build.registry import STAGE_NAMES
from pipeline.work.progress import human_bytes
from pipeline.work.store import DONE, USES, Store


@dataclass(slots=True)
class Entry:
    folder: str  # relative to the work store, e.g. process/3f2a...
    bytes: int
    used_by: list[str] = field(default_factory=list)  # manifest URLs


def live_uses(work: Store) -> dict[str, set[str]]:
    """Manifest URL -> the task folders it used, for every manifest that still exists as recorded."""
    live = {}
    for path in work.fs.glob(work.path(f"{USES}/*.json")):
        record = json.loads(work.fs.cat_file(path))
        try:
            current = load(record["manifest"]).created_at
        except ManifestError:  # gone, or no longer a manifest: its folders are not in use
            continue
        if current == record["created_at"]:
            live[record["manifest"]] = set(record["folders"])
    return live


def entries(work: Store) -> list[Entry]:
    """Every finished task output of the store, with its size and the live manifests that use it."""
    live = live_uses(work)
    found = []
    done_records = sorted(p for stage in STAGE_NAMES for p in work.fs.glob(work.path(f"{stage}/**/{DONE}")))
    for done in done_records:
        folder = done[len(work.root) + 1 : -len(DONE) - 1]
        size = sum(work.fs.du(work.path(folder), total=False).values())
        found.append(Entry(folder, size, sorted(m for m, used in live.items() if folder in used)))
    return found


def prune(work: Store, dry_run: bool) -> list[Entry]:
    """Removes every task output no live manifest uses (and the use records of manifests that are gone)."""
    unused = [e for e in entries(work) if not e.used_by]
    if not dry_run:
        for e in unused:
            work.fs.rm(work.path(e.folder), recursive=True)
        live = live_uses(work)
        for path in work.fs.glob(work.path(f"{USES}/*.json")):
            if json.loads(work.fs.cat_file(path))["manifest"] not in live:
                work.fs.rm(path)
    return unused


def _open(url: str) -> Store:
    """A work store, or an output folder holding one in work/."""
    store = Store.at(url)
    if not any(store.exists(stage) for stage in STAGE_NAMES) and store.exists("work"):
        store = store.child("work")
    if not any(store.exists(stage) for stage in STAGE_NAMES):
        raise FileNotFoundError(
            f"{url}: no work store here (no {'/, '.join(STAGE_NAMES)}/ folders); give OUT/work or the --work of a build"
        )
    return store


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="tokenmill work", description="List or prune a build work store (task outputs re-used across builds)."
    )
    parser.add_argument(
        "action",
        choices=("ls", "prune"),
        help="ls: what the store holds per stage and who uses it; prune: remove what no manifest uses",
    )
    parser.add_argument("work", help="the work store (OUT/work, a --work URL) or an output folder holding one")
    parser.add_argument("--all", action="store_true", help="ls: one line per task output instead of one per stage")
    parser.add_argument("--dry-run", action="store_true", help="prune: say what would be removed, remove nothing")
    args = parser.parse_args(argv)
    try:
        work = _open(args.work)
    except FileNotFoundError as e:
        print(f"tokenmill work: {e}", file=sys.stderr)
        return 2
    if args.action == "prune":
        removed = prune(work, args.dry_run)
        verb = "would remove" if args.dry_run else "removed"
        print(
            f"{verb} {len(removed)} task outputs no manifest uses ({human_bytes(sum(e.bytes for e in removed))}) from "
            f"{work.url()}"
        )
        return 0
    found = entries(work)
    if args.all:
        for e in found:
            print(f"{e.folder:<60} {human_bytes(e.bytes):>10}  {', '.join(e.used_by) or 'unused'}")
        return 0
    print(f"{'stage':<8} {'outputs':>8} {'unused':>7} {'size':>10}   used by")
    for stage in STAGE_NAMES:
        mine = [e for e in found if e.folder.startswith(f"{stage}/")]
        users = sorted({m for e in mine for m in e.used_by})
        print(
            f"{stage:<8} {len(mine):>8} {sum(not e.used_by for e in mine):>7} "
            f"{human_bytes(sum(e.bytes for e in mine)):>10}   {', '.join(users) or '-'}"
        )
    return 0
