"""What decontamination costs the process stage: process CPU seconds and peak memory of the process tasks over
the sample corpus, without eval sets and with an index of ~2M word 13-grams, each run in a fresh process.

    PYTHONPATH=. python bench/decontam.py [--size-mb 9] [--ngrams 2000000] [--repeats 5] [--out DIR]

Two indexes of real text, two cases: `outside`, functions and methods of the packages installed beside tokenmill
(site-packages: text the sample never holds, as a real benchmark's items are mostly absent from a corpus), and
`inside`, King James verses two at a time and standard-library functions and methods (much of it is in the
sample: a worst case, most documents match). Each set's action is `flag`: a matched document is kept and
processed like any other, so the figures are the matching's own cost (with `drop`, matched documents are not
tokenized and the stage gets cheaper, which would hide it). Every input file of the sample recipe is processed
by `pipeline.tasks.process.process_file` one after the other in one process (what one Ray worker does, task
after task), with the index loaded in that process (a build shares one copy through Ray's object store;
counting it here is the worst case). The three modes (without, outside, inside) run in turn, --repeats times.

Reported per case: the index's size and build time, the documents that matched, the process CPU seconds
(`time.process_time`: the machine may be shared, wall time is not the cost) of every run, the extra CPU as the
least of each mode and as the median and range of the per-repeat ratios against the neighbouring run without
an index, the matching alone (a second pass over the filters' survivors, timed apart), and the peak RSS (VmHWM
after the process loop) of every run. Each worker processes the first file once before it is timed (numba's
cache loads, the tokenizer's start).
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
    `outside`: functions and methods of the packages installed beside tokenmill (text it never holds)."""
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
    """One process's run over every input file; prints its figures as JSON."""
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
    # one file processed first, untimed: numba's cache loads and the tokenizer's start are once per worker
    warm_up = Store.at(tempfile.mkdtemp(prefix=f"warm-up-{case}-", dir=out))
    process_file("process/0", inputs[0], warm_up, tokenizer, recipe.dedupe, recipe.batch_documents, index)
    work = Store.at(tempfile.mkdtemp(prefix=f"process-{case}-", dir=out))
    cpu, wall = time.process_time(), time.perf_counter()
    matched = 0
    for i, inp in enumerate(inputs):
        record = process_file(f"process/{i}", inp, work, tokenizer, recipe.dedupe, recipe.batch_documents, index)
        matched += sum(s["documents"] for s in record.get("decontamination", {}).values())
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    match_cpu = None
    if index is not None:  # the matching alone, in a second pass over what the filters kept (not part of `cpu`)
        from pipeline.tasks.decontaminate import Matcher
        from stages.document import DocBatch
        from stages.filter import apply_filters, build_filters

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
        "case": case,
        "cpu_seconds": cpu,
        "match_cpu_seconds": match_cpu,
        "wall_seconds": wall,
        "matched_documents": matched,
        "peak_rss_mib": int(status["VmHWM"].split()[0]) / 1024,
        "files": len(inputs),
        "text_mb": sum(i.size for i in inputs) / 1e6,
    }


def _case_summary(case: str, runs: list[dict], index: dict) -> dict:
    """One case's figures against the runs without an index: each repeat's runs are neighbours in time, so the
    ratio of each pair is less exposed to the machine's load than the ratio of the least CPU of each mode."""
    mine = [r for r in runs if r["case"] == case]
    base = [r for r in runs if r["case"] == WITHOUT]
    ratios = sorted(m["cpu_seconds"] / b["cpu_seconds"] - 1 for m, b in zip(mine, base))
    least = min(r["cpu_seconds"] for r in base)
    match_cpu = min(r["match_cpu_seconds"] for r in mine)
    return {
        "ngrams": index["ngrams"],
        "items": index["sets"][0]["items"],
        "index_mib": index["index_bytes"] / 2**20,
        "index_build_seconds": index["build_seconds"],
        "matched_documents": mine[0]["matched_documents"],
        "cpu_seconds": [round(r["cpu_seconds"], 3) for r in mine],
        "extra_cpu_share_of_least": min(r["cpu_seconds"] for r in mine) / least - 1,
        "extra_cpu_share_paired": {"median": statistics.median(ratios), "min": ratios[0], "max": ratios[-1]},
        "match_cpu_seconds": match_cpu,
        "match_share_of_process_cpu": match_cpu / least,
        "peak_rss_mib": [r["peak_rss_mib"] for r in mine],
        "extra_peak_rss_mib": max(r["peak_rss_mib"] for r in mine) - max(r["peak_rss_mib"] for r in base),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=float, default=9.0, help="the sample's size (it stops growing at ~9 MB)")
    parser.add_argument("--ngrams", type=int, default=2_000_000, help="word 13-grams in each case's index")
    parser.add_argument("--repeats", type=int, default=5, help="runs of each mode, alternated")
    parser.add_argument("--out", type=Path, default=None, help="the working folder (a new temporary one by default)")
    parser.add_argument("--worker", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="decontam-bench-"))
    if args.worker:
        print(json.dumps(worker(out, args.worker)))
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
        "text_mb": base[0]["text_mb"],
        "files": base[0]["files"],
        "cpu_without": [round(r["cpu_seconds"], 3) for r in base],
        "peak_rss_without_mib": [r["peak_rss_mib"] for r in base],
        **{case: _case_summary(case, runs, indexes[case]) for case in CASES},
    }
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
