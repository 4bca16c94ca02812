"""Corpus build throughput: tokenmill against datatrove 0.10.1 on the same generated corpus, in one invocation.

    python bench/build_throughput.py --out /tmp/tm-build-bench [--size-mb 100] [--workers 2] [--repeat 2]
    tokenmill bench --out /tmp/tm-build-bench --memory-docs 1000000 --memory-only

1. Writes a corpus of `--size-mb` MB of real text in the SlimPajama (JSONL.zst, `meta.redpajama_set_name`) and
   StarCoderData (parquet, `content`) layouts, about 7:3 natural:code, with 1% planted exact duplicates, 1% near
   duplicates, 1% short documents and 1% RedPajamaGithub documents (`bench.corpus.write_corpus`).
2. Measures on that corpus, each row timed on its own: bare sentencepiece `encode(list, num_threads=workers)`;
   tokenmill's tokenize stage (`Tokenizer.encode` per batch in `workers` processes, as the build runs it);
   `tokenmill build` with the sample recipe (TinyLlama's rules: subset rule, short documents, exact + MinHash
   dedupe, tokenize, mix) and with the web-quality recipe (datatrove's Gopher, C4 and FineWeb filters, StarCoder
   code rules); datatrove's own pipeline doing the same work (readers -> the same filters -> MinHash stages ->
   DocumentTokenizer -> merger) with the same sentencepiece model converted to HF tokenizers.
3. With `--memory-docs N`: per-task peak RSS and time of every kind of build task (process, keys, dedupe
   partition, resolve, count, mix) at 0.1x, 0.3x and 1x of an N-document corpus of short documents, and of one
   process task against the size of its input file (`--memory-file-mb`, default 8, 32, 128 MB of text). The
   build plans and names its tasks itself (`pipeline.build.driver.run_stages`); `bench.measure.MeasuringRunner` in place
   of the Ray
   runner runs each task in a fresh process of its own, so `tokenmill build` over the same recipe and work dir
   afterwards re-uses every one of them.
4. Prints the throughput table last: MB/s of input text (UTF-8 bytes of every readable document) and ratios.

The machine is shared and noisy: compare rows of the same run, and repeat (`--repeat`) when a ratio matters.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


from bench.corpus import VALIDATION_SHARE, CorpusShape, write_corpus  # noqa: E402
from bench.measure import Enough, MeasuringRunner, timed_build  # noqa: E402
from pipeline import sample_corpus as sample  # noqa: E402
from pipeline.build.registry import STAGES  # noqa: E402
from pipeline.work.progress import EventLog  # noqa: E402

RECIPES = REPO / "manifests" / "recipes"


# ------------------------------------------------------------------------------------------------ inputs


def bench_recipe(corpus: Path, base: str, partitions: int):
    """The shipped recipe `base` (sample = TinyLlama's rules with the offline tokenizer; web-quality = the same plus
    the quality filters) over the generated corpus."""
    from pipeline.build.recipe import load_recipe

    overrides = {
        "sources": [
            {"name": "slimpajama", "root": str(corpus / sample.SLIMPAJAMA_DIR)},
            {"name": "starcoderdata", "root": str(corpus / sample.STARCODER_DIR)},
        ],
        "dedupe": {"partitions": partitions},
        "mix": {"shard_tokens": 10_000_000},
    }
    return load_recipe(RECIPES / f"{base}.yaml", overrides=overrides)


def read_texts(recipe) -> list[str]:
    """Every readable document's text, in the build's canonical file order."""
    import fsspec

    from pipeline.build.inputs import list_inputs
    from stages.document import DocBatch
    from stages.fetch import read_documents

    texts = []
    for task in list_inputs(recipe):
        fs, path = fsspec.core.url_to_fs(task.url)
        for item in read_documents(fs, path, task.rel_path, task.source, recipe.batch_documents):
            if isinstance(item, DocBatch):
                texts += item.texts
    return texts


def hf_tokenizer_json(model_bytes: bytes, out: Path) -> Path:
    """The sentencepiece BPE as an HF `tokenizers` file, for datatrove's DocumentTokenizer (it loads no other
    kind). Merges are ranked by piece score, as sentencepiece applies them; on runs of spaces the two still
    split differently now and then, which `compare_tokenizers` measures."""
    if out.exists():
        return out
    from transformers import LlamaTokenizer
    from transformers.convert_slow_tokenizer import SentencePieceExtractor

    model = out.with_suffix(".model")
    model.write_bytes(model_bytes)
    pieces = [(p.piece, p.score) for p in SentencePieceExtractor(str(model)).proto.pieces]
    vocab = {piece: i for i, (piece, _) in enumerate(pieces)}
    merges = []
    for piece, score in pieces:
        splits = [
            (piece[:k], piece[k:], score) for k in range(1, len(piece)) if piece[:k] in vocab and piece[k:] in vocab
        ]
        merges += sorted(splits, key=lambda m: (vocab[m[0]], vocab[m[1]]))
    merges = [(a, b) for a, b, _ in sorted(merges, key=lambda m: m[2], reverse=True)]
    LlamaTokenizer(vocab=vocab, merges=merges, add_bos_token=False)._tokenizer.save(str(out))
    return out


def compare_tokenizers(texts: list[str], tokenizer, hf_json: Path) -> dict:
    """How far the HF conversion is from sentencepiece on these texts: tokens, and documents tokenized differently."""
    from tokenizers import Tokenizer as HFTokenizer

    ours = tokenizer.processor.encode(texts)
    theirs = [e.ids for e in HFTokenizer.from_file(str(hf_json)).encode_batch(texts, add_special_tokens=False)]
    return {
        "sentencepiece_tokens": sum(map(len, ours)),
        "hf_tokens": sum(map(len, theirs)),
        "documents_differing": sum(a != b for a, b in zip(ours, theirs)),
        "documents": len(texts),
    }


# ------------------------------------------------------------------------------------------------ tokenmill


def bare_sentencepiece(texts: list[str], tokenizer, threads: int) -> dict:
    started = time.perf_counter()
    ids = tokenizer.processor.encode(texts, num_threads=threads)
    return {"seconds": time.perf_counter() - started, "tokens": sum(map(len, ids))}


_WORKER: dict = {}  # per tokenize-stage worker process: the texts (inherited through fork), batch size, Tokenizer


def _start_worker(texts: list[str], batch_documents: int, tokenizer) -> None:
    _WORKER.update(texts=texts, size=batch_documents, tokenizer=tokenizer)


def _encode_batch(start: int) -> int:
    return int(_WORKER["tokenizer"].encode(_WORKER["texts"][start : start + _WORKER["size"]])[1].sum())


def tokenize_stage(texts: list[str], tokenizer, workers: int, batch_documents: int) -> dict:
    """`Tokenizer.encode` as the build calls it: one thread per worker process, a batch of documents at a time,
    batches handed to whichever of `workers` forked processes is free (as Ray hands out files)."""
    import multiprocessing

    with multiprocessing.get_context("fork").Pool(workers, _start_worker, (texts, batch_documents, tokenizer)) as pool:
        pool.map(_encode_batch, [len(texts)] * workers)  # every worker up and loaded before the clock
        started = time.perf_counter()
        tokens = sum(pool.imap_unordered(_encode_batch, range(0, len(texts), batch_documents)))
        seconds = time.perf_counter() - started
    return {"seconds": seconds, "tokens": tokens}


def tokenmill_build(recipe, out: Path, workers: int) -> dict:
    seconds, manifest = timed_build(recipe, out, workers)
    return {
        "seconds": seconds,
        "process_seconds": manifest.stages["process"]["seconds"],
        "documents": sum(s.documents for s in manifest.splits.values()),
        "tokens": sum(s.tokens for s in manifest.splits.values()),
    }


# ------------------------------------------------------------------------------------------------ datatrove


def _keep_by_rule(doc, keep) -> bool:
    """A tokenmill rule (subset, short document, code) as a datatrove LambdaFilter: the same function decides."""
    subset = doc.metadata.get("meta", {}).get("redpajama_set_name") or doc.metadata.get("subset", "")
    result = keep(doc.text, subset)
    return result if isinstance(result, bool) else result[0]


def datatrove_filters(source) -> list:
    """The source's filters as datatrove steps, in the recipe's order: its own classes (with its own word
    tokenizer) for the quality filters, LambdaFilters running tokenmill's functions for the other rules."""
    import dataclasses
    import functools

    import datatrove.pipeline.filters as dt_filters

    from stages.filter import DATATROVE_CLASSES, build_filters

    rules = dataclasses.replace(source, filters={k: v for k, v in source.filters.items() if k not in DATATROVE_CLASSES})
    steps = [dt_filters.LambdaFilter(functools.partial(_keep_by_rule, keep=rule.keep)) for rule in build_filters(rules)]
    return steps + [
        getattr(dt_filters, DATATROVE_CLASSES[k])(**(v or {}))
        for k, v in source.filters.items()
        if k in DATATROVE_CLASSES
    ]


