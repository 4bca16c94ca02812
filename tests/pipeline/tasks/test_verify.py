"""Verification by node range (`pipeline/tasks/verify.py`, run by the driver's `verified_of`) writes what the
whole-cluster verification writes, byte for byte, with a giant cluster spread over many tasks: on real text (KJV
chapters: near copies, weak links kept and their own near copies removed for them, exact copies), and on planted
signatures (a cluster keeping more documents than a member is compared with, members at the threshold)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from manifests.keys import doc_key
from pipeline.build.driver import RangeRemovals, verified_of
from pipeline.sample_corpus import sample_recipe
from pipeline.tasks import components, verify
from pipeline.tasks import dedupe as dedupe_tasks
from pipeline.tasks.components import component_ranges
from pipeline.tasks.process import Processed
from pipeline.work.store import Store
from stages.dedupe import MAX_CENTERS, DedupeConfig, matches_needed, pack_signatures
from stages.minhash import MinHashConfig
from tests.pipeline.tasks.test_dedupe import RESOLVE_FILES, run_dedupe
from tests.support.faults import shard_bytes, stable_manifest, start_build
from tests.support.inprocess import InProcessRunner
from tests.support.verify_reference import verify_whole_clusters

CFG = DedupeConfig(partitions=3, minhash=MinHashConfig(preset="verified"))


def variant(text: str, k: int) -> str:
    """A near copy of `text`: one word in 40 replaced, at offset k (a different copy for each k)."""
    return " ".join("REPLACED" if i % 40 == k % 40 else w for i, w in enumerate(text.split(" ")))


def test_a_giant_cluster_on_real_text_spread_over_ranges(tmp_path, kjv_chapters):
    a = kjv_chapters[("Genesis", 5)]
    words = a.split(" ")
    # 70% of A, then other text: estimated Jaccard ~0.48 with A, yet it shares a band with A (test_dedupe.py)
    weak = " ".join(words[: int(len(words) * 0.7)] + kjv_chapters[("Genesis", 6)].split(" ")[: int(len(words) * 0.3)])
    others = [kjv_chapters[("Exodus", c)] for c in range(1, 14)]
    files = [[a, others[0]]]
    for f in range(1, 7):  # six more files, each with near copies of A, of the weak link, and an exact copy of A
        files.append([variant(a, 3 * f), others[f], variant(a, 3 * f + 1), a if f % 3 == 0 else others[f + 6]])
        files[-1] += [weak] if f == 2 else [variant(weak, f)] if f > 2 else []
    work = Store.at(str(tmp_path))
    resolved, verified = run_dedupe(work, files, CFG)  # one node range, then one per file (7 tasks): the same
    assert resolved["clusters"] == 1 and resolved["removed"] == 19  # LSH: every copy, the weak link's too
    assert (verified["removed"], verified["exact_removed"], verified["kept_by_verify"]) == (18, 2, 1)
    removed = dedupe_tasks.removed_of(work, "verify/verified", list(range(7)), survivors=True)
    kept_for = {k: s for f in removed.values() for k, s in zip(f.keys.tolist(), f.survivors.tolist())}
    weak_key = doc_key(2, 5)
    assert weak_key not in kept_for
    assert [kept_for[doc_key(f, 5)] for f in range(3, 7)] == [weak_key] * 4  # removed for the weak link, not A
    assert {kept_for[doc_key(f, 1)] for f in range(1, 7)} == {doc_key(0, 1)}


def plant(work: Store, files: int, per_file: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """sig.bin for each file, random signatures but for the planted clusters; returns the removals (member,
    survivor, exact), by member: a giant cluster whose first members are unlike (kept, past MAX_CENTERS) and
    later ones copies of them or of the survivor, and small clusters with members around the threshold."""
    rng = np.random.default_rng(seed)
    width = CFG.minhash.permutations
    keys = np.array([doc_key(f, o) for f in range(files) for o in range(1, per_file + 1)], np.uint64)
    sigs = rng.integers(0, 1 << 16, (len(keys), width), dtype=np.uint16)

    def copy_of(source: int, target: int, equal: int) -> None:
        same = rng.choice(width, equal, replace=False)
        sigs[target, same] = sigs[source, same]

    need = matches_needed(CFG.minhash.threshold, width)
    order = rng.permutation(len(keys))
    giant = np.sort(order[: len(keys) // 3])  # the survivor first, then every file
    members, survivors, exact = list(giant[1:]), [giant[0]] * (len(giant) - 1), [False] * (len(giant) - 1)
    unlike = giant[1 : MAX_CENTERS + 40]  # random: kept, the last 40 past the cap of kept documents compared with
    for target in giant[MAX_CENTERS + 40 :]:
        source = int(rng.choice(np.r_[giant[:1], unlike]))
        copy_of(source, target, int(rng.choice([need - 1, need, need + 5, width])))
    exact_copies = rng.choice(len(giant) - 1, 30, replace=False)
    for i in exact_copies:
        exact[i] = True
    rest = np.sort(order[len(keys) // 3 :])
    for cluster in np.array_split(rest[: len(rest) // 2], len(rest) // 8):  # clusters of ~4 near the threshold
        for target in cluster[1:]:
            copy_of(int(rng.choice(cluster[cluster < target])), target, int(rng.integers(need - 30, width + 1)))
        members += list(cluster[1:])
        survivors += [cluster[0]] * (len(cluster) - 1)
        exact += [False] * (len(cluster) - 1)
    for f in range(files):
        part = slice(f * per_file, (f + 1) * per_file)
        work.write_bytes(f"process/f{f}/sig.bin", pack_signatures(np.arange(1, per_file + 1), sigs[part]))
    rows = np.column_stack((keys[members], keys[survivors], np.array(exact, np.uint64)))
    return rows[np.argsort(rows[:, 0])]


@pytest.mark.parametrize("per_range", [10**9, 1_000, 400])  # one range; 6 ranges; one range per file
def test_planted_signatures_give_the_whole_cluster_verdicts(tmp_path, monkeypatch, per_range):
    monkeypatch.setattr(verify, "SIGNATURE_BATCH", 150)  # a range's signatures in several batches too
    files, per_file = 12, 500
    work = Store.at(str(tmp_path))
    rows = plant(work, files, per_file, seed=3)
    folders = [f"process/f{f}" for f in range(files)]
    survivor, count = np.unique(rows[:, 1], return_counts=True)
    dedupe_tasks.write_removed(work, "resolved", rows[:, 0], rows[:, 2].astype(np.uint8), rows[:, 1], count + 1, files)
    want = verify_whole_clusters(work, "resolved", "whole", folders, CFG.minhash.permutations, CFG.minhash.threshold)

    cuts = component_ranges([Processed(f, folders[f], "s", per_file, []) for f in range(files)], per_range)
    parts, records = [], []
    for k in range(len(cuts) - 1):  # each node range's removals, as the removals tasks write them
        mine = rows[(rows[:, 0] >= cuts[k]) & (rows[:, 0] < cuts[k + 1])]
        parts.append(f"removals/range-{k}")
        work.write_bytes(f"{parts[-1]}/{components.REMOVED_ROWS}", np.ascontiguousarray(mine).tobytes())
        records.append(
            {"removed": len(mine), "count_offsets": components.write_counts(work, parts[-1], mine[:, 1], cuts)}
        )
        work.mark_done(parts[-1], records[-1])
    runner = InProcessRunner(work)
    folder, record = verified_of(CFG, "v", cuts, RangeRemovals(parts, records), folders, files, runner)

    for name in RESOLVE_FILES:
        assert work.read_bytes(f"{folder}/{name}") == work.read_bytes(f"whole/{name}"), name
    assert {k: record[k] for k in want} == want
    assert MAX_CENTERS < want["kept_by_verify"] < len(rows) // 2 and want["removed"] > len(rows) // 3
    kept = sum(work.done(f)["kept"] for f in runner.used if f.startswith("centers/"))
    assert kept >= MAX_CENTERS - 1  # the giant cluster's kept documents beyond the survivor, capped, and others'
    assert runner.timings["verify"]["tasks"] == len(cuts) - 1


@pytest.mark.slow
def test_a_verified_build_over_many_node_ranges_equals_one_over_one(sample_corpus, tmp_path, monkeypatch):
    """Real Ray, the CLI, the sample corpus with `preset: verified`: verification spread over a node range per
    input file writes the shards, manifest and verified removals of the one-range build."""
    recipe = sample_recipe(sample_corpus, tmp_path, dedupe={"partitions": 4, "minhash": {"preset": "verified"}})
    outs = {}
    for documents in ("5000000", "1"):
        monkeypatch.setenv("TOKENMILL_COMPONENT_DOCUMENTS", documents)
        outs[documents] = tmp_path / f"out-{documents}"
        run = start_build(recipe, outs[documents], "--workers", "2")
        assert run.wait() == 0, run.stderr()[-3000:]
    one, many = outs["5000000"], outs["1"]
    assert shard_bytes(many) == shard_bytes(one)
    ranges = {out: len(list((out / "work" / "verify").glob("*/range-*"))) for out in (one, many)}
    assert ranges[one] == 1 and ranges[many] >= 8
    without_stages = [{k: v for k, v in stable_manifest(out).items() if k != "stages"} for out in (one, many)]
    assert without_stages[0] == without_stages[1]
    (verified,) = (one / "work" / "verified").iterdir()
    for name in RESOLVE_FILES:
        assert (many / "work" / "verified" / verified.name / name).read_bytes() == (verified / name).read_bytes()
    assert json.loads((verified / "_DONE.json").read_text())["removed"] > 0
