"""tests/text_manifest.py: the Ray-free manifest writer the GPU benchmark uses (its machine has no Ray)."""
from __future__ import annotations

import sysconfig
from pathlib import Path

import sentencepiece as spm

from manifests.manifest import load
from manifests.shards import open_tokens, read_index
from tests.text_manifest import mistral_tokenizer, python_sources, write_text_manifest
from trainer.data import TokenWindows, check_shards


def test_text_manifest_is_valid_and_decodes_back_to_the_text(tmp_path):
    docs = python_sources(Path(sysconfig.get_paths()["stdlib"]) / "json", 10**6)
    path = write_text_manifest(tmp_path, {"train": docs[1:], "validation": docs[:1]}, shard_tokens=1, threads=2)  # one document per shard
    manifest = load(path)  # validates against the schema
    check_shards(manifest, "train", checksums=True)
    shards = manifest.shards("train")
    assert len(shards) == manifest.data["splits"]["train"]["documents"] == len(docs) - 1
    sp = spm.SentencePieceProcessor(model_file=str(mistral_tokenizer()))
    index = read_index(shards[0].idx_path)
    start, end = index.doc_span(0)
    tokens = open_tokens(shards[0].bin_path, index)[start:end].tolist()
    assert tokens[-1] == manifest.eos_id
    assert sp.decode(tokens[:-1]) == docs[1][1]
    assert len(TokenWindows(manifest, "train", context=64)) > 0
