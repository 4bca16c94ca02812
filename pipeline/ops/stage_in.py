"""`tokenmill stage-in MANIFEST_URI LOCAL_DIR`: copy a build's shards to local disk for memory-mapped training.

Copies what training reads: every shard's `.bin` and `.idx`, the tokenizer copy (`tokenizer.path`) when the
manifest has one, and the manifest itself, byte for byte (its paths are relative, so nothing in it changes).
Files are copied in parallel threads, each to a temporary name, checked against the manifest's sha256 and
only then renamed; the manifest is written last, so a local manifest means a complete, verified copy.
Running it again resumes: files whose sha256 already matches are kept, the rest are copied.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import posixpath
import sys
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

import fsspec

from manifests.check import check_file
from manifests.manifest import Manifest, ManifestError, check_relative, parse, read_raw
from pipeline.cli import add_folder_argument, folder_argument

CHUNK_BYTES = 8 << 20


class StageInError(RuntimeError):
    pass


@dataclass(frozen=True, slots=True)
class ListedFile:
    """A file the manifest lists: its path relative to the manifest's folder and its checksum."""

    path: str
    sha256: str
    size: int | None  # None where the manifest gives no size (the tokenizer copy)


@dataclass(slots=True)
class StageInResult:
    manifest_path: Path
    copied: list[str] = field(default_factory=list)
    already_present: list[str] = field(default_factory=list)
    bytes_copied: int = 0


def listed_files(manifest: Manifest) -> list[ListedFile]:
    """Shards of every split, then the tokenizer copy. The manifest has been validated: shard paths are
    relative and stay inside its folder."""
    files = []
    for split in manifest.splits.values():
        for shard in split.shards:
            files.append(ListedFile(shard.bin, shard.bin_sha256, shard.bin_bytes))
            files.append(ListedFile(shard.idx, shard.idx_sha256, shard.idx_bytes))
    tokenizer = manifest.tokenizer
    if tokenizer.path:
        check_relative(tokenizer.path, "tokenizer.path")
        files.append(ListedFile(tokenizer.path, tokenizer.sha256, None))
    return files


def is_present(local: Path, listed: ListedFile) -> bool:
    return check_file(local, size=listed.size, sha256=listed.sha256) is None


def copy_verified(fs: fsspec.AbstractFileSystem, source: str, local: Path, listed: ListedFile) -> int:
    """Copy `source` to `local` through a temporary name, hashing on the way; refuse a checksum mismatch.
    Returns the bytes copied."""
    local.parent.mkdir(parents=True, exist_ok=True)
    partial = local.with_name(f".{local.name}.part")
    digest, size = hashlib.sha256(), 0
    try:
        with fs.open(source, "rb") as src, open(partial, "wb") as dst:
            while block := src.read(CHUNK_BYTES):
                digest.update(block)
                dst.write(block)
                size += len(block)
    except FileNotFoundError:
        partial.unlink(missing_ok=True)
        raise StageInError(
            f"{fs.unstrip_protocol(source)}: listed in the manifest but missing; the build's output is incomplete, "
            "rebuild it"
        ) from None
    if digest.hexdigest() != listed.sha256:
        partial.unlink()
        raise StageInError(
            f"{fs.unstrip_protocol(source)}: sha256 {digest.hexdigest()} ({size} bytes) differs from the manifest's "
            f"{listed.sha256}; the file is corrupt or was changed after the build: restore it or rebuild, then run "
            "stage-in again"
        )
    os.replace(partial, local)
    return size


def stage_file(fs: fsspec.AbstractFileSystem, source_dir: str, local_dir: Path, listed: ListedFile) -> int | None:
    """Copies one listed file unless it is already here intact; returns the bytes copied, or None if kept."""
    local = local_dir / listed.path
    if is_present(local, listed):
        return None
    return copy_verified(fs, posixpath.join(source_dir, listed.path), local, listed)


def _record(
    done: Future, listed: ListedFile, result: StageInResult, failures: list[str], log: Callable[[str], None]
) -> None:
    try:
        copied = done.result()
    except (StageInError, OSError) as e:
        failures.append(str(e))
        return
    if copied is None:
        result.already_present.append(listed.path)
        return
    result.copied.append(listed.path)
    result.bytes_copied += copied
    log(f"copied {listed.path} ({copied / 1e6:.1f} MB)")


def stage_in(manifest_url: str, local_dir: Path, threads: int = 8, log: Callable[[str], None] = print) -> StageInResult:
    """Copy and verify everything training reads from the build at `manifest_url` (a path or fsspec URL)
    into `local_dir`. Raises StageInError naming every file that could not be staged."""
    manifest_url, raw = read_raw(manifest_url)
    files = listed_files(parse(raw, manifest_url))
    fs, manifest_path = fsspec.core.url_to_fs(manifest_url)
    source_dir = posixpath.dirname(manifest_path)
    result = StageInResult(local_dir / posixpath.basename(manifest_path))
    if result.manifest_path.is_file() and result.manifest_path.read_bytes() != raw:
        result.manifest_path.unlink()  # another build's: no manifest here until this one's files are all in
    failures = []
    waiting = list(reversed(files))
    with ThreadPoolExecutor(max_workers=threads) as pool:
        # at most `threads` copies in flight: Ctrl-C stops after those, however far ahead the copiers could run
        running: dict[Future, ListedFile] = {}
        while waiting or running:
            while waiting and len(running) < threads:
                listed = waiting.pop()
                running[pool.submit(stage_file, fs, source_dir, local_dir, listed)] = listed
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for done in finished:
                _record(done, running.pop(done), result, failures, log)
    if failures:
        raise StageInError(
            f"{len(failures)} of {len(files)} files not staged from {manifest_url}:\n  " + "\n  ".join(sorted(failures))
        )
    partial = result.manifest_path.with_name(f".{result.manifest_path.name}.part")
    partial.write_bytes(raw)
    os.replace(partial, result.manifest_path)
    return result


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="tokenmill stage-in",
        description="Copy and verify a build's shards to local disk for training (parallel, resumable).",
    )
    parser.add_argument(
        "manifest",
        metavar="MANIFEST_URI",
        help="the build's manifest.json: a path or an fsspec URL (s3://, gs://, file://, ...)",
    )
    add_folder_argument(parser, "local_dir", "LOCAL_DIR", "local folder, e.g. on NVMe; created if missing")
    parser.add_argument("--threads", type=int, default=8, help="files copied at a time (default 8)")
    args = parser.parse_args(argv)
    args.local_dir = folder_argument(
        parser,
        args,
        "local_dir",
        "local folder",
        "tokenmill stage-in MANIFEST_URI --out LOCAL_DIR (or MANIFEST_URI LOCAL_DIR)",
    )
    if args.threads < 1:
        parser.error(f"--threads {args.threads}: give at least 1")
    try:
        result = stage_in(args.manifest, args.local_dir, args.threads)
    except ManifestError as e:  # nothing to copy from: a wrong argument
        print(f"tokenmill stage-in: {e}", file=sys.stderr)
        return 2
    except StageInError as e:  # files that failed their check
        print(f"tokenmill stage-in: {e}", file=sys.stderr)
        return 1
    print(
        f"staged {len(result.copied) + len(result.already_present)} files into {args.local_dir}: "
        f"{len(result.copied)} copied ({result.bytes_copied / 1e6:.1f} MB), {len(result.already_present)} already "
        "there and intact"
    )
    print(f"train with: tokenmill train --manifest {result.manifest_path} ...")
    return 0
