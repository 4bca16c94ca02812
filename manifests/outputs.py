"""The names of the files a build writes into its output folder, relative to it: every module, test and benchmark
that writes or reads one of them takes its name from here."""

from __future__ import annotations

MANIFEST = "manifest.json"  # written last: when it exists, the build is complete
BUILD_STATS = "build_stats.json"
QUARANTINE = "quarantine.jsonl"  # one JSON object per bad input record
BUILD_LOG = "build.log.jsonl"
DROPPED_SAMPLES = "dropped_samples.jsonl"  # a few filtered and duplicate documents, with their text, for the report
DECONTAMINATION = "decontamination.json"  # with eval sets: per set, every matched item and flagged document
TOKENIZER_MODEL = "tokenizer.model"  # a copy of the build's sentencepiece model
SHARDS_PREFIX = "shards-"  # OUT/shards-<mix key>/<split>/<split>-NNNNN.bin: one folder per mix of an output


def shards_folder(mix_key: str) -> str:
    """Where an output's shards of one mix go: a new mix never overwrites the files an earlier manifest lists."""
    return f"{SHARDS_PREFIX}{mix_key[:12]}"


def shard_stem(folder: str, split: str, number: int) -> str:
    """A shard's path without its .bin / .idx suffix, e.g. "shards-3f2a/train/train-00007"."""
    return f"{folder}/{split}/{split}-{number:05d}"
