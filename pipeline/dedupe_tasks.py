"""The dedupe tasks: combine a group of files' keys, find duplicate groups per partition, resolve clusters.

Requests stay a small constant per input file: a key group task reads each of its files' keys.bin and
quarantine once and writes one object with its rows in partition order; a partition task then makes one range
read per key group (not one per input file). The resolve task writes the removed documents' keys sorted, with
an index by input file, so a later task reads only the slice of the files it handles.
"""
from __future__ import annotations

import io
import json
import time
from dataclasses import dataclass

import numpy as np

from pipeline.ledger import Store
from pipeline.tasks import QUARANTINE, Processed
from stages import dedupe as dedupe_stage
from stages.dedupe import DedupeConfig

ROW_BYTES = 24  # (slot, key, doc key) as three uint64
KEY_GROUP_ROWS = 10_000_000  # rows a key group task holds at most (~240 MB), unless one file has more
EDGE_BATCH = 1_000_000  # edges the resolve task reads before reducing them to (document, survivor) pairs
# the resolve task's outputs: removed keys (sorted uint64), whether each was an exact copy (uint8), the offset of
# each input file's first removed key (uint64, one more than files), cluster sizes (npy)
REMOVED, REMOVED_EXACT, REMOVED_INDEX, CLUSTER_SIZES = "removed.bin", "removed_exact.bin", "removed_index.bin", "cluster_sizes.npy"


def key_groups(processed: list[Processed], slots: int) -> list[list[Processed]]:
    """Consecutive files, grouped until a group holds KEY_GROUP_ROWS rows (a file is never split)."""
    groups, current, rows = [], [], 0
    for p in processed:
        if current and rows + p.documents * slots > KEY_GROUP_ROWS:
            groups.append(current)
            current, rows = [], 0
        current.append(p)
        rows += p.documents * slots
    return groups + [current] if current else groups


def combine_keys(folder: str, files: list[Processed], partitions: int, work: Store) -> dict:
    """One key group: its files' rows in partition order (one object), and their quarantine records (one object)."""
    started = time.perf_counter()
    per_file = [f.read_keys(work, partitions) for f in files]
    # each file's rows of partition p go to one place of the combined array: the rows are held twice at most
    # (the files' and the combined copy, then the combined copy and its bytes), not four times
    counts = np.array([np.diff(file_offsets) for file_offsets, _ in per_file], np.int64).reshape(len(files), partitions)
    offsets = np.concatenate(([0], np.cumsum(counts.sum(axis=0)))).astype(np.int64)
    at = offsets[:-1] + np.cumsum(counts, axis=0) - counts
    combined = np.empty((int(offsets[-1]), 3), np.uint64)
    for k, (file_offsets, rows) in enumerate(per_file):
        for p in np.flatnonzero(counts[k]).tolist():
            combined[at[k, p] : at[k, p] + counts[k, p]] = rows[file_offsets[p] : file_offsets[p + 1]]
    del per_file
    work.write_bytes(f"{folder}/keys.bin", combined.tobytes())
    del combined
    offsets = offsets.tolist()
    lines = [line for f in files for line in work.read_bytes(f"{f.folder}/{QUARANTINE}").decode().splitlines()]
    work.write_bytes(f"{folder}/{QUARANTINE}", "".join(line + "\n" for line in lines).encode())
    by_reason: dict[str, int] = {}
    for line in lines:
        reason = json.loads(line)["reason"]
        by_reason[reason] = by_reason.get(reason, 0) + 1
    record = {"key_offsets": offsets, "files": len(files), "quarantined": len(lines), "by_reason": dict(sorted(by_reason.items())),
              "seconds": time.perf_counter() - started}
    work.mark_done(folder, record)
    return record


@dataclass(frozen=True, slots=True)
class KeySlice:
    """Where one key group's rows of one partition are: its keys.bin and the row range."""

    folder: str
    start: int
    end: int


def dedupe_partition(folder: str, partition: int, slices: list[KeySlice], work: Store) -> dict:
    """Gather one partition's (slot, key, doc_key) rows from every key group and find duplicate groups."""
    started = time.perf_counter()
    rows = [np.frombuffer(work.read_range(f"{s.folder}/keys.bin", s.start * ROW_BYTES, s.end * ROW_BYTES), np.uint64).reshape(-1, 3)
            for s in slices]
    gathered = np.concatenate(rows) if rows else np.zeros((0, 3), np.uint64)
    del rows  # the gathered copy is all duplicate_edges needs; keep peak memory at one copy
    edges = dedupe_stage.duplicate_edges(gathered)
    work.write_bytes(f"{folder}/edges.bin", np.ascontiguousarray(edges, np.uint64).tobytes())
    record = {"partition": partition, "rows": int(len(gathered)), "edges": int(len(edges)), "seconds": time.perf_counter() - started}
    work.mark_done(folder, record)
    return record


