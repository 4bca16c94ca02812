"""What a new mix and a new dump cost: a fresh build, the same build with other weights, and the same build
after ~10% more input files, each against a fresh build of the changed recipe (time and bytes).

    .venv/bin/python bench/remix.py --work runs/perf/remix --size-mb 100

Every build runs on a fresh embedded Ray started before its clock (a cluster is up before a build starts), with
the shipped `sample` recipe (TinyLlama's rules, downsample 7:3) over the corpus of bench/corpus.py
(real text recombined, SlimPajama / StarCoderData layouts, 2 MB files). The new files are a second such corpus
(another seed) of a tenth of the size, added under new names where the recipe's patterns match them.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.corpus import CorpusShape, write_corpus  # noqa: E402
from bench.measure import timed_build  # noqa: E402
from manifests.manifest import Manifest  # noqa: E402

SOURCES = {"slimpajama": "SlimPajama-627B", "starcoderdata": "starcoderdata"}


def recipe(folder: Path, corpus: Path, weights: tuple[int, int]) -> Path:
    path = folder / f"recipe-{weights[0]}-{weights[1]}.yaml"
    sources = [
        {"name": name, "root": str(corpus / sub), "weight": w} for (name, sub), w in zip(SOURCES.items(), weights)
    ]
    path.write_text(
        yaml.safe_dump(
            {"extends": str(Path(__file__).resolve().parents[1] / "manifests/recipes/sample.yaml"), "sources": sources}
        )
    )
    return path


def build_from(recipe_path: Path, out: Path, workers: int) -> tuple[float, dict]:
    from pipeline.build.recipe import load_recipe

    return timed_build(load_recipe(recipe_path), out, workers)


def shard_bytes(out: Path, manifest: Manifest) -> dict[str, bytes]:
    return {
        path.split("/", 1)[1]: (out / path).read_bytes()
        for split in manifest.splits.values()
        for s in split.shards
        for path in (s.bin, s.idx)
    }


def add_new_dumps(corpus: Path, scratch: Path, size_mb: float) -> int:
    """A second corpus (another seed) of `size_mb`: its training files copied into `corpus` under new names."""
    write_corpus(scratch, CorpusShape(size_mb=size_mb, seed=1))
    added = 0
    for sub, pattern in (("SlimPajama-627B", "train/chunk*/*.jsonl.zst"), ("starcoderdata", "python/*.parquet")):
        for path in sorted((scratch / sub).glob(pattern)):
            target = corpus / sub / path.relative_to(scratch / sub)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, target.with_name(f"new-{target.name}"))
            added += 1
    return added


def main() -> None:
    parser = argparse.ArgumentParser(description="Cost of a new mix and of new input files against a fresh build.")
    parser.add_argument(
        "--work", type=Path, required=True, help="scratch folder for the corpus and the builds (emptied first)"
    )
    parser.add_argument("--size-mb", type=float, default=100, help="text in the sample corpus")
    parser.add_argument("--workers", type=int, default=2, help="tasks at a time")
    args = parser.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    corpus = args.work / "corpus"
    write_corpus(corpus, CorpusShape(size_mb=args.size_mb))
    r73, r64 = recipe(args.work, corpus, (7, 3)), recipe(args.work, corpus, (6, 4))
    rows = []
    fresh73, m = build_from(r73, args.work / "out", args.workers)
    rows.append(("fresh build 7:3", fresh73, m, None))
    remix, m = build_from(r64, args.work / "out", args.workers)
    fresh64, f = build_from(r64, args.work / "fresh64", args.workers)
    rows.append(
        (
            "weights 6:4, same output",
            remix,
            m,
            shard_bytes(args.work / "out", m) == shard_bytes(args.work / "fresh64", f),
        )
    )
    rows.append(("fresh build 6:4", fresh64, f, None))
    files_before = len(m["inputs"])
    added = add_new_dumps(corpus, args.work / "new", args.size_mb / 10)
    grown, m = build_from(r64, args.work / "out", args.workers)
    fresh_all, f = build_from(r64, args.work / "fresh-all", args.workers)
    rows.append(
        (
            f"+{added} input files ({added / files_before:.0%}), same output",
            grown,
            m,
            shard_bytes(args.work / "out", m) == shard_bytes(args.work / "fresh-all", f),
        )
    )
    rows.append(("fresh build over all files", fresh_all, f, None))
    print(
        f"\n{args.size_mb:.0f} MB corpus (+{args.size_mb / 10:.0f} MB added), {files_before} input files, "
        f"{args.workers} workers"
    )
    print(f"{'build':<42} {'seconds':>8} {'of fresh':>9} {'stages that ran':<40} equal to fresh")
    fresh = {"weights": fresh64, "+": fresh_all}
    for name, seconds, manifest, equal in rows:
        ran = [s for s, t in manifest.stages.items() if t["skipped"] < t["tasks"]]
        base = fresh["weights"] if name.startswith("weights") else fresh["+"] if name.startswith("+") else None
        share = f"{seconds / base:.0%}" if base else ""
        print(f"{name:<42} {seconds:>8.1f} {share:>9} {', '.join(ran):<40} {'' if equal is None else equal}")


if __name__ == "__main__":
    main()
