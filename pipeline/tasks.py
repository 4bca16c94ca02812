"""One function per kind of task: read inputs from the work dir, call the stages, write outputs + done record.

Nothing here knows Ray: `pipeline.runner` decides where these run. Each task writes into the folder it is given
(named by `pipeline.ledger.WorkLayout`), rewrites all of its outputs, marks itself done last and returns exactly
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

import fsspec
import numpy as np
import xxhash

from manifests.keys import doc_keys
from manifests.manifest import shard_entry
from manifests.shards import encode_index
from pipeline.inputs import SPLITS, InputFile
from pipeline.ledger import Store
from stages import dedupe as dedupe_stage
from stages import mix as mix_stage
from stages.dedupe import DedupeConfig
from stages.document import BadRecord, DocBatch
from stages.fetch import SourceConfig, read_documents
from stages.filter import apply_filters, build_filters
from stages.mix import MixConfig
from stages.tokenize import Tokenizer

FILE_SUBSET = "(file)"  # bad input that belongs to no document, e.g. a file that is not parquet
HIST_EDGES = np.array([0] + [2**i for i in range(32)], dtype=np.float64)


def histogram(values: np.ndarray) -> np.ndarray:
    buckets = np.searchsorted(HIST_EDGES, values, side="right") - 1
    return np.bincount(np.clip(buckets, 0, len(HIST_EDGES) - 2), minlength=len(HIST_EDGES) - 1)


# the files of a process task's folder
TOKENS, DOCS, KEYS, QUARANTINE = "tokens.bin", "docs.npz", "keys.bin", "quarantine.jsonl"
RESOLVED_FILES = ("removed.npy", "removed_exact.npy", "cluster_sizes.npy")


@dataclass(frozen=True, slots=True)
class Processed:
    """One input file's process output as the later stages see it: its position in this build's listing, its
    folder, and its done record."""

    file_index: int
    folder: str
    record: dict

    def doc_keys(self, ordinals: np.ndarray) -> np.ndarray:
        return doc_keys(self.file_index, ordinals)


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
    return np.fromiter((xxhash.xxh3_64_intdigest(batch.doc_id(i).encode()) < cut for i in range(len(batch))), np.uint8, len(batch))


@dataclass(slots=True)
class _FileOutputs:
    """What one input file contributes, accumulated batch by batch."""

    tokens: list[np.ndarray] = field(default_factory=list)
    columns: dict[str, list[np.ndarray]] = field(default_factory=lambda: defaultdict(list))
    keys: list[np.ndarray] = field(default_factory=list)
    quarantine: list[str] = field(default_factory=list)
    funnels: dict[str, SubsetFunnel] = field(default_factory=lambda: defaultdict(SubsetFunnel))
    subsets: dict[str, int] = field(default_factory=dict)

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


def _process_batch(batch: DocBatch, task: InputFile, filters, tokenizer: Tokenizer, dedupe: DedupeConfig, out: _FileOutputs) -> None:
    _count_read(batch, out)
    kept, dropped = apply_filters(batch, filters)
    for index, reason in dropped:
        out.funnels[batch.subsets[index]].dropped[reason] += 1
    if not len(kept):
        return
    for subset in kept.subsets:
        out.funnels[subset].documents_passed += 1
    tokens, lengths = tokenizer.encode(kept.texts)
    ordinals = np.asarray(kept.ordinals, np.uint64)
    out.tokens.append(tokens)
    out.columns["ordinal"].append(ordinals)
    out.columns["subset"].append(np.fromiter((out.subset_id(s) for s in kept.subsets), np.uint16, len(kept)))
    out.columns["split"].append(_split_of(kept, task.source, task.split))
    out.columns["chars"].append(np.fromiter(map(len, kept.texts), np.int64, len(kept)))
    out.columns["length"].append(lengths)
    out.keys.append(dedupe_stage.document_keys(kept.texts, dedupe))


def process_file(folder: str, task: InputFile, work: Store, tokenizer: Tokenizer, dedupe: DedupeConfig, batch_documents: int) -> dict:
    """fetch -> filter -> dedupe keys -> tokenize for one input file, fused: the text is parsed once."""
    started = time.perf_counter()
    filters = build_filters(task.source)
    out = _FileOutputs()
    fs, path = fsspec.core.url_to_fs(task.url)
    # A bad JSONL line has no readable subset; a bad parquet row still has its language folder.
    bad_subset = task.rel_path.split("/")[0] if task.source.kind == "parquet" and not task.source.subset_field else FILE_SUBSET
    for item in read_documents(fs, path, task.rel_path, task.source, batch_documents):
        if isinstance(item, BadRecord):
            out.add_bad(item, bad_subset)
        else:
            _process_batch(item, task, filters, tokenizer, dedupe, out)
    return _write_file_outputs(task, work, folder, out, dedupe, tokenizer.dtype, time.perf_counter() - started)


def _concat(parts: list[np.ndarray], dtype) -> np.ndarray:
    return np.concatenate(parts).astype(dtype, copy=False) if parts else np.zeros(0, dtype)


def _write_file_outputs(task: InputFile, work: Store, name: str, out: _FileOutputs, dedupe: DedupeConfig, dtype, seconds: float) -> dict:
    tokens = _concat(out.tokens, dtype)
    columns = {k: np.concatenate(v) for k, v in out.columns.items()}
    n_slots = len(dedupe_stage.key_slots(dedupe))
    keys = _concat(out.keys, np.uint64).reshape(-1, n_slots) if n_slots else np.zeros((0, 0), np.uint64)
    ordinals = columns.get("ordinal", np.zeros(0, np.uint64))
    # rows (slot, key, ordinal): the dedupe task puts the file's position into the ordinal's high half
    partitions = dedupe_stage.partition_rows(keys, ordinals, dedupe.partitions) if n_slots else []
    offsets = np.cumsum([0] + [len(p) for p in partitions]).tolist()
    buffer = io.BytesIO()
    np.savez(buffer, **columns) if columns else np.savez(buffer, ordinal=ordinals)
    work.write_bytes(f"{name}/{TOKENS}", tokens.tobytes())
    work.write_bytes(f"{name}/{DOCS}", buffer.getvalue())
    work.write_bytes(f"{name}/{KEYS}", b"".join(np.ascontiguousarray(p, dtype=np.uint64).tobytes() for p in partitions))
    work.write_bytes(f"{name}/{QUARANTINE}", "".join(line + "\n" for line in out.quarantine).encode())
    record = {
        "source": task.source.name,
        "path": task.rel_path,
        "dtype": str(tokens.dtype),
        "documents": int(len(ordinals)),
        "tokens": int(len(tokens)),
        "key_offsets": offsets,
        "subsets": list(out.subsets),
        "funnels": {s: f.as_json() for s, f in sorted(out.funnels.items())},
        "quarantined": len(out.quarantine),
        "seconds": seconds,
    }
    work.mark_done(name, record)
    return record


def dedupe_partition(folder: str, partition: int, files: list[Processed], work: Store) -> dict:
    """Gather one partition's (slot, key, doc_key) rows from every file and find duplicate groups."""
    started = time.perf_counter()
    rows = []
    for f in files:
        start, end = f.record["key_offsets"][partition], f.record["key_offsets"][partition + 1]
        part = np.frombuffer(work.read_range(f"{f.folder}/{KEYS}", start * 24, end * 24), np.uint64).reshape(-1, 3).copy()
        part[:, 2] = f.doc_keys(part[:, 2])
        rows.append(part)
    gathered = np.concatenate(rows) if rows else np.zeros((0, 3), np.uint64)
    del rows  # the gathered copy is all duplicate_edges needs; keep peak memory at one copy
    edges = dedupe_stage.duplicate_edges(gathered)
    work.write_bytes(f"{folder}/edges.npy", _npy(edges))
    record = {"partition": partition, "rows": int(len(gathered)), "edges": int(len(edges)), "seconds": time.perf_counter() - started}
    work.mark_done(folder, record)
    return record


