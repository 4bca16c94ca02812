"""`tokenmill export --megatron` (manifests/megatron.py): megatron-core's own IndexedDataset opens every shard of
the sample build and returns every document's tokens as tokenmill's index and memmap give them, and the
data-path files parse as Megatron's blend with one weight (the tokens) per shard."""

from __future__ import annotations

import numpy as np
from megatron.core.datasets.indexed_dataset import IndexedDataset
from megatron.core.datasets.utils import get_blend_from_list

from manifests import megatron
from manifests.manifest import load
from manifests.outputs import MANIFEST
from manifests.shards import read_shard
from pipeline.cli import main as tokenmill


def test_megatron_reads_every_document_of_every_shard_as_tokenmill_does(sample_manifest, tmp_path, capsys):
    out = tmp_path / "megatron"
    assert tokenmill(["export", "--megatron", str(sample_manifest), str(out)]) == 0
    assert tokenmill(["export", "--megatron", str(sample_manifest), str(out)]) == 0  # a rerun replaces the files
    manifest = load(sample_manifest)
    for split in manifest.splits:
        shards = manifest.shards(split)
        prefixes, weights = get_blend_from_list((out / f"{split}.data-path").read_text().split())
        assert weights == [s.entry.tokens for s in shards]
        for shard, prefix in zip(shards, prefixes, strict=True):
            assert (out / shard.entry.bin).resolve() == shard.bin_path.resolve()  # a link, no copy
            index, tokens = read_shard(shard.bin_path, shard.idx_path)
            dataset = IndexedDataset(prefix)
            assert len(dataset) == index.documents > 0
            for i in range(index.documents):
                start, end = index.doc_span(i)
                assert np.array_equal(dataset[i], tokens[start:end]), (shard.entry.bin, i)
    assert "train.data-path" in capsys.readouterr().out


def test_uint32_tokens_are_declared_int32_which_megatron_reads_as_the_same_ids(tmp_path):
    documents = [np.array([5, 70_000, 2**31 - 1], dtype="<u4"), np.array([1, 2], dtype="<u4")]
    (tmp_path / "big.bin").write_bytes(b"".join(d.tobytes() for d in documents))
    (tmp_path / "big.idx").write_bytes(megatron.encode_index("uint32", np.array([len(d) for d in documents])))
    dataset = IndexedDataset(str(tmp_path / "big"))
    assert dataset[0].dtype == np.int32
    assert [dataset[i].tolist() for i in range(len(dataset))] == [d.tolist() for d in documents]


def test_a_missing_shard_is_refused_in_one_line(sample_manifest, tmp_path, capsys):
    copy = tmp_path / "build"
    copy.mkdir()
    (copy / MANIFEST).write_text(sample_manifest.read_text())
    assert tokenmill(["export", "--megatron", str(copy / MANIFEST), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "missing" in err and "stage-in" in err
