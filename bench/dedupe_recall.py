"""Near-duplicate recall and precision against planted truth, for SlimPajama's MinHash setting and tokenmill's.

    PYTHONPATH=. .venv/bin/python bench/dedupe_recall.py --work runs/perf/dedupe --pairs 1200 --chains 60 --repeat 3
    PYTHONPATH=. .venv/bin/python bench/dedupe_recall.py --work runs/perf/dedupe-memory --verify-memory 200000

The corpus is real text in the SlimPajama (jsonl.zst, `meta.redpajama_set_name`) and StarCoderData (parquet,
`content`, python/) layouts: KJV chapters and Python standard-library docstring passages as natural language,
standard-library modules as code (`pipeline.sample_corpus`'s `kjv_verses`, `stdlib_docstrings`, `stdlib_code_files`).
Planted pairs: a copy of a document with words replaced in 1-4 spans, aimed at a character-13-gram Jaccard drawn
from 0.5-1.0 (40% of them 0.85-1.0), placed in another file (a fifth of them in the other source). Every planted
pair's and every removed document's exact Jaccard (with its cluster's survivor) is computed on the recipe's
shingles after its normalization. Each setting runs a real build (embedded Ray) of the `sample` recipe with only
`dedupe.minhash.preset` changed, so both see the same documents.
"""
from __future__ import annotations

import argparse
import json
import random
import shutil
import string
import sys
import time
from collections import defaultdict
from itertools import groupby
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import yaml
import zstandard

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.build_throughput import timed_build  # noqa: E402
from pipeline.sample_corpus import kjv_verses, stdlib_code_files, stdlib_docstrings  # noqa: E402

SETTINGS = ("slimpajama", "verified")
FILE_BYTES = 400_000  # text per input file
MIN_CHARS = 1_500  # planted originals are at least this long, so 1-4 spans can reach any Jaccard in 0.5-1.0
NGRAM = 13
_NO_PUNCTUATION = str.maketrans("", "", string.punctuation)


def shingles(text: str) -> frozenset[str]:
    """The recipe's set: SlimPajama's normalization, then character 13-grams (a shorter text is one shingle)."""
    normal = " ".join(text.lower().translate(_NO_PUNCTUATION).split())
    return frozenset([normal] if len(normal) < NGRAM else (normal[i : i + NGRAM] for i in range(len(normal) - NGRAM + 1)))


def jaccard(a: frozenset, b: frozenset) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


# ------------------------------------------------------------------------------------------------ corpus


def natural_documents() -> list[tuple[str, str]]:
    """(subset, text): every KJV chapter, and each stdlib module's docstrings in passages of ~1-4 KB."""
    docs = []
    for (book, chapter), verses in groupby(kjv_verses(), key=lambda v: (v["book"], v["chapter"])):
        docs.append(("RedPajamaBook", f"{book} {chapter}\n\n" + "\n".join(f"{chapter}:{v['verse']} {v['text']}" for v in verses)))
    for _, docstrings in stdlib_docstrings():
        passage = ""
        for name, doc in docstrings:
            passage += f"{name}\n\n{doc}\n\n"
            if len(passage) >= 4_000:
                docs.append(("RedPajamaWikipedia", passage.strip()))
                passage = ""
        if len(passage) >= 1_000:
            docs.append(("RedPajamaWikipedia", passage.strip()))
    return docs


def code_documents(budget: int) -> list[tuple[str, str]]:
    docs, size = [], 0
    for _, text in stdlib_code_files():
        if size >= budget:
            break
        docs.append(("python", text))
        size += len(text)
    return docs


