"""The dedupe tasks run as the build runs them (process outputs -> keys -> partitions -> clusters by node range
-> verification by node range) on a local work store, over KJV chapters with planted exact and near copies and
weak links, against the single resolve task and the whole-cluster verification."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from manifests.keys import doc_key
from pipeline.build.driver import components_of, verified_of
from pipeline.report.page import similarity_chart
from pipeline.tasks import dedupe as dedupe_tasks
from pipeline.tasks import process as tasks
from pipeline.tasks.components import component_ranges
from pipeline.tasks.verify import SIMILARITY_BINS
from pipeline.work.store import Store
from stages import dedupe as dedupe_stage
from stages.dedupe import DedupeConfig, document_keys_and_signatures, key_slots
from stages.minhash import MinHashConfig
from tests.support.inprocess import InProcessRunner
from tests.support.verify_reference import verify_whole_clusters

RESOLVE_FILES = (
    dedupe_tasks.REMOVED,
    dedupe_tasks.REMOVED_EXACT,
    dedupe_tasks.REMOVED_INDEX,
    dedupe_tasks.SURVIVORS,
    dedupe_tasks.CLUSTER_SIZES,
)


def near_copy(text: str) -> str:
    words = text.split(" ")
    return " ".join("REPLACED" if i % 40 == 20 else w for i, w in enumerate(words))


def write_process_output(work: Store, folder: str, texts: list[str], cfg: DedupeConfig) -> tasks.Processed:
    out = tasks._FileOutputs()
    keys, sigs = document_keys_and_signatures(texts, cfg)
    out.keys.append(keys)
    if sigs is not None:
        out.signatures.append(sigs)
    out.columns["ordinal"].append(np.arange(1, len(texts) + 1, dtype=np.uint64))
    task = SimpleNamespace(source=SimpleNamespace(name="s"), rel_path=folder)
    tasks._write_file_outputs(task, work, folder, out, cfg, np.uint16, 0.0)
    return folder


def run_dedupe(work: Store, files: list[list[str]], cfg: DedupeConfig) -> tuple[dict, dict]:
    """Every dedupe task of a build over `files` (file i = file_index i); returns the resolve and merge records."""
    processed = [
        tasks.Processed(i, write_process_output(work, f"process/f{i}", texts, cfg), "s", len(texts), [])
        for i, texts in enumerate(files)
    ]
    groups = [[p] for p in processed]  # one file per key group
    group_folders = [f"keys/g{g}" for g in range(len(groups))]
    records = [dedupe_tasks.combine_keys(folder, g, cfg.partitions, work) for folder, g in zip(group_folders, groups)]
    partitions = [f"dedupe/p{p}" for p in range(cfg.partitions)]
    for p, folder in enumerate(partitions):
        slices = [
            dedupe_tasks.KeySlice(g, r["key_offsets"][p], r["key_offsets"][p + 1])
            for g, r in zip(group_folders, records)
        ]
        dedupe_tasks.dedupe_partition(folder, p, slices, work)
    resolved = dedupe_tasks.resolve_duplicates("dedupe/resolved", partitions, len(files), work, cfg)
    folders = [p.folder for p in processed]
    merged = verify_whole_clusters(
        work, "dedupe/resolved", "verify/verified", folders, cfg.minhash.permutations, cfg.minhash.threshold
    )
    for documents in (10**9, 1):  # one node range; one range per file (a cluster spread over several tasks)
        assert_the_distributed_path_writes_the_same(work, processed, partitions, cfg, merged, documents)
    return resolved, merged


def assert_the_distributed_path_writes_the_same(work, processed, partitions, cfg, merged, documents) -> None:
    """The build's path (edges by node range, components in rounds, verification by node range, streamed
    writers) writes what the single resolve task and the whole-cluster verification write, byte for byte."""
    cuts = component_ranges(processed, documents)
    runner = InProcessRunner(work)
    edges = []
    for k in range(len(cuts) - 1):  # the partitions' edges (any order: the tasks sort) sliced by node range
        edges.append([])
        for p in partitions:
            rows = np.frombuffer(work.read_bytes(f"{p}/edges.bin"), np.uint64).reshape(-1, 3)
            rows = rows[np.lexsort((rows[:, 2], rows[:, 1], rows[:, 0]))]
            work.write_bytes(f"{p}/sorted.bin", rows.tobytes())
            edges[k].append(
                dedupe_tasks.Part(
                    f"{p}/sorted.bin", *np.searchsorted(rows[:, 0], np.asarray(cuts[k : k + 2], np.uint64)).tolist()
                )
            )
    folder, record, removals = components_of(cfg, "d", cuts, edges, len(processed), runner)
    for name in RESOLVE_FILES:
        assert work.read_bytes(f"{folder}/{name}") == work.read_bytes(f"dedupe/resolved/{name}"), name
    folder, record = verified_of(cfg, "v", cuts, removals, [p.folder for p in processed], len(processed), runner)
    for name in RESOLVE_FILES:
        assert work.read_bytes(f"{folder}/{name}") == work.read_bytes(f"verify/verified/{name}"), name
    assert {k: record[k] for k in merged} == merged


@pytest.mark.parametrize("partitions", [1, 3])
def test_verify_keeps_the_weak_link_and_writes_the_resolve_format(tmp_path, kjv_chapters, partitions):
    cfg = DedupeConfig(partitions=partitions)
    a = kjv_chapters[("Genesis", 5)]
    words = a.split(" ")
    # 70% of A, then other text: estimated Jaccard ~0.48 with A, yet it shares a band with A (found by trial)
    weak = " ".join(words[: int(len(words) * 0.7)] + kjv_chapters[("Genesis", 6)].split(" ")[: int(len(words) * 0.3)])
    files = [
        [a, kjv_chapters[("Exodus", 1)]],
        [near_copy(a), kjv_chapters[("Exodus", 2)], a],
        [kjv_chapters[("Exodus", 3)], weak],
    ]
    work = Store.at(str(tmp_path))
    resolved, merged = run_dedupe(work, files, cfg)
    a_key, near_key, exact_key, weak_key = doc_key(0, 1), doc_key(1, 1), doc_key(1, 3), doc_key(2, 2)
    assert (resolved["removed"], resolved["exact_removed"]) == (3, 1)  # LSH alone: the weak link too
    assert (merged["removed"], merged["exact_removed"], merged["near_removed"], merged["kept_by_verify"]) == (
        2,
        1,
        1,
        1,
    )
    removed = dedupe_tasks.removed_of(work, "verify/verified", [0, 1, 2], survivors=True)
    assert [removed[f].keys.tolist() for f in range(3)] == [[], [near_key, exact_key], []]
    assert removed[1].exact.tolist() == [False, True]
    assert removed[1].survivors.tolist() == [a_key, a_key]
    sizes = np.load(tmp_path / "verify/verified" / dedupe_tasks.CLUSTER_SIZES)
    assert sizes.tolist() == [3]
    hist = merged["similarity"]
    assert len(hist["edges"]) == len(hist["removed"]) + 1 == SIMILARITY_BINS + 1
    assert sum(hist["removed"]) == 2 and sum(hist["kept"]) == 1 and hist["removed"][-1] == 1  # the exact copy at 1.0
    assert sum(hist["kept"][: int(0.78 * SIMILARITY_BINS)]) == 1  # the weak link lies below the threshold
    assert weak_key not in set(removed[2].keys.tolist())
    assert "kept by verification" in similarity_chart(hist)  # the report's histogram of what the threshold did


def test_no_signatures_without_verification(tmp_path, kjv_chapters):
    cfg = DedupeConfig(minhash=MinHashConfig(preset="slimpajama"))
    work = Store.at(str(tmp_path))
    write_process_output(work, "process/f0", [kjv_chapters[("Ruth", 1)]], cfg)
    assert not work.exists(f"process/f0/{tasks.SIGNATURES}") and work.exists(f"process/f0/{tasks.KEYS}")
    assert len(key_slots(cfg)) == 10


def test_a_new_threshold_re_runs_only_verify_and_after():
    from pipeline.build.recipe import load_recipe
    from pipeline.build.registry import dedupe_key, verify_key

    recipe = load_recipe("web-quality")
    other = load_recipe("web-quality", {"dedupe": {"minhash": {"threshold": 0.8}}})
    unverified = load_recipe("web-quality", {"dedupe": {"minhash": {"threshold": 0.0}}})
    assert other.dedupe.minhash.threshold == 0.8 and other.dedupe.minhash.bands == 16
    assert dedupe_key(["p"], recipe) == dedupe_key(["p"], other) != dedupe_key(["p"], unverified)  # sig.bin or not
    assert verify_key("d", recipe) != verify_key("d", other)


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


def test_parts_are_read_in_order_a_window_at_a_time_from_lists_and_slices(tmp_path, monkeypatch):
    """Many parts of uneven sizes (empty ones too), a window smaller than one part: the rows of every part come
    back whole and in the order given, whether the parts are a list of Part or the driver's column Slices."""
    monkeypatch.setattr(dedupe_tasks, "WINDOW_BYTES", 100)
    work = Store.at(str(tmp_path))
    rng = np.random.default_rng(0)
    files = [rng.integers(0, 2**63, size=(int(n), 3), dtype=np.uint64) for n in (5, 0, 40, 1, 17, 3)]
    for i, rows in enumerate(files):
        work.write_bytes(f"t{i}/rows.bin", rows.tobytes())
    parts = [dedupe_tasks.Part(f"t{i}/rows.bin", len(r) // 3, len(r)) for i, r in enumerate(files)]
    want = np.concatenate([r[len(r) // 3 :] for r in files])
    slices = dedupe_tasks.Slices(
        [p.path for p in parts], np.array([p.start for p in parts]), np.array([p.end for p in parts])
    )
    for given in (parts, slices):
        assert np.array_equal(dedupe_tasks.read_parts(work, given, 3), want)
        windows = list(dedupe_tasks.read_windows(work, given, np.dtype((np.uint64, (3,)))))
        assert [len(w) for w in windows] == [p.end - p.start for p in parts]
