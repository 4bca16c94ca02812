"""Object-store requests per stage of a build whose inputs, work store and output are on a real S3 API server
(moto's, on 127.0.0.1), counted by an HTTP proxy in front of it (bench/s3_store.py, no faults injected),
each request given to the stage in whose time window it was made (the build log's `stage_done` times).

    .venv/bin/python bench/s3_requests.py --work runs/perf/s3 --size-mb 10 20

Prints, per corpus size, the requests of each stage by HTTP method and per input file: the figures that must
stay a small constant per file as the corpus grows (no request per document, none per file x partition).
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.corpus import CorpusShape, write_corpus  # noqa: E402
from bench.s3_store import CORPUS, FaultProxy, S3Server  # noqa: E402
from manifests.manifest import parse  # noqa: E402
from manifests.outputs import BUILD_LOG, MANIFEST  # noqa: E402
from pipeline.sample_corpus import sample_recipe  # noqa: E402


class TimedProxy(FaultProxy):
    """The fault proxy with no faults, remembering when each request came and its method."""

    def __init__(self, upstream_port: int) -> None:
        super().__init__(upstream_port)
        self.log: list[tuple[float, str]] = []
        self._log_lock = threading.Lock()

    def draw(self, method: str) -> str | None:
        with self._log_lock:
            self.log.append((time.time(), method))
        return None


def measure(work: Path, size_mb: float, workers: int) -> dict:
    corpus = work / f"corpus-{size_mb:g}mb"
    write_corpus(corpus, CorpusShape(size_mb=size_mb))
    server = S3Server()
    proxy = TimedProxy(server.port)
    try:
        server.upload(corpus, "s3://tokenmill/sample")
        recipe = sample_recipe(CORPUS, work / f"recipe-{size_mb:g}")
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RAY_ADDRESS"))},
            **server.env(proxy.endpoint),
            "PYTHONPATH": str(REPO),
        }
        out = f"s3://tokenmill/out-{size_mb:g}"
        started = time.time()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pipeline.cli",
                "build",
                str(recipe),
                "--out",
                out,
                "--workers",
                str(workers),
                "--no-report",
            ],
            env=env,
            check=True,
            capture_output=True,
            text=True,
            timeout=1800,
        )
        events = [
            json.loads(line)
            for line in server.fs.cat_file(f"{out.removeprefix('s3://')}/{BUILD_LOG}").decode().splitlines()
        ]
        manifest = parse(server.fs.cat_file(f"{out.removeprefix('s3://')}/{MANIFEST}"), f"{out}/{MANIFEST}")
    finally:
        proxy.stop()
        server.stop()
    ends = [(e["time"], e["stage"]) for e in events if e["event"] == "stage_done"]
    by_stage: dict[str, Counter] = {stage: Counter() for _, stage in ends}
    by_stage["finalize"] = Counter()
    times = [t for t, _ in ends]
    for when, method in proxy.log:
        if when < started:
            continue
        i = bisect.bisect_left(times, when)
        by_stage[ends[i][1] if i < len(ends) else "finalize"][method] += 1
    return {
        "size_mb": size_mb,
        "files": len(manifest.inputs),
        "documents": sum(s.documents_read for s in manifest.sources),
        "stages": {stage: dict(c) for stage, c in by_stage.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description="S3 requests per build stage, counted at a proxy in front of a real S3 API server."
    )
    parser.add_argument("--work", type=Path, required=True, help="scratch folder for the corpora (emptied first)")
    parser.add_argument("--size-mb", type=float, nargs="+", default=[10, 20], help="corpus sizes to compare")
    parser.add_argument("--workers", type=int, default=2, help="tasks at a time")
    args = parser.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    results = [measure(args.work, size, args.workers) for size in args.size_mb]
    (args.work / "results.json").write_text(json.dumps(results, indent=1))
    heads = [f"{r['size_mb']:g} MB, {r['files']} files" for r in results]
    print(f"\n{'stage':<10}" + "".join(f"{h:>34}" for h in heads))
    for stage in results[0]["stages"]:
        cells = []
        for r in results:
            c = r["stages"].get(stage, {})
            total = sum(c.values())
            methods = " ".join(f"{m} {n}" for m, n in sorted(c.items()))
            cells.append(f"{total:>5} ({total / r['files']:.1f}/file) {methods:<14}")
        print(f"{stage:<10}" + "".join(f"{cell:>34}" for cell in cells))


if __name__ == "__main__":
    main()
