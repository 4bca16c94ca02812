"""The undisturbed reference build every fault test compares against, run once per session as the real
`tokenmill build` command, with the TCP ports of all its processes recorded while it runs."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.reliability.faults import listening_sockets, sample_recipe, start_build


@dataclass(frozen=True, slots=True)
class ReferenceBuild:
    recipe: Path
    out: Path
    listening: frozenset[tuple[str, int, str]]  # (address, port, process title) seen while the build ran


@pytest.fixture(scope="session")
def reference_build(sample_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> ReferenceBuild:
    folder = tmp_path_factory.mktemp("reference")
    recipe = sample_recipe(sample_corpus, folder)
    run = start_build(recipe, folder / "out", "--workers", "2")
    listening: set = set()
    while run.running():
        listening |= listening_sockets(run.tree())
        time.sleep(0.1)
    assert run.wait() == 0, run.stderr()[-3000:]
    return ReferenceBuild(recipe, folder / "out", frozenset(listening))
