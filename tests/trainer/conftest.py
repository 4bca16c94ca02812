"""A small real manifest for the trainer's tests: Python standard-library sources tokenized with the real
mistral sentencepiece model into 4 train shards and 1 validation shard (schema-valid, real checksums).

It stands in for `tokenmill build` over the sample corpus until that build is fast enough to run per test
session; the trainer reads both the same way (through `pipeline.manifest`)."""
from __future__ import annotations

import sysconfig
from pathlib import Path

import pytest

from trainer.corpus import python_sources, write_text_manifest

STDLIB = Path(sysconfig.get_paths()["stdlib"])


@pytest.fixture(scope="session")
def text_manifest(tmp_path_factory) -> Path:
    train = python_sources(STDLIB / "json", 10**6) + python_sources(STDLIB / "email", 200_000)
    validation = python_sources(STDLIB / "logging", 60_000)
    return write_text_manifest(tmp_path_factory.mktemp("manifest"), {"train": train, "validation": validation}, shard_tokens=12_000, threads=2)
