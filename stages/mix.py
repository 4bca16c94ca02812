"""Mix + shard planning, group by group: no step sees more than one mix group's documents.

A split's documents of each source form a stream in canonical order (after dedupe). The build cuts every
source's stream into the same number G of token ranges (`slice_streams`) and gives mix group g range g of every
source, so each group holds the sources in the proportion of the whole split, whatever the size of their files.

The policy is decided once per split from the per-source token totals (`repeat_factors`): `natural` takes
everything once; `downsample` cuts the richer sources to the target ratio (factor < 1); `upsample` repeats the
poorer ones (factor > 1). A group takes factor x its own tokens of each source: whole passes over its documents,
then a prefix, each pass in a seeded hash order of the documents' keys (a document's chance of being taken
depends on its key, not on how the corpus was grouped), so the split's totals are exact to one document per
group. Sources are then interleaved by "virtual time": a document is placed at (tokens of its source before it
+ half its length) / its source's share, so every prefix of the group's stream, and so every shard, holds each
source's share to within about one document. The group's stream is cut into its planned number of shards of
near-equal tokens (`MixConfig.shard_tokens` at most, give or take a document).

Streams are per *domain*: a source's subset or a named group of subsets (`DomainConfig`). A recipe without
`domains` has one domain per source (all its subsets, the source's weight, id = source id), so everything above
reads "source" for it and its shards are what they always were. With `MixConfig.budget_tokens` the train split
takes exactly that many tokens in the weights' ratio (`budget_factors`: a proxy corpus for a mixture sweep, cut
from the processed corpus), and the validation split is taken whole (`natural`), the same for every mixture.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import xxhash

from manifests.config import ConfigError
from manifests.hashing import splitmix64

MIX_POLICIES = ("natural", "downsample", "upsample")


@dataclass(kw_only=True, slots=True)
class MixConfig:
    policy: str = "natural"
    shard_tokens: int = 50_000_000  # at most this many tokens per shard, give or take a document
    shards_per_group: int = (
        8  # a mix group (one task) writes this many shards: its memory holds one group's document table
    )
    seed: int = 1234
    budget_tokens: int = 0  # > 0: the train split takes exactly this many tokens in the weights' ratio (proxy corpora)

    def __post_init__(self) -> None:
        if self.budget_tokens < 0:
            raise ConfigError(
                "budget_tokens", "must be 0 (no budget: the policy decides) or a positive number of tokens"
            )
        if self.policy not in MIX_POLICIES:
            raise ConfigError("policy", f"{self.policy!r} is not one of {', '.join(MIX_POLICIES)}")
        if self.shard_tokens < 1:
            raise ConfigError("shard_tokens", "must be positive")
        if self.shards_per_group < 1:
            raise ConfigError("shards_per_group", "must be at least 1")


@dataclass(kw_only=True, slots=True)
class DomainConfig:
    """A recipe's `domains:` entry: some subsets of one source (`subsets: []`, the default, takes the source's
    subsets that no other domain names), mixed at `weight` like a source. A weight may be 0 (the domain is left
    out of the shards); the weights together must be positive."""

    name: str
    source: str
    subsets: list[str] = field(default_factory=list)
    weight: float = 1.0

    def __post_init__(self) -> None:
        if not self.name or not self.name.replace("_", "").replace("-", "").isalnum():
            raise ConfigError("name", f"{self.name!r}: use letters, digits, '-' and '_'")
        if isinstance(self.weight, bool) or not isinstance(self.weight, (int, float)) or not self.weight >= 0:
            raise ConfigError(
                "weight", f"{self.weight!r} is not a number >= 0; weights are the target token ratio, e.g. 7 and 3"
            )


@dataclass(frozen=True, slots=True)
class Domain:
    """One stream of the mix: its id (in the shards' index, where a build without domains writes the source id),
    its source and the subsets it takes (None: all the source's subsets no other domain of it names)."""

    id: int
    name: str
    source: str
    subsets: tuple[str, ...] | None
    weight: float


def resolve_domains(sources: list[tuple[str, float]], domains: list[DomainConfig]) -> list[Domain]:
    """The mix's streams: one per source (its weight, all its subsets) when `domains` is empty, else the domains
    in the order given. Raises ConfigError naming the domain setting that cannot work."""
    if not domains:
        return [Domain(i, name, name, None, float(weight)) for i, (name, weight) in enumerate(sources)]
    names = [d.name for d in domains]
    source_names = [name for name, _ in sources]
    named: dict[tuple[str, str], str] = {}
    rest: dict[str, str] = {}
    for d in domains:
        if names.count(d.name) > 1:
            raise ConfigError(f"{d.name}.name", "domain names must be unique")
        if d.source not in source_names:
            raise ConfigError(
                f"{d.name}.source", f"{d.source!r} is not a source of the recipe; sources: {', '.join(source_names)}"
            )
        if not d.subsets and d.source in rest:
            raise ConfigError(
                f"{d.name}.subsets",
                f"domain {rest[d.source]!r} already takes the rest of {d.source}; name this one's subsets",
            )
        if not d.subsets:
            rest[d.source] = d.name
        for subset in d.subsets:
            if (d.source, subset) in named:
                raise ConfigError(
                    f"{d.name}.subsets", f"{d.source}/{subset} is already in domain {named[d.source, subset]!r}"
                )
            named[d.source, subset] = d.name
    uncovered = [name for name in source_names if name not in {d.source for d in domains}]
    if uncovered:
        raise ConfigError(
            "domains",
            f"source {uncovered[0]!r} is in no domain; add "
            f"`- {{name: {uncovered[0]}, source: {uncovered[0]}}}` (all its subsets)",
        )
    if not sum(d.weight for d in domains) > 0:
        raise ConfigError("domains", "the domains' weights sum to 0; give at least one a positive weight")
    return [Domain(i, d.name, d.source, tuple(d.subsets) or None, float(d.weight)) for i, d in enumerate(domains)]


def subset_domains(domains: list[Domain], source: str, subsets: list[str]) -> list[int | None]:
    """For one file of `source` whose documents' subset column indexes `subsets`: each subset's domain id, or
    None for a subset that no domain takes."""
    mine = [d for d in domains if d.source == source]
    rest = next((d.id for d in mine if d.subsets is None), None)
    return [next((d.id for d in mine if d.subsets and name in d.subsets), rest) for name in subsets]


def budget_factors(totals: dict[int, int], weights: dict[int, float], budget: int) -> dict[int, float]:
    """Per domain: the factor that takes `budget` x its share of tokens (> 1 repeats it; 0 for a domain with
    no tokens or no weight)."""
    total_weight = sum(weights[d] for d in totals)
    return {d: budget * weights[d] / total_weight / totals[d] if totals[d] else 0.0 for d in totals}


@dataclass(slots=True)
class SourceDocs:
    """One source's documents of one mix group, in canonical order."""

    source_id: int
    doc_keys: np.ndarray  # uint64 (`manifests.keys`)
    lengths: np.ndarray  # int64 tokens per document


@dataclass(slots=True)
class Take:
    """What the policy takes from one source: document positions into SourceDocs, in stream order."""

    source_id: int
    positions: np.ndarray  # int64


@dataclass(slots=True)
class Plan:
    source_ids: np.ndarray  # uint16, one per document of the group's mixed stream
    positions: np.ndarray  # int64, position in that source's SourceDocs
    lengths: np.ndarray  # int64 tokens
    shard_starts: np.ndarray  # int64 stream index where each shard starts

    def shard_slices(self) -> list[slice]:
        ends = list(self.shard_starts[1:]) + [len(self.lengths)]
        return [slice(int(s), int(e)) for s, e in zip(self.shard_starts, ends)]


def repeat_factors(totals: dict[int, int], weights: dict[int, float], policy: str) -> dict[int, float]:
    """Per source: the tokens the split takes over the tokens it has (1 natural, < 1 cut, > 1 repeated)."""
    share = {sid: weights[sid] / sum(weights[s] for s in totals) for sid in totals}
    present = [sid for sid in totals if totals[sid] > 0 and share[sid] > 0]  # a 0-weight domain takes nothing
    if policy == "natural" or not present:
        return {sid: 1.0 for sid in totals}
    scale = [totals[sid] / share[sid] for sid in present]
    stream_tokens = min(scale) if policy == "downsample" else max(scale)
    return {sid: stream_tokens * share[sid] / totals[sid] if totals[sid] else 0.0 for sid in totals}


def group_count(planned_tokens: float, shard_tokens: int, shards_per_group: int) -> int:
    """Groups of at most `shards_per_group` shards' worth of tokens."""
    return max(1, math.ceil(planned_tokens / (shard_tokens * shards_per_group)))


def shard_count(planned_tokens: float, shard_tokens: int) -> int:
    return max(1, math.ceil(planned_tokens / shard_tokens))


@dataclass(frozen=True, slots=True)
class StreamSlice:
    """Mix group g's part of one source's stream: the documents whose token midpoint lies in [lo, hi), found in
    `files` (file index, tokens of the stream before that file; the files that overlap the range)."""

    source_id: int
    lo: float
    hi: float
    files: list[tuple[int, int]]

    @property
    def tokens(self) -> float:
        return self.hi - self.lo


def slice_streams(streams: dict[int, tuple[np.ndarray, np.ndarray]], n_groups: int) -> list[list[StreamSlice]]:
    """`streams`: per source, (file indices in canonical order, tokens of this split in each). Returns per group
    one StreamSlice per source with tokens: group g gets [g/G, (g+1)/G) of every source's tokens."""
    groups: list[list[StreamSlice]] = [[] for _ in range(n_groups)]
    for sid, (files, tokens) in sorted(streams.items()):
        before = np.concatenate(([0], np.cumsum(tokens, dtype=np.int64)))
        total = int(before[-1])
        if total == 0:
            continue
        for g in range(n_groups):
            lo, hi = total * g / n_groups, total * (g + 1) / n_groups
            first = int(np.searchsorted(before[1:], lo, side="right"))  # first file ending after lo
            last = int(np.searchsorted(before[:-1], hi, side="left"))  # past the last file starting before hi
            overlapping = [(int(files[i]), int(before[i])) for i in range(first, last) if tokens[i] > 0]
            groups[g].append(StreamSlice(sid, lo, hi, overlapping))
    return groups


def in_slice(offset: int, lengths: np.ndarray, piece: StreamSlice) -> np.ndarray:
    """Which of one file's documents (its stream order, `offset` tokens of the stream before it) belong to the
    slice: their token midpoint lies in [lo, hi). Every document belongs to exactly one group."""
    mid = offset + np.cumsum(lengths) - lengths / 2
    return (mid >= piece.lo) & (mid < piece.hi)


def hash_order(keys: np.ndarray, seed: int, source_id: int, epoch: int) -> np.ndarray:
    """Positions of `keys` sorted by a seeded 64-bit hash of each key (ties by key): a shuffle that depends on
    the keys alone, not on which other documents are present."""
    salt = np.uint64(xxhash.xxh64_intdigest(f"{seed}:{source_id}:{epoch}".encode()))
    return np.lexsort((keys, splitmix64(np.asarray(keys, np.uint64) ^ salt)))


def take_tokens(docs: SourceDocs, tokens: float, seed: int) -> Take:
    """Whole passes in hash order, then a prefix of the next, until `tokens` are reached (the document that
    crosses the target is taken: at least one document when the target is positive)."""
    total = int(docs.lengths.sum())
    if total == 0 or tokens <= 0:
        return Take(docs.source_id, np.zeros(0, np.int64))
    passes, epoch, remaining = [], 0, tokens
    while remaining >= total:
        passes.append(hash_order(docs.doc_keys, seed, docs.source_id, epoch))
        remaining -= total
        epoch += 1
    if remaining > 0:
        order = hash_order(docs.doc_keys, seed, docs.source_id, epoch)
        count = int(np.searchsorted(np.cumsum(docs.lengths[order]), remaining, side="left")) + 1
        passes.append(order[: min(count, len(order))])
    return Take(docs.source_id, np.concatenate(passes).astype(np.int64))


def interleave(sources: list[SourceDocs], takes: list[Take], n_shards: int) -> Plan:
    by_id = {s.source_id: s for s in sources}
    taken = sum(float(by_id[t.source_id].lengths[t.positions].sum()) for t in takes)
    parts = []
    for t in takes:
        lengths = by_id[t.source_id].lengths[t.positions]
        share = float(lengths.sum()) / taken if taken else 0.0
        before = np.cumsum(lengths) - lengths
        when = (before + lengths / 2) / share if share else np.zeros(len(lengths))
        parts.append((when, np.full(len(lengths), t.source_id, np.uint16), t.positions, lengths))
    when, source_ids, positions, lengths = (np.concatenate(x) for x in zip(*parts)) if parts else (np.zeros(0),) * 4
    order = np.lexsort((source_ids, when))  # ties broken by source id: deterministic
    lengths = lengths[order].astype(np.int64)
    return Plan(
        source_ids=source_ids[order].astype(np.uint16),
        positions=positions[order].astype(np.int64),
        lengths=lengths,
        shard_starts=even_cuts(lengths, n_shards),
    )


def even_cuts(lengths: np.ndarray, n_shards: int) -> np.ndarray:
    """Starts of (at most) `n_shards` shards of near-equal tokens, cut at document boundaries; no empty shard."""
    if len(lengths) == 0:
        return np.zeros(0, np.int64)
    before = np.cumsum(lengths) - lengths
    total = int(before[-1] + lengths[-1])
    starts = np.unique(np.searchsorted(before, np.arange(n_shards) * total / n_shards, side="left"))
    return starts[starts < len(lengths)].astype(np.int64)


def plan_group(sources: list[SourceDocs], factors: dict[int, float], seed: int, n_shards: int) -> Plan:
    """The group's mixed stream: factor x its tokens of each source, interleaved, cut into `n_shards` shards."""
    takes = [take_tokens(s, factors[s.source_id] * float(s.lengths.sum()), seed) for s in sources]
    return interleave(sources, takes, n_shards)
