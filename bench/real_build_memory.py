"""A real end-to-end build of millions of documents of real text on this machine, with the peak memory of every
task and of the driver: the check that no step grows with the corpus, outside the fabricated scale harness.

    .venv/bin/python bench/real_build_memory.py --work runs/perf/real2m --size-mb 1000

The corpus is bench/corpus.py's (real text recombined, SlimPajama / StarCoderData layouts) with short
documents (median 300 characters of natural text, 400 of code) so that 1 GB holds ~2M documents. The build is the
shipped `sample` recipe over it (TinyLlama's rules, exact + MinHash dedupe, downsample 7:3) with the full corpus's
settings scaled to it, on an embedded Ray with 2 workers. A thread polls /proc every 50 ms: each Ray worker's
resident memory is charged to the task it runs (its process title, `ray::process/...`), the driver's is its own.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.corpus import CorpusShape, write_corpus  # noqa: E402
from bench.measure import status  # noqa: E402
from manifests.manifest import load  # noqa: E402

PAGE = os.sysconf("SC_PAGE_SIZE")


def _rss_and_title(pid: str) -> tuple[int, str]:
    with open(f"/proc/{pid}/statm") as f:
        rss = int(f.read().split()[1]) * PAGE
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        title = f.read().split(b"\0")[0].decode(errors="replace")
    return rss, title


def poll_tasks(peaks: dict[str, int], stop: threading.Event) -> None:
    """Largest resident memory seen per stage (the part of a Ray task title before the '/')."""
    while not stop.is_set():
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                rss, title = _rss_and_title(pid)
            except OSError:
                continue
            if title.startswith("ray::") and "/" in title:
                stage = title.removeprefix("ray::").split("/")[0]
                peaks[stage] = max(peaks[stage], rss)
        time.sleep(0.05)


def main() -> None:
    parser = argparse.ArgumentParser(description="A real multi-million-document build with every task's peak memory.")
    parser.add_argument(
        "--work", type=Path, required=True, help="scratch folder for the corpus and the build (the build is redone)"
    )
    parser.add_argument("--size-mb", type=float, default=1000, help="text in the corpus")
    parser.add_argument("--workers", type=int, default=2, help="tasks at a time")
    args = parser.parse_args()
    corpus = args.work / "corpus"
    summary = write_corpus(corpus, CorpusShape(size_mb=args.size_mb, natural_chars=300, code_chars=400, file_mb=20.0))
    documents = sum(summary["documents"].values())
    recipe = args.work / "recipe.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "extends": str(REPO / "manifests/recipes/sample.yaml"),
                "sources": [
                    {"name": "slimpajama", "root": str(corpus / "SlimPajama-627B")},
                    {"name": "starcoderdata", "root": str(corpus / "starcoderdata")},
                ],
                "dedupe": {
                    "partitions": max(4, documents // 800_000)
                },  # the rows per partition of the full corpus at 1,024
                "mix": {"shard_tokens": 10_000_000},
            }
        )
    )
    shutil.rmtree(args.work / "out", ignore_errors=True)
    import ray

    from pipeline.build.driver import build
    from pipeline.build.recipe import load_recipe

    peaks: dict[str, int] = defaultdict(int)
    stop = threading.Event()
    poller = threading.Thread(target=poll_tasks, args=(peaks, stop), daemon=True)
    ray.init(num_cpus=args.workers, include_dashboard=False, logging_level="ERROR")
    Path("/proc/self/clear_refs").write_text("5")  # the driver's peak from here on: writing the corpus is not the build
    poller.start()
    started = time.perf_counter()
    try:
        build(load_recipe(recipe), str(args.work / "out"), workers=args.workers, console=True)
    finally:
        stop.set()
        poller.join()
        ray.shutdown()
    seconds = time.perf_counter() - started
    manifest = load(args.work / "out")
    result = {
        "size_mb": args.size_mb,
        "documents_read": sum(s.documents_read for s in manifest.sources),
        "files": len(manifest.inputs),
        "seconds": round(seconds, 1),
        "driver_peak_mib": round(status()["VmHWM"]),
        "task_peak_mib": {k: round(v / 2**20) for k, v in peaks.items()},
        "stages": {k: {"tasks": v["tasks"], "seconds": v["seconds"]} for k, v in manifest.stages.items()},
    }
    (args.work / "results.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
