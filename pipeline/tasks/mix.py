"""The mix stage: each mix group's documents chosen, ordered and written into its shards.

A mix group task reads only its group's files' document tables (through `pipeline.tasks.count.kept_docs`) and the
token ranges of its documents: every task's memory is one group's document table plus one shard.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections import defaultdict
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field

import numpy as np

from manifests.outputs import shard_stem
from manifests.shards import dtype_named, write_shard
from pipeline.build.inputs import SPLITS
from pipeline.tasks.count import kept_docs
from pipeline.tasks.dedupe import removed_of
from pipeline.tasks.process import TOKENS
from pipeline.work.store import Store
from stages import mix as mix_stage

COPY_CHUNK = 64 << 20  # bytes per read when a token range is copied from an object store to local scratch
GAP_BYTES = 64 << 10  # a gap this small between two needed token ranges is read through: one request, not two


@dataclass(frozen=True, slots=True)
class MixGroup:
    """What one mix group task needs: its slices of the split's domain streams and where its shards go."""

    split: str
    number: int  # the group's number within its split
    slices: list[mix_stage.StreamSlice]  # one per domain (the id a build without domains gives its source)
    factors: dict[int, float]  # per domain id: tokens taken / tokens there (the split's policy or budget)
    first_shard: int
    shards: int
    folders: dict[int, str]  # process folder of each file the slices name
    shards_folder: str  # in the output: `manifests.outputs.shards_folder`
    # per domain id, per file: the subset column values the domain takes from that file; a domain not listed
    # takes all of its files' documents (every domain of a build without domains)
    subset_ids: dict[int, dict[int, list[int]]] = field(default_factory=dict)


def mix_group(
    folder: str,
    group: MixGroup,
    resolved: str,
    work: Store,
    out: Store,
    dtype_name: str,
    source_names: list[str],
    seed: int,
    domains: list[tuple[str, str]] | None = None,
) -> dict:
    """Choose, order and write one group's shards; the done record holds their manifest entries. `domains`:
    (name, source) of each domain id when the recipe has domains (the shards' index then holds domain ids)."""
    started = time.perf_counter()
    sources, located = _group_documents(group, resolved, work)
    plan = mix_stage.plan_group(sources, group.factors, seed, group.shards)
    file_of = np.empty(len(plan.lengths), np.int64)
    start_of = np.empty(len(plan.lengths), np.int64)
    origin = np.empty(len(plan.lengths), np.uint64)
    for sid, cols in located.items():
        at = plan.source_ids == sid
        file_of[at], start_of[at], origin[at] = (
            cols["file"][plan.positions[at]],
            cols["start"][plan.positions[at]],
            cols["key"][plan.positions[at]],
        )
    dtype = dtype_named(dtype_name)
    entries = []
    with ExitStack() as stack:
        # one local scratch file for the whole group when the work dir is an object store: one open file, not one per
        # input
        scratch = (
            None
            if work.is_local
            else stack.enter_context(tempfile.NamedTemporaryFile(prefix="tokenmill-", suffix=".bin"))
        )
        paths = {}
        for f in np.unique(file_of).tolist():
            mine = file_of == f
            paths[f], start_of[mine] = _open_runs(
                work, group.folders[f], dtype, start_of[mine], plan.lengths[mine], scratch
            )
        if scratch:
            scratch.flush()
        for k, part in enumerate(plan.shard_slices()):
            stem = shard_stem(group.shards_folder, group.split, group.first_shard + k)
            entries.append(
                _write_shard(
                    out,
                    stem,
                    paths,
                    file_of[part],
                    start_of[part],
                    plan.lengths[part],
                    plan.source_ids[part],
                    origin[part],
                    dtype,
                    source_names,
                    domains,
                )
            )
    record = {"entries": entries, "documents": int(len(plan.lengths)), "seconds": time.perf_counter() - started}
    work.mark_done(folder, record)
    return record


