"""Helpers for the checks of `infra/`: the project root, YAML documents, and the options a CLI accepts (read
from its real `--help`, so a launcher cannot pass a flag the program does not know)."""
from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"


def yaml_documents(relpath: str) -> list[dict]:
    return [doc for doc in yaml.safe_load_all((ROOT / relpath).read_text()) if doc is not None]


def cli_options(*module_and_args: str) -> set[str]:
    """The long options in `python -m MODULE [ARGS] --help`."""
    done = subprocess.run([sys.executable, "-m", *module_and_args, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"`{' '.join(module_and_args)} --help` failed:\n{done.stderr}"
    return set(re.findall(r"(--[a-z][a-z0-9-]*)", done.stdout))


def long_options(argv: list[str]) -> set[str]:
    """The long options an argv passes, `--flag value` and `--flag=value` alike."""
    return {arg.split("=", 1)[0] for arg in argv if arg.startswith("--")}


def project_extras() -> set[str]:
    return set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
