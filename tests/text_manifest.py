"""A real, schema-valid manifest from text in memory, without Ray: a fixture for the trainer's tests and its GPU
benchmark (the GPU machine has no Ray, so `tokenmill build` cannot run there). Not part of the product: every
format detail comes from the contract package `manifests`.

Each text is one input file holding one document; documents are tokenized with a real sentencepiece model,
EOS appended (as `tokenmill build` does), and packed in order into shards of at least `shard_tokens` tokens
(the last shard of a split holds the rest), in the shard format of `manifests.shards`.
"""
from __future__ import annotations

import hashlib
import importlib.resources
import json
import os
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import sentencepiece as spm

from manifests.keys import doc_key
from manifests.manifest import FORMAT, FORMAT_VERSION, shard_entry, split_entries, write_local
from manifests.shards import dtype_name, encode_index, sha256_file, token_dtype

MISTRAL_TOKENIZER_URI = "pkg://mistral_common/data/tokenizer.model.v1"


def mistral_tokenizer() -> Path:
    """The 32k sentencepiece BPE that ships inside mistral-common (what the sample recipe uses)."""
    return Path(str(importlib.resources.files("mistral_common") / "data/tokenizer.model.v1"))


def python_sources(root: Path, max_bytes: int) -> list[tuple[str, str]]:
    """(relative path, text) of the .py files under root, in path order, until `max_bytes` of text."""
    texts, total = [], 0
    for path in sorted(root.rglob("*.py")):
        text = path.read_text(encoding="utf-8", errors="replace")
        if not text.strip():
            continue
        texts.append((str(path.relative_to(root)), text))
        total += len(text)
        if total >= max_bytes:
            break
    return texts


def write_text_manifest(out_dir: Path, splits: dict[str, list[tuple[str, str]]], *, shard_tokens: int, source: str = "text", threads: int | None = None, tokenizer: Path | None = None) -> Path:
    """Tokenize `splits` (split name -> [(path, text)]) with a sentencepiece model (default: the mistral one)
    into shards under out_dir, and write out_dir/manifest.json. Returns the manifest's path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    model_path = tokenizer or mistral_tokenizer()
    sp = spm.SentencePieceProcessor(model_file=str(model_path))
    dtype = token_dtype(sp.get_piece_size())
    inputs, shards = [], {}
    for split, docs in splits.items():
        ids = sp.encode([text for _, text in docs], add_eos=True, num_threads=threads or os.cpu_count())
        keys = [doc_key(len(inputs) + i, 0) for i in range(len(docs))]
        inputs += [{"source": source, "split": split, "path": path} for path, _ in docs]
        shards[split] = _write_shards(out_dir, split, ids, keys, dtype, shard_tokens, source)
    uri = str(model_path) if tokenizer else MISTRAL_TOKENIZER_URI
    manifest = _manifest(sp, model_path, uri, dtype, inputs, split_entries(shards, [source]), source, sum(len(t) for docs in splits.values() for _, t in docs))
    path = out_dir / "manifest.json"
    write_local(manifest, path)
    return path


def _write_shards(out_dir: Path, split: str, ids: list[list[int]], keys: list[int], dtype: np.dtype, shard_tokens: int, source: str) -> list[dict]:
    shards, start = [], 0
    while start < len(ids):
        end, tokens = start, 0
        while end < len(ids) and (tokens < shard_tokens or end == start):
            tokens += len(ids[end])
            end += 1
        shards.append(_write_shard(out_dir, f"{split}-{len(shards):05d}", ids[start:end], keys[start:end], dtype, source))
        start = end
    return shards


def _write_shard(out_dir: Path, name: str, docs: list[list[int]], keys: list[int], dtype: np.dtype, source: str) -> dict:
    data = np.concatenate([np.asarray(d, dtype=dtype) for d in docs]).tobytes()
    ends = np.cumsum([len(d) for d in docs], dtype=np.uint64)
    index = encode_index(dtype, ends, np.zeros(len(docs), dtype=np.uint16), np.asarray(keys, dtype=np.uint64))
    (out_dir / f"{name}.bin").write_bytes(data)
    (out_dir / f"{name}.idx").write_bytes(index)
    tokens = int(ends[-1])
    return shard_entry(name, data, index, documents=len(docs), tokens=tokens, tokens_by_source={source: tokens})


def _manifest(sp, model_path: Path, uri: str, dtype: np.dtype, inputs: list[dict], splits: dict, source: str, text_bytes: int) -> dict:
    recipe = {"name": "text-manifest", "sources": [{"name": source, "kind": "text"}], "tokenizer": {"model": uri, "add_bos": False, "add_eos": True}}
    documents = sum(s["documents"] for s in splits.values())
    tokens = sum(s["tokens"] for s in splits.values())
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "tool_version": _tool_version(),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "recipe": recipe,
        "recipe_sha256": hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest(),
        "tokenizer": {
            "uri": uri,
            "sha256": sha256_file(model_path),
            "vocab_size": sp.get_piece_size(),
            "bos_id": sp.bos_id(),
            "eos_id": sp.eos_id(),
            "add_bos": False,
            "add_eos": True,
        },
        "dtype": dtype_name(dtype),
        "inputs": inputs,
        "sources": [{
            "name": source, "id": 0, "uris": ["memory"], "weight": 1.0, "files": len(inputs),
            "documents_read": documents, "bytes_read": text_bytes, "dropped": {},
            "documents_kept": documents, "tokens_kept": tokens, "epochs": 1.0, "subsets": {},
        }],
        "splits": splits,
        "mix": {"policy": "natural", "target": {source: 1.0}, "achieved": {split: {source: 1.0} for split in splits}},
        "stages": {},
        "quarantine": {"path": "", "records": 0, "by_reason": {}},
    }


def _tool_version() -> str:
    try:
        return version("tokenmill")
    except PackageNotFoundError:  # run from a source checkout that pip never installed (the GPU machine)
        return "source checkout"