def resolve_duplicates(folder: str, partition_folders: list[str], n_files: int, work: Store, dedupe: DedupeConfig) -> dict:
    """Connected components over every partition's edges: memory grows with the duplicates, not the corpus."""
    started = time.perf_counter()
    result = dedupe_stage.resolve_clusters(_edge_pairs(work, partition_folders), exact_slot=0 if dedupe.exact else None)
    order = np.argsort(result.removed, kind="stable")
    removed, exact = result.removed[order].astype(np.uint64), result.removed_exact[order].astype(np.uint8)
    index = np.searchsorted(removed, np.arange(n_files + 1, dtype=np.uint64) << np.uint64(32)).astype(np.uint64)
    work.write_bytes(f"{folder}/{REMOVED}", removed.tobytes())
    work.write_bytes(f"{folder}/{REMOVED_EXACT}", exact.tobytes())
    work.write_bytes(f"{folder}/{REMOVED_INDEX}", index.tobytes())
    buffer = io.BytesIO()
    np.save(buffer, result.cluster_sizes)
    work.write_bytes(f"{folder}/{CLUSTER_SIZES}", buffer.getvalue())
    record = {
        "removed": int(len(removed)),
        "exact_removed": int(exact.sum()),
        "near_removed": int(len(removed) - exact.sum()),
        "clusters": int(len(result.cluster_sizes)),
        "seconds": time.perf_counter() - started,
    }
    work.mark_done(folder, record)
    return record


def _edge_pairs(work: Store, partition_folders: list[str]) -> np.ndarray:
    """Every partition's edges, reduced to one per (document, survivor) pair as they are read, in batches of at
    least EDGE_BATCH rows. A copy matches its original in several key slots (an exact copy in all of them), so
    this holds several times fewer rows than the edges; the clusters and the exact verdicts are the same, as a
    pair keeps its smallest slot (slot 0, the exact key, when any of its edges had it)."""
    pairs, pending, rows = np.zeros((0, 3), np.uint64), [], 0
    for p in partition_folders:
        pending.append(np.frombuffer(work.read_bytes(f"{p}/edges.bin"), np.uint64).reshape(-1, 3))
        rows += len(pending[-1])
        if rows > max(EDGE_BATCH, len(pairs)):
            pairs, pending, rows = _pairs(np.concatenate([pairs, *pending])), [], 0
    return _pairs(np.concatenate([pairs, *pending]))


def _pairs(edges: np.ndarray) -> np.ndarray:
    edges = edges[np.lexsort((edges[:, 2], edges[:, 1], edges[:, 0]))]
    first = np.ones(len(edges), bool)
    first[1:] = (edges[1:, 0] != edges[:-1, 0]) | (edges[1:, 1] != edges[:-1, 1])
    return edges[first]


def removed_of(work: Store, resolved: str, file_indices: list[int]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Per input file: (its removed doc keys, whether each was an exact copy). Two range reads per run of
    consecutive file indices: the run's slice of the index, then its slice of the removed keys."""
    out = {}
    for run in _runs(sorted(set(file_indices))):
        first, last = run[0], run[-1]
        index = np.frombuffer(work.read_range(f"{resolved}/{REMOVED_INDEX}", first * 8, (last + 2) * 8), np.uint64).astype(np.int64)
        keys = np.frombuffer(work.read_range(f"{resolved}/{REMOVED}", index[0] * 8, index[-1] * 8), np.uint64)
        exact = np.frombuffer(work.read_range(f"{resolved}/{REMOVED_EXACT}", index[0], index[-1]), np.uint8).astype(bool)
        for i, f in enumerate(run):
            a, b = index[i] - index[0], index[i + 1] - index[0]
            out[f] = (keys[a:b], exact[a:b])
    return out


def _runs(values: list[int]) -> list[list[int]]:
    runs: list[list[int]] = []
    for v in values:
        if runs and v == runs[-1][-1] + 1:
            runs[-1].append(v)
        else:
            runs.append([v])
    return runs
