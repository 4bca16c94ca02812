"""The dedupe tasks: combine a group of files' keys, find duplicate groups per partition, resolve clusters.

Requests stay a small constant per input file: a key group task reads each of its files' keys.bin and
quarantine once and writes one object with its rows in partition order; a partition task then makes one range
read per key group (not one per input file). The resolve task writes the removed documents' keys sorted, with
an index by input file, so a later task reads only the slice of the files it handles.

With `dedupe.minhash.verify`, the resolve task also writes each cluster's rows partitioned by survivor
(CLUSTERS, CLUSTERS_INDEX); a verify task per partition reads its slice (one range read), its clusters'
signatures (sig.bin: three range reads per file touched) and re-clusters them by estimated Jaccard
(`stages.dedupe.verify_clusters`); one merge task writes the verified result in the resolve task's format
(REMOVED, REMOVED_EXACT, REMOVED_INDEX, CLUSTER_SIZES) into its own folder, which the count and mix tasks then
read instead. The work grows with the removals, not the corpus: a signature row (512 B) per cluster member.
"""

from __future__ import annotations

import io
import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

import numpy as np

from manifests.keys import file_indices, file_starts, ordinals
from pipeline.tasks import samples
from pipeline.tasks.process import QUARANTINE, SIGNATURES, Processed
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
# rows (survivor, member, exact) of every removal, sorted by (survivor % partitions, survivor, member), and the row
# offset of each partition (one more than partitions): a verify task reads its whole clusters with one range read
CLUSTERS, CLUSTERS_INDEX = "clusters.bin", "clusters_index.bin"
VERIFIED = "verified.npz"  # a verify task's output: keys, exact, survivors of what stays removed; similarity, kept
VERDICTS = "verdicts.bin"  # and of what stays removed, rows (member, survivor, exact) by member
SIMILARITY_BINS = 50  # the similarity histogram: estimated Jaccard in bins of 0.02


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


READERS = 16  # range reads in flight in one task: a partition reads one slice per key group, a range one per range


def read_all(work: Store, paths: list[str], starts: list[int], ends: list[int]) -> list[bytes]:
    """Range reads, READERS at a time (on an object store each is a round trip; their count grows with the corpus)."""
    if len(paths) < 2:
        return [work.read_range(p, a, b) for p, a, b in zip(paths, starts, ends)]
    with ThreadPoolExecutor(READERS) as pool:
        return list(pool.map(work.read_range, paths, starts, ends))


def read_parts(work: Store, parts: list[Part], width: int) -> np.ndarray:
    """The rows of every part, concatenated (one range read each)."""
    data = read_all(
        work, [p.path for p in parts], [p.start * 8 * width for p in parts], [p.end * 8 * width for p in parts]
    )
    rows = [np.frombuffer(d, np.uint64) for d in data]
    return (np.concatenate(rows) if rows else np.zeros(0, np.uint64)).reshape(-1, width)


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
    _write_removed(work, folder, removed, exact, survivors, result.cluster_sizes, n_files)
    if dedupe.minhash.verify:
        _write_clusters(work, folder, removed, exact, survivors, dedupe.partitions)
    record = {
        "removed": int(len(removed)),
        "exact_removed": int(exact.sum()),
        "near_removed": int(len(removed) - exact.sum()),
        "clusters": int(len(result.cluster_sizes)),
        "seconds": time.perf_counter() - started,
    }
    work.mark_done(folder, record)
    return record


