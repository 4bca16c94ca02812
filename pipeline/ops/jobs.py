"""Corpus builds as Ray jobs: `tokenmill submit` and `tokenmill jobs list|status|logs|stop`.

`submit` goes through Ray's Jobs API. The job's runtime env ships this project as its working dir (code,
schema, recipes; not .venv/, runs/, data/, .git/ nor what .gitignore lists) and its entrypoint runs
`python -m pipeline.cli build RECIPE --out URI --address auto`, whose driver joins the cluster and prints its
progress to the job's logs. The recipe travels flattened (`extends:` merged) in a temporary folder inside the
package, its paths rewritten to resolve in the job as they do here: relative where they point into the
shipped project (a tokenizer model beside the recipes), absolute elsewhere (data/ and local corpora do not
ship: the nodes must see them, as a local head or a shared filesystem does). The recipe is loaded and validated
here first (types, ranges, filters), so a bad one is refused before anything is sent; what only the cluster
can check (its inputs, its tokenizer file) fails the job with the error in its logs.

The cluster is `--address`, else RAY_API_SERVER_ADDRESS, else RAY_ADDRESS, else http://127.0.0.1:8265, as
`ray job` finds it (Ray's client lets the two variables win over an explicit address, as `ray job` does).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import logging
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

import yaml
from ray.exceptions import AuthenticationError
from ray.job_submission import JobStatus, JobSubmissionClient

from pipeline.build.recipe import RecipeError, locate_recipe, read_recipe_yaml, recipe_from_dict, validate_filters

PROJECT_ROOT = Path(__file__).resolve().parents[2]  # pipeline/ops/jobs.py -> the checkout
# Top-level folders that never travel: the virtualenv, local build outputs, local corpora, git history.
NOT_SHIPPED = (".venv", "runs", "data", ".git")
# Ray reads these as gitignore patterns relative to the working dir; the leading "/" anchors them at its top.
WORKING_DIR_EXCLUDES = [f"/{name}/" for name in NOT_SHIPPED]
STAGING_PREFIX = ".tokenmill-submit-"
DEFAULT_ADDRESS = "http://127.0.0.1:8265"  # `ray job`'s default too: the dashboard of a head on this machine
ADDRESS_HELP = (
    "the Ray dashboard of the cluster, e.g. http://head:8265 (default: $RAY_API_SERVER_ADDRESS, else $RAY_ADDRESS, "
    f"else {DEFAULT_ADDRESS}, the head infra/local/start-head.sh starts; as with `ray job`, those variables win when "
    "set)"
)


def runtime_env() -> dict:
    # Unbuffered so the build's progress lines reach the job's logs as they happen, not at exit.
    return {"working_dir": str(PROJECT_ROOT), "excludes": WORKING_DIR_EXCLUDES, "env_vars": {"PYTHONUNBUFFERED": "1"}}


def build_entrypoint(recipe: str, out: str, workers: int | None) -> str:
    argv = ["python", "-m", "pipeline.cli", "build", recipe, "--out", out, "--address", "auto"]
    if workers:
        argv += ["--workers", str(workers)]
    return shlex.join(argv)


def job_output(out: str) -> str:
    """URLs go as they are; a local path is made absolute, since the job runs in an unpacked copy of the
    project (the cluster's nodes must see that path: a local head or a shared filesystem)."""
    return out if "://" in out else str(Path(out).expanduser().resolve())


def shipped_path(value: str, staging: Path) -> str:
    """A recipe path as the job must see it: inside the shipped project, relative to the staging folder (so
    it resolves in the job's unpacked copy); a URL, or a local path outside what ships, as it is."""
    path = Path(value)
    if (
        "://" in value
        or not path.is_relative_to(PROJECT_ROOT)
        or path.relative_to(PROJECT_ROOT).parts[0] in NOT_SHIPPED
    ):
        return value
    return os.path.relpath(path, staging)


def recipe_for_job(recipe: Path, staging: Path) -> str:
    """Write the recipe the job builds into `staging` (a folder inside the project that travels with it) and
    return its path relative to the working dir. `extends:` is merged in; relative paths, which resolve
    against the file that holds them, become absolute (`_read_yaml`), then relative again where they point
    inside the shipped project."""
    file, relative_to = locate_recipe(Path(str(recipe)).expanduser())  # a file, or a packaged recipe's name
    data = read_recipe_yaml(file, relative_to=relative_to)
    for source in data.get("sources") or []:
        if isinstance(source.get("root"), str):
            source["root"] = shipped_path(source["root"], staging)
    tokenizer = data.get("tokenizer") or {}
    if isinstance(tokenizer.get("model"), str) and tokenizer["model"]:
        tokenizer["model"] = shipped_path(tokenizer["model"], staging)
    flat = staging / file.name
    flat.write_text(f"# {file}, flattened by `tokenmill submit`\n" + yaml.safe_dump(data, sort_keys=False))
    return flat.relative_to(PROJECT_ROOT).as_posix()


def check_recipe(recipe: Path) -> None:
    """What a build would refuse before any work, refused here instead of by a failed job: every field's type
    and range, and every filter's settings (not the inputs nor the tokenizer file, which the cluster reads)."""
    file, relative_to = locate_recipe(recipe)
    validate_filters(recipe_from_dict(read_recipe_yaml(file, relative_to=relative_to)))


def submit_build(client: JobSubmissionClient, recipe: Path, out: str, workers: int | None = None) -> str:
    """Submit `tokenmill build` of `recipe` writing to `out`; returns the job id."""
    # The package is uploaded inside submit_job, so the staging folder may go as soon as it returns.
    with tempfile.TemporaryDirectory(dir=PROJECT_ROOT, prefix=STAGING_PREFIX) as staging:
        entrypoint = build_entrypoint(recipe_for_job(recipe, Path(staging)), job_output(out), workers)
        return client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env())