def resolve_duplicates(folder: str, partition_folders: list[str], work: Store, dedupe: DedupeConfig) -> dict:
    started = time.perf_counter()
    edges = [load_npy(work, f"{p}/edges.npy") for p in partition_folders]
    edges = [e for e in edges if len(e)]
    all_edges = np.concatenate(edges) if edges else np.zeros((0, 3), np.uint64)
    result = dedupe_stage.resolve_clusters(all_edges, exact_slot=0 if dedupe.exact else None)
    for name, array in zip(RESOLVED_FILES, (result.removed, result.removed_exact, result.cluster_sizes)):
        work.write_bytes(f"{folder}/{name}", _npy(array))
    record = {
        "removed": int(len(result.removed)),
        "exact_removed": int(result.removed_exact.sum()),
        "near_removed": int(len(result.removed) - result.removed_exact.sum()),
        "clusters": int(len(result.cluster_sizes)),
        "seconds": time.perf_counter() - started,
    }
    work.mark_done(folder, record)
    return record


def load_npy(work: Store, rel: str) -> np.ndarray:
    return np.load(io.BytesIO(work.read_bytes(rel)))


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


@dataclass(slots=True)
class _FileDocs:
    """One file's document table (docs.npz) with its documents' keys, token offsets and dedupe verdict."""

    processed: Processed
    columns: dict[str, np.ndarray]
    keys: np.ndarray  # uint64 doc keys
    starts: np.ndarray  # int64 first token in the file's tokens.bin
    lengths: np.ndarray  # int64 tokens
    keep: np.ndarray  # bool: survived dedupe