def _write_removed(
    work: Store,
    folder: str,
    removed: np.ndarray,
    exact: np.ndarray,
    survivors: np.ndarray,
    cluster_sizes: np.ndarray,
    n_files: int,
) -> None:
    """The resolve format, written by resolve and by the verified merge: the removed keys (sorted, uint64), their
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


def _write_clusters(
    work: Store, folder: str, removed: np.ndarray, exact: np.ndarray, survivors: np.ndarray, partitions: int
) -> None:
    partition = survivors % np.uint64(partitions)
    order = np.lexsort((removed, survivors, partition))
    rows = np.column_stack((survivors[order], removed[order], exact[order].astype(np.uint64)))
    index = np.searchsorted(partition[order], np.arange(partitions + 1, dtype=np.uint64)).astype(np.uint64)
    work.write_bytes(f"{folder}/{CLUSTERS}", np.ascontiguousarray(rows, np.uint64).tobytes())
    work.write_bytes(f"{folder}/{CLUSTERS_INDEX}", index.tobytes())


def resolved_clusters(work: Store, resolved: str, partition: int) -> list[Part]:
    """Where a partition's clusters are in the single-task resolve's output (CLUSTERS, by CLUSTERS_INDEX)."""
    start, end = np.frombuffer(
        work.read_range(f"{resolved}/{CLUSTERS_INDEX}", partition * 8, (partition + 2) * 8), np.uint64
    ).tolist()
    return [Part(f"{resolved}/{CLUSTERS}", start, end)]


def verify_partition(
    folder: str,
    partition: int,
    clusters: list[Part],
    process_folders: list[str],
    threshold: float,
    work: Store,
    cuts: list[int] | None = None,
) -> dict:
    """One partition's clusters (whole, by survivor) re-clustered by their signatures' estimated Jaccard; writes
    every member's verdict, survivor (the kept document it was compared with last) and similarity. `clusters`:
    its rows (survivor, member, exact) in one or more parts (each range's, `pipeline.tasks.components.removals`)."""
    started = time.perf_counter()
    rows = read_parts(work, clusters, 3)
    rows = rows[np.lexsort((rows[:, 1], rows[:, 0]))]  # a cluster's members may come from several parts
    first = np.flatnonzero(np.r_[True, rows[1:, 0] != rows[:-1, 0]]) if len(rows) else np.zeros(0, np.int64)
    # each cluster as [survivor, members...] in key order
    keys = np.insert(rows[:, 1], first, rows[first, 0])
    exact = np.insert(rows[:, 2].astype(bool), first, False)
    starts = np.r_[first + np.arange(len(first)), len(keys)]
    wanted = np.unique(keys)
    sigs = _signature_rows(work, process_folders, wanted)
    center, similarity, removed = dedupe_stage.verify_clusters(
        sigs, starts, exact, threshold, rows=np.searchsorted(wanted, keys)
    )
    member = np.ones(len(keys), bool)
    member[starts[:-1]] = False
    buffer = io.BytesIO()
    np.savez(
        buffer,
        keys=keys[member],
        exact=exact[member],
        survivors=keys[center][member],
        similarity=similarity[member].astype(np.float32),
        stays=removed[member],
    )
    work.write_bytes(f"{folder}/{VERIFIED}", buffer.getvalue())
    record = {
        "partition": partition,
        "clusters": int(len(first)),
        "candidates": int(member.sum()),
        "kept": int((member & ~removed).sum()),
        "files_read": int(len(np.unique(file_indices(wanted)))),
        "seconds": time.perf_counter() - started,
    }
    if cuts is not None:  # what stays removed as rows (member, survivor, exact) by member, sliced by node range
        stays = member & removed
        order = np.argsort(keys[stays], kind="stable")
        verdicts = np.column_stack(
            (keys[stays][order], keys[center][stays][order], exact[stays][order].astype(np.uint64))
        )
        work.write_bytes(f"{folder}/{VERDICTS}", np.ascontiguousarray(verdicts, np.uint64).tobytes())
        record["range_offsets"] = np.searchsorted(verdicts[:, 0], np.asarray(cuts, np.uint64)).tolist()
        record["similarity"] = _similarity_histogram(similarity[member], removed[member])
    work.mark_done(folder, record)
    return record


def merge_verified(folder: str, verify_folders: list[str], n_files: int, work: Store) -> dict:
    """The verified removals in the resolve task's format (sorted keys, exact flags, index by input file, cluster
    sizes), and the similarity histogram of near removals (kept and removed) for the report."""
    started = time.perf_counter()
    parts = [dict(np.load(io.BytesIO(work.read_bytes(f"{v}/{VERIFIED}")))) for v in verify_folders]
    cat = {
        name: np.concatenate([p[name] for p in parts]) if parts else np.zeros(0)
        for name in ("keys", "exact", "survivors", "similarity", "stays")
    }
    histogram = _similarity_histogram(cat["similarity"], cat["stays"].astype(bool))
    order = np.argsort(cat["keys"], kind="stable")
    cat = {name: values[order][cat["stays"][order].astype(bool)] for name, values in cat.items()}
    removed, exact = cat["keys"].astype(np.uint64), cat["exact"].astype(np.uint8)
    survivors = cat["survivors"].astype(np.uint64)
    survivor_of, members = np.unique(survivors, return_counts=True)
    _write_removed(work, folder, removed, exact, survivors, (members + 1).astype(np.int64), n_files)
    record = {
        "removed": int(len(removed)),
        "exact_removed": int(exact.sum()),
        "near_removed": int(len(removed) - exact.sum()),
        "clusters": int(len(members)),
        "kept_by_verify": int(sum(histogram["kept"])),
        "similarity": histogram,
        "seconds": time.perf_counter() - started,
    }
    work.mark_done(folder, record)
    return record


def _similarity_histogram(similarity: np.ndarray, removed: np.ndarray) -> dict:
    """Counts of cluster members by estimated Jaccard with the document compared last, removed and kept."""
    bins = np.clip((similarity * SIMILARITY_BINS).astype(np.int64), 0, SIMILARITY_BINS - 1)
    return {
        "edges": np.linspace(0, 1, SIMILARITY_BINS + 1).round(2).tolist(),
        "removed": np.bincount(bins[removed], minlength=SIMILARITY_BINS).tolist(),
        "kept": np.bincount(bins[~removed], minlength=SIMILARITY_BINS).tolist(),
    }


def _signature_rows(work: Store, process_folders: list[str], wanted: np.ndarray) -> np.ndarray:
    """The compact signatures of the documents `wanted` (sorted doc keys), in that order. Per input file three
    range reads: the header, its ordinals, and the span of rows from the first wanted to the last."""
    files = file_indices(wanted).astype(np.int64)
    out = None
    for f in np.unique(files):
        path = f"{process_folders[f]}/{SIGNATURES}"
        n, width = np.frombuffer(work.read_range(path, 0, dedupe_stage.SIG_HEADER), np.uint64).astype(np.int64)
        sig_ordinals = np.frombuffer(
            work.read_range(path, dedupe_stage.SIG_HEADER, dedupe_stage.SIG_HEADER + 8 * n), np.uint64
        )
        mine = np.flatnonzero(files == f)
        at = np.searchsorted(sig_ordinals, ordinals(wanted[mine]))
        if np.any(at >= n) or not np.array_equal(sig_ordinals[np.minimum(at, n - 1)], ordinals(wanted[mine])):
            raise RuntimeError(
                f"{path}: lacks signatures of documents its keys.bin named; delete {process_folders[f]} and rerun the "
                "build"
            )
        start = dedupe_stage.SIG_HEADER + 8 * n + 2 * width * int(at.min())
        span = np.frombuffer(
            work.read_range(path, start, start + 2 * width * (int(at.max()) + 1 - int(at.min()))), np.uint16
        ).reshape(-1, width)
        out = np.zeros((len(wanted), width), np.uint16) if out is None else out
        out[mine] = span[at - at.min()]
    return out if out is not None else np.zeros((0, 0), np.uint16)


def _runs(values: list[int]) -> list[list[int]]:
    runs: list[list[int]] = []
    for v in values:
        if runs and v == runs[-1][-1] + 1:
            runs[-1].append(v)
        else:
            runs.append([v])
    return runs
