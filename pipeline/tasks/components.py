"""Duplicate clusters as connected components over the dedupe edges, spread over tasks by node range.

The documents are cut into node ranges (consecutive input files, `component_ranges`); a range's task holds only
its own documents' labels and out-edges (a document has at most one edge per key slot, to a smaller key), never
another range's, so no task holds more than its range's share of the pairs, however large a cluster grows.

Min-label propagation with pointer jumping, in rounds of two stages (each one task per range):
- propagate (range k): every node's label L (a smaller key in its cluster; at first its smallest out-neighbor)
  lowered by the answers of the last round (the labels of its out-neighbors and of the node L points to);
  then it asks each out-neighbor t and each label node L(a), proposing L(a): one row per target (the smallest
  proposal), sorted by key, so each target range's rows are one slice;
- answer (range j): its nodes' labels lowered by the proposals they got (downward along the edges), then each
  asking range gets back, per node it asked about, that node's label (upward, and L(L(a)): the jump).
A label is always a key of the same cluster and only falls, so the rounds end; they end when a round lowers no
label, and then every edge joins two equal labels: each cluster carries its smallest key, the survivor, as
`stages.dedupe.resolve_clusters` gives it. A chain of n documents takes ~log2(n) rounds (the jumps double);
a giant cluster costs its center one row per asking range, not one per member.

Then `removals` (per range: its removed documents, their survivors and exact flags; per survivor the count of
its members here), `sizes` (per survivor range: the cluster sizes, in survivor order) and `write_resolved` (one
task that streams the parts, in range order, into the resolve format: removed.bin, removed_exact.bin,
survivors.bin, removed_index.bin and cluster_sizes.npy, byte-identical to the single-task resolve's). With
verify, `pipeline.tasks.verify` checks each range's removals and writes what stays removed as a range's removals,
and the same sizes and writer give the verified folder.
"""

from __future__ import annotations

import os
import time
from collections.abc import Collection

import numpy as np

from manifests.keys import doc_key, file_indices
from pipeline.tasks.dedupe import (
    CLUSTER_SIZES,
    REMOVED,
    REMOVED_EXACT,
    REMOVED_INDEX,
    SURVIVORS,
    Part,
    read_parts,
    read_windows,
)
from pipeline.tasks.process import Processed
from pipeline.work.store import Store

# documents per node range (consecutive whole files). A range's tasks grow with its documents (labels, out-edges,
# the asks and answers and their sorts: propagate 216 MiB at a 1M-document range, 263 at 1.5M) and the
# exchanges between ranges with ranges^2 (one slice per pair of ranges a round): 1.5M keeps every task within
# 1.25x of a 1M-document build's at ~1,700 ranges for a 2.5B-document crawl snapshot (BENCHMARKS.md, "Raw web
# crawl scale"). TOKENMILL_COMPONENT_DOCUMENTS overrides it (tests cut the small sample into several ranges with it)
COMPONENT_DOCUMENTS = int(os.environ.get("TOKENMILL_COMPONENT_DOCUMENTS", 1_500_000))
EDGES, EXACT, NODES, LABELS = "edges.bin", "exact.bin", "nodes.bin", "labels.bin"
ASKS, ANSWERS, SIZES = "asks.bin", "answers.bin", "sizes.bin"
REMOVED_ROWS, COUNTS = "removed.bin", "counts.bin"


def component_ranges(processed: list[Processed], documents: int = COMPONENT_DOCUMENTS) -> list[int]:
    """The node ranges' bounds as doc keys (one more than ranges): consecutive files up to `documents` each."""
    cuts, held = [0], 0
    for p in processed:
        if held and held + p.documents > documents:
            cuts.append(doc_key(p.file_index, 0))
            held = 0
        held += p.documents
    return cuts + [doc_key(len(processed), 0)]


def _write(work: Store, path: str, rows: np.ndarray) -> None:
    work.write_bytes(path, np.ascontiguousarray(rows, np.uint64).tobytes())


def _array(work: Store, path: str, width: int = 1) -> np.ndarray:
    data = np.frombuffer(work.read_bytes(path), np.uint64)
    return data.reshape(-1, width) if width > 1 else data


