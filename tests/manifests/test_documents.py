"""manifests/documents.py: token documents -> shards + a manifest that every reader loads."""

from __future__ import annotations

import numpy as np

from manifests.documents import Documents, write_documents
from manifests.keys import doc_key
from manifests.manifest import load
from manifests.shards import read_shard

EOS = 2  # the tokenizer_entry fixture's


def documents(lengths: list[int], first: int = 0) -> Documents:
    """Documents whose tokens count up from `first`, each ending with EOS."""
    tokens = np.arange(first, first + sum(lengths)) % 900 + 10
    tokens[np.cumsum(lengths) - 1] = EOS
    return Documents([f"doc-{first + i}.txt" for i in range(len(lengths))], tokens, np.array(lengths))


def test_documents_are_packed_in_order_into_shards_of_at_least_shard_tokens(tmp_path, tokenizer_entry):
    train, validation = documents([3, 4, 5, 6, 7]), documents([2, 2], first=100)
    path = write_documents(
        tmp_path, {"validation": validation, "train": train}, tokenizer=tokenizer_entry, shard_tokens=8, bytes_read=123
    )
    manifest = load(path)
    assert [s.entry.documents for s in manifest.shards("train")] == [3, 2]  # 3+4+5 >= 8, then 6+7
    assert manifest.splits["train"].tokens == 25 and manifest.splits["validation"].documents == 2
    assert [i.path for i in manifest.inputs] == validation.paths + train.paths  # a document's key points here
    assert manifest.sources[0].bytes_read == 123 and manifest.dtype == "uint16"
    assert manifest.tokenizer == tokenizer_entry
    got, origins = [], []
    for ref in manifest.shards("train"):
        assert ref.check() == []
        index, tokens = read_shard(ref.bin_path, ref.idx_path)
        got.append(np.asarray(tokens))
        origins += index.origins.tolist()
    assert np.array_equal(np.concatenate(got), train.tokens)
    assert origins == [doc_key(2 + i, 0) for i in range(5)]
