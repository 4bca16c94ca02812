"""The corpus build end to end on a real embedded Ray, over the real sample corpus."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import fsspec
import numpy as np
import pytest

from manifests.keys import doc_key, split_key
from manifests.manifest import load
from manifests.outputs import MANIFEST, QUARANTINE, TOKENIZER_MODEL
from manifests.shards import read_index, read_shard
from pipeline.build.driver import build
from pipeline.build.recipe import load_recipe
from pipeline.build.registry import stages_of
from pipeline.ops.verify import verify
from pipeline.report.stats import build_record
from pipeline.sample_corpus import sample_recipe
from pipeline.work.store import DONE
from stages.document import EXACT_DUPLICATE, NEAR_DUPLICATE, DocBatch
from stages.fetch import read_documents
from stages.tokenize import Tokenizer
from tests.support.faults import shard_bytes, stable_manifest


@pytest.fixture(scope="module")
def downsampled(local_ray, sample_corpus, tmp_path_factory):
    """The sample recipe as shipped (downsample to 7:3), 2 workers, several mix groups of 2 shards."""
    folder = tmp_path_factory.mktemp("downsampled")
    recipe = load_recipe(sample_recipe(sample_corpus, folder, mix={"shard_tokens": 60_000, "shards_per_group": 2}))
    build(recipe, str(folder / "out"), workers=2, console=False)
    return folder / "out"


@pytest.fixture(scope="module")
def natural(local_ray, sample_corpus, tmp_path_factory):
    """Every kept document once (natural mix), so the round trip can account for all of them; one shard per
    mix group, so every group boundary is crossed."""
    folder = tmp_path_factory.mktemp("natural")
    path = sample_recipe(
        sample_corpus, folder, mix={"policy": "natural", "shard_tokens": 50_000, "shards_per_group": 1}
    )
    build(load_recipe(path), str(folder / "out"), workers=2, console=False)
    return folder / "out"


def shard_documents(out: Path):
    """(split, source id, origin key, tokens) of every document in every shard."""
    manifest = load(out)
    for split in manifest.splits:
        for ref in manifest.shards(split):
            index, tokens = read_shard(ref.bin_path, ref.idx_path)
            for i in range(index.documents):
                start, end = index.doc_span(i)
                yield split, int(index.source_ids[i]), int(index.origins[i]), np.asarray(tokens[start:end])


def input_texts(out: Path) -> dict[int, str]:
    """Every readable input document by origin key, read straight from the input files."""
    manifest = load(out)
    recipe = load_recipe(out.parent / "recipe.yaml")
    texts = {}
    for file_index, entry in enumerate(manifest.inputs):
        source = recipe.source(entry.source)
        fs, root = fsspec.core.url_to_fs(source.root)
        for item in read_documents(fs, f"{root}/{entry.path}", entry.path, source, 256):
            if isinstance(item, DocBatch):
                for ordinal, text in zip(item.ordinals, item.texts):
                    texts[doc_key(file_index, ordinal)] = text
    return texts


def test_counts_in_the_manifest_equal_what_the_files_hold(downsampled):
    manifest, problems = verify(downsampled / MANIFEST)
    assert problems == []
    names = manifest.source_names
    for split, info in manifest.splits.items():
        recount = {n: 0 for n in names}
        for ref in manifest.shards(split):
            index = read_index(ref.idx_path)
            lengths = index.doc_lengths()
            assert (index.documents, index.tokens) == (ref.entry.documents, ref.entry.tokens)
            for sid, name in enumerate(names):
                tokens = int(lengths[index.source_ids == sid].sum())
                assert tokens == ref.entry.tokens_by_source[name]
                recount[name] += tokens
        assert recount == info.tokens_by_source
        assert sum(recount.values()) == info.tokens
    quarantined = (downsampled / QUARANTINE).read_text().splitlines()
    assert len(quarantined) == manifest.quarantine.records


def test_every_shard_carries_the_recipe_ratio(downsampled):
    manifest = load(downsampled)
    train = manifest.splits["train"]
    assert len(train.shards) >= 3
    largest_document = max(read_index(downsampled / s.idx).doc_lengths().max() for s in train.shards)
    for shard in train.shards:
        # within 1% of the target share, or, for shards too small for that, within one document's tokens
        off_by = abs(shard.tokens_by_source["slimpajama"] - 0.7 * shard.tokens)
        assert off_by <= max(0.007 * shard.tokens, largest_document), shard.bin
    assert abs(manifest.mix.achieved["train"]["slimpajama"] - 0.7) < 0.01
    assert manifest.stages["mix"]["tasks"] >= 3  # several mix groups, each holding the ratio on its own
    # downsample: the poorer source is taken whole, the richer cut
    assert sorted(s.epochs == 1.0 for s in manifest.sources) == [False, True]
    assert all(s.epochs <= 1.0 for s in manifest.sources)


def test_planted_duplicates_short_documents_github_and_bad_records_are_dropped(downsampled, sample_corpus):
    planted = json.loads((sample_corpus / "PLANTED.json").read_text())
    manifest = load(downsampled)
    for source in manifest.sources:
        dropped, name = source.dropped, source.name
        assert dropped.get(EXACT_DUPLICATE, 0) == planted["planted"]["exact_duplicates"].get(name, 0)
        assert dropped.get(NEAR_DUPLICATE, 0) == planted["planted"]["near_duplicates"].get(name, 0)
        assert dropped.get("short_document", 0) == planted["planted"].get("short_documents", {}).get(name, 0)
        assert dropped.get("excluded_subset", 0) == planted["planted"].get("excluded_subset", {}).get(name, 0)
        for reason, count in planted["bad_records"].get(name, {}).items():
            assert dropped[reason] == count, (name, reason)
    assert "RedPajamaGithub" not in {
        s for src in manifest.sources for s, row in src.subsets.items() if row.documents_kept
    }
    reasons = [json.loads(line)["reason"] for line in (downsampled / QUARANTINE).read_text().splitlines()]
    expected = {r: n for per_source in planted["bad_records"].values() for r, n in per_source.items()}
    assert {r: reasons.count(r) for r in set(reasons)} == expected


def test_round_trip_every_kept_document_is_in_the_shards_exactly_once(natural):
    manifest = load(natural)
    tokenizer = Tokenizer.from_bytes((natural / TOKENIZER_MODEL).read_bytes(), False, True)
    texts = input_texts(natural)
    seen = set()
    for split, source_id, origin, tokens in shard_documents(natural):
        assert origin not in seen, "a document appears twice"
        seen.add(origin)
        assert manifest.inputs[split_key(origin)[0]].source == manifest.sources[source_id].name
        expected, _ = tokenizer.encode([texts[origin]])
        assert np.array_equal(tokens, expected), f"document {origin:#x} does not decode to its input"
    kept = sum(s.documents_kept for s in manifest.sources)
    assert len(seen) == kept == sum(info.documents for info in manifest.splits.values())
    read = sum(s.documents_read for s in manifest.sources)
    removed = {EXACT_DUPLICATE, NEAR_DUPLICATE, "short_document", "excluded_subset"}
    dropped = sum(n for s in manifest.sources for r, n in s.dropped.items() if r in removed)
    assert kept == read - dropped


def test_one_worker_gives_the_same_bytes_as_two(downsampled, tmp_path):
    recipe = load_recipe(downsampled.parent / "recipe.yaml")
    build(recipe, str(tmp_path / "out"), workers=1, console=False)
    assert shard_bytes(tmp_path / "out") == shard_bytes(downsampled)
    assert stable_manifest(tmp_path / "out") == stable_manifest(downsampled)


def test_every_task_records_its_peak_memory_and_cpu_and_each_stage_its_largest_task(downsampled):
    """build.log.jsonl: each task's peak RSS (its worker's high-water mark during the task) and CPU seconds; the
    manifest's stage stats and the report: the largest task of each stage and its input."""
    log = [json.loads(line) for line in (downsampled / "build.log.jsonl").read_text().splitlines()]
    done = [e for e in log if e["event"] == "task_done"]
    assert done and all(e["peak_rss_mib"] > 20 and e["cpu_seconds"] >= 0 for e in done), done[:3]
    assert sum(e["cpu_seconds"] for e in done if e["stage"] == "process") > 0.5  # tokenizing is not free
    manifest = json.loads((downsampled / "manifest.json").read_text())
    for name, st in manifest["stages"].items():
        mine = {e["task"]: e["peak_rss_mib"] for e in done if e["stage"] == name}
        assert st["peak_rss_mib"] == max(mine.values()), name
        assert mine[st["largest_task"]["task"]] == st["peak_rss_mib"], name
    largest = manifest["stages"]["process"]["largest_task"]
    assert largest["input"].startswith(("/", "file://")) and largest["input_bytes"] > 0
    shown = build_record(manifest, json.loads((downsampled / "build_stats.json").read_text()))["stages"]
    assert shown["process"]["peak_rss_mib"] == manifest["stages"]["process"]["peak_rss_mib"]
    assert shown["process"]["largest_task"] == largest["input"]


