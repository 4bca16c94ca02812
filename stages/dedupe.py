"""Exact and MinHash-LSH deduplication as plain functions over uint64 arrays; the build wraps them in tasks.

Every document has a `doc_key` (`manifests.keys.doc_key`: smaller = earlier in the build's canonical
order), and a few uint64 keys, one per slot: slot 0 the xxh3_64 of its UTF-8 text when `dedupe.exact`, then
one LSH band key per MinHash band. Two documents are duplicates when they share a key in the same slot; the
earliest document of a group survives, and duplicates chain (A~B, B~C puts A, B, C in one cluster that keeps A).

The flow, in which no process ever holds all keys or signatures:
1. per input file: `document_keys(texts, cfg)` -> `partition_rows(keys, doc_keys, cfg.partitions)`;
2. per partition p: concatenate partition p's rows of every file -> `duplicate_edges(rows)`;
3. once: concatenate all edges -> `resolve_clusters(edges, exact_slot=...)`;
4. when `minhash.verify`: `verify_clusters(...)` re-clusters each LSH cluster by the stored signatures'
   (`pack_signatures`, written by step 1) estimated Jaccard: a member is removed only for a kept document at
   `minhash.threshold` or above. The build gives the same verdicts without holding a cluster whole: each member
   against its survivor (`equal_values`), the kept documents from the members the survivor does not remove
   (`kept_centers`), then the members after a kept document against those (`best_kept`).

Memory. A row is (slot, key, doc_key), 3 x uint64 = 24 bytes; a document gives one row per slot, and the rows
spread evenly over partitions (the keys are hashes), so a partition holds documents x slots / partitions rows.
`duplicate_edges` peaks at about 80 bytes per row it is given (the 24-byte input, a 24-byte sorted copy, an
8-byte sort order and ~24 bytes of group bookkeeping; measured with tracemalloc: 81 with no duplicates, 87
when half the documents are duplicates), i.e. 80 x slots / partitions bytes per document per partition: with
10 slots and 256 partitions 3.1 bytes per document, about 1.9 GB for SlimPajama's ~590M documents.
A file's task peaks at 64 x slots bytes per document of that file (keys, rows and their sort; measured).
`resolve_clusters` needs about 100 bytes per edge beyond the edges themselves (24 bytes each), and there is
one edge per (duplicate document, slot it matched in). A signature is 512 B (256 values, low 16 bits); a
member is compared with at most MAX_CENTERS kept documents of its cluster.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import xxhash
from numba import njit

from manifests.config import ConfigError
from stages.minhash import MinHashConfig, band_keys, compact, signatures

EXACT_SLOT = "exact"


@dataclass(kw_only=True, slots=True)
class DedupeConfig:
    exact: bool = True
    minhash: MinHashConfig = field(default_factory=MinHashConfig)
    partitions: int = 8  # band keys are split into this many partitions, one task each

    def __post_init__(self) -> None:
        if self.partitions < 1:
            raise ConfigError("partitions", "must be at least 1")


@dataclass(kw_only=True, slots=True)
class DedupeResult:
    removed: np.ndarray  # uint64 doc_keys of every non-survivor, sorted, unique
    removed_exact: np.ndarray  # bool per `removed`: True when it lost an exact-content group, else near duplicate
    cluster_sizes: np.ndarray  # int64, documents per cluster (survivor included), clusters of 2 or more only
    survivors: np.ndarray | None = None  # uint64 per `removed`: the survivor of its cluster


def key_slots(cfg: DedupeConfig) -> list[str]:
    """Names of the columns of `document_keys`, e.g. ["exact", "band0", ..., "band8"]."""
    slots = [EXACT_SLOT] if cfg.exact else []
    if cfg.minhash.enabled:
        slots += [f"band{band}" for band in range(cfg.minhash.bands)]
    return slots


def document_keys(texts: list[str], cfg: DedupeConfig) -> np.ndarray:
    """uint64 keys of shape (len(texts), len(key_slots(cfg)))."""
    return document_keys_and_signatures(texts, cfg)[0]


def document_keys_and_signatures(texts: list[str], cfg: DedupeConfig) -> tuple[np.ndarray, np.ndarray | None]:
    """The keys of `document_keys` and, when `minhash.verify`, the compact signatures (uint16, one row per text)."""
    keys = np.empty((len(texts), len(key_slots(cfg))), dtype=np.uint64)
    sigs = None
    column = 0
    if cfg.exact:
        # "surrogatepass": a lone surrogate (legal in a JSON escape) must hash, not crash the task.
        digests = (xxhash.xxh3_64_intdigest(t.encode("utf-8", "surrogatepass")) for t in texts)
        keys[:, 0] = np.fromiter(digests, dtype=np.uint64, count=len(texts))
        column = 1
    if cfg.minhash.enabled:
        mh = cfg.minhash
        full = signatures(texts, mh)
        keys[:, column:] = band_keys(full, mh.bands, mh.rows)
        sigs = compact(full) if mh.verify else None
    return keys, sigs


# sig.bin, a process task's signatures: uint64 documents n, uint64 width w, uint64 ordinals[n] (ascending),
# then uint16 signatures[n, w] (`minhash.compact`), so a reader finds any documents' rows by two range reads.
SIG_HEADER = 16


def pack_signatures(ordinals: np.ndarray, sigs: np.ndarray) -> bytes:
    ordinals = np.asarray(ordinals, np.uint64)
    if len(ordinals) > 1 and not np.all(ordinals[1:] > ordinals[:-1]):
        raise ValueError("ordinals must be strictly ascending (documents in file order)")
    header = np.array([len(ordinals), sigs.shape[1] if sigs.ndim == 2 else 0], np.uint64)
    return header.tobytes() + ordinals.tobytes() + np.ascontiguousarray(sigs, np.uint16).tobytes()


MAX_CENTERS = 256  # a cluster member is compared with at most this many kept documents of its cluster


def matches_needed(threshold: float, width: int) -> int:
    """Equal signature values (of `width`) a removal needs: estimated Jaccard at `threshold` or above."""
    return int(np.ceil(threshold * width - 1e-9))


def verify_clusters(
    sigs: np.ndarray, starts: np.ndarray, exact: np.ndarray, threshold: float, rows: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Re-cluster each LSH cluster by estimated Jaccard, greedily in key order. `sigs` holds the clusters' rows
    back to back, each cluster's survivor first (`starts`: where each cluster begins, plus the end). A member
    whose similarity with a kept document of its cluster (the survivor, or an earlier member kept before it)
    reaches `threshold` is removed, that document becoming its survivor; otherwise it is kept and later members
    may be removed for it. So every removal is verified against the document that stays in its place, and a
    chain A~B~C~D through weak links keeps what is far from A instead of losing it (or keeping C and D both).
    An exact copy is always removed (its twin holds the same text). `rows` (default: all in order) names each
    position's row of `sigs`, so a document in several positions is stored once. Returns per position the
    position of its survivor (itself for a kept one), its similarity with that survivor, and whether it is
    removed (False on survivors)."""
    rows = np.arange(len(sigs), dtype=np.int64) if rows is None else np.asarray(rows, np.int64)
    width = sigs.shape[1] if sigs.ndim == 2 else 0
    center = np.arange(len(rows), dtype=np.int64)
    matches = np.full(len(rows), width, dtype=np.int64)
    removed = np.zeros(len(rows), dtype=bool)
    if len(rows):
        need = matches_needed(threshold, width)
        _verify_kernel(
            np.ascontiguousarray(sigs),
            rows,
            np.asarray(starts, np.int64),
            np.asarray(exact, bool),
            need,
            MAX_CENTERS,
            center,
            matches,
            removed,
        )
    return center, matches / max(width, 1), removed


