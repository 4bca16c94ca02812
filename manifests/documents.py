"""Token documents -> shards + manifest.json, without Ray and without a tokenizer: for callers that already hold
tokenized documents (the tests' text fixtures, the trainer's GPU benchmark, whose machine has no Ray for
`tokenmill build`). Every format detail is the contract's own: `manifests.shards.write_shard`, the typed
`Manifest`, `manifests.keys`.

Each document is one input file of its own (its origin key is that file's line 0); a split's documents are
packed in order into shards of at least `shard_tokens` tokens (the last shard of a split holds the rest).
"""

from __future__ import annotations

import datetime
import hashlib
import json
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np

from manifests.keys import doc_keys
from manifests.manifest import (
    FORMAT,
    FORMAT_VERSION,
    InputEntry,
    Manifest,
    MixEntry,
    QuarantineEntry,
    SourceEntry,
    TokenizerEntry,
    splits_of,
    write_local,
)
from manifests.outputs import MANIFEST
from manifests.shards import ShardEntry, dtype_name, token_dtype, write_shard


@dataclass(frozen=True, slots=True)
class Documents:
    """One split's documents: their tokens back to back, as a tokenizer's batch encode gives them."""

    paths: list[str]  # the input file each document came from, as the manifest's `inputs` will list it
    tokens: np.ndarray  # token ids, BOS/EOS included as the tokenizer placed them
    lengths: np.ndarray  # tokens per document


def write_documents(
    out_dir: Path,
    splits: dict[str, Documents],
    *,
    tokenizer: TokenizerEntry,
    shard_tokens: int,
    source: str = "text",
    bytes_read: int = 0,
) -> Path:
    """Write each split's documents as shards under `out_dir` and, last, out_dir/manifest.json, with one source
    `source` that read `bytes_read` bytes of text. Returns the manifest's path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    dtype = token_dtype(tokenizer.vocab_size)
    inputs: list[InputEntry] = []
    shards = {}
    for split, docs in splits.items():
        keys = doc_keys(np.arange(len(inputs), len(inputs) + len(docs.paths)), 0)
        inputs += [InputEntry(source=source, split=split, path=path) for path in docs.paths]
        shards[split] = _write_shards(out_dir, split, docs, keys, dtype, shard_tokens, source)
    manifest = _manifest(tokenizer, dtype, inputs, shards, source, bytes_read)
    path = out_dir / MANIFEST
    write_local(manifest, path)
    return path


def _write_shards(
    out_dir: Path, split: str, docs: Documents, keys: np.ndarray, dtype: np.dtype, shard_tokens: int, source: str
) -> list[ShardEntry]:
    lengths = np.asarray(docs.lengths, np.int64)
    starts = np.cumsum(lengths) - lengths
    tokens = np.asarray(docs.tokens, dtype)

    def write(rel: str, data: bytes) -> None:
        (out_dir / rel).write_bytes(data)

    entries, first = [], 0
    while first < len(lengths):
        end, taken = first, 0
        while end < len(lengths) and (taken < shard_tokens or end == first):
            taken += int(lengths[end])
            end += 1
        part = slice(first, end)
        entries.append(
            write_shard(
                write,
                f"{split}-{len(entries):05d}",
                tokens[starts[first] : starts[first] + taken],
                lengths[part],
                np.zeros(end - first, np.uint16),
                keys[part],
                [source],
            )
        )
        first = end
    return entries


def _manifest(
    tokenizer: TokenizerEntry,
    dtype: np.dtype,
    inputs: list[InputEntry],
    shards: dict[str, list[ShardEntry]],
    source: str,
    bytes_read: int,
) -> Manifest:
    recipe = {
        "name": "token-documents",
        "sources": [{"name": source, "kind": "text"}],
        "tokenizer": {"model": tokenizer.uri, "add_bos": tokenizer.add_bos, "add_eos": tokenizer.add_eos},
    }
    splits = splits_of(shards, [source])
    documents = sum(s.documents for s in splits.values())
    tokens = sum(s.tokens for s in splits.values())
    return Manifest(
        format=FORMAT,
        format_version=FORMAT_VERSION,
        tool_version=_tool_version(),
        created_at=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        recipe=recipe,
        recipe_sha256=hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest(),
        tokenizer=tokenizer,
        dtype=dtype_name(dtype),
        inputs=inputs,
        sources=[
            SourceEntry(
                name=source,
                id=0,
                uris=["memory"],
                weight=1.0,
                files=len(inputs),
                documents_read=documents,
                bytes_read=bytes_read,
                dropped={},
                documents_kept=documents,
                tokens_kept=tokens,
                epochs=1.0,
                subsets={},
            )
        ],
        splits=splits,
        mix=MixEntry(policy="natural", target={source: 1.0}, achieved={split: {source: 1.0} for split in splits}),
        stages={},
        quarantine=QuarantineEntry(path="", records=0, by_reason={}),
    )


def _tool_version() -> str:
    try:
        return version("tokenmill")
    except PackageNotFoundError:  # run from a source checkout that pip never installed (the GPU machine)
        return "source checkout"
