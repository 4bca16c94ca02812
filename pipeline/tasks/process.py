"""One function per kind of task: read inputs from the work dir, call the stages, write outputs + done record.

Nothing here knows Ray: `pipeline.work.runner` decides where these run. Each task writes into the folder it is given
(named by `pipeline.build.registry`), rewrites all of its outputs, marks itself done last and returns exactly
that done record, so a retried, relaunched or re-used task gives the same bytes and the same record.

A process output holds nothing that depends on its file's position in the listing (documents are named by
their line or row): it stays valid when other input files come or go. Later stages add the file's position
(`manifests.keys.doc_keys`) when they read it.
"""

from __future__ import annotations

import io
import json
import time
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import xxhash

from manifests.keys import doc_keys
from pipeline.build.inputs import SPLITS, InputFile
from pipeline.tasks.decontaminate import Matcher
from pipeline.work.store import Store
from stages import dedupe as dedupe_stage
from stages.decontaminate import Index
from stages.dedupe import DedupeConfig
from stages.document import BadRecord, DocBatch
from stages.fetch import SourceConfig
from stages.filter import apply_filters, build_filters
from stages.tokenize import Tokenizer

FILE_SUBSET = "(file)"  # bad input that belongs to no document, e.g. a file that is not parquet
SAMPLE_CHARS = 300  # of every document dropped_samples.jsonl shows (`pipeline.tasks.samples`)


# the files of a process task's folder
TOKENS, DOCS, KEYS, QUARANTINE = "tokens.bin", "docs.npz", "keys.bin", "quarantine.jsonl"
SIGNATURES = "sig.bin"  # when dedupe.minhash.verify: `stages.dedupe.pack_signatures` of the kept documents


@dataclass(frozen=True, slots=True)
class Processed:
    """One input file's process output as the later stages see it: its position in this build's listing, its
    folder, and the few facts of its done record that planning needs."""

    file_index: int
    folder: str
    source: str
    documents: int
    subsets: list[str]  # subset names, indexed by docs.npz's `subset` column

    def doc_keys(self, ordinals: np.ndarray) -> np.ndarray:
        return doc_keys(self.file_index, ordinals)

    def read_keys(self, work: Store, partitions: int) -> tuple[np.ndarray, np.ndarray]:
        """(row offsets of each partition, rows (slot, key, doc key)) of this file's dedupe keys."""
        raw = np.frombuffer(work.read_bytes(f"{self.folder}/{KEYS}"), np.uint64)
        offsets, rows = raw[: partitions + 1].astype(np.int64), raw[partitions + 1 :].reshape(-1, 3).copy()
        rows[:, 2] = self.doc_keys(rows[:, 2])
        return offsets, rows


@dataclass(slots=True)
class SubsetFunnel:
    documents_read: int = 0
    bytes_read: int = 0
    chars_read: int = 0
    dropped: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    documents_passed: int = 0  # after filters, before dedupe

    def as_json(self) -> dict:
        return {
            "documents_read": self.documents_read,
            "bytes_read": self.bytes_read,
            "chars_read": self.chars_read,
            "documents_passed": self.documents_passed,
            "dropped": dict(sorted(self.dropped.items())),
        }


def _split_of(batch: DocBatch, source: SourceConfig, file_split: str) -> np.ndarray:
    """0 = train, 1 = validation. With validation_fraction, a stable hash of the document id decides."""
    if not source.validation_fraction:
        return np.full(len(batch), SPLITS.index(file_split), np.uint8)
    cut = int(source.validation_fraction * 2**64)
    return np.fromiter(
        (xxhash.xxh3_64_intdigest(batch.doc_id(i).encode()) < cut for i in range(len(batch))), np.uint8, len(batch)
    )


@dataclass(frozen=True, slots=True)
class FilterSample:
    """The first document a filter removed from a file, for the report's examples."""

    subset: str
    doc: str  # `DocBatch.doc_id`
    text: str  # its first SAMPLE_CHARS characters


