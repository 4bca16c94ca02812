"""A source config for the filter tests: a JSONL web source with the filters under test."""

from __future__ import annotations

from stages.fetch import SourceConfig


def source(filters: dict, **fields) -> SourceConfig:
    return SourceConfig(name="web", kind="jsonl", root="/data", train=["*.jsonl.zst"], filters=filters, **fields)
