import numpy as np

from pipeline import dedupe_tasks
from pipeline.ledger import Store
from stages import dedupe as dedupe_stage


def test_edges_reduced_to_pairs_give_the_same_clusters_and_exact_verdicts(monkeypatch):
    rng = np.random.default_rng(0)
    docs = rng.integers(1, 5_000, 20_000).astype(np.uint64)
    survivors = docs // np.uint64(3)  # chains and shared survivors
    slots = rng.integers(0, 10, len(docs)).astype(np.uint64)  # the same pair in several slots, slot 0 sometimes
    edges = np.column_stack((np.repeat(docs, 2), np.repeat(survivors, 2), np.concatenate((slots, (slots + 3) % 10))))
    work = Store.at("memory://resolve-pairs")
    folders = [f"p{i}" for i in range(7)]
    for folder, part in zip(folders, np.array_split(edges, len(folders))):
        work.write_bytes(f"{folder}/edges.bin", np.ascontiguousarray(part).tobytes())
    monkeypatch.setattr(dedupe_tasks, "EDGE_BATCH", 3_000)  # several reductions
    pairs = dedupe_tasks._edge_pairs(work, folders)
    assert len(pairs) < len(edges) / 2
    want, got = dedupe_stage.resolve_clusters(edges), dedupe_stage.resolve_clusters(pairs)
    assert np.array_equal(want.removed, got.removed)
    assert np.array_equal(want.removed_exact, got.removed_exact)
    assert np.array_equal(want.cluster_sizes, got.cluster_sizes)
