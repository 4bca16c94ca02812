"""The one check of a shard against its manifest entry (sizes, counts, checksums), used by `verify`, the
statistics report, `stage-in` and the trainer."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from manifests.shards import ShardEntry, ShardFormatError, read_index, read_index_header, sha256_file


@dataclass(frozen=True, slots=True)
class ShardProblem:
    path: str
    part: str  # "bin" or "idx": which file of the shard
    problem: str

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}"


def check_file(path: Path, *, size: int | None, sha256: str | None) -> str | None:
    """None when `path` is a file of `size` bytes (and, when given, of that sha256); else what is wrong."""
    if not path.is_file():
        return "missing"
    actual = path.stat().st_size
    if size is not None and actual != size:
        return f"{actual} bytes, manifest says {size} (truncated or changed)"
    if sha256 is not None and sha256_file(path) != sha256:
        return "sha256 mismatch (corrupted or changed after the build)"
    return None


def check_shard(
    entry: ShardEntry, root: Path, *, checksums: bool = True, index_checksum: bool = True
) -> list[ShardProblem]:
    """Problems of one shard (`entry` from a manifest's `splits.*.shards`, paths relative to `root`).

    Always: both files present with the manifest's sizes, the index header's document and token counts. With
    `index_checksum` (the default), also the index's sha256 and its own consistency (18 bytes a document: GBs
    over a TinyLlama-sized corpus, which the trainer's ranks share out); with `checksums`, the `.bin`'s sha256."""
    bin_path, idx_path = root / entry.bin, root / entry.idx
    problems = []
    files = (
        (idx_path, "idx", entry.idx_bytes, entry.idx_sha256, index_checksum),
        (bin_path, "bin", entry.bin_bytes, entry.bin_sha256, checksums),
    )
    for path, part, size, sha256, hashed in files:
        problem = check_file(path, size=size, sha256=sha256 if hashed else None)
        if problem:
            problems.append(ShardProblem(str(path), part, problem))
    if problems:
        return problems
    try:
        index = read_index(idx_path) if index_checksum else read_index_header(idx_path)
    except ShardFormatError as e:
        return [ShardProblem(str(idx_path), "idx", str(e))]
    if index.documents != entry.documents or index.tokens != entry.tokens:
        counted = f"{index.documents} documents / {index.tokens} tokens"
        recorded = f"{entry.documents} / {entry.tokens}"
        problems.append(ShardProblem(str(idx_path), "idx", f"{counted}, manifest says {recorded}"))
    if index.tokens * index.dtype.itemsize != entry.bin_bytes:
        problem = f"{entry.bin_bytes} bytes do not hold the index's {index.tokens} tokens"
        problems.append(ShardProblem(str(bin_path), "bin", problem))
    return problems
