"""`manifest.json`, the contract between `tokenmill build` and its readers: the typed `Manifest` the build
writes and every reader loads (`load`, over fsspec), and its JSON.

The manifest is validated against `manifest.schema.json` (package data of this package) on write and on read.
Shard, tokenizer and quarantine paths are relative to the manifest's folder and may not leave it. The JSON
holds exactly the dataclasses' fields, keys sorted: `to_dict(parse(raw)) == json.loads(raw)`.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import json
import os
import posixpath
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import fsspec
import jsonschema

from manifests.check import ShardProblem, check_shard
from manifests.outputs import MANIFEST
from manifests.shards import ShardEntry

FORMAT = "tokenmill.manifest"
FORMAT_VERSION = 1


class ManifestError(ValueError):
    pass


def _schema() -> dict:
    return json.loads(importlib.resources.files("manifests").joinpath("manifest.schema.json").read_text())


def validate(manifest: dict, name: str = "manifest") -> None:
    if manifest.get("format") == FORMAT and manifest.get("format_version") not in (None, FORMAT_VERSION):
        raise ManifestError(
            f"{name}: format_version {manifest.get('format_version')}, this tokenmill reads {FORMAT_VERSION}; upgrade "
            "tokenmill or rebuild"
        )
    try:
        jsonschema.validate(manifest, _schema())
    except jsonschema.ValidationError as e:
        where = "/".join(str(p) for p in e.absolute_path) or "(top level)"
        raise ManifestError(f"{name}: field `{where}`: {e.message}") from None
    for split, info in manifest["splits"].items():
        for shard in info["shards"]:
            for key in ("bin", "idx"):
                check_relative(shard[key], f"{name}: splits.{split} shard {key}")
    for field_name, path in (
        ("tokenizer.path", manifest["tokenizer"].get("path")),
        ("quarantine.path", manifest["quarantine"]["path"]),
    ):
        if path:  # optional: a manifest written without a tokenizer copy or quarantine file leaves them empty
            check_relative(path, f"{name}: {field_name}")


def check_relative(path: str, what: str) -> None:
    p = PurePosixPath(path)
    if p.is_absolute() or ".." in p.parts or "\\" in path or (len(path) > 1 and path[1] == ":"):
        raise ManifestError(
            f"{what}: path {path!r} leaves the manifest's folder; shard paths must be relative and inside it"
        )


@dataclass(slots=True)
class TokenizerEntry:
    uri: str
    sha256: str
    vocab_size: int
    bos_id: int
    eos_id: int
    add_bos: bool
    add_eos: bool
    path: str | None = None  # a copy of the model beside the manifest (absent from the JSON when None)


@dataclass(slots=True)
class InputEntry:
    """An input file; its position in `Manifest.inputs` is the high half of its documents' origin keys."""

    source: str
    split: str
    path: str


@dataclass(slots=True)
class Funnel:
    """What became of a source's (or subset's) documents: read, dropped by reason, kept after filter + dedupe."""

    documents_read: int
    bytes_read: int
    dropped: dict[str, int]
    documents_kept: int
    tokens_kept: int


@dataclass(slots=True)
class SourceEntry:
    name: str
    id: int  # the source id in the shards' indexes
    uris: list[str]
    weight: float
    files: int
    documents_read: int
    bytes_read: int
    dropped: dict[str, int]
    documents_kept: int
    tokens_kept: int
    epochs: float  # tokens taken / tokens kept in the train split: > 1 upsampled, < 1 downsampled
    subsets: dict[str, Funnel]


@dataclass(slots=True)
class Split:
    documents: int
    tokens: int
    tokens_by_source: dict[str, int]
    shards: list[ShardEntry]
    tokens_by_domain: dict[str, int] | None = None  # a build with domains


@dataclass(slots=True)
class MixEntry:
    policy: str
    target: dict[str, float]  # share by source
    achieved: dict[str, dict[str, float]]  # share by source, per split
    target_by_domain: dict[str, float] | None = None  # a build with domains
    achieved_by_domain: dict[str, dict[str, float]] | None = None


