"""The verification's reference: every cluster whole in one process, re-clustered by `stages.dedupe.verify_clusters`
(what the build ran before it spread verification over node ranges), written in the resolve format. The tests
compare the build's verified folder with it byte for byte."""

from __future__ import annotations

import numpy as np

from pipeline.tasks import dedupe as dedupe_tasks
from pipeline.tasks.verify import signature_rows, similarity_histogram
from pipeline.work.store import Store
from stages.dedupe import verify_clusters


def verify_whole_clusters(
    work: Store, resolved: str, folder: str, process_folders: list[str], width: int, threshold: float
) -> dict:
    """The resolve folder's clusters (`resolved`) verified whole; the result written to `folder`; its record."""
    removed = np.frombuffer(work.read_bytes(f"{resolved}/{dedupe_tasks.REMOVED}"), np.uint64)
    survivors = np.frombuffer(work.read_bytes(f"{resolved}/{dedupe_tasks.SURVIVORS}"), np.uint64)
    exact = np.frombuffer(work.read_bytes(f"{resolved}/{dedupe_tasks.REMOVED_EXACT}"), np.uint8).astype(bool)
    order = np.lexsort((removed, survivors))
    survivors, removed, exact = survivors[order], removed[order], exact[order]
    first = np.flatnonzero(np.r_[True, survivors[1:] != survivors[:-1]]) if len(removed) else np.zeros(0, np.int64)
    keys = np.insert(removed, first, survivors[first])  # each cluster as [survivor, members...] in key order
    exact = np.insert(exact, first, False)
    starts = np.r_[first + np.arange(len(first)), len(keys)]
    wanted = np.unique(keys)
    sigs = signature_rows(work, process_folders, wanted, width)
    center, similarity, stays = verify_clusters(sigs, starts, exact, threshold, rows=np.searchsorted(wanted, keys))
    member = np.ones(len(keys), bool)
    member[starts[:-1]] = False
    histogram = similarity_histogram(similarity[member], stays[member])
    kept = member & stays
    order = np.argsort(keys[kept], kind="stable")
    removed, exact, survivors = keys[kept][order], exact[kept][order].astype(np.uint8), keys[center][kept][order]
    _, members = np.unique(survivors, return_counts=True)
    dedupe_tasks.write_removed(
        work, folder, removed, exact, survivors, (members + 1).astype(np.int64), len(process_folders)
    )
    return {
        "removed": int(len(removed)),
        "exact_removed": int(exact.sum()),
        "near_removed": int(len(removed) - exact.sum()),
        "clusters": int(len(members)),
        "kept_by_verify": int(sum(histogram["kept"])),
        "similarity": histogram,
    }
