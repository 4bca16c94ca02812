"""The dedupe tasks: combine a group of files' keys, find duplicate groups per partition, resolve clusters.

Requests stay a small constant per input file: a key group task reads each of its files' keys.bin and
quarantine once and writes one object with its rows in partition order; a partition task then makes one range
read per key group (not one per input file). The resolve format (REMOVED, REMOVED_EXACT, REMOVED_INDEX,
SURVIVORS, CLUSTER_SIZES) holds the removed documents' keys sorted, with an index by input file, so a later task
reads only the slice of the files it handles; the build writes it from the node ranges' removals
(`pipeline.tasks.components`), verified or not (`pipeline.tasks.verify`), and `resolve_duplicates` writes it in
one task, which the tests compare the build's against.
"""

from __future__ import annotations

import io
import json
import time
from collections import deque
from collections.abc import Collection, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass

import numpy as np

from manifests.keys import file_starts
from pipeline.tasks import samples
from pipeline.tasks.process import QUARANTINE, Processed
from pipeline.work.store import Store
from stages import dedupe as dedupe_stage
from stages.dedupe import DedupeConfig

ROW_BYTES = 24  # (slot, key, doc key) as three uint64
KEY_GROUP_ROWS = 10_000_000  # rows a key group task holds at most (~240 MB), unless one file has more
EDGE_BATCH = 1_000_000  # edges the resolve task reads before reducing them to (document, survivor) pairs
# the resolve task's outputs: removed keys (sorted uint64), whether each was an exact copy (uint8), the offset of
# each input file's first removed key (uint64, one more than files), cluster sizes (npy)
REMOVED, REMOVED_EXACT, REMOVED_INDEX, CLUSTER_SIZES = (
    "removed.bin",
    "removed_exact.bin",
    "removed_index.bin",
    "cluster_sizes.npy",
)
SURVIVORS = "survivors.bin"  # uint64 per removed key: the document kept in its place (its cluster's survivor)


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
    funnels = [{"source": f.source, "funnels": work.done(f.folder)["funnels"]} for f in files]
    record = {
        "key_offsets": offsets,
        "files": len(files),
        "quarantined": len(lines),
        "by_reason": dict(sorted(by_reason.items())),
        "source_funnels": sum_funnels(funnels),
        "filter_samples": [
            {k: v for k, v in asdict(s).items() if v is not None} for s in samples.filter_samples(funnels)
        ],
        "seconds": time.perf_counter() - started,
    }
    work.mark_done(folder, record)
    return record


def sum_funnels(funnels: list[dict]) -> list[dict]:
    """Files' funnels ({"source", "funnels": per subset}) summed per source and subset, in the same shape: the
    driver keeps one per key group instead of one per input file."""
    totals: dict[str, dict[str, dict]] = {}
    for r in funnels:
        for subset, f in r["funnels"].items():
            row = totals.setdefault(r["source"], {}).setdefault(
                subset, {"documents_read": 0, "bytes_read": 0, "chars_read": 0, "documents_passed": 0, "dropped": {}}
            )
            for name in ("documents_read", "bytes_read", "chars_read", "documents_passed"):
                row[name] += f.get(name, 0)
            for reason, n in f["dropped"].items():
                row["dropped"][reason] = row["dropped"].get(reason, 0) + n
    return [{"source": source, "funnels": subsets} for source, subsets in totals.items()]


@dataclass(frozen=True, slots=True)
class KeySlice:
    """Where one key group's rows of one partition are: its keys.bin and the row range."""

    folder: str
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class Part:
    """A slice of one task's output file of uint64 rows: rows [start, end)."""

    path: str
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class Slices:
    """One slice of each task's output file of a stage, as columns: a reader of parts takes it as it takes a list of
    Part. The driver plans later tasks x earlier tasks of them (node ranges x partitions: millions at a crawl
    snapshot); as two column views of one offsets matrix and one shared list of paths they cost ~16 B each, where
    Part objects cost ~120."""

    paths: list[str]
    starts: np.ndarray
    ends: np.ndarray

    def __len__(self) -> int:
        return len(self.paths)

    def __iter__(self) -> Iterator[Part]:
        return (Part(path, int(a), int(b)) for path, a, b in zip(self.paths, self.starts, self.ends))


