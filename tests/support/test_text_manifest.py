"""tests/support/text_manifest.py: text -> shards + manifest without Ray, through the build's tokenizer and the
contract's writer."""

from __future__ import annotations

import sysconfig
from pathlib import Path

import sentencepiece as spm

from manifests.manifest import load
from manifests.shards import read_shard
from tests.support.text_manifest import mistral_tokenizer, write_text_manifest
from trainer.data import TokenWindows, check_shards


def test_text_manifest_is_valid_and_decodes_back_to_the_text(tmp_path):
    json_package = Path(sysconfig.get_paths()["stdlib"]) / "json"
    docs = [(p.name, p.read_text()) for p in sorted(json_package.glob("*.py"))]
    # one document per shard
    path = write_text_manifest(tmp_path, {"train": docs[1:], "validation": docs[:1]}, shard_tokens=1, threads=2)
    manifest = load(path)  # validates against the schema
    check_shards(manifest, "train", checksums=True)
    shards = manifest.shards("train")
    assert len(shards) == manifest.splits["train"].documents == len(docs) - 1
    sp = spm.SentencePieceProcessor(model_file=str(mistral_tokenizer()))
    index, tokens = read_shard(shards[0].bin_path, shards[0].idx_path)
    start, end = index.doc_span(0)
    assert tokens[end - 1] == manifest.tokenizer.eos_id
    assert sp.decode(tokens[start : end - 1].tolist()) == docs[1][1]
    assert len(TokenWindows(manifest, "train", context=64)) > 0