def propagate(
    folder: str,
    rnd: int,
    cuts: list[int],
    edges: Collection[Part] | str,
    state: str | None,
    answers: Collection[Part],
    exact_slot: int | None,
    work: Store,
) -> dict:
    """Round `rnd` of one node range: labels lowered by the answers, then the asks (see the module)."""
    started = time.perf_counter()
    if rnd == 0:  # its documents' edges from every dedupe partition, as (document, survivor) pairs
        pairs, exact = _first_edges(work, edges, exact_slot)
        _write(work, f"{folder}/{EDGES}", pairs)
        _write(work, f"{folder}/{EXACT}", exact)
        nodes, first = np.unique(pairs[:, 0], return_index=True)
        labels = pairs[first, 1]  # the pairs are sorted: each document's first is its smallest out-neighbor
        source = np.searchsorted(nodes, pairs[:, 0])
        changed = int(len(nodes))
    else:
        pairs = _array(work, f"{edges}/{EDGES}", 2)
        nodes, labels = _array(work, f"{state}/{NODES}"), _array(work, f"{state}/{LABELS}")
        source = np.searchsorted(nodes, pairs[:, 0])
        # (node, its label), one row per node this range asked about, sorted by node as the asks were (each
        # answering range's replies in range order)
        asked = read_parts(work, answers, 2)
        known, known_label = asked[:, 0], asked[:, 1]
        new = labels.copy()
        # every out-neighbor was asked about; a label node only if the label was set before the last asks
        for rows, target in ((source, pairs[:, 1]), (np.arange(len(nodes)), labels)):
            at = np.minimum(np.searchsorted(known, target), max(len(known) - 1, 0))
            mine = (known[at] == target) if len(known) else np.zeros(len(target), bool)
            np.minimum.at(new, rows[mine], known_label[at[mine]])
        del asked, known, known_label, at, mine
        changed = int(np.count_nonzero(new < labels))
        labels = new
    # targets: every out-neighbor (proposed its source's label) and every label node (asked for the jump); one
    # array sorted at a time, as the range's largest arrays are these
    pointing = labels != nodes
    targets = np.concatenate([pairs[:, 1], labels[pointing]])
    proposals = np.concatenate([labels[source], labels[pointing]])
    del source, pointing
    order = np.lexsort((proposals, targets))
    targets = targets[order]
    proposals = proposals[order]
    del order
    first = np.r_[True, targets[1:] != targets[:-1]] if len(targets) else np.zeros(0, bool)
    asks = np.column_stack((targets[first], proposals[first]))
    _write(work, f"{folder}/{NODES}", nodes)
    _write(work, f"{folder}/{LABELS}", labels)
    _write(work, f"{folder}/{ASKS}", asks)
    record = {
        "round": rnd,
        "nodes": int(len(nodes)),
        "edges": int(len(pairs)),
        "asks": int(len(asks)),
        "changed": changed,
        "ask_offsets": np.searchsorted(asks[:, 0], np.asarray(cuts, np.uint64)).tolist(),
        "seconds": time.perf_counter() - started,
    }
    work.mark_done(folder, record)
    return record


def _first_edges(work: Store, edges: Collection[Part], exact_slot: int | None) -> tuple[np.ndarray, np.ndarray]:
    """A range's (document, neighbor) pairs, unique and sorted, and its exact copies, from every partition's edge
    rows (document, neighbor, slot). The slot column is dropped as each part comes (16 B a row held, not 24 twice),
    and the pairs are made unique by one indirect sort (np.unique over rows copies them twice more)."""
    bounds = np.cumsum([0] + [p.end - p.start for p in edges])
    pairs = np.empty((int(bounds[-1]), 2), np.uint64)
    exact = []
    for i, rows in enumerate(read_windows(work, edges, np.dtype((np.uint64, (3,))))):
        pairs[bounds[i] : bounds[i + 1]] = rows[:, :2]
        if exact_slot is not None:
            exact.append(rows[rows[:, 2] == exact_slot, 0])
    rows = None  # drops the last part's bytes before the sort
    pairs = pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]
    keep = np.ones(len(pairs), bool)
    keep[1:] = (pairs[1:, 0] != pairs[:-1, 0]) | (pairs[1:, 1] != pairs[:-1, 1])
    return pairs[keep], np.unique(np.concatenate(exact)) if exact else np.zeros(0, np.uint64)


def answer(folder: str, rnd: int, state: str, asks: Collection[Part], work: Store) -> dict:
    """Round `rnd` of one node range: its nodes' labels lowered by the proposals it got, and each asking range's
    answers (per node asked about, its label), in the asking ranges' order."""
    started = time.perf_counter()
    nodes, labels = _array(work, f"{state}/{NODES}"), _array(work, f"{state}/{LABELS}")
    every = read_parts(work, asks, 2)  # each asking range's asks, in range order
    all_nodes = np.union1d(nodes, every[:, 0])
    new = all_nodes.copy()
    new[np.searchsorted(all_nodes, nodes)] = labels
    before = new.copy()
    asked = np.searchsorted(all_nodes, every[:, 0])
    np.minimum.at(new, asked, every[:, 1])
    changed = int(np.count_nonzero(new < before))
    del before
    _write(work, f"{folder}/{NODES}", all_nodes)
    _write(work, f"{folder}/{LABELS}", new)
    _write(work, f"{folder}/{ANSWERS}", np.column_stack((every[:, 0], new[asked])))
    record = {
        "round": rnd,
        "nodes": int(len(all_nodes)),
        "asks": int(len(every)),
        "changed": changed,
        "answer_offsets": np.cumsum([0] + [a.end - a.start for a in asks]).tolist(),
        "seconds": time.perf_counter() - started,
    }
    work.mark_done(folder, record)
    return record


