"""`tokenmill verify MANIFEST` and `tokenmill inspect MANIFEST --split S --doc N`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from manifests import ShardProblem, origin_of
from manifests import manifest as manifest_io
from manifests.shards import ShardFormatError, read_shard


def verify(manifest_path: Path, checksums: bool = True) -> tuple[manifest_io.Manifest, list[ShardProblem]]:
    manifest = manifest_io.load(manifest_path)
    problems = []
    for split in manifest.splits:
        for ref in manifest.shards(split):
            problems += ref.check(checksums=checksums)
    return manifest, problems


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="tokenmill verify",
        description="Check sizes, token counts and sha256 of every shard of a manifest; "
        "exit status 1 when a check fails.",
    )
    parser.add_argument("manifest", type=Path, help="a build's manifest.json, or the output folder holding it")
    parser.add_argument(
        "--no-checksums", action="store_true", help="check sizes and counts only, skip the sha256 of every file (fast)"
    )
    args = parser.parse_args(argv)
    try:
        manifest, problems = verify(args.manifest, not args.no_checksums)
    except (manifest_io.ManifestError, ShardFormatError) as e:
        print(f"tokenmill verify: {e}", file=sys.stderr)
        return 1
    shards = sum(len(split.shards) for split in manifest.splits.values())
    for p in problems:
        print(f"BAD  {p.path}: {p.problem}", file=sys.stderr)
    if problems:
        print(
            f"tokenmill verify: {len(problems)} problem(s) in {shards} shards; rebuild or re-copy the files named "
            "above",
            file=sys.stderr,
        )
        return 1
    tokens = sum(split.tokens for split in manifest.splits.values())
    print(
        f"ok: {shards} shards, {tokens:,} tokens, sizes{'' if args.no_checksums else ', sha256'} and counts match "
        f"{args.manifest}"
    )
    stray = unlisted_shard_files(manifest)
    if stray:
        print(
            f"warning: {len(stray)} shard files beside the manifest are listed by it nowhere (left by an earlier "
            "build?), e.g. "
            f"{stray[0]}; a trainer reading this manifest never sees them: delete them",
            file=sys.stderr,
        )
    return 0


def unlisted_shard_files(manifest: manifest_io.Manifest) -> list[str]:
    """.bin/.idx files under the manifest's folder (outside work/) that the manifest does not list."""
    listed = {path for split in manifest.splits.values() for shard in split.shards for path in (shard.bin, shard.idx)}
    found = (
        str(p.relative_to(manifest.root))
        for p in manifest.root.rglob("*")
        if p.suffix in (".bin", ".idx") and p.is_file()
    )
    return sorted(f for f in found if f not in listed and not f.startswith("work/"))


def locate(manifest: manifest_io.Manifest, split: str, doc: int) -> tuple[manifest_io.ShardRef, int]:
    """The shard holding the split's `doc`-th document (0-based, in shard order) and its index there."""
    first = 0
    for ref in manifest.shards(split):
        n = ref.entry.documents
        if doc < first + n:
            return ref, doc - first
        first += n
    raise IndexError(f"{manifest.path}: split {split!r} has {first} documents; --doc must be below that")


def inspect_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="tokenmill inspect", description="Decode one document of a manifest back to text, with its origin."
    )
    parser.add_argument("manifest", type=Path, help="a build's manifest.json, or the output folder holding it")
    parser.add_argument(
        "--split", default="train", help="the split to read the document from: train or validation (default train)"
    )
    parser.add_argument(
        "--doc", type=int, default=0, help="document number within the split, 0-based, in shard order (default 0)"
    )
    parser.add_argument("--tokens", action="store_true", help="also print the document's token ids")
    args = parser.parse_args(argv)
    if args.doc < 0:
        parser.error(f"--doc {args.doc}: documents are numbered from 0")
    from stages.tokenize import Tokenizer

    try:
        manifest = manifest_io.load(args.manifest)
        ref, i = locate(manifest, args.split, args.doc)
    except (manifest_io.ManifestError, IndexError) as e:
        print(f"tokenmill inspect: {e}", file=sys.stderr)
        return 2
    try:
        index, shard_tokens = read_shard(ref.bin_path, ref.idx_path)
        start, end = index.doc_span(i)
        tokens = np.asarray(shard_tokens[start:end])
    except (ShardFormatError, OSError, ValueError) as e:  # a truncated or overwritten shard, a file gone missing
        print(f"tokenmill inspect: {e}; `tokenmill verify MANIFEST` checks every shard", file=sys.stderr)
        return 2
    tokenizer = Tokenizer.from_bytes(
        manifest.tokenizer_path().read_bytes(), manifest.tokenizer.add_bos, manifest.tokenizer.add_eos
    )
    origin = origin_of(manifest, int(index.origins[i]))
    print(f"# {args.split} document {args.doc}: {ref.entry.bin} document {i}, {end - start} tokens")
    print(f"# from {origin}")
    if args.tokens:
        print("# tokens:", " ".join(map(str, tokens.tolist())))
    print(tokenizer.decode(tokens))
    return 0