@dataclass(slots=True)
class DomainEntry:
    """A build whose recipe weights domains: one of them. Its id is what the shards' indexes hold."""

    name: str
    id: int
    source: str
    subsets: list[str]  # empty: the source's subsets no other domain names
    weight: float
    tokens_kept: dict[str, int]  # per split, after filter + dedupe
    epochs: float  # train tokens in the shards over tokens kept


@dataclass(slots=True)
class QuarantineEntry:
    path: str  # empty when no quarantine file was written
    records: int
    by_reason: dict[str, int]


@dataclass(slots=True)
class Provenance:
    work: str  # the work store's URL
    dedupe: str  # fingerprints of what the shards were made from
    mix: str
    reused: dict[str, int]  # per stage, task outputs re-used instead of run
    verify: str | None = None  # with `dedupe.minhash.verify`: the fingerprint of the verified removals


@dataclass(slots=True)
class ShardRef:
    split: str
    root: Path  # the manifest's folder: the entry's paths are relative to it
    entry: ShardEntry

    @property
    def bin_path(self) -> Path:
        return self.root / self.entry.bin

    @property
    def idx_path(self) -> Path:
        return self.root / self.entry.idx

    def check(self, *, checksums: bool = True, index_checksum: bool = True) -> list[ShardProblem]:
        return check_shard(self.entry, self.root, checksums=checksums, index_checksum=index_checksum)


@dataclass(slots=True)
class Manifest:
    format: str
    format_version: int
    tool_version: str
    created_at: str
    recipe: dict[str, Any]  # the resolved recipe, as the build's recipe module writes it
    recipe_sha256: str
    tokenizer: TokenizerEntry
    dtype: str  # "uint16" or "uint32" (`manifests.shards.dtype_named`)
    inputs: list[InputEntry]
    sources: list[SourceEntry]
    splits: dict[str, Split]
    mix: MixEntry
    stages: dict[str, dict[str, Any]]  # per stage: timings and task counts
    quarantine: QuarantineEntry
    provenance: Provenance | None = None  # absent from the JSON when None
    domains: list[DomainEntry] | None = None  # only a build with domains: the ids in its shards' indexes
    decontamination: dict[str, Any] | None = None  # the eval sets the build matched: name, sha256, rule, counts
    path: str = field(default="", compare=False, metadata={"json": False})  # where it was loaded from or written to

    @property
    def root(self) -> Path:
        """The local folder holding the manifest (its shard paths are relative to it)."""
        return Path(self.path.removeprefix("file://")).parent

    @property
    def source_names(self) -> list[str]:
        return [s.name for s in sorted(self.sources, key=lambda s: s.id)]

    @property
    def domain_names(self) -> list[str]:
        """What the shards' index ids name: the domains of a build with domains, else the sources."""
        if self.domains:
            return [d.name for d in sorted(self.domains, key=lambda d: d.id)]
        return self.source_names

    def id_sources(self) -> list[int]:
        """The source id of each index id (the identity for a build without domains)."""
        ids = {s.name: s.id for s in self.sources}
        if not self.domains:
            return sorted(ids.values())
        return [ids[d.source] for d in sorted(self.domains, key=lambda d: d.id)]

    def shards(self, split: str) -> list[ShardRef]:
        if split not in self.splits:
            raise ManifestError(f"{self.path}: no split {split!r}; it has {', '.join(self.splits) or 'none'}")
        return [ShardRef(split, self.root, s) for s in self.splits[split].shards]

    def tokenizer_path(self) -> Path | None:
        return self.root / self.tokenizer.path if self.tokenizer.path else None