def _group_documents(
    group: MixGroup, resolved: str, work: Store
) -> tuple[list[mix_stage.SourceDocs], dict[int, dict[str, np.ndarray]]]:
    """Per domain: the group's documents (canonical order) and where their tokens are. Each file's document
    table is read once, whichever domains take documents from it."""
    split_no = SPLITS.index(group.split)
    removed = removed_of(work, resolved, [f for s in group.slices for f, _ in s.files])
    slices_of = defaultdict(list)
    for n, piece in enumerate(group.slices):
        for file_index, offset in piece.files:
            slices_of[file_index].append((n, offset))
    cols = [defaultdict(list) for _ in group.slices]
    for file_index in sorted(slices_of):  # canonical order: each slice's files come in it too
        d = kept_docs(work, group.folders[file_index], file_index, removed[file_index])
        in_split = d.keep & (d.columns["split"] == split_no) if len(d.keys) else np.zeros(0, bool)
        for n, offset in slices_of[file_index]:
            piece = group.slices[n]
            taken = group.subset_ids.get(piece.source_id, {}).get(file_index)
            mine = in_split & np.isin(d.columns["subset"], taken) if taken is not None and len(d.keys) else in_split
            inside = np.zeros(len(mine), bool)
            inside[mine] = mix_stage.in_slice(offset, d.lengths[mine], piece)
            cols[n]["key"].append(d.keys[inside])
            cols[n]["length"].append(d.lengths[inside])
            cols[n]["start"].append(d.starts[inside])
            cols[n]["file"].append(np.full(int(inside.sum()), file_index, np.int64))
    sources, located = [], {}
    for piece, c in zip(group.slices, cols):
        joined = (
            {k: np.concatenate(v) for k, v in c.items()}
            if c
            else {k: np.zeros(0, np.int64) for k in ("key", "length", "start", "file")}
        )
        sources.append(mix_stage.SourceDocs(piece.source_id, joined["key"].astype(np.uint64), joined["length"]))
        located[piece.source_id] = joined
    return sources, located


def _open_runs(
    work: Store, folder: str, dtype: np.dtype, starts: np.ndarray, lengths: np.ndarray, scratch
) -> tuple[str, np.ndarray]:
    """A local file holding one input file's tokens of the documents (starts, lengths), and where each document
    starts in it: the work dir's file itself, or the group's scratch file, to which just the runs of needed tokens
    are appended (a gap under GAP_BYTES is read through), streamed from the object store in reads of at most
    COPY_CHUNK. A group's documents of one file are contiguous, save for the other split's:
    a few GETs per file and group. Copying the span from the first to the last document instead would copy a
    whole file for a split drawn per document (validation_fraction): every code file, for a few documents."""
    rel = f"{folder}/{TOKENS}"
    if scratch is None:
        return work.path(rel), starts
    order = np.argsort(starts, kind="stable")
    lo, hi = starts[order], np.maximum.accumulate(starts[order] + lengths[order])
    first = np.ones(len(lo), bool)
    first[1:] = lo[1:] > hi[:-1] + GAP_BYTES // dtype.itemsize
    run = np.cumsum(first) - 1
    run_lo, run_hi = lo[first], np.maximum.reduceat(hi, np.flatnonzero(first))
    run_at = np.cumsum(run_hi - run_lo) - (run_hi - run_lo)  # where each run starts in the copy
    local = np.empty(len(starts), np.int64)
    local[order] = scratch.tell() // dtype.itemsize + run_at[run] + lo - run_lo[run]
    pieces = [
        (start, min(start + COPY_CHUNK, b))
        for a, b in zip((run_lo * dtype.itemsize).tolist(), (run_hi * dtype.itemsize).tolist())
        for start in range(a, b, COPY_CHUNK)
    ]
    batch, held = [], 0
    for piece in pieces + [None]:  # requested in concurrent batches of at most COPY_CHUNK bytes: a per-document
        if piece is None or (batch and held + piece[1] - piece[0] > COPY_CHUNK):  # split's small runs not one by one
            for data in work.read_batch(rel, [a for a, _ in batch], [b for _, b in batch]):
                scratch.write(data)
            batch, held = [], 0
        if piece is not None:
            batch.append(piece)
            held += piece[1] - piece[0]
    return scratch.name, local


def _write_shard(
    out: Store,
    stem: str,
    paths: dict[int, str],
    files: np.ndarray,
    starts: np.ndarray,
    lengths: np.ndarray,
    source_ids: np.ndarray,
    origins: np.ndarray,
    dtype: np.dtype,
    source_names: list[str],
    domains: list[tuple[str, str]] | None = None,
) -> dict:
    data = np.empty(int(lengths.sum()), dtype)
    at = np.cumsum(lengths) - lengths
    # file by file, each mapped only while its documents are copied: the task holds one open file and the token
    # pages of one file's part of one shard, not a map (and its pages) of every file of the group
    order = np.argsort(files, kind="stable")
    bounds = np.flatnonzero(np.diff(files[order], prepend=-1, append=-1))
    for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
        path = paths[int(files[order[a]])]
        tokens = np.memmap(path, dtype=dtype, mode="r") if os.path.getsize(path) else np.zeros(0, dtype)
        for i in order[a:b].tolist():
            data[at[i] : at[i] + lengths[i]] = tokens[starts[i] : starts[i] + lengths[i]]
        del tokens
    return asdict(write_shard(out.write_bytes, stem, data, lengths, source_ids, origins, source_names, domains))