def cluster_address(address: str | None) -> str:
    """--address, else the variables `ray job` reads, else a head on this machine."""
    return address or os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS") or DEFAULT_ADDRESS


def connect(address: str) -> JobSubmissionClient:
    # Ray's job client logs INFO ("Uploading package ...") and WARNING lines of its own; the commands print
    # what the user needs, and errors come as exceptions
    logging.disable(logging.WARNING)
    try:
        return JobSubmissionClient(address)
    except AuthenticationError as e:
        # Ray sends its token only when told to (RAY_AUTH_MODE=token), never by default to an explicit address.
        raise ConnectionError(
            f"the Ray cluster at {address} requires its authentication token: `export RAY_AUTH_MODE=token` and provide "
            "the token in RAY_AUTH_TOKEN, a file named by RAY_AUTH_TOKEN_PATH, or ~/.ray/auth_token (Ray: "
            f"{str(e).splitlines()[0]})"
        ) from None
    except ConnectionError as e:
        raise ConnectionError(
            f"cannot reach the Ray dashboard at {address} ({e}); start a head (infra/local/start-head.sh), "
            "or give --address (or RAY_ADDRESS) of a running one"
        ) from None


def explain(error: Exception, address: str) -> str:
    """Ray's error in one line, with the cause where Ray's own words hide it."""
    text = " ".join(str(error).split())
    if "No available agent" in text:
        # the head's dashboard agent never started: seen when its port (52365 unless told) is another Ray's
        return (
            f"the Ray head at {address} has no job agent running (Ray: No available agent to submit job): its port is "
            "likely taken by another Ray on that machine (the head's logs/dashboard_agent.log says); restart the head "
            "with infra/local/start-head.sh, which picks free ports for every server"
        )
    return text if len(text) <= 300 else text[:297] + "..."


def wait_until_done(client: JobSubmissionClient, job_id: str, poll_s: float = 0.5) -> JobStatus:
    while not (status := client.get_job_status(job_id)).is_terminal():
        time.sleep(poll_s)
    return status


def submit_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="tokenmill submit",
        description="Submit `tokenmill build` to a Ray cluster through the Jobs API; prints the job id.",
    )
    parser.add_argument(
        "recipe", type=Path, help="recipe YAML file, or a packaged recipe's name (sample, tinyllama, web-quality)"
    )
    parser.add_argument("--address", default=None, help=ADDRESS_HELP)
    parser.add_argument(
        "--out", required=True, help="output folder of the build: s3://..., gs://..., or a path every node sees"
    )
    parser.add_argument(
        "--workers", type=int, default=None, help="build tasks at a time (default: all CPUs of the cluster)"
    )
    args = parser.parse_args(argv)
    if args.workers is not None and args.workers < 1:
        parser.error(f"--workers {args.workers}: give at least 1")
    try:
        check_recipe(args.recipe)
        job_id = submit_build(connect(cluster_address(args.address)), args.recipe, args.out, args.workers)
    except (RecipeError, ConnectionError, RuntimeError) as e:
        print(f"tokenmill submit: {explain(e, cluster_address(args.address))}", file=sys.stderr)
        return 2
    print(job_id)
    address = f" --address {args.address}" if args.address else ""
    print(f"follow it with: tokenmill jobs logs --follow {job_id}{address}", file=sys.stderr)
    return 0


