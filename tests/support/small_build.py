"""A small but real build for the tests that read one (stage-in, the SLURM training job): stdlib docstrings
tokenized with the mistral sentencepiece model into shards written with the shard format's own writer, and a
manifest that validates against the schema."""

from __future__ import annotations

import ast
import datetime
import hashlib
import importlib.resources
import sysconfig
from dataclasses import asdict
from pathlib import Path

import numpy as np
import sentencepiece as spm

from manifests import manifest as manifest_io
from manifests.outputs import MANIFEST, QUARANTINE, TOKENIZER_MODEL
from manifests.shards import write_shard

SHARDS = {"train": 3, "validation": 1}


def _docstrings(count: int) -> list[str]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    texts = []
    for path in sorted(stdlib.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        texts += [
            d
            for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and (d := ast.get_docstring(node))
        ]
        if len(texts) >= count:
            return texts[:count]
    return texts


def _write_shard(out: Path, name: str, docs: list[list[int]], eos: int) -> dict:
    lengths = np.array([len(doc) + 1 for doc in docs], np.int64)
    tokens = np.array([t for doc in docs for t in doc + [eos]], dtype="<u2")
    (out / name).parent.mkdir(parents=True, exist_ok=True)
    entry = write_shard(
        lambda rel, data: (out / rel).write_bytes(data),
        name,
        tokens,
        lengths,
        np.zeros(len(docs), "<u2"),
        np.arange(len(docs), dtype="<u8"),
        ["docstrings"],
    )
    return asdict(entry)


def write_small_build(out: Path) -> Path:
    """A real manifest + shards + tokenizer copy, as `tokenmill build` lays them out."""
    model = (importlib.resources.files("mistral_common") / "data/tokenizer.model.v1").read_bytes()
    sp = spm.SentencePieceProcessor(model_proto=model)
    docs = sp.encode(_docstrings(120))
    out.mkdir(parents=True, exist_ok=True)
    (out / TOKENIZER_MODEL).write_bytes(model)
    splits, start = {}, 0
    for split, count in SHARDS.items():
        entries = []
        for n in range(count):
            entries.append(_write_shard(out, f"{split}/{split}-{n:05d}", docs[start : start + 20], sp.eos_id()))
            start += 20
        tokens = sum(e["tokens"] for e in entries)
        splits[split] = {
            "documents": sum(e["documents"] for e in entries),
            "tokens": tokens,
            "tokens_by_source": {"docstrings": tokens},
            "shards": entries,
        }
    manifest = {
        "format": manifest_io.FORMAT,
        "format_version": manifest_io.FORMAT_VERSION,
        "tool_version": "0.1.0",
        "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "recipe": {"name": "stage-in-test"},
        "recipe_sha256": hashlib.sha256(b"stage-in-test").hexdigest(),
        "tokenizer": {
            "uri": "pkg://mistral_common/data/tokenizer.model.v1",
            "path": TOKENIZER_MODEL,
            "sha256": hashlib.sha256(model).hexdigest(),
            "vocab_size": sp.vocab_size(),
            "bos_id": sp.bos_id(),
            "eos_id": sp.eos_id(),
            "add_bos": False,
            "add_eos": True,
        },
        "dtype": "uint16",
        "inputs": [{"source": "docstrings", "split": "train", "path": "stdlib"}],
        "sources": [
            {
                "name": "docstrings",
                "id": 0,
                "uris": ["stdlib"],
                "weight": 1.0,
                "files": 1,
                "documents_read": start,
                "bytes_read": 0,
                "dropped": {},
                "documents_kept": start,
                "tokens_kept": sum(s["tokens"] for s in splits.values()),
                "epochs": 1.0,
                "subsets": {},
            }
        ],
        "splits": splits,
        "mix": {
            "policy": "natural",
            "target": {"docstrings": 1.0},
            "achieved": {s: {"docstrings": 1.0} for s in splits},
        },
        "stages": {},
        "quarantine": {"path": QUARANTINE, "records": 0, "by_reason": {}},
    }
    manifest_io.write_local(manifest_io.from_dict(manifest), out / MANIFEST)
    return out / MANIFEST
