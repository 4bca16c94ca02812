"""The undisturbed reference runs every fault test compares against, each run once per session as the real
command (`tokenmill build`, then `tokenmill train` on what it built), with the TCP ports of all their processes
recorded while they run."""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from manifests.outputs import MANIFEST
from pipeline.sample_corpus import sample_recipe
from tests.support.faults import Run, listening_sockets, start_build, train_command


@dataclass(frozen=True, slots=True)
class ReferenceBuild:
    recipe: Path
    out: Path
    listening: frozenset[tuple[str, int, str]]  # (address, port, process title) seen while the build ran


@dataclass(frozen=True, slots=True)
class ReferenceTraining:
    out: Path
    listening: frozenset[tuple[str, int, str]]


def run_listening(run: Run) -> frozenset[tuple[str, int, str]]:
    """Waits for `run` to succeed, recording the listening TCP sockets of its processes every 0.1 s."""
    listening: set = set()
    while run.running():
        listening |= listening_sockets(run.tree())
        time.sleep(0.1)
    assert run.wait() == 0, run.stderr()[-3000:]
    return frozenset(listening)


@pytest.fixture(scope="session")
def reference_build(sample_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> ReferenceBuild:
    folder = tmp_path_factory.mktemp("reference")
    recipe = sample_recipe(sample_corpus, folder)
    listening = run_listening(start_build(recipe, folder / "out", "--workers", "2"))
    return ReferenceBuild(recipe, folder / "out", listening)


@pytest.fixture
def build_copy(reference_build: ReferenceBuild, tmp_path: Path) -> Path:
    """The reference build's outputs (manifest, tokenizer, shards; not its work dir), safe to damage."""
    copy = tmp_path / "build"
    shutil.copytree(reference_build.out, copy, ignore=shutil.ignore_patterns("work"))
    return copy


@pytest.fixture(scope="session")
def reference_training(reference_build: ReferenceBuild, tmp_path_factory: pytest.TempPathFactory) -> ReferenceTraining:
    """TRAIN_STEPS uninterrupted steps of the tiny model on 2 CPU ranks over the reference build's shards."""
    out = tmp_path_factory.mktemp("training") / "run"
    listening = run_listening(
        Run.start(train_command(reference_build.out / MANIFEST, out), out.parent / "train.stderr")
    )
    return ReferenceTraining(out, listening)
