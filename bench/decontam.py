"""What decontamination costs the process stage: process CPU seconds and peak memory of the process tasks over
the sample corpus, without eval sets and with an index of ~2M word 13-grams, each run in a fresh process.

    PYTHONPATH=. python bench/decontam.py [--size-mb 9] [--ngrams 2000000] [--repeats 5] [--out DIR]
    PYTHONPATH=. python bench/decontam.py --added-set [--size-mb 9] [--ngrams 2000000] [--workers 2] [--out DIR]

Two indexes of real text, two cases: `outside`, functions and methods of the packages installed beside tokenmill
(site-packages: text the sample holds only where a package copied the standard library, as a real benchmark's
items are mostly absent from a corpus), and
`inside`, King James verses two at a time and standard-library functions and methods (much of it is in the
sample: a worst case, most documents match). Each set's action is `flag`: a matched document is kept and
processed like any other, so the figures are the matching's own cost (with `drop`, matched documents are not
tokenized and the stage gets cheaper, which would hide it). Every input file of the sample recipe is processed
by `pipeline.tasks.process.process_file` one after the other in one process (what one Ray worker does, task
after task), with the index loaded in that process (a build shares one copy through Ray's object store;
counting it here is the worst case).

CPU is process CPU (`time.process_time`: the machine may be shared, wall time is not the cost). A process with
an index processes every file twice, without and with it, in turns, so that both are timed under the same load
moment by moment: the extra CPU is the ratio of the two sums, per process (separate processes' totals vary more
with the load than the difference measured). Peak RSS (VmHWM) is compared with processes that never load an
index. The modes run in turn, --repeats times, each in a fresh process that first processes one file untimed
(numba's cache loads, the tokenizer's start). Reported per case: the index's size and build time, the documents
that matched, the CPU seconds and their ratio per process (median and range), the matching alone (a pass of its
own over the filters' survivors) and the peak RSS.

`--added-set` measures instead what adding an eval set to a built corpus costs: a build of the sample with
`pipeline.sample_eval`'s two sets planted and matched, then the `outside` set added and the recipe built again
into the same output (and work store), then the new recipe built fresh; wall seconds, the CPU seconds of the
tasks that ran and of the driver, and which tasks ran.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
WITHOUT = "without"
CASES = ("outside", "inside")  # the eval text: not in the sample (real benchmarks), much of it in the sample
MODES = (WITHOUT, *CASES)
# tests, and copies of the standard library that packages vendor: text the sample may hold
OUTSIDE_SKIP_DIRS = {"__pycache__", "tests", "test", "_vendor", "_distutils", "vendored", "_vendored"}


def _ngrams(text: str) -> int:
    from stages.decontaminate import words

    return max(1, len(words([text]).hashes) - 12)


def _take(texts, ngrams: int, items: list[str]) -> list[str]:
    """`items` with `texts` appended until they hold about `ngrams` word 13-grams."""
    total = sum(map(_ngrams, items))
    for text in texts:
        if total >= ngrams:
            break
        items.append(text)
        total += _ngrams(text)
    return items


def eval_items(case: str, ngrams: int) -> list[str]:
    """`inside`: King James verse pairs, then standard-library functions and methods (text the sample holds);
    `outside`: functions and methods of the packages installed beside tokenmill (text it mostly does not hold)."""
    from pipeline.sample_corpus import kjv_verses, python_functions, python_sources

    if case == "inside":
        verses = [v["text"] for v in kjv_verses()]
        pairs = [" ".join(verses[i : i + 2]) for i in range(0, len(verses) - 1, 2)]
        functions = python_functions(python_sources({"site-packages", "__pycache__"}), methods=True)
        return _take((f.text() for f in functions), ngrams, pairs)
    sources = python_sources(OUTSIDE_SKIP_DIRS, Path(sysconfig.get_paths()["purelib"]))
    return _take((f.text() for f in python_functions(sources, methods=True)), ngrams, [])


def _config(out: Path, case: str):
    from stages.decontaminate import DecontaminateConfig, EvalSetConfig

    return DecontaminateConfig(sets=[EvalSetConfig(name=case, files=[str(out / f"{case}.jsonl")])], action="flag")


def build(out: Path, size_mb: float, ngrams: int) -> dict[str, dict]:
    """The sample, and per case its eval set's file and index (the index task's done record, with its time)."""
    from pipeline.sample_corpus import write_sample_corpus
    from pipeline.tasks.decontaminate import build_index_task
    from pipeline.work.store import Store

    write_sample_corpus(out / "corpus", size_mb=size_mb, seed=0)
    records = {}
    for case in CASES:
        items = eval_items(case, ngrams)
        (out / f"{case}.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in items))
        started = time.perf_counter()
        records[case] = build_index_task(f"index-{case}", _config(out, case), None, Store.at(str(out / "work")))
        records[case]["build_seconds"] = time.perf_counter() - started
    return records


def worker(out: Path, case: str) -> dict:
    """One process's run over every input file, its figures as a dict. With an index (`case` not WITHOUT) every file
    is processed twice, without and with the index, in turns (the first of a pair alternates), so both are timed
    under the same load moment by moment; a run without one processes each file once (the baseline's peak RSS)."""
    from pipeline.build.inputs import list_inputs
    from pipeline.build.recipe import load_recipe
    from pipeline.build.tokenizer import recipe_tokenizer
    from pipeline.sample_corpus import sample_recipe
    from pipeline.tasks.decontaminate import INDEX
    from pipeline.tasks.process import process_file
    from pipeline.work.store import Store
    from stages.decontaminate import Index

    recipe = load_recipe(sample_recipe(out / "corpus", out / case))
    tokenizer = recipe_tokenizer(recipe)
    inputs = list_inputs(recipe)
    index = None
    if case != WITHOUT:
        record = json.loads((out / "work" / f"index-{case}" / "_DONE.json").read_text())
        arrays = np.load(io.BytesIO((out / "work" / f"index-{case}" / INDEX).read_bytes()))
        index = Index.from_arrays(_config(out, case).rules(), {k: arrays[k] for k in arrays.files}, record["sets"])
    indexes = [None] if index is None else [None, index]
    stores = [Store.at(tempfile.mkdtemp(prefix=f"{case}-{i}-", dir=out)) for i in range(len(indexes))]

    def process(i: int, which) -> dict:
        folder, store = f"process/{i}", stores[indexes.index(which) if which is not None else 0]
        return process_file(folder, inputs[i], store, tokenizer, recipe.dedupe, recipe.batch_documents, which)

    for which in indexes:  # file 0 once each, untimed: numba's cache loads and the tokenizer's start
        process(0, which)
    cpu, matched = [0.0, 0.0], 0
    for i in range(len(inputs)):
        for which in indexes if i % 2 == 0 else indexes[::-1]:
            started = time.process_time()
            record = process(i, which)
            cpu[which is not None] += time.process_time() - started
            matched += sum(s["documents"] for s in record.get("decontamination", {}).values())
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    figures = {
        "case": case,
        "cpu_seconds_without": cpu[0],
        "peak_rss_mib": int(status["VmHWM"].split()[0]) / 1024,
        "files": len(inputs),
        "input_mb": sum(i.size for i in inputs) / 1e6,
    }
    if index is None:
        return figures
    from pipeline.tasks.decontaminate import Matcher
    from stages.document import DocBatch
    from stages.filter import apply_filters, build_filters

    # the matching alone, in a pass of its own over what the filters kept
    batches = [
        apply_filters(b, build_filters(inp.source))[0]
        for inp in inputs
        for b in inp.documents(recipe.batch_documents)
        if isinstance(b, DocBatch)
    ]
    matcher, match_cpu = Matcher(index), time.process_time()
    for batch in batches:
        matcher.on_words(batch)
    match_cpu = time.process_time() - match_cpu
    return {
        **figures,
        "cpu_seconds_with": cpu[1],
        "extra_cpu_share": cpu[1] / cpu[0] - 1,
        "match_cpu_seconds": match_cpu,
        "matched_documents": matched,
    }


def _timed(recipe: Path, out: Path, workers: int) -> tuple[dict, dict]:
    """One build of `recipe` into `out` on a fresh embedded Ray (`bench.measure.timed_build`): its wall time, the
    CPU seconds of the tasks that ran (their done records) and of the driver process, and what ran; and the
    manifest."""
    from bench.measure import timed_build
    from manifests.outputs import BUILD_LOG
    from pipeline.build.recipe import load_recipe

    log = out / BUILD_LOG
    before = len(log.read_text().splitlines()) if log.exists() else 0
    cpu = time.process_time()
    seconds, manifest = timed_build(load_recipe(recipe), out, workers)
    driver_cpu = time.process_time() - cpu
    events = [json.loads(line) for line in log.read_text().splitlines()[before:]]
    ran = [e for e in events if e["event"] == "task_done"]
    return {
        "wall_seconds": round(seconds, 2),
        "task_cpu_seconds": round(sum(e.get("cpu_seconds", 0) for e in ran), 2),
        "driver_cpu_seconds": round(driver_cpu, 2),
        "tasks_run": dict(Counter(e["stage"] for e in ran)),
        "tasks": {stage: t["tasks"] for stage, t in manifest["stages"].items()},
        "decontaminate_changed": [e for e in events if e["event"] == "decontaminate_changed"],
    }, manifest


def added_set(out: Path, size_mb: float, ngrams: int, workers: int) -> dict:
    """What adding an eval set to a built corpus costs against a fresh build of the new recipe: the sample with
    `pipeline.sample_eval`'s two sets planted is built with them (drop), then the `outside` set (about `ngrams`
    n-grams) is added and the recipe built again into the same output (the same work store), then into a new one."""
    from pipeline.sample_corpus import sample_recipe, write_sample_corpus
    from pipeline.sample_eval import plant_eval_items

    write_sample_corpus(out / "corpus", size_mb=size_mb, seed=0)
    plant_eval_items(out / "corpus", out / "eval")
    (out / "eval" / "outside.jsonl").write_text(
        "".join(json.dumps({"text": t}) + "\n" for t in eval_items("outside", ngrams))
    )
    sets = [
        {"name": "natural", "files": [str(out / "eval" / "natural.jsonl")], "fields": ["question", "answer"]},
        {"name": "code", "files": [str(out / "eval" / "code.jsonl")], "fields": ["prompt", "solution"]},
    ]
    added = [*sets, {"name": "outside", "files": [str(out / "eval" / "outside.jsonl")]}]
    before = sample_recipe(out / "corpus", out / "before", decontaminate={"sets": sets})
    after = sample_recipe(out / "corpus", out / "after", decontaminate={"sets": added})
    first, first_manifest = _timed(before, out / "built", workers)
    again, again_manifest = _timed(after, out / "built", workers)
    fresh, fresh_manifest = _timed(after, out / "fresh", workers)
    return {
        "first_build": first,
        "set_added": again,
        "fresh_build": fresh,
        "shards_equal_to_fresh": _checksums(again_manifest) == _checksums(fresh_manifest),
        "shards_changed_by_the_set": _checksums(again_manifest) != _checksums(first_manifest),
    }


def _checksums(manifest: dict) -> dict[str, list[str]]:
    """Per split, its shards' checksums in order (their folder is named by what they were made from)."""
    return {
        split: [(s["bin_sha256"], s["idx_sha256"]) for s in entry["shards"]]
        for split, entry in manifest["splits"].items()
    }


def _case_summary(case: str, runs: list[dict], index: dict) -> dict:
    """One case's figures: its runs' paired CPU ratios, and its peak RSS against the runs without an index."""
    mine = [r for r in runs if r["case"] == case]
    base = [r for r in runs if r["case"] == WITHOUT]
    ratios = sorted(r["extra_cpu_share"] for r in mine)
    return {
        "ngrams": index["ngrams"],
        "items": index["sets"][0]["items"],
        "index_mib": index["index_bytes"] / 2**20,
        "index_build_seconds": index["build_seconds"],
        "matched_documents": mine[0]["matched_documents"],
        "cpu_seconds_without": [round(r["cpu_seconds_without"], 3) for r in mine],
        "cpu_seconds_with": [round(r["cpu_seconds_with"], 3) for r in mine],
        "extra_cpu_share": {"median": statistics.median(ratios), "min": ratios[0], "max": ratios[-1]},
        "match_cpu_seconds": [round(r["match_cpu_seconds"], 3) for r in mine],
        "match_share_of_process_cpu": statistics.median(
            r["match_cpu_seconds"] / r["cpu_seconds_without"] for r in mine
        ),
        "peak_rss_mib": [r["peak_rss_mib"] for r in mine],
        "extra_peak_rss_mib": {
            "median": statistics.median(r["peak_rss_mib"] for r in mine)
            - statistics.median(r["peak_rss_mib"] for r in base),
            "max": max(r["peak_rss_mib"] for r in mine) - min(r["peak_rss_mib"] for r in base),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=float, default=9.0, help="the sample's size (it stops growing at ~9 MB)")
    parser.add_argument("--ngrams", type=int, default=2_000_000, help="word 13-grams in each case's index")
    parser.add_argument("--repeats", type=int, default=5, help="runs of each mode, alternated")
    parser.add_argument("--out", type=Path, default=None, help="the working folder (a new temporary one by default)")
    parser.add_argument(
        "--added-set",
        action="store_true",
        help="measure instead an eval set added to a built corpus (rebuilt into the same output) against a fresh build",
    )
    parser.add_argument("--workers", type=int, default=2, help="tasks at a time, with --added-set")
    parser.add_argument("--worker", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="decontam-bench-"))
    if args.worker:
        print(json.dumps(worker(out, args.worker)))
        return
    if args.added_set:
        print(json.dumps(added_set(out, args.size_mb, args.ngrams, args.workers), indent=1))
        return
    indexes = build(out, args.size_mb, args.ngrams)
    for case, index in indexes.items():
        print(
            f"{case}: {index['ngrams']:,} n-grams of {index['sets'][0]['items']:,} items, "
            f"{index['index_bytes'] / 2**20:.1f} MiB, built in {index['build_seconds']:.1f}s",
            flush=True,
        )
    runs = []
    for _ in range(args.repeats):
        for mode in MODES:  # alternated, so that a busy moment of the machine hits every mode
            done = subprocess.run(
                [sys.executable, __file__, "--out", str(out), "--worker", mode],
                capture_output=True,
                text=True,
                cwd=ROOT,
                check=True,
            )
            runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(json.dumps(runs[-1]), flush=True)
    base = [r for r in runs if r["case"] == WITHOUT]
    summary = {
        "input_mb": base[0]["input_mb"],
        "files": base[0]["files"],
        "peak_rss_without_mib": [r["peak_rss_mib"] for r in base],
        **{case: _case_summary(case, runs, indexes[case]) for case in CASES},
    }
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
