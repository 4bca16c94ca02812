"""What decontamination costs the process stage: CPU seconds and peak memory of the process tasks over the sample
corpus, without eval sets and with an index of ~2M word 13-grams, each measured in a fresh process.

    PYTHONPATH=. python bench/decontam.py [--size-mb 4] [--ngrams 2000000] [--repeats 2] [--out DIR]

The eval items are real text: King James verses two at a time and standard-library functions and methods (their
source, as a code benchmark's prompt + solution), taken until the index has about --ngrams n-grams. Much of that
text is in the sample too, so the set's action is `flag`: a matched document is kept and processed like any other,
and the figures are the matching's own cost (with `drop`, matched documents are not tokenized and the stage gets
cheaper, which would hide it). Every input file of the sample recipe is processed by
`pipeline.tasks.process.process_file`
one after the other in one process (what one Ray worker does, task after task), with the index loaded in that
process (a build shares one copy through Ray's object store; counting it here is the worst case). Reported:
the index's build time and size, the process CPU seconds (the least of --repeats runs of each), the peak RSS
(VmHWM) of each run, and how many documents matched.
"""

from __future__ import annotations

import argparse
import ast
import io
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _ngrams(text: str) -> int:
    from stages.decontaminate import words

    return max(1, len(words([text]).hashes) - 12)


def eval_items(ngrams: int) -> list[str]:
    from pipeline.sample_corpus import _stdlib_sources, kjv_verses

    items, total = [], 0
    verses = [v["text"] for v in kjv_verses()]
    for i in range(0, len(verses) - 1, 2):
        text = " ".join(verses[i : i + 2])
        items.append(text)
        total += _ngrams(text)
    for rel, path in _stdlib_sources({"site-packages", "__pycache__"}):
        if total >= ngrams:
            continue
        source = path.read_text(errors="replace")
        try:
            tree = ast.parse(source)
        except (SyntaxError, ValueError):
            continue
        lines = source.splitlines()
        for node in tree.body + [n for c in tree.body if isinstance(c, ast.ClassDef) for n in c.body]:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and total < ngrams:
                text = "\n".join(lines[node.lineno - 1 : node.end_lineno])
                items.append(text)
                total += _ngrams(text)
    return items