def splits_of(
    shards: dict[str, list[ShardEntry]], source_names: list[str], domain_names: list[str] | None = None
) -> dict[str, Split]:
    """A manifest's splits from each split's shard entries: the totals are sums over the shards (per domain too,
    for a build with domains)."""
    return {
        split: Split(
            documents=sum(e.documents for e in entries),
            tokens=sum(e.tokens for e in entries),
            tokens_by_source={name: sum(e.tokens_by_source[name] for e in entries) for name in source_names},
            shards=entries,
            tokens_by_domain={name: sum(e.tokens_by_domain[name] for e in entries) for name in domain_names}
            if domain_names
            else None,
        )
        for split, entries in shards.items()
    }


def to_dict(manifest: Manifest) -> dict[str, Any]:
    """The manifest's JSON object: every field but `path`, without the optional ones (default None) that are None."""
    return _plain(manifest)


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        fields = [f for f in dataclasses.fields(value) if f.metadata.get("json", True)]
        unset = {f.name for f in fields if f.default is None and getattr(value, f.name) is None}
        return {f.name: _plain(getattr(value, f.name)) for f in fields if f.name not in unset}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def from_dict(data: dict[str, Any], path: str = "") -> Manifest:
    """The typed manifest of a JSON object that `validate` accepted."""
    try:
        return Manifest(
            **{k: v for k, v in data.items() if k not in _NESTED},
            tokenizer=TokenizerEntry(**data["tokenizer"]),
            inputs=[InputEntry(**i) for i in data["inputs"]],
            sources=[
                SourceEntry(**{**s, "subsets": {k: Funnel(**f) for k, f in s["subsets"].items()}})
                for s in data["sources"]
            ],
            splits={
                name: Split(**{**s, "shards": [ShardEntry(**e) for e in s["shards"]]})
                for name, s in data["splits"].items()
            },
            mix=MixEntry(**data["mix"]),
            quarantine=QuarantineEntry(**data["quarantine"]),
            provenance=Provenance(**data["provenance"]) if "provenance" in data else None,
            domains=[DomainEntry(**d) for d in data["domains"]] if "domains" in data else None,
            path=path,
        )
    except TypeError as e:  # a field the schema leaves open (a subset's funnel) that this tokenmill does not know
        raise ManifestError(f"{path or 'manifest'}: {e}; rebuild with this tokenmill") from None


_NESTED = ("tokenizer", "inputs", "sources", "splits", "mix", "quarantine", "provenance", "domains")


def dumps(manifest: Manifest, name: str = "manifest") -> str:
    """The manifest's JSON text, validated first (`name` says where it goes, for the error)."""
    data = to_dict(manifest)
    validate(data, name)
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def write_local(manifest: Manifest, path: Path) -> None:
    """Validate, then write atomically (temporary name, then rename)."""
    text = dumps(manifest, str(path))
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def parse(raw: bytes | str, name: str) -> Manifest:
    """The manifest in `raw` (the bytes of a manifest.json read from `name`), validated."""
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ManifestError(f"{name}: not valid JSON (line {e.lineno}): {e.msg}") from None
    except UnicodeDecodeError as e:
        raise ManifestError(f"{name}: not valid JSON ({e})") from None
    validate(data, name)
    return from_dict(data, name)


def read_raw(url: str | Path) -> tuple[str, bytes]:
    """(the manifest's path or URL, its bytes) from a path or fsspec URL of the manifest or of the folder that
    holds it (an output folder such as runs/demo)."""
    url = str(url)
    try:
        fs, path = fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as e:  # e.g. s3:// without s3fs installed
        raise ManifestError(
            f"{url}: cannot open ({e}); s3:// needs `pip install tokenmill[s3]`, gs:// `tokenmill[gcs]`"
        ) from None
    if fs.isdir(path):
        path, url = posixpath.join(path, MANIFEST), posixpath.join(url, MANIFEST)
    try:
        return url, fs.cat_file(path)
    except FileNotFoundError:
        raise ManifestError(
            f"{url}: no such manifest; run `tokenmill build RECIPE --out DIR` first, and give its {MANIFEST}"
        ) from None


def load(url: str | Path) -> Manifest:
    """The manifest at a path or fsspec URL, or in the folder it names, validated."""
    name, raw = read_raw(url)
    return parse(raw, name)