@dataclass(slots=True)
class _FileOutputs:
    """What one input file contributes, accumulated batch by batch."""

    tokens: list[np.ndarray] = field(default_factory=list)
    columns: dict[str, list[np.ndarray]] = field(default_factory=lambda: defaultdict(list))
    keys: list[np.ndarray] = field(default_factory=list)
    signatures: list[np.ndarray] = field(default_factory=list)
    quarantine: list[str] = field(default_factory=list)
    funnels: dict[str, SubsetFunnel] = field(default_factory=lambda: defaultdict(SubsetFunnel))
    subsets: dict[str, int] = field(default_factory=dict)
    dropped_samples: dict[str, FilterSample] = field(default_factory=dict)  # per filter reason
    matcher: Matcher | None = None  # when the recipe decontaminates: matches each batch against the eval sets

    def subset_id(self, name: str) -> int:
        return self.subsets.setdefault(name, len(self.subsets))

    def add_bad(self, bad: BadRecord, subset: str) -> None:
        self.quarantine.append(json.dumps(bad.as_json(), sort_keys=True))
        self.funnels[subset].dropped[bad.reason] += 1


def _utf8_lengths(texts: list[str]) -> list[int]:
    # An ASCII text (nearly every one) is its own UTF-8: its length is its byte count, no encoded copy needed.
    # "surrogatepass": a lone surrogate (legal in a JSON escape) counts as its 3 bytes instead of failing.
    return [len(t) if t.isascii() else len(t.encode("utf-8", "surrogatepass")) for t in texts]


def _count_read(batch: DocBatch, out: _FileOutputs) -> None:
    for subset, chars, size in zip(batch.subsets, map(len, batch.texts), _utf8_lengths(batch.texts)):
        funnel = out.funnels[subset]
        funnel.documents_read += 1
        funnel.chars_read += chars
        funnel.bytes_read += size


def _process_batch(
    batch: DocBatch, task: InputFile, filters, tokenizer: Tokenizer, dedupe: DedupeConfig, out: _FileOutputs
) -> None:
    _count_read(batch, out)
    kept, dropped = apply_filters(batch, filters)
    for index, reason in dropped:
        out.funnels[batch.subsets[index]].dropped[reason] += 1
        if reason not in out.dropped_samples:
            out.dropped_samples[reason] = FilterSample(
                batch.subsets[index], batch.doc_id(index), batch.texts[index][:SAMPLE_CHARS]
            )
    if out.matcher is not None:
        kept = _without(kept, out.matcher.on_words(kept), out)
    if not len(kept):
        return
    tokens, lengths = tokenizer.encode(kept.texts)
    if out.matcher is not None and out.matcher.uses_tokens:
        ends = np.cumsum(lengths)
        drop = out.matcher.on_tokens(kept, np.split(tokens, ends[:-1]), tokenizer)
        if drop:
            keep = np.ones(len(kept), bool)
            keep[list(drop)] = False
            tokens, lengths = tokens[np.repeat(keep, lengths)], lengths[keep]
            kept = _without(kept, drop, out)
            if not len(kept):
                return
    for subset in kept.subsets:
        out.funnels[subset].documents_passed += 1
    ordinals = np.asarray(kept.ordinals, np.uint64)
    out.tokens.append(tokens)
    out.columns["ordinal"].append(ordinals)
    out.columns["subset"].append(np.fromiter((out.subset_id(s) for s in kept.subsets), np.uint16, len(kept)))
    out.columns["split"].append(_split_of(kept, task.source, task.split))
    out.columns["chars"].append(np.fromiter(map(len, kept.texts), np.int64, len(kept)))
    out.columns["length"].append(lengths)
    keys, signatures = dedupe_stage.document_keys_and_signatures(kept.texts, dedupe)
    out.keys.append(keys)
    if signatures is not None:
        out.signatures.append(signatures)


def _without(batch: DocBatch, drop: dict[int, str], out: _FileOutputs) -> DocBatch:
    """The batch without the documents in `drop` (position -> reason), each counted in its subset's funnel."""
    for index, why in drop.items():
        out.funnels[batch.subsets[index]].dropped[why] += 1
    return batch.select([i not in drop for i in range(len(batch))]) if drop else batch