def _kept_documents(work: Store, files: list[Processed], removed: np.ndarray):
    """Per file with documents: its table, where its tokens are, and which documents survived dedupe."""
    for f in files:
        columns = dict(np.load(io.BytesIO(work.read_bytes(f"{f.folder}/{DOCS}"))))
        if not len(columns["ordinal"]):
            continue
        keys = f.doc_keys(columns["ordinal"])
        lengths = columns["length"].astype(np.int64)
        yield _FileDocs(f, columns, keys, np.cumsum(lengths) - lengths, lengths, ~np.isin(keys, removed, assume_unique=True))


def plan_mix(folder: str, resolved: str, files: list[Processed], work: Store, source_ids: dict[str, int], weights: dict[int, float], mix: MixConfig) -> dict:
    """Choose and order every split's documents (stages.mix) and write the plan the shard tasks read."""
    started = time.perf_counter()
    removed = load_npy(work, f"{resolved}/removed.npy")
    per_split = {split: defaultdict(lambda: defaultdict(list)) for split in SPLITS}
    for d in _kept_documents(work, files, removed):
        sid = source_ids[d.processed.record["source"]]
        for split_no, split in enumerate(SPLITS):
            mask = d.keep & (d.columns["split"] == split_no)
            columns = per_split[split][sid]
            columns["doc_key"].append(d.keys[mask])
            columns["length"].append(d.lengths[mask])
            columns["file_index"].append(np.full(int(mask.sum()), d.processed.file_index, np.int64))
            columns["start"].append(d.starts[mask])
    summary = {}
    for split, by_source in per_split.items():
        sources, located = [], {}
        for sid in sorted(by_source):
            cols = {k: np.concatenate(v) for k, v in by_source[sid].items()}
            sources.append(mix_stage.SourceDocs(sid, cols["doc_key"], cols["length"]))
            located[sid] = cols
        if not sources or not any(len(s.lengths) for s in sources):
            continue
        plan = mix_stage.plan_split(sources, weights, mix.policy, mix.seed, mix.shard_tokens)
        file_of = np.empty(len(plan.positions), np.int64)
        start_of = np.empty(len(plan.positions), np.int64)
        origin = np.empty(len(plan.positions), np.uint64)
        for sid, cols in located.items():
            at = plan.source_ids == sid
            file_of[at] = cols["file_index"][plan.positions[at]]
            start_of[at] = cols["start"][plan.positions[at]]
            origin[at] = cols["doc_key"][plan.positions[at]]
        buffer = io.BytesIO()
        np.savez(buffer, file_index=file_of, start=start_of, length=plan.lengths, source_id=plan.source_ids, origin=origin, shard_starts=plan.shard_starts)
        work.write_bytes(f"{folder}/{split}.npz", buffer.getvalue())
        summary[split] = {"documents": int(len(plan.lengths)), "shards": int(len(plan.shard_starts)), "epochs": {str(k): v for k, v in plan.epochs.items()}}
    record = {"splits": summary, "seconds": time.perf_counter() - started}
    work.mark_done(folder, record)
    return record


