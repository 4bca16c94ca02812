"""SlimPajama's text normalisation, the one definition: lowercase, delete ASCII punctuation (`string.punctuation`),
collapse whitespace runs (every code point `str.isspace` accepts) to one space, strip.

The short-document filter deletes the same punctuation and whitespace (`stages.filter`); the MinHash kernel
(`stages.minhash`) normalises on code points with the lookup tables below; `normalize` and `shingles` are the
same rule in plain Python, for the sample corpus, the benchmarks and the tests to compare against."""

from __future__ import annotations

import string

import numpy as np

LAST_WHITESPACE = 0x3000  # no code point above U+3000 is whitespace
WHITESPACE = "".join(chr(c) for c in range(LAST_WHITESPACE + 1) if chr(c).isspace())
PUNCTUATION = string.punctuation  # ASCII only

DELETE_PUNCTUATION = str.maketrans("", "", PUNCTUATION)
DELETE_PUNCTUATION_AND_SPACE = str.maketrans("", "", PUNCTUATION + WHITESPACE)

# The kernel's lookup tables, indexed by code point: ASCII punctuation, and whitespace up to U+3000.
IS_PUNCTUATION = np.array([chr(c) in PUNCTUATION for c in range(128)])
IS_SPACE = np.array([chr(c) in WHITESPACE for c in range(LAST_WHITESPACE + 1)])


def normalize(text: str) -> str:
    return " ".join(text.lower().translate(DELETE_PUNCTUATION).split())


def shingles(text: str, ngram: int = 13) -> frozenset[str]:
    """The set MinHash estimates Jaccard over: the character n-grams of the normalised text. A text shorter than
    one n-gram is one shingle of itself (the empty text too), never an empty set, as the kernel hashes it."""
    normal = normalize(text)
    if len(normal) < ngram:
        return frozenset([normal])
    return frozenset(normal[i : i + ngram] for i in range(len(normal) - ngram + 1))


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    """Exact Jaccard similarity of two shingle sets."""
    return len(a & b) / len(a | b)