@njit(cache=True, nogil=True)
def _verify_kernel(sigs, rows, starts, exact, need, max_centers, center, matches, removed):
    width = sigs.shape[1]
    centers = np.empty(max_centers, np.int64)
    for c in range(starts.shape[0] - 1):
        a, b = starts[c], starts[c + 1]
        centers[0] = a
        n_centers = 1
        for i in range(a + 1, b):
            best, best_m = a, -1
            for k in range(n_centers):
                m = 0
                x, y = rows[i], rows[centers[k]]
                for v in range(width):
                    m += sigs[x, v] == sigs[y, v]
                if m > best_m:
                    best, best_m = centers[k], m
                if m == width:
                    break
            matches[i] = best_m
            if best_m >= need or exact[i]:
                center[i], removed[i] = best, True
            elif n_centers < max_centers:  # past the cap a member is kept and compared with no later one
                centers[n_centers] = i
                n_centers += 1


def equal_values(a: np.ndarray, b: np.ndarray, batch: int = 65_536) -> np.ndarray:
    """Per row, how many values of signature rows `a` and `b` (same shape) are equal, `batch` rows at a time."""
    out = np.zeros(len(a), np.int64)
    for i in range(0, len(a), batch):
        out[i : i + batch] = np.count_nonzero(a[i : i + batch] == b[i : i + batch], axis=1)
    return out


