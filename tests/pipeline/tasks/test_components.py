"""The distributed duplicate clustering (`pipeline/tasks/components.py`, run by the driver's `components_of`) gives
the single-task resolve's files byte for byte, on planted clusters: a long chain across files, a giant cluster
of boilerplate joined to others, exact copies, random small clusters; over one node range and over many."""

from __future__ import annotations

import numpy as np
import pytest

from manifests.keys import doc_key
from pipeline.build.driver import components_of
from pipeline.tasks import dedupe as dedupe_tasks
from pipeline.tasks.components import component_ranges
from pipeline.tasks.process import Processed
from pipeline.work.store import Store
from stages.dedupe import DedupeConfig
from stages.minhash import MinHashConfig
from tests.support.inprocess import InProcessRunner

FILES, PER_FILE, PARTITIONS, SLOTS = 12, 2_000, 3, 6
RESOLVE_FILES = (
    dedupe_tasks.REMOVED,
    dedupe_tasks.REMOVED_EXACT,
    dedupe_tasks.REMOVED_INDEX,
    dedupe_tasks.SURVIVORS,
    dedupe_tasks.CLUSTER_SIZES,
)


def planted_rows(seed: int) -> np.ndarray:
    """(slot, key, doc key) rows: every document a unique key per slot, then groups sharing one key in a slot."""
    rng = np.random.default_rng(seed)
    docs = np.array([doc_key(f, line) for f in range(FILES) for line in range(1, PER_FILE + 1)], np.uint64)
    keys = rng.integers(1, 1 << 62, (len(docs), SLOTS), dtype=np.uint64)
    groups: list[tuple[int, list[int]]] = []
    chain = np.sort(rng.choice(len(docs), 300, replace=False))  # a chain of 300 documents through every file
    groups += [(1 + i % (SLOTS - 1), [int(chain[i]), int(chain[i + 1])]) for i in range(len(chain) - 1)]
    giant = rng.choice(len(docs), 4_000, replace=False)  # boilerplate: one band shared by 4,000 documents
    groups.append((2, giant.tolist()))
    groups += [(3, [int(giant[i]), int(x)]) for i, x in enumerate(rng.choice(len(docs), 50))]  # joined to others

    def some(low: int, high: int) -> list[int]:
        return rng.choice(len(docs), int(rng.integers(low, high)), replace=False).tolist()

    groups += [(0, some(2, 6)) for _ in range(400)]  # exact copies
    groups += [(int(rng.integers(1, SLOTS)), some(2, 4)) for _ in range(3_000)]
    for n, (slot, members) in enumerate(groups):
        keys[members, slot] = np.uint64((1 << 62) + n)
    slots = np.tile(np.arange(SLOTS, dtype=np.uint64), len(docs))
    return np.column_stack((slots, keys.ravel(), np.repeat(docs, SLOTS)))


def key_group(work: Store, rows: np.ndarray) -> list[dedupe_tasks.KeySlice]:
    """The rows as one key group's keys.bin (in partition order) and each partition's slice of it."""
    partition = rows[:, 1] % np.uint64(PARTITIONS)
    rows = rows[np.argsort(partition, kind="stable")]
    work.write_bytes("keys/g/keys.bin", rows.tobytes())
    offsets = np.searchsorted(np.sort(partition), np.arange(PARTITIONS + 1, dtype=np.uint64)).tolist()
    return [dedupe_tasks.KeySlice("keys/g", offsets[p], offsets[p + 1]) for p in range(PARTITIONS)]


@pytest.mark.parametrize("documents_per_range", [10**9, 5_000, 2_000])  # one node range, 6 ranges, one per file
def test_distributed_clustering_writes_the_single_resolve_files(tmp_path, documents_per_range):
    work = Store.at(str(tmp_path))
    cfg = DedupeConfig(partitions=PARTITIONS, minhash=MinHashConfig(preset="verified"))
    processed = [Processed(f, f"process/f{f}", "s", PER_FILE, []) for f in range(FILES)]
    cuts = component_ranges(processed, documents_per_range)
    slices = key_group(work, planted_rows(7))
    folders = [f"dedupe/p{p}" for p in range(PARTITIONS)]
    records = [dedupe_tasks.dedupe_partition(folders[p], p, [slices[p]], work, cuts) for p in range(PARTITIONS)]
    single = dedupe_tasks.resolve_duplicates("single", folders, FILES, work, cfg)

    runner = InProcessRunner(work)
    edges = [
        [dedupe_tasks.Part(f"{f}/edges.bin", *r["range_offsets"][k : k + 2]) for f, r in zip(folders, records)]
        for k in range(len(cuts) - 1)
    ]
    folder, record, _ = components_of(cfg, "k", cuts, edges, FILES, runner)

    assert len(cuts) - 1 == {10**9: 1, 5_000: FILES // 2, 2_000: FILES}[documents_per_range]
    assert single["removed"] > 7_000 and single["exact_removed"] > 500
    assert {k: record[k] for k in ("removed", "exact_removed", "near_removed", "clusters")} == {
        k: single[k] for k in ("removed", "exact_removed", "near_removed", "clusters")
    }
    for name in RESOLVE_FILES:
        assert work.read_bytes(f"{folder}/{name}") == work.read_bytes(f"single/{name}"), name
    rounds = runner.timings["propagate"]["tasks"] // (len(cuts) - 1)
    assert 3 <= rounds <= 14  # the 300-document chain needs jumps (~log2), not 300 rounds
    largest = max(work.done(f)["edges"] for f in runner.used if f.startswith("propagate/") and "/round-000/" in f)
    assert documents_per_range > 10**6 or largest < single["removed"]  # no range task holds every pair
