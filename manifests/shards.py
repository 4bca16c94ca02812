"""The token shard format shared by the pipeline (writer) and the trainer (reader).

`NAME.bin`: headerless little-endian token ids, documents back to back (memmap-able at offset 0).
`NAME.idx`: a 32-byte header, then three arrays of `documents` entries each:
    uint64 document end offsets (in tokens, cumulative), uint16 source ids, uint64 origin keys
    (input file index << 32 | line/row, see `manifests.keys`).
Header: magic b"TMILLIDX", uint32 version, uint8 dtype code, 3 pad bytes, uint64 documents, uint64 tokens
(only the first 8+4+1+3+8 = 24 bytes carry fields; the last 8 bytes hold the token count).
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

IDX_MAGIC = b"TMILLIDX"
IDX_VERSION = 1
_HEADER = struct.Struct("<8sIB3xQQ")  # magic, version, dtype code, pad, documents, tokens
HEADER_BYTES = _HEADER.size  # 32
DTYPE_CODES = {1: np.dtype("<u2"), 2: np.dtype("<u4")}
DTYPE_NAMES = {"uint16": 1, "uint32": 2}


class ShardFormatError(ValueError):
    pass


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits, else uint32."""
    return np.dtype("<u2") if vocab_size <= 65536 else np.dtype("<u4")


def dtype_name(dtype: np.dtype) -> str:
    return "uint16" if np.dtype(dtype).itemsize == 2 else "uint32"


def dtype_named(name: str) -> np.dtype:
    """The token dtype a manifest's `dtype` names ("uint16" or "uint32")."""
    return DTYPE_CODES[DTYPE_NAMES[name]]


def encode_index(dtype: np.dtype, doc_ends: np.ndarray, source_ids: np.ndarray, origins: np.ndarray) -> bytes:
    n_docs = len(doc_ends)
    if not (len(source_ids) == len(origins) == n_docs):
        raise ValueError("doc_ends, source_ids and origins must have one entry per document")
    n_tokens = int(doc_ends[-1]) if n_docs else 0
    header = _HEADER.pack(IDX_MAGIC, IDX_VERSION, DTYPE_NAMES[dtype_name(dtype)], n_docs, n_tokens)
    return b"".join(
        (
            header,
            np.asarray(doc_ends, dtype="<u8").tobytes(),
            np.asarray(source_ids, dtype="<u2").tobytes(),
            np.asarray(origins, dtype="<u8").tobytes(),
        )
    )


@dataclass(frozen=True, slots=True)
class IndexHeader:
    """What a reader of token windows needs from an index: its header, checked against the file's size."""

    dtype: np.dtype
    documents: int
    tokens: int


@dataclass(slots=True)
class ShardIndex:
    dtype: np.dtype
    doc_ends: np.ndarray  # uint64, cumulative token offsets
    source_ids: np.ndarray  # uint16
    origins: np.ndarray  # uint64

    @property
    def documents(self) -> int:
        return len(self.doc_ends)

    @property
    def tokens(self) -> int:
        return int(self.doc_ends[-1]) if len(self.doc_ends) else 0

    def doc_span(self, i: int) -> tuple[int, int]:
        start = int(self.doc_ends[i - 1]) if i else 0
        return start, int(self.doc_ends[i])

    def doc_lengths(self) -> np.ndarray:
        return np.diff(self.doc_ends, prepend=np.uint64(0)).astype(np.int64)


def decode_header(data: bytes, size: int, name: str = "<idx>") -> IndexHeader:
    """The header at the start of `data`, checked, and checked against the index file's `size` in bytes."""
    if len(data) < HEADER_BYTES:
        raise ShardFormatError(
            f"{name}: {len(data)} bytes, shorter than the {HEADER_BYTES}-byte header; rebuild the shard"
        )
    magic, version, code, n_docs, n_tokens = _HEADER.unpack_from(data)
    if magic != IDX_MAGIC:
        raise ShardFormatError(f"{name}: not a tokenmill index (magic {magic!r}, expected {IDX_MAGIC!r})")
    if version != IDX_VERSION:
        raise ShardFormatError(
            f"{name}: index version {version}, this tokenmill reads version {IDX_VERSION}; upgrade tokenmill or rebuild"
        )
    if code not in DTYPE_CODES:
        raise ShardFormatError(f"{name}: unknown dtype code {code}")
    expected = HEADER_BYTES + n_docs * (8 + 2 + 8)
    if size != expected:
        raise ShardFormatError(
            f"{name}: {size} bytes, header promises {expected} for {n_docs} documents; the file is truncated or corrupt"
        )
    return IndexHeader(DTYPE_CODES[code], n_docs, n_tokens)