class _QuietStderr:
    """datatrove's workers log every step at INFO to the inherited stderr: send fd 2 to a file meanwhile."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path

    def __enter__(self):
        import os

        sys.stderr.flush()
        self.saved, self.file = os.dup(2), open(self.path, "ab")
        os.dup2(self.file.fileno(), 2)

    def __exit__(self, *exc):
        import os

        os.dup2(self.saved, 2)
        os.close(self.saved)
        self.file.close()


def _xxhash64(shingle: str) -> int:
    """datatrove's default shingle hash (64-bit xxhash of the string). It passes a str, which xxhash 4 (installed
    here) refuses; xxhash 3 hashed its UTF-8 bytes, so that is what this does."""
    import xxhash

    return xxhash.xxh64_intdigest(shingle.encode("utf-8"))


def _datatrove_stages(source, work: Path, hf_json: Path) -> list[tuple[str, list, int]]:
    """(name, pipeline, tasks) of datatrove's documented MinHash recipe with filtering before and tokenization
    after: the kept documents are written once and read back after the duplicate clusters are known."""
    from datatrove.pipeline.dedup.minhash import (
        MinhashConfig,
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )
    from datatrove.pipeline.readers import JsonlReader, ParquetReader
    from datatrove.pipeline.tokens import DocumentTokenizer, DocumentTokenizerMerger
    from datatrove.pipeline.writers import JsonlWriter

    root = Path(source.root)
    if source.kind == "jsonl":
        reader, files = JsonlReader(str(root), glob_pattern="**/*.jsonl.zst"), len(list(root.rglob("*.jsonl.zst")))
    else:  # the subset of a StarCoderData file is its folder, as in tokenmill
        folder = source.train[0].split("/")[0]
        reader = ParquetReader(
            str(root), glob_pattern="**/*.parquet", text_key=source.text_field, default_metadata={"subset": folder}
        )
        files = len(list(root.rglob("*.parquet")))
    config = MinhashConfig(num_buckets=9, hashes_per_bucket=13, seed=1)  # SlimPajama's bands x rows
    signatures = MinhashDedupSignature(str(work / "sigs"), config)
    signatures._hash_func = _xxhash64
    return [
        (
            "read, filter, signatures",
            [reader, *datatrove_filters(source), JsonlWriter(str(work / "kept"), compression=None), signatures],
            files,
        ),
        (
            "buckets",
            [MinhashDedupBuckets(str(work / "sigs"), str(work / "buckets"), config=config)],
            config.num_buckets,
        ),
        ("clusters", [MinhashDedupCluster(str(work / "buckets"), str(work / "remove"), config=config)], 1),
        (
            "dedupe, tokenize",
            [
                JsonlReader(str(work / "kept")),
                MinhashDedupFilter(str(work / "remove")),
                DocumentTokenizer(str(work / "tokens"), str(hf_json), eos_token="</s>"),
            ],
            files,
        ),
        ("merge", [DocumentTokenizerMerger(str(work / "tokens"), str(work / "merged"), save_filename=source.name)], 1),
    ]


def datatrove_run(recipe, work: Path, workers: int, hf_json: Path) -> dict:
    """datatrove 0.10.1 doing the recipe's work, source by source (its MinHash does not span two readers), with
    LocalPipelineExecutor and `workers` processes."""
    from datatrove.executor import LocalPipelineExecutor

    seconds: dict[str, float] = {}
    for source in recipe.sources:
        for name, pipeline, tasks in _datatrove_stages(source, work / source.name, hf_json):
            started = time.perf_counter()
            with _QuietStderr(work / "datatrove.log"):
                LocalPipelineExecutor(
                    pipeline,
                    tasks=tasks,
                    workers=min(workers, tasks),
                    logging_dir=str(work / source.name / "logs" / name),
                ).run()
            seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - started
    merged = list(work.glob("*/merged/*.ds"))
    return {
        "seconds": sum(seconds.values()),
        "stages": {k: round(v, 2) for k, v in seconds.items()},
        "tokens": sum(p.stat().st_size for p in merged) // 2,
        "documents": sum(p.with_name(p.name + ".index").stat().st_size // 8 for p in merged),
    }


# ------------------------------------------------------------------------------------------------ dedupe memory

MEMORY_SHAPE = {"natural_chars": 300, "code_chars": 300, "unit_chars": 300, "file_mb": 10.0}  # ~650-byte documents
DOCUMENTS_PER_PARTITION = 62_500  # dedupe.partitions grows with the corpus, as a recipe for a larger corpus would


# The build's stages in order (the report's order), but the verified preset's: the bench recipes do not verify.
TASK_KINDS = tuple(stage.name for stage in STAGES if not stage.verify_only and not stage.decontaminate_only)


def measure_build_tasks(
    recipe, run: Path, workers: int, only: dict[str, set[int]] | None = None, stop_after: str = ""
) -> MeasuringRunner:
    """`pipeline.build.driver.run_stages` over `recipe` with its output (and its work dir, run/work) under `run`, every
    task measured in its own process. Needs Ray only for the object store the build puts its tokenizer in."""
    import ray

    from pipeline.build.driver import run_stages
    from pipeline.build.inputs import list_inputs
    from pipeline.build.tokenizer import open_tokenizer
    from pipeline.work.store import Store

    shutil.rmtree(run, ignore_errors=True)
    out = Store.at(str(run))
    inputs = list_inputs(recipe)
    tokenizer = open_tokenizer(recipe, inputs, out)
    runner = MeasuringRunner(
        out.child("work"), workers, EventLog(None, console=False), only=only or {}, stop_after=stop_after
    )
    started_ray = not ray.is_initialized()
    if started_ray:
        ray.init(num_cpus=1, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    try:
        run_stages(recipe, inputs, tokenizer, runner, out)
    except Enough:
        pass
    finally:
        if started_ray:
            ray.shutdown()
    return runner


def dedupe_memory(work: Path, documents: int, workers: int) -> list[dict]:
    """Per-task peak RSS and wall time of the build's tasks on corpora of 0.1x, 0.3x and 1x `documents` short
    documents (the count that dedupe memory scales with), 10 MB of text per input file."""
    pilot = write_corpus(work / "memory-pilot", CorpusShape(size_mb=2, **MEMORY_SHAPE))
    bytes_per_document = 2e6 / sum(pilot["documents"].values())
    rows = []
    for fraction in (0.1, 0.3, 1.0):
        size_mb = round(fraction * documents * bytes_per_document / 1e6, 1)
        corpus_dir = work / f"memory-{size_mb:g}mb"
        corpus = write_corpus(corpus_dir, CorpusShape(size_mb=size_mb, **MEMORY_SHAPE))
        count = sum(corpus["documents"].values())
        partitions = max(1, round(count / DOCUMENTS_PER_PARTITION))
        runner = measure_build_tasks(bench_recipe(corpus_dir, "sample", partitions), corpus_dir / "run", workers)
        done = [runner.work.done(folder) for folder in runner.folders["process"]]
        row = {
            "documents": count,
            "text_mb": size_mb,
            "files": len(done),
            "partitions": partitions,
            **{stage: m.brief() for stage, m in runner.measures.items()},
            "largest_file_mb": round(max(sum(f["bytes_read"] for f in r["funnels"].values()) for r in done) / 1e6, 1),
        }
        print(f"  memory: {row}", flush=True)
        rows.append(row)
    return rows


def process_memory(work: Path, file_mbs: tuple[float, ...] = (8, 32, 128)) -> list[dict]:
    """Peak RSS of one process task against the size of its input file (SlimPajama-like documents): what sets a
    worker's memory in the process stage, where the corpus size does not enter."""
    rows = []
    for file_mb in file_mbs:
        corpus_dir = work / f"file-{file_mb:g}mb"
        # 2 validation files first (file indexes 0, 1), then 2 training files of `file_mb` MB each
        write_corpus(
            corpus_dir,
            CorpusShape(size_mb=round(2 * file_mb / sample.NATURAL_SHARE / (1 - VALIDATION_SHARE), 1), file_mb=file_mb),
        )
        runner = measure_build_tasks(
            bench_recipe(corpus_dir, "sample", 8), corpus_dir / "run", 1, only={"process": {2}}, stop_after="process"
        )
        done = runner.work.done(runner.folders["process"][2])
        text_mb = sum(f["bytes_read"] for f in done["funnels"].values()) / 1e6
        rows.append(
            {"file_text_mb": round(text_mb, 1), "documents": done["documents"], **runner.measures["process"].brief()}
        )
        print(f"  process memory: {rows[-1]}", flush=True)
    return rows


