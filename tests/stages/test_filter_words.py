"""The word tokenizer the datatrove quality filters get (`stages.filter.word_tokenizer`): the same words and
sentence spans as datatrove's own spaCy tokenizer, so the same keep/drop decisions, on real text."""

from __future__ import annotations

import importlib.util
import json
import sysconfig
from pathlib import Path

import pytest
from datatrove.data import Document
from datatrove.pipeline.filters import (
    C4QualityFilter,
    FineWebQualityFilter,
    GopherQualityFilter,
    GopherRepetitionFilter,
)
from datatrove.utils.word_tokenizers import SpaCyTokenizer

from stages import filter as filter_stage
from stages.filter import build_filters, word_tokenizer
from tests.support.sources import source

STDLIB = Path(sysconfig.get_paths()["stdlib"])
EDGE_CASES = [
    "",
    " ",
    "\n\n",
    " leading and trailing ",
    "a\u00a0b \u2009c\u3000d",
    "tabs\tand\r\nCRLF  double  spaces",
    "e.g. U.S.A. isn't won't can't (1999)...",
    "emoji 🙂 中文 العربية",
    "https://example.com/a?b=c x@y.org",
    "Hello, world! How are you? Fine.\n\nNext paragraph... and so on",
]


@pytest.fixture(scope="module")
def texts() -> list[str]:
    """Bible chapters, stdlib sources and docstring-heavy modules, every line of them on its own, and edge cases."""
    path = Path(importlib.util.find_spec("bible").origin).parent / "data/kjv.jsonl"
    chapters: dict[tuple, list[str]] = {}
    for line in path.read_text().splitlines()[:3000]:
        verse = json.loads(line)
        chapters.setdefault((verse["book"], verse["chapter"]), []).append(f"{verse['verse']} {verse['text']}")
    documents = ["\n".join(verses) for verses in chapters.values()]
    documents += [(STDLIB / name).read_text() for name in ("json/encoder.py", "textwrap.py", "string.py", "this.py")]
    lines = [line for doc in documents for line in doc.splitlines()]
    return documents + lines + EDGE_CASES


def test_same_words_and_sentence_spans_as_datatrove(texts):
    ours, theirs = word_tokenizer("en"), SpaCyTokenizer("en")
    assert type(ours) is not SpaCyTokenizer  # the fast path is the one under test
    assert [ours.word_tokenize(t) for t in texts] == [theirs.word_tokenize(t) for t in texts]
    assert [ours.span_tokenize(t) for t in texts] == [theirs.span_tokenize(t) for t in texts]


def test_words_do_not_depend_on_what_the_process_saw_before():
    # Inside a memory zone spaCy mis-tokenizes this string from the second time a process meets it, so datatrove's
    # words for it depend on the files a worker happened to process earlier; here they are the same every time.
    text = "IS_ALPHA is a string spaCy chokes on inside a memory zone"
    answers = {tuple(word_tokenizer("en").word_tokenize(text + " " * i)) for i in range(3)}
    assert answers == {tuple(text.split())}
    assert {tuple(word_tokenizer("en").span_tokenize(text + "!" * i)) for i in range(3)} == {
        ((0, len(text) + i),) for i in range(3)
    }


def test_a_fresh_pipeline_after_too_many_strings_gives_the_same_words(texts, monkeypatch):
    ours, theirs = word_tokenizer("en"), SpaCyTokenizer("en")
    monkeypatch.setattr(filter_stage, "SPACY_MAX_STRINGS", 2_000)
    pipelines = set()
    for text in texts[:200]:
        assert ours.word_tokenize(text) == theirs.word_tokenize(text)
        pipelines.add(id(ours.pipeline))
        assert len(ours.pipeline.vocab.strings) <= 2_000 + len(set(text.split())) + 1_000
    assert len(pipelines) > 1


def test_quality_filters_decide_as_datatrove_does(texts):
    """Each filter through the recipe (our tokenizer) against datatrove's class with its own tokenizer."""
    documents = [t for t in texts if len(t) > 500]
    for name, cls in (
        ("gopher_repetition", GopherRepetitionFilter),
        ("gopher_quality", GopherQualityFilter),
        ("c4", C4QualityFilter),
        ("fineweb", FineWebQualityFilter),
    ):
        (ours,) = build_filters(source({name: {}}))
        theirs = cls()
        decisions = [ours.keep(t, "") for t in documents]
        assert decisions == [theirs.filter(Document(text=t, id="")) for t in documents], name
        assert True in decisions and any(d is not True for d in decisions), f"{name} must both keep and drop here"


def test_languages_with_their_own_spacy_setup_keep_datatrove_tokenizer():
    assert type(word_tokenizer("en")) is not SpaCyTokenizer
    assert word_tokenizer("en") is word_tokenizer("en")  # one spaCy pipeline per language and process
