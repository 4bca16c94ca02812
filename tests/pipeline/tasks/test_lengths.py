"""The log2 length buckets: each length in the bucket its edges say, the longest in the last, and the
histogram of a count task the count of each bucket."""

from __future__ import annotations

import numpy as np

from pipeline.tasks.lengths import BUCKETS, LENGTH_EDGES, length_buckets, length_histogram


def test_every_length_falls_between_its_buckets_edges():
    lengths = np.array([0, 1, 2, 3, 4, 7, 8, 1000, 2**20 - 1, 2**20, 2**31 - 1])
    for length, bucket in zip(lengths, length_buckets(lengths)):
        assert LENGTH_EDGES[bucket] <= length < LENGTH_EDGES[bucket + 1], (length, bucket)
    assert length_buckets(np.array([2**31, 2**40])).tolist() == [BUCKETS - 1] * 2  # the last bucket is open-ended


def test_the_histogram_counts_each_bucket():
    lengths = np.array([0, 0, 1, 5, 6, 7, 2**35])
    expected = np.zeros(BUCKETS, np.int64)
    expected[[0, 1, 3, BUCKETS - 1]] = [2, 1, 3, 1]
    assert length_histogram(lengths).tolist() == expected.tolist()
    assert length_histogram(np.array([], np.int64)).tolist() == [0] * BUCKETS