def memory_table(rows: list[dict]) -> str:
    kinds = [k for k in TASK_KINDS if k in rows[0]]
    lines = [
        "| documents | text MB | files (largest, MB of text) | partitions | "
        + " | ".join(f"{k}: s, peak RSS MiB" for k in kinds)
        + " |",
        "|---:|---:|---:|---:|" + "---|" * len(kinds),
    ]
    for row in rows:
        cells = " | ".join(f"{row[k]['seconds']:.1f} s, {row[k]['peak_rss_mib']:.0f}" for k in kinds)
        lines.append(
            f"| {row['documents']:,} | {row['text_mb']:g} | {row['files']} ({row['largest_file_mb']:g}) | "
            f"{row['partitions']} | {cells} |"
        )
    return "\n".join(lines)


def process_memory_table(rows: list[dict]) -> str:
    lines = ["| input file, MB of text | documents | process task: s, peak RSS MiB |", "|---:|---:|---|"]
    return "\n".join(
        lines
        + [
            f"| {r['file_text_mb']:g} | {r['documents']:,} | {r['seconds']:.1f} s, {r['peak_rss_mib']:.0f} |"
            for r in rows
        ]
    )


# ------------------------------------------------------------------------------------------------ the run


ROWS = (  # (key, label, measured against)
    ("sentencepiece", "sentencepiece encode, bare (limit)", None),
    ("tokenize", "tokenmill tokenize stage", "sentencepiece"),
    ("tokenmill", "tokenmill build, TinyLlama rules", "datatrove"),
    ("datatrove", "datatrove, same rules", None),
    ("tokenmill_quality", "tokenmill build + quality filters", "datatrove_quality"),
    ("datatrove_quality", "datatrove + quality filters", None),
)


