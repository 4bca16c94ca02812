"""Faults during a corpus build: workers and the driver killed with SIGKILL, and a disk that fills up. Every
build here is the real `tokenmill build` command over the 1.5 MB sample, compared byte for byte with the
undisturbed reference build."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from manifests.outputs import BUILD_LOG, MANIFEST, QUARANTINE
from pipeline.sample_corpus import sample_recipe
from tests.support.faults import (
    alive,
    done_tasks,
    shard_bytes,
    stable_manifest,
    start_build,
    tasks_run,
    title,
    wait_for,
)

RAY_AGENTS = ("ray::DashboardAgent", "ray::RuntimeEnvAgent")


def assert_same_output(out: Path, reference: Path) -> None:
    assert shard_bytes(out) == shard_bytes(reference)
    assert stable_manifest(out) == stable_manifest(reference)
    assert (out / QUARANTINE).read_bytes() == (reference / QUARANTINE).read_bytes()


@pytest.mark.slow
@pytest.mark.parametrize(
    "stage", ["process", "dedupe", "propagate"]
)  # process = fetch, filter, dedupe keys and tokenize
def test_a_worker_killed_mid_task_is_retried_and_the_shards_are_identical(
    stage, reference_build, tmp_path, monkeypatch
):
    if stage == "propagate":  # the clustering over 3 node ranges (the reference's is one): the same output
        monkeypatch.setenv("TOKENMILL_COMPONENT_DOCUMENTS", "2000")
    run = start_build(reference_build.recipe, tmp_path / "out", "--workers", "2")
    pid, task = run.kill_first(f"ray::{stage}/")
    assert run.wait() == 0, run.stderr()[-3000:]
    assert not alive(pid)
    assert task.removeprefix("ray::") in tasks_run(tmp_path / "out")  # the killed task ran again and finished
    assert_same_output(tmp_path / "out", reference_build.out)


@pytest.mark.slow
def test_a_worker_killed_mid_verify_is_retried_and_the_shards_are_identical(sample_corpus, tmp_path, monkeypatch):
    """The verified preset's own stages (signatures, verify, centers, verdicts by node range, then the writer),
    which the sample recipe does not run: a verify task killed mid-way runs again, and the output equals an
    undisturbed build's. Over several node ranges, and any of the four stages' tasks is killed: each lives a few
    milliseconds on the sample, and one alone can end between two looks at the process titles."""
    monkeypatch.setenv("TOKENMILL_COMPONENT_DOCUMENTS", "2000")
    recipe = sample_recipe(sample_corpus, tmp_path, dedupe={"partitions": 4, "minhash": {"preset": "verified"}})
    reference = start_build(recipe, tmp_path / "reference", "--workers", "2")
    assert reference.wait() == 0, reference.stderr()[-3000:]
    assert any(task.startswith("verify/") for task in tasks_run(tmp_path / "reference"))
    run = start_build(recipe, tmp_path / "out", "--workers", "2")
    pid, task = run.kill_first(tuple(f"ray::{name}/" for name in ("signatures", "verify", "centers", "verdicts")))
    assert run.wait() == 0, run.stderr()[-3000:]
    assert not alive(pid)
    assert task.removeprefix("ray::") in tasks_run(tmp_path / "out")
    assert_same_output(tmp_path / "out", tmp_path / "reference")


@pytest.mark.slow
def test_the_driver_killed_mid_build_resumes_without_redoing_a_finished_task(reference_build, tmp_path):
    out = tmp_path / "out"
    first = start_build(reference_build.recipe, out, "--workers", "1")
    wait_for(lambda: sum(t.startswith("process/") for t in done_tasks(out)) >= 3, "3 finished process tasks", first)
    tree = {pid: title(pid) for pid in first.tree()}
    os.kill(first.pid, signal.SIGKILL)  # the driver alone: Ray's processes must notice by themselves
    first.process.wait()
    # raylet, GCS and workers share the driver's fate; Ray's two agents exit ~60 s later (after the GCS
    # reconnect timeout) and are killed by first.stop() rather than waited for
    deadline = time.monotonic() + 20
    while (
        left := [t for pid, t in tree.items() if alive(pid) and t not in RAY_AGENTS]
    ) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert left == [], f"processes of the killed build still running: {left}"
    first.stop()
    finished = done_tasks(out)
    assert not (out / MANIFEST).exists()
    log_lines = len((out / BUILD_LOG).read_text().splitlines())

    second = start_build(reference_build.recipe, out, "--workers", "1")
    assert second.wait() == 0, second.stderr()[-3000:]
    redone = tasks_run(out, since_line=log_lines)
    assert set(redone).isdisjoint(finished), "a task that had finished ran again"
    assert set(redone) | finished == done_tasks(out)
    assert_same_output(out, reference_build.out)


@pytest.fixture
def small_disk(tmp_path):
    """A tmpfs of our own (needs root): the real ENOSPC of a real filesystem, resizable with a remount."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tokenmill-test", str(mount)], capture_output=True, text=True
    )
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=True)


def resize(mount: Path, size_bytes: int) -> None:
    pages = -(-size_bytes // 4096)
    subprocess.run(["mount", "-o", f"remount,size={pages * 4}k", str(mount)], check=True)


def disk_usage(folder: Path) -> int:
    return sum(p.stat().st_blocks * 512 for p in folder.rglob("*") if p.is_file())


@pytest.mark.slow
def test_a_full_disk_is_named_leaves_no_manifest_and_the_next_run_completes(reference_build, small_disk):
    out = small_disk / "out"
    full = disk_usage(reference_build.out)
    progress = []
    # 35% fills up inside a process task (on a worker); 80% gets further, then the rest cannot fit
    for share in (0.35, 0.8):
        resize(small_disk, int(full * share))
        run = start_build(reference_build.recipe, out, "--workers", "2")
        assert run.wait() == 2, run.stderr()[-3000:]
        assert re.search(
            rf"^tokenmill build: \w+: .*No space left on device: '{re.escape(str(out))}/[^']+'$", run.stderr(), re.M
        ), run.stderr()[-3000:]
        assert not (out / MANIFEST).exists()
        assert not list(out.rglob("*.tmp-*")), "a failed write left its temporary file behind"
        progress.append(len(done_tasks(out)))
    assert progress[0] < progress[1], "the second run did not keep the first run's finished tasks and go further"

    resize(small_disk, 4 * full)
    final = start_build(reference_build.recipe, out, "--workers", "2")
    assert final.wait() == 0, final.stderr()[-3000:]
    assert_same_output(out, reference_build.out)
