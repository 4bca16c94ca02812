"""The late stages at corpus scale: every task's peak memory and reads, the driver's.

1. Fabricate layout-true process-stage outputs (no text, no tokenizer run): for N documents in SlimPajama-like
   files (jsonl, ~1,060 tokens per document) and StarCoderData-like files (parquet, fewer and larger files, ~1,500
   tokens per document), 7:3 by tokens, each file's outputs are written by the build's own
   `pipeline.tasks.process._write_file_outputs` (so tokens.bin, docs.npz, keys.bin, quarantine and the done record are
   exactly what a process task leaves), with synthetic exact + 9 band keys of which a planted fraction are
   copies of a document of an earlier file (1% exact, 1% near: a third of the bands shared).
2. Run the real driver (`pipeline.build.driver.run_stages` then `pipeline.build.finalize.finalize`) in a fresh process,
with
   a runner that runs every pending task in its own fresh process (so each task's peak RSS, VmHWM, is its own),
   `--workers` at a time. The work and output stores count their read and write calls and bytes, and say they
   are not local, so the mix tasks take the object-store path (token spans copied to local scratch).
3. Print the per-stage table; `--json` keeps the raw results, from which `--project` projects the full TinyLlama
   corpus. Results and the exact commands: BENCHMARKS.md.

    PYTHONPATH=$PWD nice .venv/bin/python bench/build_scale.py --work /tmp/scale --docs 1000000 10000000 --token-scale
    0.25 --json runs.jsonl
    PYTHONPATH=$PWD .venv/bin/python bench/build_scale.py --work x --project runs.jsonl

A raw crawl (`--raw`: preset verified, --near-fraction near copies in power-law chains and three giant clusters,
the distributed clustering's rounds; BENCHMARKS.md "Raw web crawl scale", `--raw --project` for one crawl snapshot):

    PYTHONPATH=$PWD nice .venv/bin/python bench/build_scale.py --work /tmp/scale32 --raw --near-fraction 0.3
    --token-scale 0.05 --docs 1000000 3000000 --json raw.jsonl
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
import types
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
# the fabricated inputs' URLs name Hugging Face datasets that are not read: offline, the samples task's attempt to
# read a few of them fails as an OSError (its samples left out), not as a network error after a DNS timeout
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench.measure import CountingStore, MeasuringRunner, StageMeasure, status  # noqa: E402
from manifests.hashing import splitmix64  # noqa: E402
from pipeline.build import registry  # noqa: E402
from pipeline.build.driver import run_stages  # noqa: E402
from pipeline.build.finalize import finalize  # noqa: E402
from pipeline.build.inputs import InputFile  # noqa: E402
from pipeline.build.recipe import Recipe, load_recipe  # noqa: E402
from pipeline.build.registry import process_key  # noqa: E402
from pipeline.tasks import process as tasks  # noqa: E402
from pipeline.work.progress import EventLog  # noqa: E402
from pipeline.work.store import Store  # noqa: E402
from stages import dedupe as dedupe_stage  # noqa: E402
from stages.tokenize import Tokenizer, read_model_bytes  # noqa: E402

TOKENIZER = "pkg://mistral_common/data/tokenizer.model.v1"  # 32k sentencepiece, offline: uint16 tokens
NATURAL_SUBSETS = {
    "RedPajamaCommonCrawl": 0.52,
    "RedPajamaC4": 0.27,
    "RedPajamaBook": 0.04,
    "RedPajamaArXiv": 0.05,
    "RedPajamaWikipedia": 0.08,
    "RedPajamaStackExchange": 0.04,
}
LANGUAGES = ("python", "java", "javascript", "c", "cpp", "go", "rust", "php", "ruby", "typescript")
MISSING_ROOT = "/nonexistent/tokenmill-build-scale"  # where the fabricated input files "are" (see plan_files)
FULL_ROWS_PER_PARTITION = 7_800_000  # ~800M documents x 10 keys over 1,024 partitions: a full-scale partition


@dataclass(frozen=True, slots=True)
class Shape:
    """The fabricated corpus: token lengths lognormal (mean, sigma) per source, documents per input file."""

    natural_mean: float = 1060.0  # SlimPajama: 627B tokens / 590M documents
    natural_sigma: float = 1.0
    code_mean: float = 1500.0
    code_sigma: float = 1.2
    natural_per_file: int = 10_000  # SlimPajama: 590M documents / 59,166 files
    code_per_file: int = 50_000  # StarCoderData's parquet files hold ~200k each; fewer, larger files
    natural_share: float = 0.7  # of tokens
    exact_fraction: float = 0.01
    near_fraction: float = 0.01
    token_scale: float = 1.0  # documents' token counts x this (disk); shard_tokens is scaled alike
    raw: bool = False  # a raw crawl: `preset: verified` (signatures, verify), near copies in clusters of skewed size
    giant_fraction: float = 0.01  # raw: of all documents, near copies of GIANT_CLUSTERS boilerplate documents

    def code_documents(self, documents: int) -> int:
        natural = self.natural_share / self.natural_mean
        code = (1 - self.natural_share) / self.code_mean
        return round(documents * code / (natural + code))


# ------------------------------------------------------------------------------------------------ the corpus


GIANT_CLUSTERS = 3  # raw: boilerplate documents (a cookie banner, a 404 page) that a share of the crawl repeats
ZIPF_A = 1.6  # raw: a near copy's cluster drawn by Zipf's law over the documents before it: a few large, many pairs


def bench_recipe(documents: int, shape: Shape, rows_per_partition: int) -> Recipe:
    """TinyLlama's recipe (its sources, dedupe keys, downsample mix), the offline 32k tokenizer, partitions sized
    as a full-scale run's, shard size scaled with the token counts. Raw (`shape.raw`): the dedupe preset a raw
    crawl needs, `verified` (16 bands x 6 rows of 256-value signatures, each removal verified at J 0.78)."""
    overrides = {"tokenizer": {"model": TOKENIZER}}
    if shape.raw:
        overrides["dedupe"] = {"minhash": {"preset": "verified", "ngram": 5, "seed": 1}}
    recipe = load_recipe(REPO / "manifests/recipes/tinyllama.yaml", overrides)
    slots = len(dedupe_stage.key_slots(recipe.dedupe))
    partitions = max(1, math.ceil(documents * slots / rows_per_partition))
    return replace(
        recipe,
        dedupe=replace(recipe.dedupe, partitions=partitions),
        mix=replace(recipe.mix, shard_tokens=max(1, round(recipe.mix.shard_tokens * shape.token_scale))),
    )


def plan_files(recipe: Recipe, documents: int, shape: Shape) -> list[tuple[InputFile, int, int]]:
    """(input file, its documents, global index of its first document), in the build's canonical order:
    SlimPajama validation files (one per 1,000 training files), then its training files, then StarCoderData's."""
    natural, code = recipe.sources
    n_code = shape.code_documents(documents)
    n_natural = documents - n_code
    n_train = max(1, math.ceil(n_natural / shape.natural_per_file))
    n_val = max(1, n_train // 1000)
    natural_counts = _cut(n_natural, n_val + n_train)
    code_counts = _cut(n_code, max(1, math.ceil(n_code / shape.code_per_file)))
    listed = [
        (natural, "validation", f"validation/chunk1/example_holdout_{i}.jsonl.zst", n)
        for i, n in enumerate(natural_counts[:n_val])
    ]
    listed += [
        (natural, "train", f"train/chunk{1 + i // 5000}/example_train_{i}.jsonl.zst", n)
        for i, n in enumerate(natural_counts[n_val:])
    ]
    listed += [
        (code, "train", f"{LANGUAGES[i % len(LANGUAGES)]}/train-{i:05d}-of-{len(code_counts):05d}.parquet", n)
        for i, n in enumerate(code_counts)
    ]
    out, first = [], 0
    for index, (source, split, rel, n) in enumerate(listed):
        size = int(
            n * (shape.natural_mean * 4.2 / 2.8 if source is natural else shape.code_mean * 3.2 / 2.7)
        )  # compressed bytes
        # a local path that does not exist: only the file's process outputs are fabricated, so the samples task (which
        # reads a few removed duplicates' text back) finds it gone and the build goes on without them, as for a
        # deleted input; the source's real root would send it to the hub for real files of the same names
        url = f"{MISSING_ROOT}/{source.name}/{rel}"
        inp = InputFile(
            file_index=index, source=source, url=url, rel_path=rel, split=split, size=size, version="mtime:0"
        )
        out.append((inp, n, first))
        first += n
    return out


def _cut(total: int, parts: int) -> list[int]:
    return [total // parts + (i < total % parts) for i in range(parts)]


def _hash(g: np.ndarray, salt: int) -> np.ndarray:
    return splitmix64(g * np.uint64(64) + np.uint64(salt))


def synthetic_keys(first: int, n: int, shape: Shape, slots: int) -> np.ndarray:
    """(n, slots) uint64: slot 0 the exact key, then the band keys. A planted exact copy takes all keys of a
    document of an earlier file, a near copy a third of its band keys (at least one)."""
    g = np.arange(first, first + n, dtype=np.uint64)
    base = np.repeat(g[:, None], slots, axis=1)
    if first:
        u = _hash(g, 1).astype(np.float64) / 2.0**64
        source = _hash(g, 2) % np.uint64(first)
        exact, near = (
            u < shape.exact_fraction,
            (u >= shape.exact_fraction) & (u < shape.exact_fraction + shape.near_fraction),
        )
        base[exact] = source[exact, None]
        bands = np.stack([_hash(g, 3 + s) % np.uint64(3) == 0 for s in range(1, slots)], axis=1)
        bands[np.arange(n), (_hash(g, 40) % np.uint64(slots - 1)).astype(np.int64)] = True
        shared = near[:, None] & bands
        base[:, 1:][shared] = np.repeat(source[:, None], slots - 1, axis=1)[shared]
    return _hash(base * np.uint64(16) + np.arange(slots, dtype=np.uint64), 7)


def raw_sources(g: np.ndarray, shape: Shape) -> np.ndarray:
    """Per document of a raw crawl (global indices `g`, uint64), the earlier document it nearly copies (-1: none),
    a pure function of the index. A giant_fraction of all documents copy one of GIANT_CLUSTERS boilerplate
    documents (the first ones); a near_fraction copy a predecessor at a distance drawn from a power law (exponent
    ZIPF_A: the nearest most often, some far back), so copies of copies form chains and clusters of skewed size."""
    u = _hash(g, 1).astype(np.float64) / 2.0**64
    out = np.full(len(g), -1, np.int64)
    giant = (u < shape.giant_fraction) & (g >= GIANT_CLUSTERS)
    out[giant] = (_hash(g[giant], 2) % np.uint64(GIANT_CLUSTERS)).astype(np.int64)
    near = (u >= shape.giant_fraction) & (u < shape.giant_fraction + shape.near_fraction) & (g > 0)
    v = (_hash(g[near], 4).astype(np.float64) + 1) / 2.0**64
    back = np.minimum(np.floor(v ** (-1 / (ZIPF_A - 1))), 2.0**40).astype(np.int64)
    out[near] = np.maximum(g[near].astype(np.int64) - back, 0)
    return out


def raw_roots(g: np.ndarray, shape: Shape) -> np.ndarray:
    """The document each one's copies lead back to (itself when it copies none)."""
    root, source = g.astype(np.int64), raw_sources(g, shape)
    while (more := source >= 0).any():
        root[more] = source[more]
        source[more] = raw_sources(root[more].astype(np.uint64), shape)
    return root


def raw_keys_and_signatures(first: int, n: int, shape: Shape, slots: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """The exact key + band keys, and the compact signatures (uint16, `width` values), of a raw crawl's documents:
    a near copy shares a third of its source's bands (at least one) and 95% of the signature values of its chain's
    first document (estimated Jaccard ~0.95 with it, ~0.9 with another copy of it: removed by verify)."""
    g = np.arange(first, first + n, dtype=np.uint64)
    source = raw_sources(g, shape)
    copy = source >= 0
    base = np.repeat(g[:, None], slots, axis=1)
    bands = np.stack([_hash(g, 3 + s) % np.uint64(3) == 0 for s in range(1, slots)], axis=1)
    bands[np.arange(n), (_hash(g, 40) % np.uint64(slots - 1)).astype(np.int64)] = True
    shared = copy[:, None] & bands
    base[:, 1:][shared] = np.repeat(source.astype(np.uint64)[:, None], slots - 1, axis=1)[shared]
    keys = _hash(base * np.uint64(16) + np.arange(slots, dtype=np.uint64), 7)
    column = np.arange(width, dtype=np.uint64)
    own = _hash(g[:, None] * np.uint64(1024) + column, 9)
    theirs = _hash(raw_roots(g, shape).astype(np.uint64)[:, None] * np.uint64(1024) + column, 9)  # the chain's first
    take = copy[:, None] & (_hash(g[:, None] * np.uint64(1024) + column, 11) % np.uint64(100) < np.uint64(95))
    return keys, np.where(take, theirs, own).astype(np.uint16)


_POOL = np.random.default_rng(0).integers(0, 32000, 1 << 22, dtype=np.uint16)


def _tokens(n: int) -> np.ndarray:
    """n uint16 tokens (content does not matter to the late stages, sizes do)."""
    reps = -(-n // len(_POOL))
    return np.tile(_POOL, reps)[:n] if reps > 1 else _POOL[:n].copy()


def fabricate_file(
    recipe: Recipe, tokenizer: Tokenizer, work: Store, inp: InputFile, n: int, first: int, shape: Shape
) -> None:
    """One input file's process outputs, written by the build's own writer."""
    folder = registry.PROCESS.folder(process_key(inp, tokenizer, recipe))
    if work.done(folder):
        return
    rng = np.random.default_rng([11, inp.file_index])
    natural = inp.source.name == recipe.sources[0].name
    mean, sigma = (shape.natural_mean, shape.natural_sigma) if natural else (shape.code_mean, shape.code_sigma)
    raw = np.clip(rng.lognormal(math.log(mean) - sigma**2 / 2, sigma, n), 1, 1 << 20)
    lengths = np.maximum(1, np.round(raw * shape.token_scale)).astype(np.int64)
    chars = np.round(raw * (4.2 if natural else 3.2)).astype(np.int64)
    ordinals = np.cumsum(1 + (rng.random(n) < 0.01)).astype(np.uint64) - np.uint64(
        0 if natural else 1
    )  # lines 1-based, rows 0-based; ~1% filtered
    out = tasks._FileOutputs()
    if natural:
        names = list(NATURAL_SUBSETS)
        subset = rng.choice(
            len(names), n, p=np.array(list(NATURAL_SUBSETS.values())) / sum(NATURAL_SUBSETS.values())
        ).astype(np.uint16)
        split = np.full(n, 0 if inp.split == "train" else 1, np.uint8)
    else:
        names = [inp.rel_path.split("/")[0]]
        subset = np.zeros(n, np.uint16)
        split = (rng.random(n) < inp.source.validation_fraction).astype(np.uint8)
    for name in names:
        out.subset_id(name)
        here = subset == out.subsets[name]
        f = out.funnels[name]
        f.documents_passed = int(here.sum())
        f.chars_read = f.bytes_read = int(chars[here].sum())
        f.documents_read = f.documents_passed + int(f.documents_passed * 0.01)
        if natural:
            f.dropped["short_document"] = f.documents_read - f.documents_passed
    out.tokens.append(_tokens(int(lengths.sum())))
    for column, values in (
        ("ordinal", ordinals),
        ("subset", subset),
        ("split", split),
        ("chars", chars),
        ("length", lengths),
    ):
        out.columns[column].append(values)
    slots = len(dedupe_stage.key_slots(recipe.dedupe))
    if shape.raw:
        keys, sigs = raw_keys_and_signatures(first, n, shape, slots, recipe.dedupe.minhash.permutations)
        out.keys.append(keys)
        out.signatures.append(sigs)
    else:
        out.keys.append(synthetic_keys(first, n, shape, slots))
    tasks._write_file_outputs(inp, work, folder, out, recipe.dedupe, tokenizer.dtype, 0.0)


def _fabricate_worker(args: tuple) -> None:
    work_dir, documents, shape, rows_per_partition, chunk = args
    recipe, tokenizer = bench_recipe(documents, shape, rows_per_partition), _tokenizer()
    files = plan_files(recipe, documents, shape)
    for i in chunk:
        fabricate_file(recipe, tokenizer, Store.at(work_dir), *files[i], shape)


def fabricate(work_dir: str, documents: int, shape: Shape, rows_per_partition: int, workers: int) -> float:
    import multiprocessing

    started = time.perf_counter()
    n_files = len(plan_files(bench_recipe(documents, shape, rows_per_partition), documents, shape))
    chunks = [list(range(w, n_files, workers)) for w in range(workers)]
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        pool.map(_fabricate_worker, [(work_dir, documents, shape, rows_per_partition, c) for c in chunks])
    return time.perf_counter() - started


def _tokenizer() -> Tokenizer:
    return Tokenizer.from_bytes(read_model_bytes(TOKENIZER), False, True)


# ------------------------------------------------------------------------------------------------ measuring


def driver(
    work_dir: str, out_dir: str, documents: int, shape: Shape, rows_per_partition: int, workers: int, latency_ms: float
) -> dict:
    """The build's driver after the process stage, for real: run_stages (whose process tasks are all done) and
    finalize, in this (fresh) process. Ray is replaced by the bench runner; `ray.put` by the identity. Each of the
    driver's own store requests waits `latency_ms` first."""
    sys.modules["ray"] = types.SimpleNamespace(put=lambda value: value)
    CountingStore.latency = latency_ms / 1000
    recipe, tokenizer = bench_recipe(documents, shape, rows_per_partition), _tokenizer()
    inputs = [inp for inp, _, _ in plan_files(recipe, documents, shape)]
    work, out = CountingStore.at(work_dir), CountingStore.at(out_dir)
    baseline = status()
    runner = MeasuringRunner(work, workers, EventLog(None, console=False))
    started, cpu = time.perf_counter(), time.process_time()
    results = run_stages(recipe, inputs, tokenizer, runner, out)
    staged = status()
    manifest = finalize(recipe, inputs, tokenizer, out, work, results, time.perf_counter() - started)
    end = status()
    return {
        "documents": documents,
        "files": len(inputs),
        "partitions": recipe.dedupe.partitions,
        "shard_tokens": recipe.mix.shard_tokens,
        "key_groups": len(results.key_groups),
        "shards": {s: len(v) for s, v in results.shards.items()},
        "tokens": {s: v.tokens for s, v in manifest.splits.items()},
        "achieved": manifest.mix.achieved,
        "removed": results.resolved,
        "rounds": runner.measures["propagate"].tasks // max(1, runner.measures["removals"].tasks)
        if "propagate" in runner.measures
        else 0,
        "stages": {
            stage: {
                **{k: getattr(m, k) for k in StageMeasure.__slots__},
                **{k: v for k, v in runner.timings[stage].items() if k in ("gap_seconds", "done_lookup_seconds")},
            }
            for stage, m in runner.measures.items()
        },
        "driver": {
            "baseline_hwm": baseline["VmHWM"],
            "after_stages_hwm": staged["VmHWM"],
            "peak_hwm": end["VmHWM"],
            "peak_rss_anon_now": end.get("RssAnon"),
            "seconds": time.perf_counter() - started,
            "cpu_seconds": time.process_time() - cpu,
            **CountingStore.counts,
        },
    }


# ------------------------------------------------------------------------------------------------ report

# the stages after process that the scale runs measure (the samples task reads a few files; --raw: verify too)
STAGES = tuple(
    s.name for s in registry.STAGES if s not in (registry.PROCESS, registry.SAMPLES) and not s.decontaminate_only
)


def table(runs: list[dict]) -> str:
    lines = [
        "| documents | files | stage | tasks | peak RSS MiB (VmHWM) | peak anon MiB | task CPU s (wall) | reads | read "
        "MB (largest task) | writes | shipped KB (largest) | driver's gap s (done lookups) |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---|---:|---:|---:|",
    ]
    for run in runs:
        for stage in STAGES:
            m = run["stages"].get(stage)
            if not m:
                continue
            lines.append(
                f"| {run['documents']:,} | {run['files']} | {stage} | {m['tasks']} | {m['peak_hwm']:.0f} | "
                f"{m['peak_anon']:.0f} | "
                f"{m['task_cpu']:.1f} ({m['task_seconds']:.1f}) | {m['reads']:,} | {m['read_bytes'] / 1e6:,.0f} "
                f"({m['max_task_read_bytes'] / 1e6:,.0f}) | "
                f"{m['writes']:,} | {m['max_args_bytes'] / 1e3:.1f} | {_gap(m)} |"
            )
        d = run["driver"]
        lines.append(
            f"| {run['documents']:,} | {run['files']} | **driver** | 1 | {d['peak_hwm']:.0f} (start "
            f"{d['baseline_hwm']:.0f}, after stages "
            f"{d['after_stages_hwm']:.0f}) | | {d['cpu_seconds']:.1f} ({d['seconds']:.1f}) | {d['reads']:,} | "
            f"{d['read_bytes'] / 1e6:,.1f} | {d['writes']:,} | | |"
        )
    return "\n".join(lines)


def _gap(measured: dict) -> str:
    """The driver's longest wait before one of the stage's rounds ran its first task, and its done-record lookups
    (the runs before these were measured have neither)."""
    if "gap_seconds" not in measured:
        return ""
    return f"{measured['gap_seconds']:.1f} ({measured['done_lookup_seconds']:.1f})"


# ------------------------------------------------------------------------------------------------ projection

FULL = {
    "documents": 800e6,
    "files": 59_166 + 1_000,
    "text_bytes": 3.3e12,
    "process_mb_per_core_s": 4.7,
    "partitions": 1024,
    "shard_tokens": 100e6,
    "shards_per_group": 8,
    "cores": 512,
    "duplicates": 0.02,
    "code_validation_docs": 210e3,
}


def _run(
    runs: list[dict], documents: int, scale: float, natural_per_file: int | None = None, exact: float = 0.01
) -> dict | None:
    for r in runs:
        s = r["shape"]
        if (
            r["documents"] == documents
            and s["token_scale"] == scale
            and s["exact_fraction"] == exact
            and (natural_per_file is None or s["natural_per_file"] == natural_per_file)
        ):
            return r
    return None


def project(runs: list[dict]) -> str:
    """Core-hours, requests, peak memory and wall time of the full TinyLlama build from the measured runs: the
    per-document CPU of the 10M-document run (keys, dedupe, count), the mix's CPU split into per-document and
    per-token parts from the 1M runs at two token scales, resolve's memory and CPU per removed document from the
    runs with the fewest and the most removed documents, the driver from the run with the most input files."""
    big = max(
        (
            r
            for r in runs
            if r["shape"]["token_scale"] < 1
            and r["shape"]["exact_fraction"] == 0.01
            and r["shape"]["natural_per_file"] == 10_000
        ),
        key=lambda r: r["documents"],
    )
    small, real = _run(runs, 1_000_000, big["shape"]["token_scale"], 10_000), _run(runs, 1_000_000, 1.0, 10_000)
    files_run = max(runs, key=lambda r: r["files"])
    few_dups, dup_run = (
        min(runs, key=lambda r: r["removed"]["removed"]),
        max(runs, key=lambda r: r["removed"]["removed"]),
    )
    n = FULL["documents"]
    tokens_per_doc = sum(real["tokens"].values()) / real["documents"]
    full_tokens = n * tokens_per_doc
    cpu = {stage: big["stages"][stage]["task_cpu"] / big["documents"] * n for stage in ("keys", "dedupe", "count")}
    small_tokens, real_tokens = sum(small["tokens"].values()), sum(real["tokens"].values())
    per_token = (real["stages"]["mix"]["task_cpu"] - small["stages"]["mix"]["task_cpu"]) / (real_tokens - small_tokens)
    per_doc = (small["stages"]["mix"]["task_cpu"] - per_token * small_tokens) / small["documents"]
    cpu["mix"] = per_doc * n + per_token * full_tokens
    removed = FULL["duplicates"] * n
    cpu["resolve"] = dup_run["stages"]["resolve"]["task_cpu"] / dup_run["removed"]["removed"] * removed
    cpu["driver"] = files_run["driver"]["cpu_seconds"] / files_run["files"] * FULL["files"]
    process = FULL["text_bytes"] / (FULL["process_mb_per_core_s"] * 1e6)
    late = sum(cpu.values())
    groups = math.ceil(n * 10 / 10_000_000)
    mix_groups = math.ceil(full_tokens / (FULL["shard_tokens"] * FULL["shards_per_group"]))
    requests = {
        "keys": 2 * FULL["files"],
        "dedupe": groups * FULL["partitions"],
        "resolve": FULL["partitions"],
        "count": FULL["files"] + 3 * groups,
        "mix": 2 * (FULL["files"] + mix_groups) + 3 * mix_groups + FULL["code_validation_docs"],
        "driver": FULL["files"] + groups + FULL["partitions"] + 1 + groups + mix_groups + 2,
    }
    tasks_of = {"keys": groups, "dedupe": FULL["partitions"], "resolve": 1, "count": groups, "mix": mix_groups}
    # resolve holds every edge (one per duplicate document and key slot it matched in): MiB per removed document
    base = dup_run["stages"]["resolve"]["peak_hwm"]
    per_removed = (base - few_dups["stages"]["resolve"]["peak_hwm"]) / (
        dup_run["removed"]["removed"] - few_dups["removed"]["removed"]
    )
    memory = {
        stage: max(big["stages"][stage]["peak_hwm"], real["stages"][stage]["peak_hwm"])
        for stage in ("keys", "dedupe", "count", "mix")
    }
    memory["resolve"] = base + per_removed * (removed - dup_run["removed"]["removed"])
    lines = [
        f"Full corpus: {n / 1e6:.0f}M documents, {FULL['files']:,} input files, ~{full_tokens / 1e9:.0f}B tokens in "
        "the shards, "
        f"{FULL['partitions']} partitions, {groups} key groups, {mix_groups} mix groups, {FULL['duplicates']:.0%} "
        f"duplicates, {FULL['cores']} cores.",
        "",
        "| stage | core-hours | share of total | tasks | peak RSS per task | object-store reads | wall on 512 cores "
        "(CPU only) |",
        "|---|---:|---:|---:|---|---:|---:|",
        f"| process (BENCHMARKS.md: {FULL['process_mb_per_core_s']} MB/s per core) | {process / 3600:.1f} | "
        f"{process / (process + late):.1%} | "
        f"{FULL['files']:,} | ~250 MiB + 1.8 x the file's text | {FULL['files']:,}+ | "
        f"{process / FULL['cores'] / 60:.0f} min |",
    ]
    for stage in STAGES:
        wall = max(cpu[stage] / min(FULL["cores"], tasks_of[stage]), cpu[stage] / tasks_of[stage])
        lines.append(
            f"| {stage} | {cpu[stage] / 3600:.2f} | {cpu[stage] / (process + late):.2%} | {tasks_of[stage]:,} | "
            f"{memory[stage]:,.0f} MiB | "
            f"{requests[stage]:,.0f} | {wall:.0f} s |"
        )
    lines.append(
        f"| driver | {cpu['driver'] / 3600:.2f} | {cpu['driver'] / (process + late):.2%} | 1 | "
        f"{files_run['driver']['peak_hwm']:.0f} MiB at "
        f"{files_run['files']:,} files | {requests['driver']:,.0f} (sequential) | {cpu['driver']:.0f} s |"
    )
    lines.append(
        f"| **total** | **{(process + late) / 3600:.1f}** | after process: **{late / (process + late):.1%}** | | | | |"
    )
    return "\n".join(lines)


# one Common Crawl snapshot after text extraction: ~2.5B documents; files of 10k documents; ~4 KB of text each
CRAWL = {
    "documents": 2.5e9,
    "per_file": 10_000,
    "text_per_doc": 4_100,
    "process_mb_per_core_s": 4.7 / 1.05,
    "slots": 17,
    "cores": 512,
}


def project_raw(runs: list[dict]) -> str:
    """One crawl snapshot (CRAWL) from the raw runs: CPU per document of the largest run; each stage's largest
    task as measured and, where it grows with the documents of its range or partition (node ranges fill up to
    COMPONENT_DOCUMENTS), the straight line through the two largest runs at a full range; requests by formula."""
    from pipeline.tasks.components import COMPONENT_DOCUMENTS
    from pipeline.tasks.dedupe import KEY_GROUP_ROWS

    raw = sorted((r for r in runs if r["shape"].get("raw")), key=lambda r: r["documents"])
    small, big = raw[0], raw[-1]
    n, files = CRAWL["documents"], CRAWL["documents"] / CRAWL["per_file"]
    rows = n * CRAWL["slots"]
    groups, partitions = math.ceil(rows / KEY_GROUP_ROWS), math.ceil(rows / FULL_ROWS_PER_PARTITION)
    ranges, rounds = math.ceil(n / COMPONENT_DOCUMENTS), big["rounds"]
    process = n * CRAWL["text_per_doc"] / (CRAWL["process_mb_per_core_s"] * 1e6)
    tasks = {
        "keys": groups,
        "dedupe": partitions,
        "propagate": ranges * rounds,
        "answer": ranges * rounds,
        "removals": ranges,
        "sizes": 2 * ranges,
        "resolve": 1,
        "signatures": ranges,
        "verify": ranges,
        "centers": ranges,
        "verdicts": ranges,
        "verified": 1,
        "count": groups,
        "mix": math.ceil(n * 1100 / 8e8),
    }
    requests = {
        "keys": 2 * files,
        "dedupe": groups * partitions,
        "propagate": ranges * (partitions + (rounds - 1) * (ranges + 2)),
        "answer": rounds * ranges * (ranges + 1),
        "removals": 3 * ranges,
        "sizes": 2 * ranges * ranges,
        "resolve": 4 * ranges,
        # each file's sig.bin: 3 reads by its range's verify task, and by the signatures and verdicts tasks when
        # it holds a survivor asked for or a member compared again (at most); one slice per (range, range) else
        "signatures": ranges * ranges + 3 * files,
        "verify": ranges * (ranges + 1) + 3 * files,
        "centers": 2 * ranges * ranges,
        "verdicts": ranges * (ranges + 2) + 3 * files,
        "verified": 4 * ranges,
        "count": files + 3 * groups,
        "mix": 2 * (files + tasks["mix"]) + 3 * tasks["mix"],
    }
    per_range = {r["documents"]: min(r["documents"], COMPONENT_DOCUMENTS) for r in (small, big)}
    lines = [
        f"One crawl snapshot: {n / 1e9:.1f}B documents in {files:,.0f} files, {groups:,} key groups, {partitions:,} "
        "partitions, "
        f"{ranges:,} node ranges, {rounds} rounds (as measured at {big['documents']:,}), {CRAWL['cores']} cores.",
        "",
        "| stage | core-hours | tasks | largest task, measured (1st -> 2nd run) | largest task projected | requests |",
        "|---|---:|---:|---|---:|---:|",
        f"| process ({CRAWL['process_mb_per_core_s']:.2f} MB/s per core) | {process / 3600:,.0f} | {files:,.0f} | - | "
        f"~250 MiB + 1.8 x a file's text | {files:,.0f}+ |",
    ]
    total = process
    for stage in STAGES:
        if stage not in big["stages"]:
            continue
        cpu = big["stages"][stage]["task_cpu"] / big["documents"] * n
        total += cpu
        a, b = small["stages"][stage]["peak_hwm"], big["stages"][stage]["peak_hwm"]
        projected = b
        if (
            stage in ("propagate", "answer", "removals", "signatures", "verify", "centers", "verdicts")
            and per_range[big["documents"]] > per_range[small["documents"]]
        ):
            slope = (b - a) / (per_range[big["documents"]] - per_range[small["documents"]])
            projected = b + max(slope, 0) * (COMPONENT_DOCUMENTS - per_range[big["documents"]])
        lines.append(
            f"| {stage} | {cpu / 3600:,.1f} | {tasks[stage]:,} | {a:,.0f} -> {b:,.0f} MiB | {projected:,.0f} MiB | "
            f"{requests[stage]:,.0f} |"
        )
    d = big["driver"]
    lines.append(
        f"| driver | {d['cpu_seconds'] / big['documents'] * n / 3600:,.2f} | 1 | {small['driver']['peak_hwm']:,.0f} -> "
        f"{d['peak_hwm']:,.0f} MiB "
        f"| see text | {d['reads'] / big['files'] * files:,.0f} |"
    )
    lines.append(f"| **total** | **{total / 3600:,.0f}** | | | | |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", required=True, help="scratch folder (local); each size gets its own subfolder")
    p.add_argument("--docs", type=int, nargs="+", default=[1_000_000, 10_000_000])
    p.add_argument(
        "--token-scale",
        type=float,
        default=1.0,
        help="documents' token counts x this, to fit the disk (shard size alike)",
    )
    p.add_argument(
        "--natural-per-file", type=int, default=Shape().natural_per_file, help="documents per SlimPajama-like file"
    )
    p.add_argument(
        "--code-per-file", type=int, default=Shape().code_per_file, help="documents per StarCoderData-like file"
    )
    p.add_argument("--exact-fraction", type=float, default=Shape().exact_fraction, help="planted exact copies")
    p.add_argument("--near-fraction", type=float, default=Shape().near_fraction, help="planted near copies")
    p.add_argument(
        "--raw",
        action="store_true",
        help="a raw crawl: preset verified, --near-fraction near copies in clusters of "
        "skewed size (Zipf), --giant-fraction copies of 3 boilerplate documents; no exact copies",
    )
    p.add_argument(
        "--giant-fraction", type=float, default=Shape().giant_fraction, help="raw: copies of the giant clusters"
    )
    p.add_argument("--rows-per-partition", type=int, default=FULL_ROWS_PER_PARTITION)
    p.add_argument("--workers", type=int, default=2, help="tasks run at a time")
    p.add_argument(
        "--latency-ms",
        type=float,
        default=0.0,
        help="each of the driver's own store requests waits this long first (an object store's round trip; the "
        "tasks read the disk as it is)",
    )
    p.add_argument("--json", default=None, help="append each size's raw results to this JSON-lines file")
    p.add_argument("--keep", action="store_true", help="keep each size's work and output folders")
    p.add_argument(
        "--reuse",
        action="store_true",
        help="re-use the fabricated process outputs of a kept folder (later stages rerun)",
    )
    p.add_argument("--project", nargs="+", metavar="JSONL", help="only print the projection from these --json files")
    p.add_argument("--driver", nargs=2, metavar=("WORK", "OUT"), help=argparse.SUPPRESS)
    p.add_argument("--driver-docs", type=int, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    shape = Shape(
        token_scale=args.token_scale,
        natural_per_file=args.natural_per_file,
        code_per_file=args.code_per_file,
        exact_fraction=args.exact_fraction,
        near_fraction=args.near_fraction,
        raw=args.raw,
        giant_fraction=args.giant_fraction,
    )
    if args.driver:  # through the module, so that what the tasks are given pickles by its module name
        from bench import build_scale

        print(
            json.dumps(
                build_scale.driver(
                    *args.driver, args.driver_docs, shape, args.rows_per_partition, args.workers, args.latency_ms
                )
            )
        )
        return 0
    if args.project:
        runs = [
            json.loads(line) for path in args.project for line in Path(path).read_text().splitlines() if line.strip()
        ]
        print(project_raw(runs) if args.raw else project(runs))
        return 0
    runs = []
    for documents in args.docs:
        root = Path(args.work) / (
            f"docs-{documents}-x{args.token_scale:g}-{args.natural_per_file}-{args.code_per_file}-{args.exact_fraction:g}"
            + (f"-raw{args.near_fraction:g}-{args.giant_fraction:g}" if args.raw else "")
        )
        for sub in ("out", *([f"work/{stage}" for stage in STAGES] if args.reuse else ["work"])):
            shutil.rmtree(root / sub, ignore_errors=True)
        seconds = fabricate(str(root / "work"), documents, shape, args.rows_per_partition, args.workers)
        disk = sum(p.stat().st_size for p in (root / "work").rglob("*") if p.is_file())
        print(f"fabricated {documents:,} documents in {seconds:.0f}s, {disk / 1e9:.2f} GB", flush=True)
        done = subprocess.run(
            [
                sys.executable,
                __file__,
                "--work",
                args.work,
                "--token-scale",
                str(args.token_scale),
                "--natural-per-file",
                str(args.natural_per_file),
                "--code-per-file",
                str(args.code_per_file),
                "--exact-fraction",
                str(args.exact_fraction),
                "--near-fraction",
                str(args.near_fraction),
                "--rows-per-partition",
                str(args.rows_per_partition),
                "--workers",
                str(args.workers),
                "--latency-ms",
                str(args.latency_ms),
                "--giant-fraction",
                str(args.giant_fraction),
                *(["--raw"] if args.raw else []),
                "--driver",
                str(root / "work"),
                str(root / "out"),
                "--driver-docs",
                str(documents),
            ],
            capture_output=True,
            text=True,
        )
        if done.returncode:
            print(done.stderr[-5000:], file=sys.stderr)
            return 1
        run = json.loads(done.stdout.strip().splitlines()[-1])
        run.update(fabricate_seconds=seconds, work_bytes=disk, shape=asdict(shape), latency_ms=args.latency_ms)
        runs.append(run)
        print(table([run]), flush=True)
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps(run) + "\n")
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    print(table(runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