def measure_once(work: Path, recipes: dict, texts: list[str], tokenizer, args, attempt: int) -> dict:
    """One measurement of every row, each on its own (nothing else of ours runs meanwhile)."""
    hf_json = hf_tokenizer_json(tokenizer.model_bytes, work / "hf-tokenizer.json")
    runs = work / f"runs-{attempt}"
    shutil.rmtree(runs, ignore_errors=True)  # both tools skip what an earlier run left finished
    results = {
        "sentencepiece": bare_sentencepiece(texts, tokenizer, args.workers),
        "tokenize": tokenize_stage(texts, tokenizer, args.workers, recipes["tinyllama"].batch_documents),
    }
    for key, name in (("tokenmill", "tinyllama"), ("tokenmill_quality", "quality")):
        if key in args.rows:
            results[key] = tokenmill_build(recipes[name], runs / f"tokenmill-{name}", args.workers)
    for key, name in (("datatrove", "tinyllama"), ("datatrove_quality", "quality")):
        if key in args.rows:
            results[key] = datatrove_run(recipes[name], runs / f"datatrove-{name}", args.workers, hf_json)
    for key, row in results.items():
        print(f"  [{attempt}] {key}: {row['seconds']:.1f} s", flush=True)
    return results


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def table(attempts: list[dict], text_bytes: int) -> str:
    """Median seconds per row; ratios are medians of the per-attempt ratios (both sides of a ratio ran in the
    same attempt, minutes apart, on the same noisy machine)."""
    lines = ["| row | seconds | MB/s of input text | ratio |", "|---|---:|---:|---|"]
    for key, label, against in ROWS:
        if key not in attempts[0]:
            continue
        seconds = _median([a[key]["seconds"] for a in attempts])
        ratios = []
        for other in [against] + (["sentencepiece"] if key == "tokenmill" else []):
            if other in attempts[0]:
                value = _median([a[other]["seconds"] / a[key]["seconds"] for a in attempts])
                ratios.append(
                    f"{value:.2f} of bare sentencepiece" if other == "sentencepiece" else f"{value:.2f}x datatrove"
                )
        lines.append(f"| {label} | {seconds:.1f} | {text_bytes / 1e6 / seconds:.2f} | {'; '.join(ratios)} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="tokenmill bench", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out",
        "--work",
        dest="work",
        type=Path,
        required=True,
        help="folder for the corpus, the runs and results.json",
    )
    parser.add_argument(
        "--size-mb",
        type=float,
        default=100.0,
        help="MB of text in the generated corpus (default 100, the size BENCHMARKS.md reports)",
    )
    parser.add_argument("--workers", type=int, default=2, help="processes / threads of every row (default 2)")
    parser.add_argument("--repeat", type=int, default=1, help="measure every row this many times (default 1)")
    parser.add_argument(
        "--rows",
        default=",".join(k for k, _, _ in ROWS[2:]),
        help="builds to run besides the tokenizer rows "
        "(default all: tokenmill,datatrove,tokenmill_quality,datatrove_quality)",
    )
    parser.add_argument(
        "--partitions", type=int, default=8, help="dedupe.partitions of the tokenmill builds (default 8)"
    )
    parser.add_argument(
        "--memory-docs", type=int, default=0, help="also measure dedupe memory at 0.1x/0.3x/1x of this many documents"
    )
    parser.add_argument("--memory-only", action="store_true", help="only the dedupe memory measurement")
    parser.add_argument(
        "--memory-file-mb",
        default="8,32,128",
        help="with --memory-docs: MB of text of the input files whose process task is measured alone "
        "(default 8,32,128)",
    )
    args = parser.parse_args(argv)
    args.rows = set(args.rows.split(",")) if args.rows else set()
    args.memory_file_mb = tuple(float(x) for x in args.memory_file_mb.split(",") if x)
    args.work = args.work.resolve()  # recipes resolve relative roots against their own folder
    return args