def removals(folder: str, state: str, exact_of: str, cuts: list[int], work: Store) -> dict:
    """One range's removed documents (rows member, survivor, exact, by member) and its members' count per
    survivor (rows survivor, count, by survivor, offsets per survivor range)."""
    started = time.perf_counter()
    nodes, labels = _array(work, f"{state}/{NODES}"), _array(work, f"{state}/{LABELS}")
    removed = labels != nodes
    members, survivors = nodes[removed], labels[removed]
    exact = np.isin(members, _array(work, f"{exact_of}/{EXACT}")).astype(np.uint64)
    _write(work, f"{folder}/{REMOVED_ROWS}", np.column_stack((members, survivors, exact)))
    record = {
        "removed": int(len(members)),
        "exact_removed": int(exact.sum()),
        "count_offsets": write_counts(work, folder, survivors.copy(), cuts),
        "seconds": time.perf_counter() - started,
    }
    work.mark_done(folder, record)
    return record


def write_counts(work: Store, folder: str, survivors: np.ndarray, cuts: list[int]) -> list[int]:
    """A range's members per survivor (COUNTS: rows survivor, count, by survivor), what the sizes tasks read;
    returns the offset of each survivor range's rows (`cuts`). Sorts `survivors` in place (~20 B a member)."""
    survivors.sort()
    first = np.flatnonzero(np.r_[True, survivors[1:] != survivors[:-1]]) if len(survivors) else np.zeros(0, np.int64)
    rows = np.empty((len(first), 2), np.uint64)
    rows[:, 0] = survivors[first]
    rows[:, 1] = np.diff(np.r_[first, len(survivors)])
    work.write_bytes(f"{folder}/{COUNTS}", rows.tobytes())
    return np.searchsorted(rows[:, 0], np.asarray(cuts, np.uint64)).tolist()


def sizes(folder: str, counts: Collection[Part], work: Store) -> dict:
    """One survivor range's cluster sizes (its members in every range, plus itself), in survivor order."""
    started = time.perf_counter()
    rows = read_parts(work, counts, 2)
    survivor, at = np.unique(rows[:, 0], return_inverse=True)
    size = np.bincount(at.ravel(), weights=rows[:, 1].astype(np.float64), minlength=len(survivor)).astype(np.int64) + 1
    work.write_bytes(f"{folder}/{SIZES}", size.tobytes())
    record = {"clusters": int(len(survivor)), "seconds": time.perf_counter() - started}
    work.mark_done(folder, record)
    return record


def write_resolved(
    folder: str,
    removal_folders: list[str],
    size_folders: list[str],
    n_files: int,
    work: Store,
    extra: dict | None = None,
) -> dict:
    """The resolve format, streamed from the parts in range order (each part is one range's, sorted; the ranges
    are consecutive keys): one part in memory at a time. `extra`: more for the done record (verify's histogram)."""
    started = time.perf_counter()
    per_file = np.zeros(n_files, np.int64)
    removed = exact_removed = 0
    with (
        work.writer(f"{folder}/{REMOVED}") as keys,
        work.writer(f"{folder}/{REMOVED_EXACT}") as exact,
        work.writer(f"{folder}/{SURVIVORS}") as kept,
    ):
        for part in removal_folders:
            rows = _array(work, f"{part}/{REMOVED_ROWS}", 3)
            keys.write(np.ascontiguousarray(rows[:, 0]).tobytes())
            kept.write(np.ascontiguousarray(rows[:, 1]).tobytes())
            exact.write(rows[:, 2].astype(np.uint8).tobytes())
            per_file += np.bincount(file_indices(rows[:, 0]).astype(np.int64), minlength=n_files)
            removed += len(rows)
            exact_removed += int(rows[:, 2].sum())
    index = np.concatenate(([0], np.cumsum(per_file))).astype(np.uint64)
    work.write_bytes(f"{folder}/{REMOVED_INDEX}", index.tobytes())
    clusters = sum(int(work.done(s)["clusters"]) for s in size_folders)
    with work.writer(f"{folder}/{CLUSTER_SIZES}") as out:  # as np.save writes an int64 vector of that length
        np.lib.format.write_array_header_1_0(
            out,
            {"descr": np.lib.format.dtype_to_descr(np.dtype(np.int64)), "fortran_order": False, "shape": (clusters,)},
        )
        for s in size_folders:
            out.write(work.read_bytes(f"{s}/{SIZES}"))
    record = {
        "removed": removed,
        "exact_removed": exact_removed,
        "near_removed": removed - exact_removed,
        "clusters": clusters,
        **(extra or {}),
        "seconds": time.perf_counter() - started,
    }
    work.mark_done(folder, record)
    return record
