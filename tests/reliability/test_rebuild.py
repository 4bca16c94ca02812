"""A build planned before it runs (`build --dry-run`) and a build run again: the plan
names every stage's tasks, what is re-used and why, the cost at the measured rate and where it writes, in under
5 s, writing nothing; a re-used build's report shows the timings of the build that made its outputs."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import yaml

from pipeline.build.plan import plan_build
from pipeline.build.recipe import load_recipe
from pipeline.build.registry import stages_of
from tests.support.faults import ROOT, tokenmill


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def dry_run(recipe: Path, out: Path, *more: str) -> tuple[list[str], float]:
    started = time.perf_counter()
    done = subprocess.run(
        tokenmill("build", str(recipe), "--out", str(out), "--dry-run", *more),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines(), time.perf_counter() - started


def rows(lines: list[str]) -> dict[str, list[str]]:
    """Stage -> [tasks, re-used, to run, why...] from the plan's stage table."""
    start = next(i for i, line in enumerate(lines) if line.startswith("stages:")) + 1
    end = next(i for i, line in enumerate(lines) if i > start and not line.startswith("  "))
    return {line.split()[0]: line.split(None, 4)[1:] for line in lines[start:end]}


def test_the_plan_of_a_finished_build_reuses_every_stage_and_writes_nothing(reference_build):
    """The plan of the reference build's own command (a copy elsewhere would re-run the mix: its outputs are
    written per output folder)."""
    out = reference_build.out
    before = snapshot(out)
    recipe = load_recipe(reference_build.recipe)
    started = time.perf_counter()
    plan = plan_build(recipe, str(out))
    assert time.perf_counter() - started < 5  # the plan itself; the command adds the interpreter's start
    lines, _ = dry_run(reference_build.recipe, out, "--workers", "2")
    assert snapshot(out) == before
    table = rows(lines)
    assert list(table) == [s.name for s in stages_of(recipe)]  # the registry's stages, in its order
    assert all(r[0] == r[1] and r[2] == "0" and "re-used" in r[3] for r in table.values()), table
    assert [line for line in lines if line.startswith("  shards ")] == [
        f"  shards   file://{out}/{Path(plan.shards).name}/"
    ]
    assert Path(plan.shards.removeprefix("file://")).is_dir()  # the folder the finished build wrote
    for source in recipe.sources:
        mine = [i for i in plan.inputs if i.source.name == source.name]
        assert any(line.split()[:3] == [source.name, str(len(mine)), "files"] for line in lines), lines


def test_the_plan_of_a_half_done_work_store_names_what_runs_and_its_cost(reference_build, tmp_path):
    """A build stopped in its process stage: 5 process tasks unfinished, nothing after them made."""
    work = tmp_path / "work"
    shutil.copytree(reference_build.out / "work", work)
    unfinished = sorted(work.glob("process/*/_DONE.json"))[:5]
    for done in unfinished:
        done.unlink()
    recipe = load_recipe(reference_build.recipe)
    for stage in stages_of(recipe)[1:]:
        shutil.rmtree(work / stage.name, ignore_errors=True)
    before = snapshot(tmp_path)
    lines, _ = dry_run(reference_build.recipe, tmp_path / "out", "--work", str(work), "--workers", "2")
    assert snapshot(tmp_path) == before and not (tmp_path / "out").exists()
    table = rows(lines)
    files = len(json.loads((reference_build.out / "manifest.json").read_text())["inputs"])
    assert table["process"][:3] == [str(files), str(files - 5), "5"] and "interrupted" in table["process"][3]
    assert all("made from the process outputs" in r[3] for name, r in table.items() if name != "process")
    assert table["dedupe"][0] == str(recipe.dedupe.partitions) and table["keys"][0] == "?"
    cost = next(line for line in lines if line.startswith("cost:"))
    assert f"({files - 5} finished process tasks)" in cost and "on 2 workers" in cost


def test_the_plan_of_another_mix_reruns_only_the_mix(reference_build, tmp_path):
    data = yaml.safe_load(reference_build.recipe.read_text())
    data["sources"][0]["weight"], data["sources"][1]["weight"] = 6, 4
    recipe = tmp_path / "mix-6-4.yaml"
    recipe.write_text(yaml.safe_dump(data))
    shutil.copytree(reference_build.out, tmp_path / "out")
    table = rows(dry_run(recipe, tmp_path / "out")[0])
    mix = table.pop("mix")
    assert mix[1] == "0" and mix[2] == mix[0] and "another mix" in mix[3], mix
    assert all(r[2] == "0" for r in table.values()), table


def test_a_rebuild_that_reuses_everything_reports_the_timings_of_the_build_that_made_it(reference_build, tmp_path):
    """Item 7: `tokenmill build` twice into the same output; the second's report showed every stage at 0 s. Here the
    second build goes into a copy of the first's output: every stage is re-used but the mix, whose outputs are
    written per output folder, so it runs (and its own timings are reported)."""
    out = tmp_path / "out"
    shutil.copytree(reference_build.out, out)
    first = json.loads((reference_build.out / "manifest.json").read_text())
    done = subprocess.run(
        tokenmill("build", str(reference_build.recipe), "--out", str(out), "--workers", "2"),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    stages = json.loads((out / "manifest.json").read_text())["stages"]
    stats = json.loads((out / "report" / "stats.json").read_text())
    assert (
        stages.pop("mix")["skipped"] == 0
        and "made_by" not in json.loads((out / "manifest.json").read_text())["stages"]["mix"]
    )
    for name, timing in stages.items():
        assert timing["skipped"] == timing["tasks"], name  # nothing ran again
        if timing["tasks"]:
            assert timing["made_by"]["seconds"] == first["stages"][name]["seconds"], name
            row = stats["build"]["stages"][name]
            assert row["made_at"] == first["created_at"] and row["reused"] == timing["tasks"] and row["seconds"] > 0
    assert stats["headline"]["text_mb_per_s"] > 0
    assert "made by the build of" in (out / "report" / "report.html").read_text()
    assert f"by the build of {first['created_at']}" in done.stdout
