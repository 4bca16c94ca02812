"""manifests/shards.py: the one shard writer and reader, and the token dtypes by name."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from manifests.check import check_shard
from manifests.shards import ShardFormatError, dtype_name, dtype_named, read_shard, token_dtype, write_shard


@pytest.mark.parametrize("vocab_size", [32000, 100_000])
def test_a_written_shard_reads_back_document_by_document(tmp_path, vocab_size):
    dtype = token_dtype(vocab_size)
    lengths = np.array([3, 1, 4])
    tokens = np.arange(8, dtype=dtype) + (vocab_size - 8)
    written = {}
    entry = write_shard(
        written.__setitem__,
        "train/train-00007",
        tokens,
        lengths,
        np.array([1, 0, 1], np.uint16),
        np.array([5, 1 << 32, 7], np.uint64),
        ["a", "b"],
    )
    assert sorted(written) == ["train/train-00007.bin", "train/train-00007.idx"]
    assert entry.bin_sha256 == hashlib.sha256(written[entry.bin]).hexdigest()
    assert entry.idx_bytes == len(written[entry.idx])
    assert (entry.documents, entry.tokens, entry.tokens_by_source) == (3, 8, {"a": 1, "b": 7})
    (tmp_path / "train").mkdir()
    for rel, data in written.items():
        (tmp_path / rel).write_bytes(data)
    assert check_shard(entry, tmp_path) == []
    index, read = read_shard(tmp_path / entry.bin, tmp_path / entry.idx)
    assert index.dtype == dtype and dtype_named(dtype_name(dtype)) == dtype
    documents = [read[slice(*index.doc_span(i))].tolist() for i in range(3)]
    assert documents == [tokens[:3].tolist(), tokens[3:4].tolist(), tokens[4:].tolist()]
    assert index.origins.tolist() == [5, 1 << 32, 7] and index.source_ids.tolist() == [1, 0, 1]


def test_reading_a_shard_whose_tokens_were_cut_short_is_refused(tmp_path):
    written = {}
    entry = write_shard(
        written.__setitem__,
        "s",
        np.arange(6, dtype="<u2"),
        np.array([2, 4]),
        np.zeros(2, np.uint16),
        np.arange(2, dtype=np.uint64),
        ["a"],
    )
    (tmp_path / entry.bin).write_bytes(written[entry.bin][:-2])
    (tmp_path / entry.idx).write_bytes(written[entry.idx])
    with pytest.raises(ShardFormatError, match="truncated"):
        read_shard(tmp_path / entry.bin, tmp_path / entry.idx)
