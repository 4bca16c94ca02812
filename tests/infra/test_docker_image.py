"""infra/docker/Dockerfile and its .dockerignore: well-formed instructions, the Ray the project runs, the
project installed (not editable: package data from site-packages) with extras that exist, and a build context without
the virtualenv or data."""

from __future__ import annotations

import re

import ray

from pipeline.ops.jobs import NOT_SHIPPED
from tests.support.infra import ROOT, project_extras

DOCKERFILE = "infra/docker/Dockerfile"
DOCKERIGNORE = "infra/docker/Dockerfile.dockerignore"  # BuildKit reads <Dockerfile>.dockerignore beside it
INSTRUCTIONS = {"FROM", "ARG", "ENV", "WORKDIR", "COPY", "RUN", "USER", "LABEL", "ENTRYPOINT", "CMD"}


def instructions() -> list[tuple[str, str]]:
    text = (ROOT / DOCKERFILE).read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [tuple(line.split(None, 1)) for line in lines]


def test_instructions_are_well_formed():
    steps = instructions()
    assert all(name in INSTRUCTIONS for name, _ in steps), steps
    names = [name for name, _ in steps]
    assert names.index("FROM") == 1 and names[0] == "ARG"  # only a base-image ARG may come before FROM


def test_builds_on_the_ray_this_project_runs():
    args = dict(value.split("=", 1) for name, value in instructions() if name == "ARG" and "=" in value)
    assert args["RAY_IMAGE"] == f"rayproject/ray:{ray.__version__}-py311-cpu"
    assert ("FROM", "${RAY_IMAGE}") in instructions()


def test_installs_the_project_not_editable_with_existing_extras():
    steps = instructions()
    assert ("COPY", "--chown=ray:users . /app") in steps
    [install] = [value for name, value in steps if name == "RUN" and "pip install" in value]
    assert " -e " not in install  # an editable install would hide package data missing from the wheel
    extras = re.search(r'"/app\[([a-z0-9,]+)\]"', install)
    assert extras and set(extras.group(1).split(",")) <= project_extras()
    assert "--extra-index-url ${TORCH_INDEX}" in install


def test_build_context_leaves_out_what_jobs_leave_out():
    ignored = {
        line.strip()
        for line in (ROOT / DOCKERIGNORE).read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert set(NOT_SHIPPED) | {"ckpt"} <= ignored
