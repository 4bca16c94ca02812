"""The contract between `tokenmill build` and every reader of its output (trainer, verify, stats, stage-in).

One module per part of it, each the only owner of its fact:

- `manifests.shards`    the `.bin` / `.idx` shard format: the one writer and reader, memory-map, the token dtypes
- `manifests.keys`      a document's origin key (input file << 32 | line or row), one or many, and what it points to
- `manifests.manifest`  `manifest.json`: the typed `Manifest`, the schema (package data), the one loader (fsspec)
- `manifests.check`     one check of a shard (or any listed file) against its manifest entry
- `manifests.outputs`   the names of the files a build writes
- `manifests.documents` token documents -> shards + manifest, without Ray or a tokenizer

`manifests/recipes/` holds the shipped recipes, found by name from an installed wheel.
"""

from manifests.check import ShardProblem, check_file, check_shard
from manifests.keys import Origin, doc_key, origin_of, split_key
from manifests.manifest import FORMAT, FORMAT_VERSION, Manifest, ManifestError, ShardRef, load
from manifests.shards import ShardFormatError, ShardIndex, open_tokens, read_index

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "Manifest",
    "ManifestError",
    "Origin",
    "ShardFormatError",
    "ShardIndex",
    "ShardProblem",
    "ShardRef",
    "check_file",
    "check_shard",
    "doc_key",
    "load",
    "open_tokens",
    "origin_of",
    "read_index",
    "split_key",
]