READERS = 16  # range reads in flight in one task: a partition reads one slice per key group, a range one per range
WINDOW_BYTES = 16 << 20  # what `read_windows` holds in flight beyond the part being used


def read_all(work: Store, paths: list[str], starts: list[int], ends: list[int]) -> list[bytes]:
    """Range reads, READERS at a time (on an object store each is a round trip; their count grows with the corpus)."""
    if len(paths) < 2:
        return [work.read_range(p, a, b) for p, a, b in zip(paths, starts, ends)]
    with ThreadPoolExecutor(READERS) as pool:
        return list(pool.map(work.read_range, paths, starts, ends))


def read_each(work: Store, parts: Collection[Part], dtype: np.dtype) -> list[np.ndarray]:
    """The rows (records of `dtype`) of each part (one range read each)."""
    size = dtype.itemsize
    data = read_all(work, [p.path for p in parts], [p.start * size for p in parts], [p.end * size for p in parts])
    return [np.frombuffer(d, dtype) for d in data]


def read_windows(work: Store, parts: Collection[Part], dtype: np.dtype) -> Iterator[np.ndarray]:
    """The rows of each part in order (one range read each): up to READERS reads and WINDOW_BYTES in flight (at
    least one part), so a caller that keeps what it needs of each part never holds every part's bytes at once."""
    size = dtype.itemsize
    with ThreadPoolExecutor(READERS) as pool:
        flying: deque[tuple[Future, int]] = deque()
        held = 0
        for part in parts:
            nbytes = (part.end - part.start) * size
            while flying and (len(flying) == READERS or held + nbytes > WINDOW_BYTES):
                done, n = flying.popleft()
                held -= n
                yield np.frombuffer(done.result(), dtype)
            flying.append((pool.submit(work.read_range, part.path, part.start * size, part.end * size), nbytes))
            held += nbytes
        for done, _ in flying:
            yield np.frombuffer(done.result(), dtype)


def read_records(work: Store, parts: Collection[Part], dtype: np.dtype) -> np.ndarray:
    """The rows of every part, concatenated (one range read each), each part copied into place as it comes: the
    rows are held once, not as bytes and again as their concatenation."""
    bounds = np.cumsum([0] + [p.end - p.start for p in parts])
    rows = np.empty(int(bounds[-1]), dtype)
    for i, part in enumerate(read_windows(work, parts, dtype)):
        rows[bounds[i] : bounds[i + 1]] = part
    return rows


def read_parts(work: Store, parts: Collection[Part], width: int) -> np.ndarray:
    """The uint64 rows of `width` values of every part, concatenated (one range read each)."""
    return read_records(work, parts, np.dtype((np.uint64, (width,)))).reshape(-1, width)


def dedupe_partition(
    folder: str, partition: int, slices: list[KeySlice], work: Store, cuts: list[int] | None = None
) -> dict:
    """Gather one partition's (slot, key, doc_key) rows from every key group and find duplicate groups. The
    edges are written sorted by document, with the row offset of each node range of `cuts` (doc keys, one more
    than ranges) in the record: a components task reads its range's edges of every partition, one range read each."""
    started = time.perf_counter()
    gathered = read_parts(work, [Part(f"{s.folder}/keys.bin", s.start, s.end) for s in slices], 3)
    edges = dedupe_stage.duplicate_edges(gathered)
    edges = edges[np.lexsort((edges[:, 2], edges[:, 1], edges[:, 0]))]
    work.write_bytes(f"{folder}/edges.bin", np.ascontiguousarray(edges, np.uint64).tobytes())
    record = {
        "partition": partition,
        "rows": int(len(gathered)),
        "edges": int(len(edges)),
        "seconds": time.perf_counter() - started,
    }
    if cuts is not None:
        record["range_offsets"] = np.searchsorted(edges[:, 0], np.asarray(cuts, np.uint64)).tolist()
    work.mark_done(folder, record)
    return record


