"""Helpers for the checks of `infra/`: the project root, YAML documents, and the options a CLI accepts (read
from its real `--help`, so a launcher cannot pass a flag the program does not know)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
import yaml

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
COVERAGE_TEST = "test_infra_coverage.py"  # runs last (tests/infra/conftest.py), after the tests it checks
SESSION_MODULES = pytest.StashKey[set]()  # the tests/infra modules this pytest session runs (conftest.py)
TOUCHED: set[str] = set()  # infra files ("infra/...") that a test of this session opened or ran, see `record_infra_use`


def infra_files() -> list[str]:
    return sorted(
        p.relative_to(ROOT).as_posix() for p in INFRA.rglob("*") if p.is_file() and "__pycache__" not in p.parts
    )


def _infra_path(path, cwd=None) -> str | None:
    if isinstance(path, int):  # an already open descriptor
        return None
    path = os.fsdecode(os.fspath(path))
    if "infra" not in path:  # the common case, kept cheap: every open of the session passes here
        return None
    full = Path(cwd or os.getcwd(), path).resolve()
    return full.relative_to(ROOT).as_posix() if full.is_relative_to(INFRA) else None


def _audit(event: str, args: tuple) -> None:
    if event == "open":
        found = [_infra_path(args[0])]
    elif event == "subprocess.Popen":  # (executable, args, cwd, env): a script run by bash, or `bash -n SCRIPT`
        argv = [args[1]] if isinstance(args[1], (str, bytes, os.PathLike)) else list(args[1] or [])
        found = [_infra_path(a, args[2]) for a in argv if isinstance(a, (str, bytes, os.PathLike))]
    else:
        return
    TOUCHED.update(f for f in found if f)


def record_infra_use() -> None:
    """From now on, note in TOUCHED every infra file this process opens (reads, parses) or passes to a
    subprocess (runs). Audit hooks cannot be removed, so it is installed once per session."""
    if not getattr(record_infra_use, "installed", False):
        sys.addaudithook(_audit)
        record_infra_use.installed = True


def yaml_documents(relpath: str) -> list[dict]:
    return [doc for doc in yaml.safe_load_all((ROOT / relpath).read_text()) if doc is not None]


def cli_options(*module_and_args: str) -> set[str]:
    """The long options in `python -m MODULE [ARGS] --help`."""
    done = subprocess.run(
        [sys.executable, "-m", *module_and_args, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, f"`{' '.join(module_and_args)} --help` failed:\n{done.stderr}"
    return set(re.findall(r"(--[a-z][a-z0-9-]*)", done.stdout))


def long_options(argv: list[str]) -> set[str]:
    """The long options an argv passes, `--flag value` and `--flag=value` alike."""
    return {arg.split("=", 1)[0] for arg in argv if arg.startswith("--")}


def project_extras() -> set[str]:
    return set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
