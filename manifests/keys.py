"""A document's origin key: which input file (its position in the manifest's `inputs`) and which line or row.

One uint64 per document: the input's index in the high 32 bits, the line (JSONL, 1-based) or row (parquet,
0-based) in the low 32 bits. Keys order documents canonically (validation inputs first, then training, each
in listing order), which is what makes dedupe's survivor choice (the smallest key) deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from manifests.manifest import Manifest

_ORDINAL_BITS = 32
_ORDINAL_MASK = (1 << _ORDINAL_BITS) - 1
# how a source kind counts its documents
_LOCATION_WORD = {"jsonl": "line", "parquet": "row"}


def doc_key(file_index: int, ordinal: int) -> int:
    return (file_index << _ORDINAL_BITS) | ordinal


def doc_keys(file_index: int | np.ndarray, ordinals: np.ndarray | int) -> np.ndarray:
    """`doc_key` for many documents (of one input file, or each of its own), as uint64."""
    return (np.asarray(file_index, np.uint64) << np.uint64(_ORDINAL_BITS)) | np.asarray(ordinals, np.uint64)


def file_indices(keys: np.ndarray) -> np.ndarray:
    """The input file index of each key, as uint64."""
    return np.asarray(keys, np.uint64) >> np.uint64(_ORDINAL_BITS)


def ordinals(keys: np.ndarray) -> np.ndarray:
    """The line or row of each key, as uint64."""
    return np.asarray(keys, np.uint64) & np.uint64(_ORDINAL_MASK)


def file_starts(files: int) -> np.ndarray:
    """The smallest key of each of `files` input files, and one past the last: in a sorted array of keys,
    `np.searchsorted(keys, file_starts(files))` gives where each file's keys begin (and the end)."""
    return np.arange(files + 1, dtype=np.uint64) << np.uint64(_ORDINAL_BITS)


def split_key(key: int) -> tuple[int, int]:
    """(input file index, line or row) of a key."""
    key = int(key)
    return key >> _ORDINAL_BITS, key & _ORDINAL_MASK


@dataclass(frozen=True, slots=True)
class Origin:
    source: str
    path: str  # relative to the source's root, as listed in the manifest's `inputs`
    location: str  # "line 17" or "row 3"

    def __str__(self) -> str:
        return f"{self.source}: {self.path} {self.location}"


def origin_of(manifest: Manifest, key: int) -> Origin:
    """Where the document with origin `key` came from, read from a manifest's `inputs` and recipe."""
    file_index, ordinal = split_key(key)
    entry = manifest.inputs[file_index]
    kind = next(s["kind"] for s in manifest.recipe["sources"] if s["name"] == entry.source)
    return Origin(entry.source, entry.path, f"{_LOCATION_WORD[kind]} {ordinal}")
