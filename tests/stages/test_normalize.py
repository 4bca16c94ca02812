"""The one normalisation and shingler against SlimPajama's own code, short texts included."""

from __future__ import annotations

import re
import string

from stages.minhash import MinHashConfig, estimate, signatures
from stages.normalize import IS_SPACE, WHITESPACE, jaccard, normalize, shingles

_DELETE_PUNCTUATION = str.maketrans("", "", string.punctuation)

TEXTS = [
    "",
    "Hi!",
    "...!?",
    "  Leading, trailing\t\tand\n\n INNER  whitespace;  ",
    "Unicode\u2028line\u3000space\xa0nbsp\x1cfile-sep \u00c9COLE \u0130stanbul \u00df \u2019quoted\u2019",
]


def slimpajama_normalize(text: str) -> str:
    """SlimPajama's own normalization code (preprocessing/to_hash.py), the reference."""
    text = text.lower().translate(_DELETE_PUNCTUATION)
    return re.sub(r"\s+", " ", text.strip())


def test_normalize_is_slimpajamas():
    for text in TEXTS:
        assert normalize(text) == slimpajama_normalize(text), repr(text)


def test_the_whitespace_table_is_every_whitespace_code_point():
    assert len(IS_SPACE) == 0x3001 and IS_SPACE.sum() == len(WHITESPACE)
    assert all(chr(c).isspace() == bool(IS_SPACE[c]) for c in range(0x3001))
    assert not any(chr(c).isspace() for c in range(0x3001, 0x110000))


def test_a_text_shorter_than_one_ngram_is_one_shingle_of_itself():
    assert shingles("") == {""}
    assert shingles("Hi, there!") == {"hi there"}
    assert shingles("a" * 12 + "b") == {"a" * 12 + "b"}  # exactly one n-gram
    assert shingles("abcdefghijklmn") == {"abcdefghijklm", "bcdefghijklmn"}
    assert shingles("Hello, World") == shingles("hello world")  # both normalise to one shingle


def test_short_texts_estimate_as_the_kernel_hashes_them():
    """The kernel gives two short texts with equal shingles equal signatures, and unequal ones far apart:
    the sets here are what it estimates Jaccard over."""
    pairs = [("Hello, World", "hello   world"), ("Hi!", "Ho!"), ("", "...")]
    sigs = signatures([t for pair in pairs for t in pair], MinHashConfig())
    for k, (a, b) in enumerate(pairs):
        assert estimate(sigs[2 * k], sigs[2 * k + 1]) == jaccard(shingles(a), shingles(b)), (a, b)