def decode_index(data: bytes, name: str = "<idx>") -> ShardIndex:
    header = decode_header(data, len(data), name)
    n_docs, n_tokens = header.documents, header.tokens
    off = HEADER_BYTES
    doc_ends = np.frombuffer(data, dtype="<u8", count=n_docs, offset=off)
    off += 8 * n_docs
    source_ids = np.frombuffer(data, dtype="<u2", count=n_docs, offset=off)
    off += 2 * n_docs
    origins = np.frombuffer(data, dtype="<u8", count=n_docs, offset=off)
    if n_docs and int(doc_ends[-1]) != n_tokens:
        raise ShardFormatError(
            f"{name}: last document ends at {int(doc_ends[-1])}, header says {n_tokens} tokens; corrupt index"
        )
    if n_docs and np.any(np.diff(doc_ends.astype(np.int64)) < 0):
        raise ShardFormatError(f"{name}: document offsets are not increasing; corrupt index")
    return ShardIndex(header.dtype, doc_ends, source_ids, origins)


@dataclass(slots=True)
class ShardEntry:
    """A shard's entry in the manifest (`splits.<split>.shards[]`): its files, relative to the manifest's folder,
    their checksums and sizes, and what they hold."""

    bin: str
    idx: str
    bin_sha256: str
    idx_sha256: str
    bin_bytes: int
    idx_bytes: int
    documents: int
    tokens: int
    tokens_by_source: dict[str, int]
    tokens_by_domain: dict[str, int] | None = None  # a build with domains: its index holds domain ids


def write_shard(
    write: Callable[[str, bytes], None],
    stem: str,
    tokens: np.ndarray,
    lengths: np.ndarray,
    source_ids: np.ndarray,
    origins: np.ndarray,
    source_names: list[str],
    domains: list[tuple[str, str]] | None = None,
) -> ShardEntry:
    """Write shard `stem` (e.g. "train/train-00000"): `tokens` (documents of `lengths` tokens back to back, in
    the token dtype) as STEM.bin and its index as STEM.idx, each through `write(relative path, bytes)`.
    Returns its manifest entry. `domains`: (name, source) of each id in `source_ids` for a build with domains
    (the ids are then domain ids; the entry counts tokens per domain too)."""
    index = encode_index(tokens.dtype, np.cumsum(lengths).astype(np.uint64), source_ids, origins)
    data = tokens.tobytes()
    write(f"{stem}.bin", data)
    write(f"{stem}.idx", index)
    by_domain = None
    if domains is None:
        by_source = np.bincount(source_ids, weights=lengths, minlength=len(source_names))
    else:
        counts = np.bincount(source_ids, weights=lengths, minlength=len(domains)).round().astype(np.int64)
        by_domain = {name: int(counts[i]) for i, (name, _) in enumerate(domains)}
        by_source = [sum(int(counts[i]) for i, (_, source) in enumerate(domains) if source == s) for s in source_names]
    return ShardEntry(
        tokens_by_domain=by_domain,
        bin=f"{stem}.bin",
        idx=f"{stem}.idx",
        bin_sha256=hashlib.sha256(data).hexdigest(),
        idx_sha256=hashlib.sha256(index).hexdigest(),
        bin_bytes=len(data),
        idx_bytes=len(index),
        documents=int(len(lengths)),
        tokens=int(np.sum(lengths)),
        tokens_by_source={name: int(by_source[i]) for i, name in enumerate(source_names)},
    )


def read_shard(bin_path: str | Path, idx_path: str | Path) -> tuple[ShardIndex, np.ndarray]:
    """A shard's index and its memory-mapped tokens: document i is `tokens[slice(*index.doc_span(i))]`."""
    index = read_index(idx_path)
    return index, open_tokens(bin_path, index)


def read_index(path: str | Path) -> ShardIndex:
    return decode_index(Path(path).read_bytes(), str(path))


def read_index_header(path: str | Path) -> IndexHeader:
    """The index's header alone (32 bytes read, the file's size checked): a reader of windows needs no per-document
    arrays, which are 18 bytes a document (GBs over a TinyLlama-sized corpus)."""
    with open(path, "rb") as f:
        return decode_header(f.read(HEADER_BYTES), os.fstat(f.fileno()).st_size, str(path))


def open_tokens(bin_path: str | Path, index: ShardIndex | IndexHeader) -> np.ndarray:
    """Memory-map a shard's tokens; checks the file size against the index."""
    bin_path = Path(bin_path)
    size = bin_path.stat().st_size
    expected = index.tokens * index.dtype.itemsize
    if size != expected:
        raise ShardFormatError(
            f"{bin_path}: {size} bytes, its index promises {expected} ({index.tokens} tokens); the shard is truncated "
            "or was changed"
        )
    if index.tokens == 0:
        return np.zeros(0, dtype=index.dtype)
    return np.memmap(bin_path, dtype=index.dtype, mode="r")


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
