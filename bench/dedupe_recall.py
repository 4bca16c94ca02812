"""Near-duplicate recall and precision against planted truth, for SlimPajama's MinHash setting and tokenmill's.

    PYTHONPATH=. .venv/bin/python bench/dedupe_recall.py --work runs/perf/dedupe --pairs 1200 --chains 60 --repeat 3

The corpus is real text in the SlimPajama (jsonl.zst, `meta.redpajama_set_name`) and StarCoderData (parquet,
`content`, python/) layouts: KJV chapters and Python standard-library docstring passages as natural language,
standard-library modules as code (`bench.corpus.write_recall_corpus`).
Planted pairs: a copy of a document with words replaced in 1-4 spans, aimed at a character-13-gram Jaccard drawn
from 0.5-1.0 (40% of them 0.85-1.0), placed in another file (a fifth of them in the other source). Every planted
pair's and every removed document's exact Jaccard (with its cluster's survivor) is computed on the recipe's
shingles after its normalization. Each setting runs a real build (embedded Ray) of the `sample` recipe with only
`dedupe.minhash.preset` changed, so both see the same documents.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.corpus import write_recall_corpus  # noqa: E402
from bench.measure import timed_build  # noqa: E402
from manifests.keys import split_key  # noqa: E402
from manifests.manifest import Manifest  # noqa: E402
from manifests.outputs import BUILD_STATS  # noqa: E402
from stages.normalize import jaccard, shingles  # noqa: E402

SETTINGS = ("slimpajama", "verified")


# ------------------------------------------------------------------------------------------------ builds


def run_build(corpus: Path, out: Path, preset: str, workers: int) -> dict:
    from pipeline.build.recipe import load_recipe

    recipe = out.parent / f"recipe-{preset}.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "extends": str(ROOT / "manifests/recipes/sample.yaml"),
                "name": f"dedupe-recall-{preset}",
                "sources": [
                    {"name": "slimpajama", "root": str(corpus / "SlimPajama-627B")},
                    {"name": "starcoderdata", "root": str(corpus / "starcoderdata")},
                ],
                "dedupe": {"minhash": {"preset": preset}, "partitions": 4},
            }
        )
    )
    shutil.rmtree(out, ignore_errors=True)
    wall, manifest = timed_build(load_recipe(recipe), out, workers)
    return {"manifest": manifest, "wall": wall, "stats": json.loads((out / BUILD_STATS).read_text())}


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
                record = process_file(
                    f"{preset}/{i}", inp, store, tokenizer, recipes[preset].dedupe, recipes[preset].batch_documents
                )
                seconds[preset][r] += time.process_time() - started
            mb += sum(f["bytes_read"] for f in record["funnels"].values()) / 1e6 if r == 0 else 0
    shutil.rmtree(work / "process-cpu", ignore_errors=True)
    return {preset: [round(s / mb, 4) for s in values] for preset, values in seconds.items()}


def removals(out: Path, manifest: Manifest) -> tuple[list[tuple[str, str]], list[bool]]:
    """(removed document, its survivor) as "source/path#ordinal" keys, and whether each was an exact copy."""
    from pipeline.build.registry import RESOLVE, VERIFIED
    from pipeline.tasks.dedupe import REMOVED, REMOVED_EXACT, SURVIVORS

    keys = manifest.provenance
    folder = out / "work" / (VERIFIED.folder(keys.verify) if keys.verify else RESOLVE.folder(keys.dedupe))
    removed = np.fromfile(folder / REMOVED, np.uint64)
    survivors = np.fromfile(folder / SURVIVORS, np.uint64)
    exact = np.fromfile(folder / REMOVED_EXACT, np.uint8).astype(bool)

    def name(key: int) -> str:
        file_index, ordinal = split_key(key)
        entry = manifest.inputs[file_index]
        prefix = "slimpajama/" if entry.source == "slimpajama" else "starcoderdata/"
        return f"{prefix}{Path(entry.path).as_posix()}#{ordinal}"

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
        "recall_at_085": high[0] / high[1] if high[1] else None,
        "pairs_at_085": high[1],
        "missed_at_085": high[1] - high[0],
        "chain_pairs_caught": f"{chain[0]}/{chain[1]}",
        "recall_by_bin": {f"{a:.2f}-{min(b, 1.0):.2f}": f"{c}/{n}" for (a, b), (c, n) in caught.items()},
        "removed": len(removed),
        "exact_removed": int(sum(exact)),
        "false_removals": false,
        "false_share": false / len(removed) if removed else 0.0,
        "largest_cluster": len(largest[1]) + 1,
        "largest_cluster_weakest_edge": round(min(largest[1]), 4),
        "weakest_edge": round(min(edge), 4) if edge else None,
        "removed_jaccard_histogram": np.histogram(edge, bins=np.linspace(0, 1, 21))[0].tolist(),
    }


def process_cost(manifest: Manifest) -> float:
    """Seconds of process task per MB of text read."""
    stage = manifest.stages["process"]
    return stage["task_seconds"] / (stage["text_bytes"] / 1e6)


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Near-duplicate recall / false removals against planted truth, per MinHash setting."
    )
    parser.add_argument("--work", type=Path, required=True, help="scratch folder (emptied first)")
    parser.add_argument("--pairs", type=int, default=1200, help="planted near-duplicate pairs")
    parser.add_argument("--chains", type=int, default=40, help="planted chains of 4-6 documents")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--repeat", type=int, default=1, help="builds per setting, alternating (process cost: the median)"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    started = time.perf_counter()
    by_key, planted = write_recall_corpus(args.work / "corpus", args.pairs, args.chains, args.seed)
    text_mb = sum(len(d["text"].encode()) for d in by_key.values()) / 1e6
    print(
        f"corpus: {len(by_key)} documents, {text_mb:.1f} MB, {len(planted)} planted pairs ({args.chains} chains) "
        f"({sum(p['jaccard'] >= 0.85 for p in planted)} at J >= 0.85), written in {time.perf_counter() - started:.0f} s"
    )
    results: dict[str, dict] = {}
    costs: dict[str, list[float]] = defaultdict(list)
    for _ in range(args.repeat):
        for preset in SETTINGS:
            out = args.work / f"out-{preset}"
            run = run_build(args.work / "corpus", out, preset, args.workers)
            costs[preset].append(process_cost(run["manifest"]))
            removed, exact = removals(out, run["manifest"])
            results[preset] = {
                **evaluate(by_key, planted, removed, exact),
                "wall_s": round(run["wall"], 1),
                "similarity_histogram": run["stats"]["duplicates"].get("similarity"),
            }
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
        print(
            f"{preset}: caught by planted J {r['recall_by_bin']}; chain pairs caught {r['chain_pairs_caught']}; "
            f"removals' exact J with their survivor in 0.05 bins {r['removed_jaccard_histogram']}; build {r['wall_s']} "
            "s, "
            f"process s/MB {r['process_s_per_mb_runs']}"
        )
    print(
        f"\n{'setting':<12} {'recall J>=0.85':>15} {'missed':>7} {'removed':>8} {'false (<0.7)':>13} "
        f"{'largest cluster, weakest edge':>30} {'process s/MB':>13}"
    )
    for preset in SETTINGS:
        r = results[preset]
        print(
            f"{preset:<12} {r['recall_at_085']:>15.4f} {r['missed_at_085']:>7} {r['removed']:>8} "
            f"{r['false_removals']:>5} ({r['false_share']:.3%})"
            f" {r['largest_cluster']:>14}, J {r['largest_cluster_weakest_edge']:<8} {r['process_s_per_mb']:>13.3f}"
        )
    print(
        f"process cost, verified / slimpajama: {ratio:.2f}x in the builds' task seconds (median of {args.repeat}); "
        f"{cpu_ratio:.2f}x in CPU seconds of process_file in one process, median of 3 rounds ({cpu})"
    )
    (args.work / "results.json").write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