def resolve_duplicates(
    folder: str, partition_folders: list[str], n_files: int, work: Store, dedupe: DedupeConfig
) -> dict:
    """Connected components over every partition's edges: memory grows with the duplicates, not the corpus."""
    started = time.perf_counter()
    result = dedupe_stage.resolve_clusters(_edge_pairs(work, partition_folders), exact_slot=0 if dedupe.exact else None)
    order = np.argsort(result.removed, kind="stable")
    removed, exact = result.removed[order].astype(np.uint64), result.removed_exact[order].astype(np.uint8)
    survivors = result.survivors[order].astype(np.uint64)
    write_removed(work, folder, removed, exact, survivors, result.cluster_sizes, n_files)
    record = {
        "removed": int(len(removed)),
        "exact_removed": int(exact.sum()),
        "near_removed": int(len(removed) - exact.sum()),
        "clusters": int(len(result.cluster_sizes)),
        "seconds": time.perf_counter() - started,
    }
    work.mark_done(folder, record)
    return record


def write_removed(
    work: Store,
    folder: str,
    removed: np.ndarray,
    exact: np.ndarray,
    survivors: np.ndarray,
    cluster_sizes: np.ndarray,
    n_files: int,
) -> None:
    """The resolve format: the removed keys (sorted, uint64), their
    exact flags (uint8) and survivors (uint64), the offset of each input file's first removed key, cluster sizes."""
    work.write_bytes(f"{folder}/{REMOVED}", removed.tobytes())
    work.write_bytes(f"{folder}/{REMOVED_EXACT}", exact.tobytes())
    index = np.searchsorted(removed, file_starts(n_files)).astype(np.uint64)
    work.write_bytes(f"{folder}/{REMOVED_INDEX}", index.tobytes())
    work.write_bytes(f"{folder}/{SURVIVORS}", survivors.tobytes())
    buffer = io.BytesIO()
    np.save(buffer, cluster_sizes)
    work.write_bytes(f"{folder}/{CLUSTER_SIZES}", buffer.getvalue())


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


@dataclass(frozen=True, slots=True)
class RemovedDocs:
    """One input file's documents that dedupe removed, in key order."""

    keys: np.ndarray  # their doc keys (uint64)
    exact: np.ndarray  # whether each was an exact copy
    survivors: np.ndarray | None  # the document kept in each one's place (read only when asked for)


def removed_of(work: Store, resolved: str, file_indices: list[int], survivors: bool = False) -> dict[int, RemovedDocs]:
    """Per input file, its removed documents. Two range reads per run of consecutive file indices: the run's
    slice of the index, then its slice of the removed keys (and one more of the survivors when asked for)."""
    out = {}
    for run in _runs(sorted(set(file_indices))):
        first, last = run[0], run[-1]
        index = np.frombuffer(
            work.read_range(f"{resolved}/{REMOVED_INDEX}", first * 8, (last + 2) * 8), np.uint64
        ).astype(np.int64)
        keys = np.frombuffer(work.read_range(f"{resolved}/{REMOVED}", index[0] * 8, index[-1] * 8), np.uint64)
        exact = np.frombuffer(work.read_range(f"{resolved}/{REMOVED_EXACT}", index[0], index[-1]), np.uint8).astype(
            bool
        )
        kept = (
            np.frombuffer(work.read_range(f"{resolved}/{SURVIVORS}", index[0] * 8, index[-1] * 8), np.uint64)
            if survivors
            else None
        )
        for i, f in enumerate(run):
            a, b = index[i] - index[0], index[i + 1] - index[0]
            out[f] = RemovedDocs(keys[a:b], exact[a:b], kept[a:b] if survivors else None)
    return out


def _runs(values: list[int]) -> list[list[int]]:
    runs: list[list[int]] = []
    for v in values:
        if runs and v == runs[-1][-1] + 1:
            runs[-1].append(v)
        else:
            runs.append([v])
    return runs