def near_copy(text: str, target: float, rng: random.Random, vocabulary: list[str]) -> tuple[str, float]:
    """`text` with words replaced in 1-4 spans, the replaced count searched so the Jaccard is nearest `target`."""
    words = text.split(" ")
    spans = rng.randint(1, 4)
    starts = sorted(rng.sample(range(len(words)), spans))
    fill = [rng.choice(vocabulary) for _ in words]
    original = shingles(text)

    def copy(m: int) -> str:
        per = -(-m // spans)
        out = list(words)
        for s in starts:
            for i in range(s, min(s + per, len(words))):
                out[i] = fill[i]
        return " ".join(out)

    low, high = 1, len(words)
    while low < high:  # the Jaccard falls as more words are replaced: the smallest m at or below the target
        mid = (low + high) // 2
        if jaccard(original, shingles(copy(mid))) > target:
            low = mid + 1
        else:
            high = mid
    best = min((max(1, low - 1), low), key=lambda m: abs(jaccard(original, shingles(copy(m))) - target))
    text_copy = copy(best)
    return text_copy, jaccard(original, shingles(text_copy))


def plant(files: dict[str, list[dict]], pairs: int, chains: int, rng: random.Random) -> list[dict]:
    """Plants `pairs` near copies of distinct long documents, each in another file than its original, and
    `chains` chains of 4-6 documents, each a copy of the one before at J 0.85-0.9 (a chain's ends are far apart)."""
    docs = [(name, d) for name, entries in files.items() for d in entries if len(d["text"]) >= MIN_CHARS]
    vocabulary = sorted({w for _, d in docs[:200] for w in d["text"].split() if w.isalpha() and len(w) > 2})
    names = sorted(files)
    planted = []

    def place(name: str, doc: dict, target: float, chain: int | None) -> dict:
        text, j = near_copy(doc["text"], target, rng, vocabulary)
        same_source = [n for n in names if n != name and n.split("/")[0] == name.split("/")[0]]
        other = [n for n in names if n.split("/")[0] != name.split("/")[0]]
        home = rng.choice(other if rng.random() < 0.2 else same_source)
        copy = {"text": text, "subset": doc["subset"], "id": f"planted-{len(planted)}"}
        files[home].insert(rng.randint(0, len(files[home])), copy)
        planted.append({"original": doc["id"], "copy": copy["id"], "jaccard": j, "chain": chain})
        return copy

    originals = rng.sample(docs, pairs + chains)
    for name, doc in originals[:pairs]:
        place(name, doc, rng.uniform(0.85, 1.0) if rng.random() < 0.4 else rng.uniform(0.5, 0.85), None)
    for number, (name, doc) in enumerate(originals[pairs:]):
        for _ in range(rng.randint(3, 5)):
            doc = place(name, doc, rng.uniform(0.85, 0.9), number)
    return planted


def write_corpus(folder: Path, pairs: int, chains: int, seed: int) -> tuple[dict[str, dict], list[dict]]:
    """The corpus under `folder`; returns {"source/rel path#ordinal": document} and the planted pairs."""
    rng = random.Random(seed)
    natural = natural_documents()
    code = code_documents(int(sum(len(t) for _, t in natural) * 3 / 7))
    files: dict[str, list[dict]] = defaultdict(list)
    for prefix, docs, kind in (("slimpajama", natural, "jsonl"), ("starcoderdata", code, "parquet")):
        rng.shuffle(docs)
        count = max(2, sum(len(t) for _, t in docs) // FILE_BYTES)
        for i, (subset, text) in enumerate(docs):
            name = f"{prefix}/train/chunk1/train_{i % count:03d}.jsonl.zst" if kind == "jsonl" else f"{prefix}/python/train-{i % count:05d}.parquet"
            files[name].append({"text": text, "subset": subset, "id": f"{prefix}-{i}"})
    validation = files.pop(sorted(n for n in files if n.startswith("slimpajama"))[-1])  # SlimPajama has a validation split
    files["slimpajama/validation/chunk1/validation_000.jsonl.zst"] = validation[:20]
    planted = plant({n: e for n, e in files.items() if "validation" not in n}, pairs, chains, rng)
    by_key = {}
    for name, entries in files.items():
        path = folder / name.replace("slimpajama/", "SlimPajama-627B/", 1)
        path.parent.mkdir(parents=True, exist_ok=True)
        if name.endswith(".jsonl.zst"):
            lines = b"".join(orjson.dumps({"text": d["text"], "meta": {"redpajama_set_name": d["subset"]}}) + b"\n" for d in entries)
            path.write_bytes(zstandard.ZstdCompressor(level=3).compress(lines))
            by_key.update({f"{name}#{line}": d for line, d in enumerate(entries, 1)})
        else:
            pq.write_table(pa.table({"max_stars_repo_path": [f"Lib/{i}.py" for i in range(len(entries))], "max_stars_repo_name": ["python/cpython"] * len(entries),
                                     "max_stars_count": pa.array([1] * len(entries), pa.int64()), "id": [d["id"] for d in entries],
                                     "content": [d["text"] for d in entries]}), path)
            by_key.update({f"{name}#{row}": d for row, d in enumerate(entries)})
    return by_key, planted


# ------------------------------------------------------------------------------------------------ builds


def run_build(corpus: Path, out: Path, preset: str, workers: int) -> dict:
    from pipeline.build.recipe import load_recipe

    recipe = out.parent / f"recipe-{preset}.yaml"
    recipe.write_text(yaml.safe_dump({
        "extends": str(ROOT / "manifests/recipes/sample.yaml"), "name": f"dedupe-recall-{preset}",
        "sources": [{"name": "slimpajama", "root": str(corpus / "SlimPajama-627B")}, {"name": "starcoderdata", "root": str(corpus / "starcoderdata")}],
        "dedupe": {"minhash": {"preset": preset}, "partitions": 4},
    }))
    shutil.rmtree(out, ignore_errors=True)
    wall, manifest = timed_build(load_recipe(recipe), out, workers)
    return {"manifest": manifest, "wall": wall, "stats": json.loads((out / "build_stats.json").read_text())}


def process_cpu(work: Path, rounds: int) -> dict[str, list[float]]:
    """CPU seconds per MB of `pipeline.tasks.process.process_file` over every input file, in this one process, the two
    settings alternating file by file (the build's task seconds swing with the load of a shared machine)."""
    from pipeline.build.inputs import list_inputs
    from pipeline.build.recipe import load_recipe
    from pipeline.build.tokenizer import recipe_tokenizer
    from pipeline.tasks.process import process_file
    from pipeline.work.store import Store

    recipes = {preset: load_recipe(work / f"recipe-{preset}.yaml") for preset in SETTINGS}
    inputs = list_inputs(recipes[SETTINGS[0]])
    tokenizer = recipe_tokenizer(recipes[SETTINGS[0]])
    store = Store.at(str(work / "process-cpu"))
    seconds, mb = {preset: [0.0] * rounds for preset in SETTINGS}, 0.0
    for r in range(rounds):
        for i, inp in enumerate(inputs):
            for preset in SETTINGS if (r + i) % 2 else SETTINGS[::-1]:
                started = time.process_time()
                record = process_file(f"{preset}/{i}", inp, store, tokenizer, recipes[preset].dedupe, recipes[preset].batch_documents)
                seconds[preset][r] += time.process_time() - started
            mb += sum(f["bytes_read"] for f in record["funnels"].values()) / 1e6 if r == 0 else 0
    shutil.rmtree(work / "process-cpu", ignore_errors=True)
    return {preset: [round(s / mb, 4) for s in values] for preset, values in seconds.items()}


def verify_memory(work: Path, removals: int) -> dict:
    """Peak RSS of one verify task holding `removals` cluster members (a third as many survivors) of 20 files of
    50,000 documents with random signatures: run in this process after its imports and the kernel's compile."""
    import resource

    from pipeline.tasks import dedupe as dedupe_tasks
    from pipeline.work.store import Store
    from stages.dedupe import pack_signatures, verify_clusters

    files, per_file, rng = 20, 50_000, np.random.default_rng(0)
    store = Store.at(str(work / "verify-memory"))
    for f in range(files):
        sigs = rng.integers(0, 1 << 16, (per_file, 256), dtype=np.uint16)
        store.write_bytes(f"process/f{f}/sig.bin", pack_signatures(np.arange(1, per_file + 1, dtype=np.uint64), sigs))
    keys = np.unique((rng.integers(0, files, 3 * removals).astype(np.uint64) << np.uint64(32)) | rng.integers(1, per_file + 1, 3 * removals).astype(np.uint64))
    rng.shuffle(keys)
    survivors, members = keys[: removals // 3], keys[removals // 3 : removals // 3 + removals]
    chosen = survivors[rng.integers(0, len(survivors), removals)]
    rows = np.column_stack((np.minimum(chosen, members), np.maximum(chosen, members), np.zeros(removals, np.uint64)))
    rows = rows[np.lexsort((rows[:, 1], rows[:, 0]))]
    store.write_bytes(f"resolved/{dedupe_tasks.CLUSTERS}", rows.tobytes())
    store.write_bytes(f"resolved/{dedupe_tasks.CLUSTERS_INDEX}", np.array([0, removals], np.uint64).tobytes())
    verify_clusters(np.zeros((2, 256), np.uint16), np.array([0, 2]), np.zeros(2, bool), 0.78)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    dedupe_tasks.verify_partition("verify/p0", 0, "resolved", [f"process/f{f}" for f in range(files)], 0.78, store)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    shutil.rmtree(work / "verify-memory", ignore_errors=True)
    return {"removals": removals, "seconds": round(time.perf_counter() - started, 2), "peak_mib": round((peak - base) / 1024),
            "bytes_per_removal": round((peak - base) * 1024 / removals)}


def removals(out: Path, manifest: dict) -> tuple[list[tuple[str, str]], list[bool]]:
    """(removed document, its survivor) as "source/path#ordinal" keys, and whether each was an exact copy."""
    from pipeline.build.registry import RESOLVE, VERIFIED
    from pipeline.tasks.dedupe import REMOVED, REMOVED_EXACT, SURVIVORS

    keys = manifest["provenance"]
    folder = out / "work" / (VERIFIED.folder(keys["verify"]) if "verify" in keys else RESOLVE.folder(keys["dedupe"]))
    removed = np.fromfile(folder / REMOVED, np.uint64)
    survivors = np.fromfile(folder / SURVIVORS, np.uint64)
    exact = np.fromfile(folder / REMOVED_EXACT, np.uint8).astype(bool)

    def name(key: int) -> str:
        entry = manifest["inputs"][key >> 32]
        path = Path(entry["path"]).as_posix()
        prefix = "slimpajama/" if entry["source"] == "slimpajama" else "starcoderdata/"
        return f"{prefix}{path}#{key & 0xFFFFFFFF}"

    return [(name(int(r)), name(int(s))) for r, s in zip(removed, survivors)], exact.tolist()


def evaluate(by_key: dict[str, dict], planted: list[dict], removed: list[tuple[str, str]], exact: list[bool]) -> dict:
    ids = {d["id"]: k for k, d in by_key.items()}
    gone = {r for r, _ in removed}
    cache: dict[str, frozenset] = {}

    def sh(key: str) -> frozenset:
        if key not in cache:
            cache[key] = shingles(by_key[key]["text"])
        return cache[key]

    bins = [(0.5, 0.7), (0.7, 0.8), (0.8, 0.85), (0.85, 0.9), (0.9, 0.95), (0.95, 1.01)]
    caught = {b: [0, 0] for b in bins}
    high, chain = [0, 0], [0, 0]
    for p in planted:
        if p["chain"] is not None:
            chain[0] += ids[p["original"]] in gone or ids[p["copy"]] in gone
            chain[1] += 1
        hit = ids[p["original"]] in gone or ids[p["copy"]] in gone
        for b in bins:
            if b[0] <= p["jaccard"] < b[1]:
                caught[b][0] += hit
                caught[b][1] += 1
        if p["jaccard"] >= 0.85:
            high[0] += hit
            high[1] += 1
    edge = [jaccard(sh(r), sh(s)) for r, s in removed]
    clusters: dict[str, list[float]] = defaultdict(list)
    for (r, s), j in zip(removed, edge):
        clusters[s].append(j)
    largest = max(clusters.items(), key=lambda kv: (len(kv[1]), kv[0])) if clusters else ("-", [1.0])
    false = sum(j < 0.7 for j in edge)
    return {
        "recall_at_085": high[0] / high[1] if high[1] else None, "pairs_at_085": high[1], "missed_at_085": high[1] - high[0],
        "chain_pairs_caught": f"{chain[0]}/{chain[1]}",
        "recall_by_bin": {f"{a:.2f}-{min(b, 1.0):.2f}": f"{c}/{n}" for (a, b), (c, n) in caught.items()},
        "removed": len(removed), "exact_removed": int(sum(exact)), "false_removals": false, "false_share": false / len(removed) if removed else 0.0,
        "largest_cluster": len(largest[1]) + 1, "largest_cluster_weakest_edge": round(min(largest[1]), 4),
        "weakest_edge": round(min(edge), 4) if edge else None,
        "removed_jaccard_histogram": np.histogram(edge, bins=np.linspace(0, 1, 21))[0].tolist(),
    }


def process_cost(manifest: dict) -> float:
    """Seconds of process task per MB of text read."""
    stage = manifest["stages"]["process"]
    return stage["task_seconds"] / (stage["text_bytes"] / 1e6)


def main() -> None:
    parser = argparse.ArgumentParser(description="Near-duplicate recall / false removals against planted truth, per MinHash setting.")
    parser.add_argument("--work", type=Path, required=True, help="scratch folder (emptied first)")
    parser.add_argument("--pairs", type=int, default=1200, help="planted near-duplicate pairs")
    parser.add_argument("--chains", type=int, default=40, help="planted chains of 4-6 documents")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=1, help="builds per setting, alternating (process cost: the median)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--verify-memory", type=int, default=0, help="instead: peak memory of one verify task holding this many removals")
    args = parser.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    if args.verify_memory:
        print(verify_memory(args.work, args.verify_memory))
        return
    started = time.perf_counter()
    by_key, planted = write_corpus(args.work / "corpus", args.pairs, args.chains, args.seed)
    text_mb = sum(len(d["text"].encode()) for d in by_key.values()) / 1e6
    print(f"corpus: {len(by_key)} documents, {text_mb:.1f} MB, {len(planted)} planted pairs ({args.chains} chains) "
          f"({sum(p['jaccard'] >= 0.85 for p in planted)} at J >= 0.85), written in {time.perf_counter() - started:.0f} s")
    results: dict[str, dict] = {}
    costs: dict[str, list[float]] = defaultdict(list)
    for _ in range(args.repeat):
        for preset in SETTINGS:
            out = args.work / f"out-{preset}"
            run = run_build(args.work / "corpus", out, preset, args.workers)
            costs[preset].append(process_cost(run["manifest"]))
            removed, exact = removals(out, run["manifest"])
            results[preset] = {**evaluate(by_key, planted, removed, exact), "wall_s": round(run["wall"], 1),
                               "similarity_histogram": run["stats"]["duplicates"].get("similarity")}
    for preset in SETTINGS:
        results[preset]["process_s_per_mb"] = round(float(np.median(costs[preset])), 3)
        results[preset]["process_s_per_mb_runs"] = [round(c, 3) for c in costs[preset]]
    ratio = results["verified"]["process_s_per_mb"] / results["slimpajama"]["process_s_per_mb"]
    cpu = process_cpu(args.work, 3)
    cpu_ratio = float(np.median(cpu["verified"])) / float(np.median(cpu["slimpajama"]))
    results["process_cpu_s_per_mb"] = cpu
    (args.work / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    for preset in SETTINGS:
        r = results[preset]
        print(f"{preset}: caught by planted J {r['recall_by_bin']}; chain pairs caught {r['chain_pairs_caught']}; "
              f"removals' exact J with their survivor in 0.05 bins {r['removed_jaccard_histogram']}; build {r['wall_s']} s, "
              f"process s/MB {r['process_s_per_mb_runs']}")
    print(f"\n{'setting':<12} {'recall J>=0.85':>15} {'missed':>7} {'removed':>8} {'false (<0.7)':>13} {'largest cluster, weakest edge':>30} {'process s/MB':>13}")
    for preset in SETTINGS:
        r = results[preset]
        print(f"{preset:<12} {r['recall_at_085']:>15.4f} {r['missed_at_085']:>7} {r['removed']:>8} {r['false_removals']:>5} ({r['false_share']:.3%})"
              f" {r['largest_cluster']:>14}, J {r['largest_cluster_weakest_edge']:<8} {r['process_s_per_mb']:>13.3f}")
    print(f"process cost, verified / slimpajama: {ratio:.2f}x in the builds' task seconds (median of {args.repeat}); "
          f"{cpu_ratio:.2f}x in CPU seconds of process_file in one process, median of 3 rounds ({cpu})")
    (args.work / "results.json").write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
