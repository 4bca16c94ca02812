"""The trainer's tests read what a user's `tokenmill build` writes: the sample recipe over the offline sample
corpus (tests/conftest.py), built once per session by the real command on an embedded Ray, 2 workers
(about 10 s): 5 train shards, 1 validation shard, the mistral sentencepiece tokenizer."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from manifests.outputs import MANIFEST
from pipeline.sample_corpus import sample_recipe


@pytest.fixture(scope="session")
def sample_manifest(sample_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("trainer-build")
    recipe = sample_recipe(sample_corpus, folder)  # several shards from a small corpus
    command = [
        sys.executable,
        "-m",
        "pipeline.cli",
        "build",
        str(recipe),
        "--out",
        str(folder / "out"),
        "--workers",
        "2",
        "--no-report",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return folder / "out" / MANIFEST
