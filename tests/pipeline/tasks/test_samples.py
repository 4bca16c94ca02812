"""The duplicates' samples: which are chosen within the file budget, and what reading them back does with an
input that is gone. Whole builds with planted duplicates are in tests/pipeline/report/test_stats.py."""

from __future__ import annotations

import json

from manifests.keys import doc_key
from pipeline.build.inputs import InputFile
from pipeline.tasks.samples import (
    PER_STEP,
    SAMPLE_FILES,
    TASK_OUTPUT,
    DuplicateCandidate,
    choose,
    read_duplicates,
)
from pipeline.work.store import Store
from stages.document import EXACT_DUPLICATE, NEAR_DUPLICATE
from stages.fetch import SourceConfig
from stages.minhash import MinHashConfig


def test_every_step_gets_a_first_sample_within_the_file_budget_and_shared_files_are_preferred():
    # subset "a": exact copies in file 0 and in files 20..29; subset "b": near copies in file 1 kept in file 0, and
    # in files 30..39 kept in files 40..49; subsets c0..c9: one exact copy each, in files 50..59
    candidates = [
        DuplicateCandidate("s", "a", EXACT_DUPLICATE, doc_key(0, line), doc_key(0, 0)) for line in (5, 6, 7, 8, 9, 10)
    ]
    candidates += [DuplicateCandidate("s", "a", EXACT_DUPLICATE, doc_key(f, 1), doc_key(0, 0)) for f in range(20, 30)]
    candidates += [
        DuplicateCandidate("s", "b", NEAR_DUPLICATE, doc_key(1, line), doc_key(0, line)) for line in (1, 2, 3, 4, 5, 6)
    ]
    candidates += [
        DuplicateCandidate("s", "b", NEAR_DUPLICATE, doc_key(f, 1), doc_key(f + 10, 1)) for f in range(30, 40)
    ]
    candidates += [
        DuplicateCandidate("s", f"c{i}", EXACT_DUPLICATE, doc_key(50 + i, 1), doc_key(0, 0)) for i in range(10)
    ]
    chosen = choose(list(reversed(candidates)))  # the order given does not matter
    assert chosen == choose(candidates)
    files = set().union(*(c.files() for c in chosen))
    assert len(files) <= SAMPLE_FILES
    by_subset = {}
    for c in chosen:
        by_subset.setdefault(c.subset, []).append(c)
    # a and b fill up from files 0 and 1 alone; the budget's other 6 files go to the first 6 c subsets
    assert [c.doc for c in by_subset["a"]] == [doc_key(0, line) for line in (5, 6, 7, 8, 9)] and len(
        by_subset["a"]
    ) == PER_STEP
    assert [c.doc for c in by_subset["b"]] == [doc_key(1, line) for line in (1, 2, 3, 4, 5)]
    assert sorted(by_subset) == ["a", "b"] + [f"c{i}" for i in range(6)] and files == {0, 1, 50, 51, 52, 53, 54, 55}
    # every step's first sample comes before any step's second
    assert [c.subset for c in chosen[:8]] == ["a", "b"] + [f"c{i}" for i in range(6)]


def test_an_input_that_cannot_be_read_costs_its_samples_not_the_build(tmp_path, kjv_chapters):
    texts = [kjv_chapters[("Ruth", n)] for n in (1, 2, 3)]
    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    source = SourceConfig(name="web", kind="jsonl", root=str(tmp_path), train=["*.jsonl"])
    files = {
        i: InputFile(
            file_index=i, source=source, url=str(tmp_path / name), rel_path=name, split="train", size=1, version=""
        )
        for i, name in enumerate(["a.jsonl", "gone.jsonl"])
    }
    chosen = [
        DuplicateCandidate("web", "a", EXACT_DUPLICATE, doc_key(0, 3), doc_key(0, 1)),
        DuplicateCandidate("web", "a", NEAR_DUPLICATE, doc_key(1, 1), doc_key(0, 2)),
    ]  # its removed document's file is gone
    work = Store.at(str(tmp_path / "work"))
    record = read_duplicates("samples/x", chosen, files, MinHashConfig(), batch_documents=2, work=work)
    assert (record["samples"], record["missing"], record["files_read"]) == (1, 1, 1)
    assert (
        list(record["unreadable"]) == [str(tmp_path / "gone.jsonl")]
        and "FileNotFoundError" in record["unreadable"][str(tmp_path / "gone.jsonl")]
    )
    (line,) = [json.loads(x) for x in work.read_bytes(f"samples/x/{TASK_OUTPUT}").decode().splitlines()]
    assert line == {
        "source": "web",
        "subset": "a",
        "reason": EXACT_DUPLICATE,
        "step": "exact duplicates",
        "doc": "web/a.jsonl#3",
        "text": texts[2][:300],
        "kept_doc": "web/a.jsonl#1",
    }
    assert work.done("samples/x") == record
