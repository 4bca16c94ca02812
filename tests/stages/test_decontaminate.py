"""The n-gram index and matcher against a plain-Python reference on real text, the config's and the eval sets'
refusals, and the token rule with the real sentencepiece model."""

from __future__ import annotations

import json

import numpy as np
import pytest

from manifests.config import ConfigError
from stages.decontaminate import (
    DecontaminateConfig,
    EvalItem,
    EvalSet,
    EvalSetConfig,
    EvalSetError,
    build_index,
    match,
    read_eval_set,
    unit_sequences,
)
from stages.normalize import normalize
from stages.tokenize import Tokenizer


def reference_words(text: str) -> list[str]:
    """GPT-3's normalization in plain Python (`stages.normalize.normalize`), split into words."""
    return normalize(text).split()


def reference_matches(
    items: list[str], docs: list[str], n: int, min_words: int, min_share: float = 0.0
) -> set[tuple[int, int]]:
    grams = []
    for item in items:
        w = reference_words(item)
        k = n if len(w) >= n else len(w)
        grams.append({tuple(w[i : i + k]) for i in range(len(w) - k + 1)} if k >= min_words else set())
    found = set()
    for d, doc in enumerate(docs):
        w = reference_words(doc)
        doc_grams = {
            k: {tuple(w[i : i + k]) for i in range(len(w) - k + 1)} for k in {len(next(iter(g))) for g in grams if g}
        }
        for i, g in enumerate(grams):
            if g:
                shared = len(g & doc_grams[len(next(iter(g)))])
                if shared and shared >= max(1, np.ceil(min_share * len(g) - 1e-9)):
                    found.add((d, i))
    return found


def index_of(items: list[str], **rule) -> tuple:
    config = DecontaminateConfig(sets=[EvalSetConfig(name="s", files=["x"])], **rule)
    eval_set = EvalSet("s", [], "0" * 64, [EvalItem(f"x#{i}", t) for i, t in enumerate(items)])
    return build_index(config.rules(), [eval_set])


@pytest.mark.parametrize("rule", [{}, {"ngram": 8}, {"min_share": 0.5}])
def test_matches_equal_a_plain_python_reference_on_real_text(kjv, rule):
    chapters = list(kjv.values())
    # items: verse pairs of later chapters, a few short single verses (whole-string items), and some shorter than
    # min_words
    items = [" ".join(v[i : i + 2]) for v in chapters[500:520] for i in range(0, len(v) - 1, 5)]
    items += [v[0] for v in chapters[520:560]]
    # documents: chapters, and chapters with items spliced in (case and punctuation changed, a line break inside)
    docs = [" ".join(v) for v in chapters[490:530]]
    rng = np.random.default_rng(0)
    for j, item in enumerate(items[::7]):
        base = docs[j % 40]
        cut = base.index(" ", len(base) // 2)
        changed = item.upper().replace(",", "").replace(" ", "\n", 1) if j % 2 else item
        docs.append(base[:cut] + " " + changed + "  " + base[cut:] if rng.random() < 0.9 else changed)
    n, share = rule.get("ngram", 13), rule.get("min_share", 0.0)
    index = index_of(items, **rule)
    found = {(m.doc, m.item) for m in match(index, "words", *unit_sequences(docs, None))}
    expected = reference_matches(items, docs, n, min(8, n), share)
    assert found == expected
    assert len(expected) > 40  # the case is not vacuous


def test_whole_string_items_and_too_short_ones():
    index = index_of(["Ten little words make up this short item right here", "too short"])
    assert index.stats == [{"items": 2, "whole_string": 1, "too_short": 1, "ngrams": 1}]
    docs = [
        "And then: ten little WORDS, make up this short item right here! said he.",
        "it was too short",
        "ten little words",
    ]
    assert [(m.doc, m.item) for m in match(index, "words", *unit_sequences(docs, None))] == [(0, 0)]


def test_token_rule_with_the_real_tokenizer(tokenizer_model):
    tok = Tokenizer.from_bytes(tokenizer_model.read_bytes(), False, False)
    item = "The quick brown fox jumps over the lazy dog while the cat sleeps on the warm mat."
    config = DecontaminateConfig(sets=[EvalSetConfig(name="s", files=["x"])], rule="tokens", ngram=8)
    index = build_index(
        config.rules(),
        [EvalSet("s", [], "0" * 64, [EvalItem("x#1", item)])],
        lambda texts: [np.asarray(t) for t in tok.processor.encode(texts)],
    )
    docs = [f"Yesterday I wrote: {item} Then I stopped.", item.upper(), "Nothing to see here at all, nothing at all."]
    ids = [np.asarray(t) for t in tok.processor.encode(docs)]
    assert [m.doc for m in match(index, "tokens", *unit_sequences(None, ids))] == [0]


@pytest.mark.parametrize(
    "section, field",
    [
        ({"ngram": 0}, "ngram"),
        ({"rule": "chars"}, "rule"),
        ({"min_share": 1.5}, "min_share"),
        ({"action": "delete"}, "action"),
        ({"sets": []}, "sets"),
    ],
)
def test_bad_settings_are_refused_naming_the_field(section, field):
    with pytest.raises(ConfigError) as e:
        DecontaminateConfig(**{"sets": [EvalSetConfig(name="s", files=["x"])], **section})
    assert e.value.field == field


def test_bad_eval_sets_are_refused_in_one_line_naming_the_set_the_file_and_the_fix(tmp_path):
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps({"question": "q", "answer": "a"}) + "\n")
    empty = tmp_path / "empty.jsonl"
    empty.write_text(json.dumps({"question": "", "answer": ""}) + "\n")
    cases = [
        (EvalSetConfig(name="mmlu", files=[str(tmp_path / "missing.jsonl")]), "missing.jsonl", "does not exist"),
        (EvalSetConfig(name="mmlu", files=[str(good)], fields=["question", "choices"]), "good.jsonl", "'choices'"),
        (EvalSetConfig(name="mmlu", files=[str(empty)], fields=["question", "answer"]), "empty.jsonl", "holds no item"),
    ]
    for config, file, words in cases:
        with pytest.raises(EvalSetError) as e:
            read_eval_set(config)
        message = str(e.value)
        assert "\n" not in message and "'mmlu'" in message and file in message and words in message, message
    items = read_eval_set(
        EvalSetConfig(name="ok", files=[str(tmp_path / "g*.jsonl")], fields=["question", "answer"])
    ).items
    assert items == [EvalItem("good.jsonl#1", "q\na")]