def build(out: Path, size_mb: float, ngrams: int) -> dict:
    from pipeline.sample_corpus import write_sample_corpus
    from pipeline.tasks.decontaminate import build_index_task
    from pipeline.work.store import Store
    from stages.decontaminate import DecontaminateConfig, EvalSetConfig

    write_sample_corpus(out / "corpus", size_mb=size_mb, seed=0)
    items = eval_items(ngrams)
    (out / "eval.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in items))
    config = DecontaminateConfig(sets=[EvalSetConfig(name="bench", files=[str(out / "eval.jsonl")])], action="flag")
    started = time.perf_counter()
    record = build_index_task("index", config, None, Store.at(str(out / "work")))
    record["build_seconds"] = time.perf_counter() - started
    return record


def worker(out: Path, with_index: bool) -> dict:
    """One process's run over every input file; prints its figures as JSON."""
    from pipeline.build.inputs import list_inputs
    from pipeline.build.recipe import load_recipe
    from pipeline.build.tokenizer import recipe_tokenizer
    from pipeline.sample_corpus import sample_recipe
    from pipeline.tasks.decontaminate import INDEX
    from pipeline.tasks.process import process_file
    from pipeline.work.store import Store
    from stages.decontaminate import DecontaminateConfig, EvalSetConfig, Index, match, unit_sequences

    recipe = load_recipe(sample_recipe(out / "corpus", out / ("with" if with_index else "without")))
    tokenizer = recipe_tokenizer(recipe)
    inputs = list_inputs(recipe)
    index = None
    if with_index:
        config = DecontaminateConfig(sets=[EvalSetConfig(name="bench", files=[str(out / "eval.jsonl")])], action="flag")
        record = json.loads((out / "work" / "index" / "_DONE.json").read_text())
        arrays = np.load(io.BytesIO((out / "work" / "index" / INDEX).read_bytes()))
        index = Index.from_arrays(config.rules(), {k: arrays[k] for k in arrays.files}, record["sets"])
        match(index, "words", *unit_sequences(["warm up the kernels once"], None))  # numba's cache load, not timed
    work = Store.at(tempfile.mkdtemp(prefix="decontam-bench-"))
    cpu, wall = time.process_time(), time.perf_counter()
    matched = 0
    for i, inp in enumerate(inputs):
        record = process_file(f"process/{i}", inp, work, tokenizer, recipe.dedupe, recipe.batch_documents, index)
        matched += sum(s["documents"] for s in record.get("decontamination", {}).values())
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    match_cpu = None
    if index is not None:  # the matching alone, in a second pass over the same documents (not part of `cpu`)
        from pipeline.tasks.decontaminate import Matcher
        from stages.document import DocBatch

        batches = [b for inp in inputs for b in inp.documents(recipe.batch_documents) if isinstance(b, DocBatch)]
        matcher, match_cpu = Matcher(index), time.process_time()
        for batch in batches:
            matcher.on_words(batch)
        match_cpu = time.process_time() - match_cpu
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return {
        "with_index": with_index,
        "cpu_seconds": cpu,
        "match_cpu_seconds": match_cpu,
        "wall_seconds": wall,
        "matched_documents": matched,
        "peak_rss_mib": int(status["VmHWM"].split()[0]) / 1024,
        "files": len(inputs),
        "text_mb": sum(i.size for i in inputs) / 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=float, default=4.0)
    parser.add_argument("--ngrams", type=int, default=2_000_000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--worker", choices=["with", "without"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="decontam-bench-"))
    if args.worker:
        print(json.dumps(worker(out, args.worker == "with")))
        return
    index = build(out, args.size_mb, args.ngrams)
    print(
        f"index: {index['ngrams']:,} n-grams of {index['sets'][0]['items']:,} items, "
        f"{index['index_bytes'] / 2**20:.1f} MiB, "
        f"built in {index['build_seconds']:.1f}s",
        flush=True,
    )
    runs = []
    for _ in range(args.repeats):
        for mode in ("without", "with"):  # alternated, so that a busy moment of the machine hits both
            done = subprocess.run(
                [sys.executable, __file__, "--out", str(out), "--worker", mode],
                capture_output=True,
                text=True,
                cwd=ROOT,
                check=True,
            )
            runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(json.dumps(runs[-1]), flush=True)
    best = {
        mode: min((r for r in runs if r["with_index"] == (mode == "with")), key=lambda r: r["cpu_seconds"])
        for mode in ("without", "with")
    }
    extra_cpu = best["with"]["cpu_seconds"] / best["without"]["cpu_seconds"] - 1
    extra_rss = max(r["peak_rss_mib"] for r in runs if r["with_index"]) - max(
        r["peak_rss_mib"] for r in runs if not r["with_index"]
    )
    summary = {
        "ngrams": index["ngrams"],
        "index_mib": index["index_bytes"] / 2**20,
        "index_build_seconds": index["build_seconds"],
        "text_mb": best["with"]["text_mb"],
        "files": best["with"]["files"],
        "cpu_without": best["without"]["cpu_seconds"],
        "cpu_with": best["with"]["cpu_seconds"],
        "extra_cpu_share": extra_cpu,
        "peak_rss_without_mib": best["without"]["peak_rss_mib"],
        "peak_rss_with_mib": best["with"]["peak_rss_mib"],
        "extra_peak_rss_mib": extra_rss,
        "matched_documents": best["with"]["matched_documents"],
        "match_cpu_seconds": min(r["match_cpu_seconds"] for r in runs if r["with_index"]),
        "match_share_of_process_cpu": min(r["match_cpu_seconds"] for r in runs if r["with_index"])
        / best["without"]["cpu_seconds"],
    }
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