def test_each_stage_logs_the_drivers_wait_before_its_first_task(downsampled):
    """stage_done: the driver's seconds from the last task it saw finish to the stage's first task (planning the
    stage, looking up its done records, which that wait includes); a stage whose tasks were all re-used has none."""
    log = [json.loads(line) for line in (downsampled / "build.log.jsonl").read_text().splitlines()]
    stages = [e for e in log if e["event"] == "stage_done"]
    ran = [e for e in stages if e["skipped"] < e["tasks"]]
    assert len(ran) == len(stages) > 5
    assert all(e["gap_seconds"] + 0.002 >= e["done_lookup_seconds"] >= 0 for e in ran), ran
    manifest = json.loads((downsampled / "manifest.json").read_text())
    rounds = [e["gap_seconds"] for e in ran if e["stage"] == "propagate"]
    assert manifest["stages"]["propagate"]["gap_seconds"] == max(rounds)  # the longest wait, not their sum


def test_a_work_store_from_before_the_clustering_stages_is_refused_in_one_line(downsampled, tmp_path):
    """Dedupe done records written before the clustering stages carry no range offsets: resuming over them stops
    with one line naming their folder and the fix, exit 2, no traceback, before any later stage runs."""
    out, work = tmp_path / "out", tmp_path / "work"  # an earlier build's --work
    for stage in ("process", "keys", "dedupe"):
        shutil.copytree(downsampled / "work" / stage, work / stage)
    (stale,) = (work / "dedupe").iterdir()
    for done in stale.glob(f"*/{DONE}"):
        record = json.loads(done.read_text())
        del record["range_offsets"]
        done.write_text(json.dumps(record))
    command = [
        sys.executable,
        "-m",
        "pipeline.cli",
        "build",
        str(downsampled.parent / "recipe.yaml"),
        "--out",
        str(out),
        "--work",
        str(work),
        "--workers",
        "1",
        "--no-report",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("tokenmill build: OutdatedOutputs: ") and "`range_offsets`" in error, error
    assert f"remove file://{stale} so that its stage runs again, or build with a fresh --work" in error, error
    assert not (work / "propagate").exists() and not (out / MANIFEST).exists()
    shutil.rmtree(stale)  # the fix the line names
    assert subprocess.run(command, capture_output=True, timeout=300).returncode == 0
    assert shard_bytes(out) == shard_bytes(downsampled)


def _done_records(out: Path) -> int:
    return len(list(out.glob(f"work/process/*/{DONE}")))


@pytest.mark.slow
def test_a_build_killed_mid_stage_resumes_to_identical_bytes(downsampled, tmp_path):
    out = tmp_path / "out"
    command = [
        sys.executable,
        "-m",
        "pipeline.cli",
        "build",
        str(downsampled.parent / "recipe.yaml"),
        "--out",
        str(out),
        "--workers",
        "1",
        "--no-report",
    ]
    first = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while _done_records(out) < 2 and first.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.killpg(first.pid, signal.SIGKILL)  # the driver and the Ray processes it started
    first.wait()
    finished_before = _done_records(out)
    assert not (out / MANIFEST).exists() and finished_before >= 2
    second = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr
    assert "[process] re-used" in second.stderr
    process = load(out).stages["process"]
    # a task in flight at the kill may still have finished; everything finished was skipped, not redone
    assert finished_before <= process["skipped"] < process["tasks"]
    assert shard_bytes(out) == shard_bytes(downsampled)
    assert stable_manifest(out) == stable_manifest(downsampled)


def test_a_recipe_that_matches_no_input_is_refused_before_any_work(local_ray, sample_corpus, tmp_path):
    path = sample_recipe(
        sample_corpus,
        tmp_path,
        sources=[
            {"name": "slimpajama", "root": str(sample_corpus / "SlimPajama-627B")},
            {"name": "starcoderdata", "root": str(tmp_path / "nowhere")},
        ],
    )
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "build", str(path), "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "sources[starcoderdata].train" in result.stderr and "no file" in result.stderr
    assert not (tmp_path / "out" / "work").exists()


def _new_dump(kjv_chapters, path: Path) -> None:
    """A new SlimPajama-layout file of KJV chapters that are in no other file."""
    lines = [
        json.dumps({"text": text, "meta": {"redpajama_set_name": "RedPajamaBook"}})
        for text in list(kjv_chapters.values())[-40:]
    ]
    with fsspec.open(str(path), "wt", compression="zstd") as f:
        f.write("\n".join(lines) + "\n")


def _halve(path: Path) -> None:
    """The same file name with other content: its first half of lines."""
    with fsspec.open(str(path), "rt", compression="zstd") as f:
        lines = f.read().splitlines()
    with fsspec.open(str(path), "wt", compression="zstd") as f:
        f.write("\n".join(lines[: len(lines) // 2]) + "\n")


@pytest.mark.slow
def test_an_added_removed_or_replaced_input_gives_exactly_a_fresh_builds_output(
    local_ray, sample_corpus, kjv_chapters, tmp_path, capsys
):
    import shutil

    corpus = tmp_path / "corpus"
    shutil.copytree(sample_corpus, corpus)
    recipe_path = sample_recipe(corpus, tmp_path / "recipe")
    train = corpus / "SlimPajama-627B/train/chunk1"
    out = tmp_path / "out"
    build(load_recipe(recipe_path), str(out), workers=2)
    changes = {
        "added": (lambda: _new_dump(kjv_chapters, train / "example_train_9.jsonl.zst"), 1),
        "replaced": (lambda: _halve(train / "example_train_0.jsonl.zst"), 1),
        "removed": (lambda: (corpus / "starcoderdata/python/train-00001-of-00002.parquet").unlink(), 0),
    }
    for name, (change, new_files) in changes.items():
        change()
        capsys.readouterr()
        build(load_recipe(recipe_path), str(out), workers=2)  # the same command again, on the changed inputs
        console = capsys.readouterr().err
        fresh = tmp_path / f"fresh-{name}"
        build(load_recipe(recipe_path), str(fresh), workers=2, console=False)
        process = load(out).stages["process"]
        assert process["tasks"] - process["skipped"] == new_files, name  # only the new or changed file was processed
        said = next(line for line in console.splitlines() if line.startswith("[process] re-used"))
        assert f" {process['skipped']} " in said and (
            new_files == 0 or f"running the {new_files} whose inputs or settings are new" in said
        ), said
        stages = load(out).stages
        assert stages["mix"]["skipped"] == 0 and stages["resolve"]["skipped"] == 0, name
        assert shard_bytes(out) == shard_bytes(fresh), name
        assert stable_manifest(out) == stable_manifest(fresh), name


def test_the_stages_run_in_the_registrys_order(downsampled):
    events = [json.loads(line) for line in (downsampled / "build.log.jsonl").read_text().splitlines()]
    ran = [e["stage"] for e in events if e.get("event") == "stage_done"]
    ran = list(dict.fromkeys(ran))  # propagate and answer run in rounds: each stage in the order it first ran
    assert ran == [s.name for s in stages_of(load_recipe(downsampled.parent / "recipe.yaml"))]