def kept_centers(sigs: np.ndarray, starts: np.ndarray, threshold: float) -> np.ndarray:
    """The kept documents every member of its cluster is compared with, as `verify_clusters` finds them, from
    each cluster's survivor and only its members that the survivor does not remove (`sigs`: those, each
    cluster's survivor first, `starts` as for `verify_clusters`, no exact copies). A member the survivor removes
    is removed whatever else is kept, so it never joins the kept documents: these are the same. Returns per
    position whether it is one of its cluster's first MAX_CENTERS kept documents (the survivor is)."""
    _, _, removed = verify_clusters(sigs, starts, np.zeros(len(sigs), bool), threshold)
    kept = (~removed).astype(np.int64)
    cluster = np.repeat(np.arange(len(starts) - 1), np.diff(starts))
    rank = np.cumsum(kept) - np.concatenate(([0], np.cumsum(kept)))[np.asarray(starts[:-1], np.int64)][cluster]
    return ~removed & (rank <= MAX_CENTERS)


@njit(cache=True, nogil=True)
def best_kept(sigs, first, last, center_sigs, survivor_matches):
    """Per member i (its signature `sigs[i]`), the kept document of its cluster it is removed for or compared
    with last, as `verify_clusters` chooses it: its survivor, matching `survivor_matches[i]` values, then the
    kept documents `center_sigs[first[i]:last[i]]` (those before it in key order), the first with the most
    equal values. Returns per member the index of that kept document (-1: the survivor) and its equal values."""
    width = sigs.shape[1]
    best = np.full(sigs.shape[0], -1, np.int64)
    best_m = survivor_matches.astype(np.int64)
    for i in range(sigs.shape[0]):
        if best_m[i] == width:
            continue
        for c in range(first[i], last[i]):
            m = 0
            for v in range(width):
                m += sigs[i, v] == center_sigs[c, v]
            if m > best_m[i]:
                best[i], best_m[i] = c, m
            if m == width:
                break
    return best, best_m