def process_file(
    folder: str,
    task: InputFile,
    work: Store,
    tokenizer: Tokenizer,
    dedupe: DedupeConfig,
    batch_documents: int,
    index: Index | None = None,
) -> dict:
    """fetch -> filter -> [decontaminate] -> dedupe keys -> tokenize for one input file, fused: the text is parsed
    once. `index`: the eval sets' n-grams (`pipeline.tasks.decontaminate`), when the recipe has them."""
    started = time.perf_counter()
    filters = build_filters(task.source)
    out = _FileOutputs(matcher=Matcher(index) if index is not None else None)
    # A bad JSONL line has no readable subset; a bad parquet row still has its language folder.
    bad_subset = (
        task.rel_path.split("/")[0] if task.source.kind == "parquet" and not task.source.subset_field else FILE_SUBSET
    )
    for item in task.documents(batch_documents):
        if isinstance(item, BadRecord):
            out.add_bad(item, bad_subset)
        else:
            _process_batch(item, task, filters, tokenizer, dedupe, out)
    return _write_file_outputs(task, work, folder, out, dedupe, tokenizer.dtype, time.perf_counter() - started)


def _concat(parts: list[np.ndarray], dtype) -> np.ndarray:
    return np.concatenate(parts).astype(dtype, copy=False) if parts else np.zeros(0, dtype)


def _write_file_outputs(
    task: InputFile, work: Store, name: str, out: _FileOutputs, dedupe: DedupeConfig, dtype, seconds: float
) -> dict:
    tokens = _concat(out.tokens, dtype)
    columns = {k: np.concatenate(v) for k, v in out.columns.items()}
    n_slots = len(dedupe_stage.key_slots(dedupe))
    keys = _concat(out.keys, np.uint64).reshape(-1, n_slots) if n_slots else np.zeros((0, 0), np.uint64)
    ordinals = columns.get("ordinal", np.zeros(0, np.uint64))
    # rows (slot, key, ordinal): the dedupe task puts the file's position into the ordinal's high half
    partitions = dedupe_stage.partition_rows(keys, ordinals, dedupe.partitions) if n_slots else []
    # keys.bin: the partitions' row offsets, then the rows, so one read gives a later task all it needs
    offsets = np.cumsum([0] + [len(p) for p in partitions], dtype=np.uint64)
    buffer = io.BytesIO()
    np.savez(buffer, **columns) if columns else np.savez(buffer, ordinal=ordinals)
    work.write_bytes(f"{name}/{TOKENS}", tokens.tobytes())
    work.write_bytes(f"{name}/{DOCS}", buffer.getvalue())
    work.write_bytes(
        f"{name}/{KEYS}",
        offsets.tobytes() + b"".join(np.ascontiguousarray(p, dtype=np.uint64).tobytes() for p in partitions),
    )
    work.write_bytes(f"{name}/{QUARANTINE}", "".join(line + "\n" for line in out.quarantine).encode())
    if dedupe.minhash.verify:
        signatures = (
            np.concatenate(out.signatures) if out.signatures else np.zeros((0, dedupe.minhash.permutations), np.uint16)
        )
        work.write_bytes(f"{name}/{SIGNATURES}", dedupe_stage.pack_signatures(ordinals, signatures))
    record = {
        "source": task.source.name,
        "path": task.rel_path,
        "dtype": str(tokens.dtype),
        "documents": int(len(ordinals)),
        "tokens": int(len(tokens)),
        "subsets": list(out.subsets),
        "funnels": {s: f.as_json() for s, f in sorted(out.funnels.items())},
        "quarantined": len(out.quarantine),
        "seconds": seconds,
    }
    if out.matcher is not None:
        record["decontamination"] = out.matcher.as_json()
    for reason, sample in out.dropped_samples.items():  # in the funnels: the driver keeps those of every file
        record["funnels"][sample.subset].setdefault("dropped_samples", {})[reason] = {
            "doc": sample.doc,
            "text": sample.text,
        }
    work.mark_done(name, record)
    return record
