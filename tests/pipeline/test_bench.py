"""`tokenmill bench` (pipeline/cli.py) runs bench/build_throughput.py; its memory mode runs the build's own
task functions, one process each, into the very folders a build would use: a build over the same work dir
afterwards re-uses every one of them."""

from __future__ import annotations

import pytest
import ray

from bench.build_throughput import TASK_KINDS, bench_recipe, measure_build_tasks
from manifests.manifest import load
from pipeline.build.driver import build
from pipeline.cli import bench_main


def test_tokenmill_bench_runs_the_benchmark_script(capsys):
    with pytest.raises(SystemExit) as exited:
        bench_main(["--help"])
    assert exited.value.code == 0
    usage = capsys.readouterr().out
    assert usage.startswith("usage: tokenmill bench") and "--memory-docs" in usage and "--memory-file-mb" in usage


def test_memory_mode_measures_every_build_task_where_the_build_would_run_it(sample_corpus, tmp_path):
    recipe = bench_recipe(sample_corpus, "sample", partitions=2)
    run = tmp_path / "run"
    ray.init(num_cpus=1, include_dashboard=False, logging_level="WARNING")
    try:
        runner = measure_build_tasks(recipe, run, workers=1)
        for stage in TASK_KINDS:
            measured = runner.measures[stage].brief()
            assert measured["tasks"] == len(runner.folders[stage]) > 0 and 50 < measured["peak_rss_mib"] < 10_000, (
                stage,
                measured,
            )
            assert all(runner.work.done(folder) for folder in runner.folders[stage]), stage
        build(recipe, str(run), workers=1, console=False)  # its work dir is run/work, where the tasks ran
    finally:
        ray.shutdown()
    stages = load(run).stages
    for stage in TASK_KINDS:
        assert stages[stage]["skipped"] == stages[stage]["tasks"], (stage, stages[stage])


def test_process_memory_runs_one_process_task_and_stops(sample_corpus, tmp_path):
    runner = measure_build_tasks(
        bench_recipe(sample_corpus, "sample", 2), tmp_path / "run", 1, only={"process": {2}}, stop_after="process"
    )
    assert list(runner.measures) == ["process"] and runner.measures["process"].tasks == 1
    assert [n for n, folder in enumerate(runner.folders["process"]) if runner.work.done(folder)] == [2]
