"""`tokenmill submit` and `tokenmill jobs`: what a job carries (fast tests), and a real Ray head (slow tests)
that listens on 127.0.0.1 only, runs a real build of the sample corpus submitted by `tokenmill submit` and by
Ray's own `ray job submit`, fails a broken recipe with the recipe error in its logs, and stops a running job.

The head is started with infra/local/start-head.sh on 127.0.0.1 with free ports, its own short temp dir and
its own authentication token, and stopped by PID at the end (`tests/support/ray_head.py`). The CLI runs in subprocesses,
as a user runs it, with the token in its environment.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest
import yaml

from bench.s3_store import free_port
from manifests import manifest as manifest_io
from manifests.outputs import MANIFEST
from manifests.shards import sha256_file
from pipeline.build.recipe import RecipeError, load_recipe
from pipeline.ops.jobs import (
    PROJECT_ROOT,
    STAGING_PREFIX,
    build_entrypoint,
    job_output,
    jobs_main,
    recipe_for_job,
    runtime_env,
    submit_main,
)
from pipeline.sample_corpus import sample_sources
from tests.support.ray_head import Head, running_head

SAMPLE_RECIPE = PROJECT_ROOT / "manifests" / "recipes" / "sample.yaml"


def write_sample_recipe(path: Path, sample_corpus: Path, **overrides) -> Path:
    """A recipe outside the project: the sample recipe over a sample corpus written elsewhere, with relative
    roots (they must resolve against this file's folder, wherever the job runs)."""
    sources = sample_sources(os.path.relpath(sample_corpus, path.parent))
    recipe = {"extends": str(SAMPLE_RECIPE), "sources": sources, **overrides}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.fixture
def staging():
    with tempfile.TemporaryDirectory(dir=PROJECT_ROOT, prefix=STAGING_PREFIX) as folder:
        yield Path(folder)


def test_entrypoint_runs_the_build_and_joins_the_cluster(tmp_path):
    """Run as the job's shell runs it: the build command gets the recipe path whole (spaces and all) and
    refuses it, since it does not exist, before it looks for the cluster it was told to join."""
    recipe = tmp_path / "my recipe.yaml"
    command = shlex.split(build_entrypoint(str(recipe), str(tmp_path / "out a"), 8))
    assert command[0] == "python"  # the job's own python (start-head.sh puts the project's .venv first on PATH)
    assert command[command.index("--address") + 1] == "auto" and command[command.index("--workers") + 1] == "8"
    done = subprocess.run([sys.executable, *command[1:]], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    assert (
        done.returncode == 2
        and done.stderr.strip() == f"tokenmill build: RecipeError: recipe file {recipe} does not exist"
    )
    assert not (tmp_path / "out a").exists()
    assert "--workers" not in shlex.split(build_entrypoint("r.yaml", "o", None))  # the cluster's CPUs, then


def test_local_outputs_become_absolute_and_urls_stay(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert job_output("runs/tl") == str(tmp_path / "runs" / "tl")
    assert job_output("s3://bucket/tl") == "s3://bucket/tl"
    assert job_output("file:///data/tl") == "file:///data/tl"


def shipped_files(env: dict, include_gitignore: bool) -> set[str]:
    """The files a job with runtime environment `env` carries: packed by Ray's job client's own path (Ray's
    default excludes + `env["excludes"]` [+ .gitignore], then `create_package`) into a zip, read back."""
    import zipfile

    from ray._private.runtime_env.packaging import create_package
    from ray._private.runtime_env.working_dir import upload_working_dir_if_needed

    with tempfile.TemporaryDirectory() as tmp:
        package = Path(tmp) / "working_dir.zip"

        def pack(working_dir: str, excludes: list[str], is_file: bool = False) -> None:
            create_package(working_dir, package, include_gitignore=include_gitignore, excludes=excludes)

        upload_working_dir_if_needed(dict(env), include_gitignore=include_gitignore, upload_fn=pack)
        with zipfile.ZipFile(package) as z:
            return {name for name in z.namelist() if not name.endswith("/")}


def test_the_job_ships_the_project_without_local_bulk():
    """What `tokenmill submit` uploads from this checkout: the code, the schema and the recipes; never the
    virtualenv, build outputs, local corpora or git history (whether or not this checkout has them)."""
    shipped = shipped_files(runtime_env(), include_gitignore=True)  # Ray's default
    assert {
        "pyproject.toml",
        "pipeline/cli.py",
        "stages/fetch.py",
        "trainer/train.py",
        "manifests/manifest.schema.json",
        "manifests/recipes/sample.yaml",
        "infra/local/start-head.sh",
    } <= shipped
    assert not [name for name in shipped if name.split("/")[0] in {".venv", "runs", "data", ".git"}]


def test_local_bulk_stays_home_without_gitignore_or_rays_defaults(tmp_path, monkeypatch):
    """The job's own excludes keep bulk home when nothing else does (RAY_RUNTIME_ENV_IGNORE_GITIGNORE=1, no
    Ray default excludes), and only at the top: a package's own folder named data/ travels."""
    from pipeline.ops import jobs

    project = {"pipeline/cli.py", "pipeline/data/keep.py", "manifests/recipes/sample.yaml"}
    bulk = {
        ".venv/lib/libtorch.so",
        "runs/demo/train/00000.bin",
        "data/sample/SlimPajama-627B/chunk1.jsonl.zst",
        ".git/HEAD",
    }
    for rel in project | bulk:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(rel)
    monkeypatch.setattr(jobs, "PROJECT_ROOT", tmp_path)
    monkeypatch.setenv("RAY_OVERRIDE_RUNTIME_ENV_DEFAULT_EXCLUDES", "")
    assert shipped_files(jobs.runtime_env(), include_gitignore=False) == project


@pytest.mark.parametrize("name", ["tinyllama.yaml", "sample.yaml", "web-quality.yaml"])
def test_a_project_recipe_travels_flattened_and_means_the_same(staging, name):
    original = PROJECT_ROOT / "manifests" / "recipes" / name
    shipped = recipe_for_job(original, staging)

    assert shipped == f"{staging.name}/{name}"
    assert "extends" not in yaml.safe_load((PROJECT_ROOT / shipped).read_text())
    assert load_recipe(PROJECT_ROOT / shipped).to_dict() == load_recipe(original).to_dict()


def test_paths_into_the_shipped_project_stay_relative_and_others_become_absolute(staging):
    flat = yaml.safe_load((PROJECT_ROOT / recipe_for_job(SAMPLE_RECIPE, staging)).read_text())
    assert [s["root"] for s in flat["sources"]] == [
        str(PROJECT_ROOT / "data/sample/SlimPajama-627B"),
        str(PROJECT_ROOT / "data/sample/starcoderdata"),
    ]
    assert flat["tokenizer"]["model"] == "pkg://mistral_common/data/tokenizer.model.v1"
    flat = yaml.safe_load(
        (PROJECT_ROOT / recipe_for_job(PROJECT_ROOT / "manifests/recipes/tinyllama.yaml", staging)).read_text()
    )
    assert (
        flat["tokenizer"]["model"] == "hf://TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T/tokenizer.model"
    )  # a URL travels as it is
    assert flat["sources"][0]["root"] == "hf://datasets/cerebras/SlimPajama-627B"


def test_a_recipe_from_elsewhere_travels_too(tmp_path, staging):
    corpus = tmp_path / "corpus"
    original = write_sample_recipe(tmp_path / "recipes" / "mine.yaml", corpus, mix={"shard_tokens": 1000})
    shipped = recipe_for_job(original, staging)

    flat = yaml.safe_load((PROJECT_ROOT / shipped).read_text())
    assert [s["root"] for s in flat["sources"]] == [str(corpus / "SlimPajama-627B"), str(corpus / "starcoderdata")]
    assert load_recipe(PROJECT_ROOT / shipped).to_dict() == load_recipe(original).to_dict()


def test_a_missing_recipe_is_refused(tmp_path, staging):
    with pytest.raises(RecipeError, match="nowhere.yaml does not exist"):
        recipe_for_job(tmp_path / "nowhere.yaml", staging)


def test_an_unreachable_cluster_is_named(capsys):
    address = f"http://127.0.0.1:{free_port()}"
    assert submit_main([str(SAMPLE_RECIPE), "--address", address, "--out", "s3://bucket/tl"]) == 2
    assert f"cannot reach the Ray dashboard at {address}" in capsys.readouterr().err
    assert jobs_main(["status", "raysubmit_x", "--address", address]) == 2
    assert "tokenmill jobs status: cannot reach" in capsys.readouterr().err


def test_a_bad_recipe_is_refused_before_anything_is_sent(tmp_path, capsys):
    recipe = write_sample_recipe(tmp_path / "negative.yaml", tmp_path / "corpus", mix={"policy": "sideways"})
    address = f"http://127.0.0.1:{free_port()}"  # nothing listens: the recipe is refused before connecting
    assert submit_main([str(recipe), "--address", address, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "recipe field `mix.policy`" in err and "cannot reach" not in err


def test_the_cluster_address_comes_from_rays_variables_as_for_ray_job(monkeypatch, capsys):
    for variable in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"):
        monkeypatch.delenv("RAY_ADDRESS", raising=False)
        monkeypatch.delenv("RAY_API_SERVER_ADDRESS", raising=False)
        address = f"http://127.0.0.1:{free_port()}"
        monkeypatch.setenv(variable, address)
        assert jobs_main(["status", "raysubmit_x"]) == 2
        assert f"cannot reach the Ray dashboard at {address}" in capsys.readouterr().err


def test_arguments_are_checked_before_anything_is_sent(capsys):
    for argv in ([], ["logs", "--follow"]):
        with pytest.raises(SystemExit) as refused:
            jobs_main(argv)
        assert refused.value.code == 2
    with pytest.raises(SystemExit):
        submit_main([str(SAMPLE_RECIPE), "--address", "http://127.0.0.1:8265", "--out", "runs/x", "--workers", "0"])
    assert "--workers 0: give at least 1" in capsys.readouterr().err


# ---------------------------------------------------------------- a real head


@pytest.fixture(scope="module")
def head():
    with running_head() as head:
        yield head


def submit(head: Head, recipe: Path, out: Path) -> str:
    done = head.tokenmill("submit", str(recipe), "--address", head.address, "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert "INFO" not in done.stderr and "WARNING" not in done.stderr, done.stderr  # Ray's own log lines stay out
    job_id = done.stdout.strip()
    assert re.fullmatch(r"raysubmit_\w+", job_id), done.stdout
    assert f"tokenmill jobs logs --follow {job_id} --address {head.address}" in done.stderr
    return job_id


@pytest.mark.slow
def test_a_submitted_build_succeeds_and_writes_its_manifest(head, sample_corpus):
    recipe = write_sample_recipe(head.root / "recipes" / "sample-here.yaml", sample_corpus)
    out = head.root / "out"
    job_id = submit(head, recipe, out)
    assert not list(PROJECT_ROOT.glob(f"{STAGING_PREFIX}*"))  # the flattened recipe's folder is gone once uploaded

    followed = head.jobs("logs", "--follow", job_id)
    assert followed.returncode == 0, followed.stdout[-3000:] + followed.stderr[-3000:]
    assert f"job {job_id} SUCCEEDED" in followed.stderr
    assert re.search(
        r"^\[process\] (\d+)/\1 tasks", followed.stdout, re.M
    )  # the build's progress reaches the job's logs
    assert str(out / MANIFEST) in followed.stdout
    assert head.jobs("status", job_id).stdout.splitlines()[0] == f"{job_id}: SUCCEEDED"
    listed = [line for line in head.jobs("list").stdout.splitlines() if line.startswith(job_id)]
    assert len(listed) == 1 and " SUCCEEDED " in listed[0] and f"pipeline.cli build {STAGING_PREFIX}" in listed[0]

    built = manifest_io.load(out / MANIFEST)
    assert built.recipe["name"] == "tinyllama-sample"
    assert [s["root"] for s in built.recipe["sources"]] == [
        str(sample_corpus / "SlimPajama-627B"),
        str(sample_corpus / "starcoderdata"),
    ]
    assert set(built.splits) == {"train", "validation"}
    for split in built.splits:
        assert built.splits[split].tokens > 0
        for shard in built.shards(split):
            assert (
                sha256_file(shard.bin_path) == shard.entry.bin_sha256
                and sha256_file(shard.idx_path) == shard.entry.idx_sha256
            )

    staged = head.tokenmill("stage-in", f"file://{out / MANIFEST}", str(head.root / "nvme"))
    assert staged.returncode == 0, staged.stderr
    assert (head.root / "nvme" / MANIFEST).read_bytes() == (out / MANIFEST).read_bytes()


@pytest.mark.slow
def test_a_recipe_the_cluster_cannot_build_fails_the_job_with_the_error_in_its_logs(head, sample_corpus):
    # valid here, but its inputs are not there: only the cluster can tell
    recipe = write_sample_recipe(head.root / "recipes" / "broken.yaml", head.root / "no-corpus")
    job_id = submit(head, recipe, head.root / "broken-out")

    followed = head.jobs("logs", "--follow", job_id)
    assert followed.returncode == 1 and f"job {job_id} FAILED" in followed.stderr
    assert "no-corpus" in followed.stdout
    status = head.jobs("status", job_id)
    assert status.returncode == 1 and status.stdout.startswith(f"{job_id}: FAILED\n") and "exit code 2" in status.stdout
    assert "no-corpus" in head.jobs("logs", job_id).stdout
    assert not (head.root / "broken-out" / MANIFEST).exists()


def ray_job_submit(head: Head, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """Ray's own CLI, from this virtualenv."""
    env = {**head.env, "PATH": f"{Path(sys.executable).parent}:{head.env['PATH']}"}
    return subprocess.run(
        ["ray", "job", "submit", "--address", head.address, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.slow
def test_rays_own_job_cli_runs_the_build_too(head, sample_corpus):
    recipe = write_sample_recipe(head.root / "recipes" / "by-ray-cli.yaml", sample_corpus)
    out = head.root / "by-ray-cli"
    done = ray_job_submit(
        head, "--working-dir", ".", "--", "tokenmill", "build", str(recipe), "--out", str(out), cwd=PROJECT_ROOT
    )
    assert done.returncode == 0, done.stdout[-3000:]
    assert manifest_io.load(out).splits["train"].tokens > 0


@pytest.mark.slow
def test_stop_stops_a_running_job(head):
    job_id = f"tokenmill-test-{uuid.uuid4().hex[:8]}"
    sleeper = "import time; print('waiting to be stopped', flush=True); time.sleep(600)"
    submitted = ray_job_submit(
        head, "--submission-id", job_id, "--no-wait", "--", "python", "-c", sleeper, cwd=head.root
    )
    assert submitted.returncode == 0, submitted.stderr
    deadline = time.monotonic() + 120
    while (status := head.jobs("status", job_id).stdout.splitlines()[0]) != f"{job_id}: RUNNING":
        assert time.monotonic() < deadline and "PENDING" in status, status
        time.sleep(1)

    stopped = head.jobs("stop", job_id)
    assert stopped.returncode == 0, stopped.stderr
    assert stopped.stdout.strip() == f"{job_id}: STOPPED"
    status = head.jobs("status", job_id)
    assert status.returncode == 1 and status.stdout.splitlines()[0] == f"{job_id}: STOPPED"
    again = head.jobs("stop", job_id)
    assert again.returncode == 0 and again.stdout.strip() == f"{job_id}: already ended, STOPPED"


@pytest.mark.slow
def test_submit_to_a_head_whose_job_agent_could_not_start_says_why(sample_corpus, tmp_path):
    """A head beside another Ray whose dashboard agent port was taken answered `submit` after
    ~11 s with only "500: No available agent to submit job". Reproduced with the agent's port held by us."""
    root = Path(tempfile.mkdtemp(prefix="tm", dir="/tmp"))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        head = Head(root, agent_port=taken.getsockname()[1])
        try:
            head.wait_until_up()
            recipe = write_sample_recipe(tmp_path / "recipe.yaml", sample_corpus)
            done = head.tokenmill(
                "submit", str(recipe), "--address", head.address, "--out", str(tmp_path / "out"), timeout_s=300
            )
        finally:
            head.stop()
            shutil.rmtree(root, ignore_errors=True)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert "no job agent running" in line and "dashboard_agent.log" in line and "start-head.sh" in line
