"""A real, schema-valid manifest from text in memory, without Ray: a fixture for the trainer's tests. Not part of
the product: the tokenizer is the build's (`stages.tokenize`), shards and manifest are the contract's
(`manifests.documents`).

Each text is one input file holding one document, tokenized with a real sentencepiece model, EOS appended (as
`tokenmill build` does).
"""

from __future__ import annotations

import importlib.resources
import os
from pathlib import Path

from manifests.documents import Documents, write_documents
from stages.tokenize import Tokenizer

MISTRAL_TOKENIZER_URI = "pkg://mistral_common/data/tokenizer.model.v1"


def mistral_tokenizer() -> Path:
    """The 32k sentencepiece BPE that ships inside mistral-common (what the sample recipe uses)."""
    return Path(str(importlib.resources.files("mistral_common") / "data/tokenizer.model.v1"))


def write_text_manifest(
    out_dir: Path,
    splits: dict[str, list[tuple[str, str]]],
    *,
    shard_tokens: int,
    source: str = "text",
    threads: int | None = None,
    tokenizer: Path | None = None,
) -> Path:
    """Tokenize `splits` (split name -> [(path, text)]) with a sentencepiece model (default: the mistral one)
    into shards under out_dir, and write out_dir/manifest.json. Returns the manifest's path."""
    model_path = tokenizer or mistral_tokenizer()
    encoder = Tokenizer.from_bytes(model_path.read_bytes(), add_bos=False, add_eos=True)
    documents = {}
    for split, docs in splits.items():
        tokens, lengths = encoder.encode([text for _, text in docs], num_threads=threads or os.cpu_count())
        documents[split] = Documents([path for path, _ in docs], tokens, lengths)
    entry = encoder.manifest_entry(str(model_path) if tokenizer else MISTRAL_TOKENIZER_URI)
    return write_documents(
        out_dir,
        documents,
        tokenizer=entry,
        shard_tokens=shard_tokens,
        source=source,
        bytes_read=sum(len(text) for docs in splits.values() for _, text in docs),
    )
