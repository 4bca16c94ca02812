"""Mix + shard planning: which documents go into which shard, in which order.

Each source's documents are put in a seeded random order; the policy decides how many tokens each source
contributes (`natural`: all; `downsample`: the richer sources are cut to the target ratio; `upsample`: the poorer
sources are repeated, a fresh shuffle per epoch). Sources are then interleaved by "virtual time": a document
is placed at (tokens of its source before it + half its length) / its source's share, so every prefix of the
stream, and so every shard, holds each source's share to within about one document.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from stages.config import ConfigError

MIX_POLICIES = ("natural", "downsample", "upsample")



@dataclass(kw_only=True, slots=True)
class MixConfig:
    policy: str = "natural"
    shard_tokens: int = 50_000_000  # tokens per shard (the last shard of a split holds the rest)
    seed: int = 1234

    def __post_init__(self) -> None:
        if self.policy not in MIX_POLICIES:
            raise ConfigError("policy", f"{self.policy!r} is not one of {', '.join(MIX_POLICIES)}")
        if self.shard_tokens < 1:
            raise ConfigError("shard_tokens", "must be positive")


@dataclass(slots=True)
class SourceDocs:
    """One source's documents of one split, in canonical order."""

    source_id: int
    doc_keys: np.ndarray  # uint64 global_doc_key
    lengths: np.ndarray  # int64 tokens per document


@dataclass(slots=True)
class Take:
    """What the policy takes from one source: document positions into SourceDocs, in stream order."""

    source_id: int
    positions: np.ndarray  # int64
    epochs: float


@dataclass(slots=True)
class Plan:
    source_ids: np.ndarray  # uint16, one per document of the mixed stream
    positions: np.ndarray  # int64, position in that source's SourceDocs
    lengths: np.ndarray  # int64 tokens
    shard_starts: np.ndarray  # int64 stream index where each shard starts
    epochs: dict[int, float]

    def shard_slices(self) -> list[slice]:
        ends = list(self.shard_starts[1:]) + [len(self.lengths)]
        return [slice(int(s), int(e)) for s, e in zip(self.shard_starts, ends)]


def _seeded_order(n: int, seed: int, source_id: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, source_id, epoch]).permutation(n)


def _take_tokens(docs: SourceDocs, tokens: float, seed: int) -> Take:
    """Whole shuffled passes, then a shuffled prefix, until `tokens` are reached (at least one document)."""
    total = int(docs.lengths.sum())
    if total == 0 or tokens <= 0:
        return Take(docs.source_id, np.zeros(0, np.int64), 0.0)
    passes, epoch = [], 0
    remaining = tokens
    while remaining >= total:
        passes.append(_seeded_order(len(docs.lengths), seed, docs.source_id, epoch))
        remaining -= total
        epoch += 1
    if remaining > 0:
        order = _seeded_order(len(docs.lengths), seed, docs.source_id, epoch)
        cumulative = np.cumsum(docs.lengths[order])
        count = int(np.searchsorted(cumulative, remaining, side="left")) + 1
        passes.append(order[: min(count, len(order))])
    positions = np.concatenate(passes)
    return Take(docs.source_id, positions, float(docs.lengths[positions].sum()) / total)


def choose(sources: list[SourceDocs], weights: dict[int, float], policy: str, seed: int) -> list[Take]:
    totals = {s.source_id: float(s.lengths.sum()) for s in sources}
    share = {i: w / sum(weights.values()) for i, w in weights.items()}
    present = [s for s in sources if totals[s.source_id] > 0]
    if policy == "natural" or not present:
        return [_take_tokens(s, totals[s.source_id], seed) for s in sources]
    scale = [totals[s.source_id] / share[s.source_id] for s in present]
    stream_tokens = min(scale) if policy == "downsample" else max(scale)
    return [_take_tokens(s, stream_tokens * share[s.source_id], seed) for s in sources]


def interleave(sources: list[SourceDocs], takes: list[Take], shard_tokens: int) -> Plan:
    by_id = {s.source_id: s for s in sources}
    taken = sum(float(by_id[t.source_id].lengths[t.positions].sum()) for t in takes)
    parts = []
    for t in takes:
        lengths = by_id[t.source_id].lengths[t.positions]
        share = float(lengths.sum()) / taken if taken else 0.0
        before = np.cumsum(lengths) - lengths
        when = (before + lengths / 2) / share if share else np.zeros(len(lengths))
        parts.append((when, np.full(len(lengths), t.source_id, np.uint16), t.positions, lengths))
    when, source_ids, positions, lengths = (np.concatenate(x) if parts else np.zeros(0) for x in zip(*parts))
    order = np.lexsort((source_ids, when))  # ties broken by source id: deterministic
    lengths = lengths[order].astype(np.int64)
    return Plan(
        source_ids=source_ids[order].astype(np.uint16),
        positions=positions[order].astype(np.int64),
        lengths=lengths,
        shard_starts=_shard_starts(lengths, shard_tokens),
        epochs={t.source_id: t.epochs for t in takes},
    )


def _shard_starts(lengths: np.ndarray, shard_tokens: int) -> np.ndarray:
    """Cut before the document that would cross each multiple of shard_tokens; no empty shards."""
    if len(lengths) == 0:
        return np.zeros(0, np.int64)
    before = np.cumsum(lengths) - lengths
    starts = np.unique(np.searchsorted(before, np.arange(0, before[-1] + 1, shard_tokens), side="left"))
    return starts[starts < len(lengths)].astype(np.int64)


def plan_split(sources: list[SourceDocs], weights: dict[int, float], policy: str, seed: int, shard_tokens: int) -> Plan:
    return interleave(sources, choose(sources, weights, policy, seed), shard_tokens)
