"""Commands as a newcomer meets them: a wrong argument or input is one line on stderr naming the file or flag
and the fix, exit status 2 (1 for a check that failed), and never a traceback."""
from __future__ import annotations

import subprocess

import pytest

from tests.reliability.faults import ROOT, tokenmill


def run(*args: str, cwd=ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(tokenmill(*args), cwd=cwd, capture_output=True, text=True, timeout=120)


def one_line_error(done: subprocess.CompletedProcess, code: int, *words: str) -> None:
    assert done.returncode == code, (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr + done.stdout
    lines = [line for line in done.stderr.splitlines() if line.strip() and not line.startswith("usage:")]
    assert len(lines) == 1, done.stderr
    assert all(w in lines[0] for w in words), lines[0]


@pytest.mark.parametrize("workers", ["0", "-1"])
def test_build_refuses_workers_below_one(tmp_path, workers):
    one_line_error(run("build", "sample", "--out", str(tmp_path / "out"), "--workers", workers), 2, "--workers", "at least 1")


def test_build_refuses_an_out_that_is_a_file(tmp_path):
    (tmp_path / "file").write_text("x")
    one_line_error(run("build", "sample", "--out", str(tmp_path / "file")), 2, "--out", "is a file")


def test_an_unknown_packaged_recipe_names_the_ones_there_are(tmp_path):
    one_line_error(run("build", "sampel", "--out", str(tmp_path / "out")), 2, "sampel", "packaged: sample, tinyllama, web-quality")


def test_verify_and_inspect_take_the_output_folder(reference_build):
    assert run("verify", str(reference_build.out)).returncode == 0
    assert "# from " in run("inspect", str(reference_build.out)).stdout


def test_inspect_into_head_stops_quietly(reference_build):
    done = subprocess.run(" ".join(tokenmill("inspect", str(reference_build.out), "--tokens")) + " | head -1", shell=True, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.stdout.startswith("# train document 0") and done.stderr == ""


def test_work_on_a_folder_without_a_work_store(tmp_path):
    one_line_error(run("work", "ls", str(tmp_path)), 2, str(tmp_path), "no work store")
