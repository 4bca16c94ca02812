"""manifests/keys.py: a document's origin key, one at a time and vectorised, and where it points."""

from __future__ import annotations

import numpy as np

from manifests.keys import doc_key, doc_keys, file_indices, file_starts, ordinals, split_key


def test_the_vectorised_helpers_agree_with_the_scalar_key():
    files, lines = np.array([0, 0, 3, 7, 2**31]), np.array([1, 2**32 - 1, 0, 5, 9])
    keys = doc_keys(files, lines)
    assert keys.dtype == np.uint64
    assert keys.tolist() == [doc_key(int(f), int(n)) for f, n in zip(files, lines)]
    assert [split_key(k) for k in keys] == list(zip(files.tolist(), lines.tolist()))
    assert file_indices(keys).tolist() == files.tolist() and ordinals(keys).tolist() == lines.tolist()
    assert doc_keys(4, np.arange(3)).tolist() == [doc_key(4, n) for n in range(3)]


def test_file_starts_find_each_files_keys_in_a_sorted_array():
    keys = np.sort(doc_keys(np.array([0, 0, 2, 2, 2, 3]), np.array([4, 9, 1, 2, 3, 0])))
    bounds = np.searchsorted(keys, file_starts(4))
    assert bounds.tolist() == [0, 2, 2, 5, 6]  # file 1 has none; one past the last file: the end
    assert all(set(file_indices(keys[a:b]).tolist()) <= {f} for f, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])))
