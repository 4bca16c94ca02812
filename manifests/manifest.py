"""Read, write, build and validate `manifest.json`, the contract between `tokenmill build` and its readers.

The manifest is validated against `manifest.schema.json` (package data of this package) on write and on read.
Shard, tokenizer and quarantine paths are relative to the manifest's folder and may not leave it.
"""
from __future__ import annotations

import hashlib
import importlib.resources
import json
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import jsonschema

from manifests.check import ShardProblem, check_shard

FORMAT = "tokenmill.manifest"
FORMAT_VERSION = 1


class ManifestError(ValueError):
    pass


def _schema() -> dict:
    return json.loads(importlib.resources.files("manifests").joinpath("manifest.schema.json").read_text())


def validate(manifest: dict, name: str = "manifest") -> None:
    if manifest.get("format") == FORMAT and manifest.get("format_version") not in (None, FORMAT_VERSION):
        raise ManifestError(f"{name}: format_version {manifest.get('format_version')}, this tokenmill reads {FORMAT_VERSION}; upgrade tokenmill or rebuild")
    try:
        jsonschema.validate(manifest, _schema())
    except jsonschema.ValidationError as e:
        where = "/".join(str(p) for p in e.absolute_path) or "(top level)"
        raise ManifestError(f"{name}: field `{where}`: {e.message}") from None
    for split, info in manifest["splits"].items():
        for shard in info["shards"]:
            for key in ("bin", "idx"):
                check_relative(shard[key], f"{name}: splits.{split} shard {key}")
    for field_name, path in (("tokenizer.path", manifest["tokenizer"].get("path")), ("quarantine.path", manifest["quarantine"]["path"])):
        if path:  # optional: a manifest written without a tokenizer copy or quarantine file leaves them empty
            check_relative(path, f"{name}: {field_name}")


def check_relative(path: str, what: str) -> None:
    p = PurePosixPath(path)
    if p.is_absolute() or ".." in p.parts or "\\" in path or (len(path) > 1 and path[1] == ":"):
        raise ManifestError(f"{what}: path {path!r} leaves the manifest's folder; shard paths must be relative and inside it")


def dumps(manifest: dict) -> str:
    return json.dumps(manifest, indent=2, sort_keys=True) + "\n"


def write_local(manifest: dict, path: Path) -> None:
    """Validate, then write atomically (temporary name, then rename)."""
    validate(manifest, str(path))
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(dumps(manifest))
    os.replace(tmp, path)


def shard_entry(stem: str, data: bytes, index: bytes, *, documents: int, tokens: int, tokens_by_source: dict[str, int],
                tokens_by_domain: dict[str, int] | None = None) -> dict:
    """The manifest entry of shard `stem` (e.g. "train/train-00000") whose files hold `data` and `index`;
    `tokens_by_domain` only for a build with domains (its index then holds domain ids)."""
    entry = {
        "bin": f"{stem}.bin",
        "idx": f"{stem}.idx",
        "bin_sha256": hashlib.sha256(data).hexdigest(),
        "idx_sha256": hashlib.sha256(index).hexdigest(),
        "bin_bytes": len(data),
        "idx_bytes": len(index),
        "documents": documents,
        "tokens": tokens,
        "tokens_by_source": tokens_by_source,
    }
    if tokens_by_domain is not None:
        entry["tokens_by_domain"] = tokens_by_domain
    return entry


def split_entries(shards: dict[str, list[dict]], source_names: list[str],
                  domain_names: list[str] | None = None) -> dict[str, dict]:
    """`splits` of a manifest from each split's shard entries: the totals are sums over the shards (per domain
    too, for a build with domains)."""
    splits = {
        split: {
            "documents": sum(e["documents"] for e in entries),
            "tokens": sum(e["tokens"] for e in entries),
            "tokens_by_source": {name: sum(e["tokens_by_source"][name] for e in entries) for name in source_names},
            "shards": entries,
        }
        for split, entries in shards.items()
    }
    for split, entries in shards.items() if domain_names else ():
        splits[split]["tokens_by_domain"] = {name: sum(e["tokens_by_domain"][name] for e in entries)
                                             for name in domain_names}
    return splits


@dataclass(slots=True)
class ShardRef:
    split: str
    root: Path  # the manifest's folder: the entry's paths are relative to it
    entry: dict[str, Any]

    @property
    def bin_path(self) -> Path:
        return self.root / self.entry["bin"]

    @property
    def idx_path(self) -> Path:
        return self.root / self.entry["idx"]

    def check(self, *, checksums: bool = True, index_checksum: bool = True) -> list[ShardProblem]:
        return check_shard(self.entry, self.root, checksums=checksums, index_checksum=index_checksum)


@dataclass(slots=True)
class Manifest:
    path: Path
    data: dict[str, Any]

    @property
    def root(self) -> Path:
        return self.path.parent

    @property
    def vocab_size(self) -> int:
        return int(self.data["tokenizer"]["vocab_size"])

    @property
    def eos_id(self) -> int:
        return int(self.data["tokenizer"]["eos_id"])

    @property
    def source_names(self) -> list[str]:
        return [s["name"] for s in sorted(self.data["sources"], key=lambda s: s["id"])]

    @property
    def domain_names(self) -> list[str]:
        """What the shards' index ids name: the domains of a build with domains, else the sources."""
        if "domains" in self.data:
            return [d["name"] for d in sorted(self.data["domains"], key=lambda d: d["id"])]
        return self.source_names

    def id_sources(self) -> list[int]:
        """The source id of each index id (the identity for a build without domains)."""
        if "domains" not in self.data:
            return [s["id"] for s in sorted(self.data["sources"], key=lambda s: s["id"])]
        ids = {s["name"]: s["id"] for s in self.data["sources"]}
        return [ids[d["source"]] for d in sorted(self.data["domains"], key=lambda d: d["id"])]

    def splits(self) -> list[str]:
        return list(self.data["splits"])

    def shards(self, split: str) -> list[ShardRef]:
        if split not in self.data["splits"]:
            raise ManifestError(f"{self.path}: no split {split!r}; it has {', '.join(self.data['splits']) or 'none'}")
        return [
            ShardRef(split, self.root, s)
            for s in self.data["splits"][split]["shards"]
        ]

    def tokenizer_path(self) -> Path | None:
        rel = self.data["tokenizer"].get("path")
        return self.root / rel if rel else None


def load(path: str | Path) -> Manifest:
    """A manifest from its path, or from the folder that holds it (an output folder such as runs/demo)."""
    path = Path(path)
    if path.is_dir():
        path = path / "manifest.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ManifestError(f"{path}: no such manifest; run `tokenmill build RECIPE --out DIR` first") from None
    except json.JSONDecodeError as e:
        raise ManifestError(f"{path}: not valid JSON (line {e.lineno}): {e.msg}") from None
    validate(data, str(path))
    return Manifest(path, data)
