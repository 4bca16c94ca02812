"""The document-length histograms of build_stats.json and of the report: log2 buckets of a length in characters
or tokens. Bucket 0 holds the length 0, bucket i the lengths in [2**(i-1), 2**i), the last one also every
longer length. The count task fills them per subset, finalize writes the edges into build_stats.json, and the
report checks those edges and buckets the shards' document lengths the same way."""

from __future__ import annotations

import numpy as np

LENGTH_EDGES = [0] + [1 << i for i in range(32)]
BUCKETS = len(LENGTH_EDGES) - 1


def length_buckets(lengths: np.ndarray) -> np.ndarray:
    """The bucket of each length: 0 for 0, else the length's bit length (frexp's exponent), at most the last."""
    exponents = np.frexp(np.asarray(lengths, dtype=np.float64))[1]
    return np.minimum(exponents, BUCKETS - 1)


def length_histogram(lengths: np.ndarray) -> np.ndarray:
    """How many of `lengths` fall in each bucket."""
    return np.bincount(length_buckets(lengths), minlength=BUCKETS)