def throughput(args) -> dict:
    from stages.tokenize import Tokenizer, read_model_bytes

    corpus_dir = args.work / f"corpus-{args.size_mb:g}mb"
    corpus = write_corpus(corpus_dir, CorpusShape(size_mb=args.size_mb))
    recipes = {
        "tinyllama": bench_recipe(corpus_dir, "sample", args.partitions),
        "quality": bench_recipe(corpus_dir, "web-quality", args.partitions),
    }
    cfg = recipes["tinyllama"].tokenizer
    tokenizer = Tokenizer.from_bytes(read_model_bytes(cfg.model), cfg.add_bos, cfg.add_eos)
    texts = read_texts(recipes["tinyllama"])
    text_bytes = sum(len(t.encode("utf-8", "surrogatepass")) for t in texts)
    print(
        f"corpus {corpus_dir}: {text_bytes / 1e6:.1f} MB of text, {len(texts):,} documents, "
        f"{sum(map(len, corpus['files'].values()))} files; {args.workers} workers",
        flush=True,
    )
    attempts = [measure_once(args.work, recipes, texts, tokenizer, args, attempt) for attempt in range(args.repeat)]
    return {
        "corpus": corpus,
        "text_bytes": text_bytes,
        "workers": args.workers,
        "attempts": attempts,
        "hf_vs_sentencepiece": compare_tokenizers(texts[::10], tokenizer, args.work / "hf-tokenizer.json"),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    results = {} if args.memory_only else throughput(args)
    if args.memory_docs:
        results["memory"] = dedupe_memory(args.work, args.memory_docs, args.workers)
        results["process_memory"] = process_memory(args.work, args.memory_file_mb)
    (args.work / "results.json").write_text(json.dumps(results, indent=1, default=str))
    if "memory" in results:
        print(memory_table(results["memory"]))
        print(process_memory_table(results["process_memory"]))
    if "attempts" in results:
        print(table(results["attempts"], results["text_bytes"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
