"""`tokenmill verify MANIFEST` and `tokenmill inspect MANIFEST --split S --doc N`."""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline import manifest as manifest_io
from stages.shards import ShardFormatError, decode_index, sha256_file


@dataclass(slots=True)
class ShardProblem:
    path: str
    problem: str


def verify_shard(root: Path, entry: dict, checksums: bool = True) -> list[ShardProblem]:
    problems = []
    bin_path, idx_path = root / entry["bin"], root / entry["idx"]
    for path, key in ((bin_path, "bin"), (idx_path, "idx")):
        if not path.is_file():
            problems.append(ShardProblem(str(path), "missing"))
            continue
        size = path.stat().st_size
        if size != entry[f"{key}_bytes"]:
            problems.append(ShardProblem(str(path), f"{size} bytes, manifest says {entry[f'{key}_bytes']} (truncated or changed)"))
        elif checksums and sha256_file(path) != entry[f"{key}_sha256"]:
            problems.append(ShardProblem(str(path), "sha256 differs from the manifest (corrupted or changed)"))
    if problems:
        return problems
    try:
        index = decode_index(idx_path.read_bytes(), str(idx_path))
    except ShardFormatError as e:
        return [ShardProblem(str(idx_path), str(e))]
    if index.documents != entry["documents"] or index.tokens != entry["tokens"]:
        problems.append(ShardProblem(str(idx_path), f"{index.documents} documents / {index.tokens} tokens, manifest says {entry['documents']} / {entry['tokens']}"))
    if index.tokens * index.dtype.itemsize != bin_path.stat().st_size:
        problems.append(ShardProblem(str(bin_path), f"size does not match the index's {index.tokens} tokens"))
    return problems


def verify(manifest_path: Path, checksums: bool = True) -> tuple[manifest_io.Manifest, list[ShardProblem]]:
    manifest = manifest_io.load(manifest_path)
    problems = []
    for split in manifest.splits():
        for ref in manifest.shards(split):
            problems += verify_shard(manifest.root, ref.entry, checksums)
    return manifest, problems


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="tokenmill verify", description="Check sizes, token counts and sha256 of every shard of a manifest.")
    parser.add_argument("manifest", type=Path)
    parser.add_argument("--no-checksums", action="store_true", help="sizes and counts only (fast)")
    args = parser.parse_args(argv)
    try:
        manifest, problems = verify(args.manifest, not args.no_checksums)
    except (manifest_io.ManifestError, ShardFormatError) as e:
        print(f"tokenmill verify: {e}", file=sys.stderr)
        return 1
    shards = sum(len(manifest.shards(s)) for s in manifest.splits())
    for p in problems:
        print(f"BAD  {p.path}: {p.problem}", file=sys.stderr)
    if problems:
        print(f"tokenmill verify: {len(problems)} problem(s) in {shards} shards; rebuild or re-copy the files named above", file=sys.stderr)
        return 1
    tokens = sum(manifest.data["splits"][s]["tokens"] for s in manifest.splits())
    print(f"ok: {shards} shards, {tokens:,} tokens, sizes{'' if args.no_checksums else ', sha256'} and counts match {args.manifest}")
    return 0


def locate(manifest: manifest_io.Manifest, split: str, doc: int) -> tuple[manifest_io.ShardRef, int]:
    """The shard holding the split's `doc`-th document (0-based, in shard order) and its index there."""
    first = 0
    for ref in manifest.shards(split):
        n = ref.entry["documents"]
        if doc < first + n:
            return ref, doc - first
        first += n
    raise IndexError(f"{manifest.path}: split {split!r} has {first} documents; --doc must be below that")


def inspect_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="tokenmill inspect", description="Decode one document of a manifest back to text, with its origin.")
    parser.add_argument("manifest", type=Path)
    parser.add_argument("--split", default="train")
    parser.add_argument("--doc", type=int, default=0, help="document number within the split (0-based)")
    parser.add_argument("--tokens", action="store_true", help="also print the token ids")
    args = parser.parse_args(argv)
    from stages.shards import open_tokens, read_index
    from stages.tokenize import Tokenizer

    try:
        manifest = manifest_io.load(args.manifest)
        ref, i = locate(manifest, args.split, args.doc)
    except (manifest_io.ManifestError, IndexError) as e:
        print(f"tokenmill inspect: {e}", file=sys.stderr)
        return 1
    index = read_index(ref.idx_path)
    start, end = index.doc_span(i)
    tokens = np.asarray(open_tokens(ref.bin_path, index)[start:end])
    tok = manifest.data["tokenizer"]
    tokenizer = Tokenizer.from_bytes(manifest.tokenizer_path().read_bytes(), tok["add_bos"], tok["add_eos"])
    origin = int(index.origins[i])
    source = manifest.source_names[int(index.source_ids[i])]
    inp = manifest.data["inputs"][origin >> 32]
    line = origin & 0xFFFFFFFF
    where = f"line {line}" if inp["path"].endswith((".jsonl", ".zst", ".gz")) else f"row {line}"
    print(f"# {args.split} document {args.doc}: {ref.entry['bin']} document {i}, {end - start} tokens")
    print(f"# from {source}: {inp['path']} {where}")
    if args.tokens:
        print("# tokens:", " ".join(map(str, tokens.tolist())))
    print(tokenizer.decode(tokens))
    return 0