def partition_rows(keys: np.ndarray, doc_keys: np.ndarray, partitions: int) -> list[np.ndarray]:
    """Per partition p, the (m, 3) uint64 rows (slot, key, doc_key) whose key % partitions == p, sorted by
    (slot, key, doc_key). A (slot, key) group lands in one partition whatever file its documents came from."""
    n_docs, n_slots = keys.shape
    doc_keys = np.asarray(doc_keys, dtype=np.uint64)
    if doc_keys.shape != (n_docs,):
        raise ValueError(f"{doc_keys.shape[0]} doc_keys for {n_docs} rows of keys; give one doc_key per document")
    rows = np.empty((n_docs * n_slots, 3), dtype=np.uint64)
    rows[:, 0] = np.tile(np.arange(n_slots, dtype=np.uint64), n_docs)
    rows[:, 1] = keys.ravel()
    rows[:, 2] = np.repeat(doc_keys, n_slots)
    partition = rows[:, 1] % np.uint64(partitions)
    order = np.lexsort((rows[:, 2], rows[:, 1], rows[:, 0], partition))
    rows = rows[order]
    bounds = np.searchsorted(partition[order], np.arange(partitions + 1, dtype=np.uint64))
    return [rows[bounds[p] : bounds[p + 1]] for p in range(partitions)]


def duplicate_edges(rows: np.ndarray) -> np.ndarray:
    """Rows of one partition from all files -> (m, 3) uint64 edges (doc_key, survivor_doc_key, slot), one
    for every document whose (slot, key) group holds a smaller doc_key; the survivor is the group's smallest."""
    rows = np.asarray(rows, dtype=np.uint64).reshape(-1, 3)
    rows = rows[np.lexsort((rows[:, 2], rows[:, 1], rows[:, 0]))]
    starts_group = np.ones(len(rows), dtype=bool)
    starts_group[1:] = (rows[1:, 0] != rows[:-1, 0]) | (rows[1:, 1] != rows[:-1, 1])
    starts = np.flatnonzero(starts_group)
    survivor = np.repeat(rows[starts, 2], np.diff(starts, append=len(rows)))
    # A row equal to the one before it is the same file's rows delivered twice (a retried task): no edge.
    repeated = np.zeros(len(rows), dtype=bool)
    repeated[1:] = ~starts_group[1:] & (rows[1:, 2] == rows[:-1, 2])
    duplicate = (rows[:, 2] != survivor) & ~repeated
    return np.column_stack((rows[duplicate, 2], survivor[duplicate], rows[duplicate, 0]))


@njit(cache=True, nogil=True)
def _find(parent, x):
    while parent[x] != x:
        parent[x] = parent[parent[x]]  # path halving
        x = parent[x]
    return x


@njit(cache=True, nogil=True)
def _component_roots(n_nodes, left, right):
    """Union-find by minimum: a component's root is its smallest node, so every parent pointer points down."""
    parent = np.arange(n_nodes)
    for i in range(left.shape[0]):
        a = _find(parent, left[i])
        b = _find(parent, right[i])
        if a < b:
            parent[b] = a
        elif b < a:
            parent[a] = b
    # Parents are smaller than their children, so one ascending pass leaves every node on its root.
    for x in range(n_nodes):
        parent[x] = parent[parent[x]]
    return parent


def resolve_clusters(edges: np.ndarray, *, exact_slot: int | None = 0) -> DedupeResult:
    """Connected components over the edges of all partitions; each cluster keeps its smallest doc_key.
    `exact_slot` is the slot number of the exact-content key: 0 when `dedupe.exact` (see `key_slots`),
    None when exact dedupe is off (then every removal is a near duplicate)."""
    edges = np.asarray(edges, dtype=np.uint64).reshape(-1, 3)
    nodes, node_index = np.unique(edges[:, :2].ravel(), return_inverse=True)
    node_index = node_index.reshape(-1, 2)
    roots = _component_roots(len(nodes), node_index[:, 0], node_index[:, 1])
    removed = nodes[roots != np.arange(len(nodes))]
    sizes = np.bincount(roots, minlength=len(nodes))
    exact_losers = edges[edges[:, 2] == exact_slot, 0] if exact_slot is not None else edges[:0, 0]
    return DedupeResult(
        removed=removed,
        removed_exact=np.isin(removed, exact_losers),
        cluster_sizes=sizes[sizes >= 2].astype(np.int64),
        survivors=nodes[roots[roots != np.arange(len(nodes))]],
    )
