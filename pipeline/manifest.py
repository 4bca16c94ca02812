"""Read, write and validate `manifest.json`, the contract between `tokenmill build` and the trainer.

The manifest is validated against `manifests/manifest.schema.json` on write and on read. Shard, tokenizer and
quarantine paths are relative to the manifest's folder and may not leave it.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import jsonschema

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "manifests" / "manifest.schema.json"
FORMAT = "tokenmill.manifest"
FORMAT_VERSION = 1


class ManifestError(ValueError):
    pass


def _schema() -> dict:
    return json.loads(SCHEMA_PATH.read_text())


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


@dataclass(slots=True)
class ShardRef:
    split: str
    bin_path: Path
    idx_path: Path
    entry: dict[str, Any]


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

    def splits(self) -> list[str]:
        return list(self.data["splits"])

    def shards(self, split: str) -> list[ShardRef]:
        if split not in self.data["splits"]:
            raise ManifestError(f"{self.path}: no split {split!r}; it has {', '.join(self.data['splits']) or 'none'}")
        return [
            ShardRef(split, self.root / s["bin"], self.root / s["idx"], s)
            for s in self.data["splits"][split]["shards"]
        ]

    def tokenizer_path(self) -> Path | None:
        rel = self.data["tokenizer"].get("path")
        return self.root / rel if rel else None


def load(path: str | Path) -> Manifest:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ManifestError(f"{path}: no such manifest; run `tokenmill build RECIPE --out DIR` first") from None
    except json.JSONDecodeError as e:
        raise ManifestError(f"{path}: not valid JSON (line {e.lineno}): {e.msg}") from None
    validate(data, str(path))
    return Manifest(path, data)