def _gather_tokens(work: Store, folders: list[str], files: np.ndarray, starts: np.ndarray, lengths: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """The shard's documents' tokens in plan order, read straight from each input file's tokens.bin."""
    out = np.empty(int(lengths.sum()), dtype)
    at = np.cumsum(lengths) - lengths
    for file in np.unique(files):
        rel = f"{folders[int(file)]}/{TOKENS}"
        mine = np.flatnonzero(files == file)
        if work.is_local:
            source = np.memmap(work.path(rel), dtype=dtype, mode="r")
            for i in mine:
                out[at[i] : at[i] + lengths[i]] = source[starts[i] : starts[i] + lengths[i]]
            continue
        size = dtype.itemsize
        blobs = work.read_ranges(rel, [int(starts[i]) * size for i in mine], [int(starts[i] + lengths[i]) * size for i in mine])
        for i, blob in zip(mine, blobs):
            out[at[i] : at[i] + lengths[i]] = np.frombuffer(blob, dtype)
    return out


def write_shard(folder: str, mix_folder: str, split: str, number: int, process_folders: list[str], work: Store, out: Store, dtype_name: str, source_names: list[str]) -> dict:
    """Write one shard (.bin + .idx) of the mixed stream; its done record holds its manifest entry."""
    started = time.perf_counter()
    plan = np.load(io.BytesIO(work.read_bytes(f"{mix_folder}/{split}.npz")))
    bounds = list(plan["shard_starts"]) + [len(plan["length"])]
    part = slice(int(bounds[number]), int(bounds[number + 1]))
    lengths = plan["length"][part]
    dtype = np.dtype("<u2" if dtype_name == "uint16" else "<u4")
    tokens = _gather_tokens(work, process_folders, plan["file_index"][part], plan["start"][part], lengths, dtype)
    index = encode_index(dtype, np.cumsum(lengths).astype(np.uint64), plan["source_id"][part], plan["origin"][part])
    data = tokens.tobytes()
    stem = f"{split}/{split}-{number:05d}"
    out.write_bytes(f"{stem}.bin", data)
    out.write_bytes(f"{stem}.idx", index)
    by_source = np.bincount(plan["source_id"][part], weights=lengths, minlength=len(source_names))
    entry = shard_entry(stem, data, index, documents=int(len(lengths)), tokens=int(lengths.sum()),
                        tokens_by_source={name: int(by_source[i]) for i, name in enumerate(source_names)})
    record = {"entry": entry, "documents": entry["documents"], "seconds": time.perf_counter() - started}
    work.mark_done(folder, record)
    return record


def summarize_kept(work: Store, resolved: str, files: list[Processed]) -> dict[str, dict]:
    """Per "source/subset": duplicates removed, documents/chars/tokens kept and their histograms. Streams over
    the per-file document tables, one file at a time."""
    removed, removed_exact = load_npy(work, f"{resolved}/removed.npy"), load_npy(work, f"{resolved}/removed_exact.npy")
    exact_keys = removed[removed_exact]
    out: dict[str, dict] = {}
    for d in _kept_documents(work, files, removed):
        r, docs, keep, lengths = d.processed.record, d.columns, d.keep, d.lengths
        subsets = docs["subset"]
        is_exact = np.isin(d.keys, exact_keys, assume_unique=True)
        for sid, name in enumerate(r["subsets"]):
            here = subsets == sid
            s = out.setdefault(f"{r['source']}/{name}", {"exact_duplicate": 0, "near_duplicate": 0, "documents_kept": 0, "chars_kept": 0, "tokens_kept": 0,
                                                           "char_hist": np.zeros(len(HIST_EDGES) - 1, np.int64), "token_hist": np.zeros(len(HIST_EDGES) - 1, np.int64)})
            gone = here & ~keep
            s["exact_duplicate"] += int((gone & is_exact).sum())
            s["near_duplicate"] += int((gone & ~is_exact).sum())
            kept = here & keep
            s["documents_kept"] += int(kept.sum())
            s["chars_kept"] += int(docs["chars"][kept].sum())
            s["tokens_kept"] += int(lengths[kept].sum())
            s["char_hist"] += histogram(docs["chars"][kept])
            s["token_hist"] += histogram(lengths[kept])
    for s in out.values():
        s["char_hist"] = s["char_hist"].tolist()
        s["token_hist"] = s["token_hist"].tolist()
    return out
