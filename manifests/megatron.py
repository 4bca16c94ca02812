"""A manifest's shards as Megatron-LM's indexed dataset (`MMIDIDX`), for Megatron-LM, NeMo and nanotron, with no
token copied.

tokenmill's `.bin` already has Megatron's layout (headerless token ids, documents back to back); only the index
differs. Megatron opens PREFIX.idx and PREFIX.bin, and the shard's own PREFIX.idx is tokenmill's, so the export
is a prefix layout of its own: OUT/SPLIT/NAME.idx, Megatron's index converted from tokenmill's (one sequence per
document), and OUT/SPLIT/NAME.bin, a symbolic link to the manifest's shard. uint32 shards are declared int32:
Megatron has no uint32, and every id below 2^31 (any vocabulary up to 2G) has the same bytes in both.

OUT/SPLIT.data-path holds Megatron's `--data-path` blend for a split: "WEIGHT PREFIX" pairs, the weight being the
shard's tokens, so that Megatron samples each shard in proportion to its size, as tokenmill's reader does (the
build already mixed the sources into every shard).

The manifest stays the one source of truth: each shard is checked against its entry (sizes, the index's
sha256, counts) before its index is converted, and nothing here is read back by tokenmill.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np

from manifests.manifest import Manifest, ManifestError
from manifests.shards import read_index

MAGIC = b"MMIDIDX\x00\x00"
VERSION = 1
# Megatron's DType codes for the token dtypes a tokenmill shard holds (uint32 read as int32, see above).
_DTYPE_CODES = {"uint16": (8, np.dtype("<u2")), "uint32": (4, np.dtype("<i4"))}


def encode_index(dtype_name: str, doc_lengths: np.ndarray) -> bytes:
    """Megatron's `.idx` for documents of `doc_lengths` tokens stored back to back: header (magic, version,
    dtype code, sequence count, document-index count), then int32 sequence lengths, int64 byte offsets of each
    sequence, and int64 document indices (0, 1, ..., n: each document one sequence)."""
    code, dtype = _DTYPE_CODES[dtype_name]
    lengths = np.asarray(doc_lengths, dtype=np.int64)
    if len(lengths) and lengths.max() > np.iinfo(np.int32).max:
        raise ManifestError(f"a document of {lengths.max()} tokens: Megatron stores lengths as int32")
    pointers = np.concatenate(([0], np.cumsum(lengths[:-1]))) * dtype.itemsize if len(lengths) else lengths
    documents = np.arange(len(lengths) + 1, dtype=np.int64)
    header = MAGIC + struct.pack("<QBQQ", VERSION, code, len(lengths), len(documents))
    return b"".join(
        (header, lengths.astype("<i4").tobytes(), pointers.astype("<i8").tobytes(), documents.astype("<i8").tobytes())
    )


def export(manifest: Manifest, out: Path) -> dict[str, Path]:
    """Write the Megatron view of every split of `manifest` under `out`; returns each split's data-path file."""
    written = {}
    for split in manifest.splits:
        blend = []
        for shard in manifest.shards(split):
            problems = shard.check(checksums=False)
            if problems:
                raise ManifestError(
                    f"{problems[0]} (manifest {manifest.path}); re-copy the shard (`tokenmill stage-in`) or rebuild"
                )
            prefix = (out / shard.entry.bin).with_suffix("")
            prefix.parent.mkdir(parents=True, exist_ok=True)
            index = read_index(shard.idx_path)
            _replace(prefix.with_name(prefix.name + ".idx"), data=encode_index(manifest.dtype, index.doc_lengths()))
            _replace(prefix.with_name(prefix.name + ".bin"), link_to=shard.bin_path.resolve())
            blend.append(f"{shard.entry.tokens} {prefix.resolve()}")
        written[split] = out / f"{split}.data-path"
        _replace(written[split], data=(" ".join(blend) + "\n").encode())
    return written


def _replace(path: Path, *, data: bytes = b"", link_to: Path | None = None) -> None:
    """Make `path` a file holding `data`, or a link to `link_to`, in one step (a temporary name beside it, then
    a rename): a rerun over an earlier export never leaves a half-written index or a missing link."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    if link_to is None:
        tmp.write_bytes(data)
    else:
        tmp.symlink_to(link_to)
    os.replace(tmp, path)