def _started(ms: int | None) -> str:
    return datetime.datetime.fromtimestamp(ms / 1000).strftime("%Y-%m-%d %H:%M:%S") if ms else "-"


def list_jobs(client: JobSubmissionClient) -> int:
    jobs = sorted(client.list_jobs(), key=lambda job: job.start_time or 0)
    print(f"{'JOB_ID':<32} {'STATUS':<10} {'STARTED':<19} ENTRYPOINT")
    for job in jobs:
        print(
            f"{job.submission_id or job.job_id:<32} {job.status.value:<10} {_started(job.start_time):<19} "
            f"{job.entrypoint}"
        )
    return 0


def show_status(client: JobSubmissionClient, job_id: str) -> int:
    """Exit status 0 while the job is pending or running and when it succeeded, 1 when it failed or was stopped."""
    info = client.get_job_info(job_id)
    print(f"{job_id}: {info.status.value}")
    if info.message:
        print(info.message)
    return 1 if info.status in (JobStatus.FAILED, JobStatus.STOPPED) else 0


async def _print_log_stream(client: JobSubmissionClient, job_id: str) -> None:
    async for lines in client.tail_job_logs(job_id):
        print(lines, end="", flush=True)


def show_logs(client: JobSubmissionClient, job_id: str, follow: bool) -> int:
    """Without --follow: the logs so far. With it: stream until the job ends; exit 0 only if it SUCCEEDED."""
    if not follow:
        print(client.get_job_logs(job_id), end="")
        return 0
    client.get_job_status(job_id)  # an unknown id fails here with Ray's message, before the stream opens
    asyncio.run(_print_log_stream(client, job_id))
    status = wait_until_done(client, job_id)
    print(f"job {job_id} {status.value}", file=sys.stderr)
    return 0 if status == JobStatus.SUCCEEDED else 1


def stop_job(client: JobSubmissionClient, job_id: str) -> int:
    """Ask Ray to stop the job (SIGTERM, then SIGKILL after Ray's grace period) and wait until it has."""
    if not client.stop_job(job_id):
        print(f"{job_id}: already ended, {client.get_job_status(job_id).value}")
        return 0
    print(f"{job_id}: {wait_until_done(client, job_id).value}")
    return 0


def _jobs_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tokenmill jobs", description="List, inspect, follow and stop jobs on a Ray cluster."
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="list|status|logs|stop")
    for name, help_ in (
        ("list", "every job of the cluster, oldest first"),
        (
            "status",
            "a job's status and Ray's message (the error, for a failed job); exit status 1 if it failed or was stopped",
        ),
        ("logs", "a job's logs (the build's progress lines and errors)"),
        ("stop", "stop a running job and wait until it has stopped"),
    ):
        action = actions.add_parser(name, help=help_, description=help_)
        if name != "list":
            action.add_argument(
                "job_id", metavar="JOB_ID", help="as printed by `tokenmill submit` or `tokenmill jobs list`"
            )
        if name == "logs":
            action.add_argument(
                "--follow", action="store_true", help="stream until the job ends; exit status 0 only if it succeeded"
            )
        action.add_argument("--address", default=None, help=ADDRESS_HELP)
    return parser


def jobs_main(argv: list[str]) -> int:
    args = _jobs_parser().parse_args(argv)
    try:
        client = connect(cluster_address(args.address))
        if args.action == "list":
            return list_jobs(client)
        if args.action == "status":
            return show_status(client, args.job_id)
        if args.action == "logs":
            return show_logs(client, args.job_id, args.follow)
        return stop_job(client, args.job_id)
    except (
        ConnectionError,
        RuntimeError,
    ) as e:  # Ray's client raises RuntimeError for HTTP errors, e.g. unknown job ids
        print(f"tokenmill jobs {args.action}: {e}", file=sys.stderr)
        return 2
