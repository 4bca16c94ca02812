"""Example documents each filter and each dedupe step removed: OUT/dropped_samples.jsonl, for the statistics report.

Filters: the process task, the only one that holds text, keeps the first document each filter removed from its
file (`pipeline.tasks.process.FilterSample`, with the start of its text); the finalizer keeps the first PER_STEP per
source and reason.

Duplicates: no text is kept after the process stage, so their samples are chosen from what the stages already
know and only their text is read back from the inputs, within a bound that does not grow with the corpus:
1. each count task lists its key group's first PER_STEP removed documents per source, subset and step
   (`DuplicateCandidate`: the removed document's key and the key of the document kept in its place);
2. the driver `choose`s up to PER_STEP per source, subset and step (a first one for each before any second),
   needing at most SAMPLE_FILES input files and preferring candidates in files already needed (a near pair
   needs the kept document's file too; an exact copy's kept twin holds the same text, so it needs none);
3. one task (`read_duplicates`) reads those files with the build's own reader, each only up to its last wanted
   document, and writes each sample's text start and, for a near duplicate, the kept document's text start and
   the pair's estimated Jaccard (MinHash signatures of the two texts, with the recipe's settings).
A file that can no longer be read costs its samples, never the build: the task names it in its done record and
the driver logs a warning.

A line of dropped_samples.jsonl (one schema for both kinds):
  {"source", "subset", "reason" (the filter's reason, or exact_duplicate / near_duplicate),
   "step" (the report's funnel step: filters, exact duplicates, near duplicates),
   "doc" (source/path#line or row), "text" (its first SAMPLE_CHARS characters)}
  a duplicate adds "kept_doc" (the document kept in its place); a near duplicate also "kept_text" (its first
  SAMPLE_CHARS characters) and "similarity" (the pair's estimated Jaccard); a decontaminated document (reason
  decontaminated:<set>, step decontamination) has the matched span's context as "text" and adds "match" (the span),
  "eval_set", "item" (file#line or row of the eval item) and "item_text" (its start).
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from contextlib import closing
from dataclasses import asdict, dataclass

import numpy as np

from manifests.keys import doc_key, split_key
from pipeline.build.inputs import InputFile
from pipeline.tasks.process import SAMPLE_CHARS
from pipeline.work.store import Store
from stages.document import EXACT_DUPLICATE, NEAR_DUPLICATE, BadRecord, doc_id, drop_step
from stages.minhash import MinHashConfig, estimate, signatures

PER_STEP = 5  # samples per source and filter reason, and per source, subset and dedupe step
SAMPLE_FILES = 8  # input files the duplicates' samples may be read back from, per build
TASK_OUTPUT = "samples.jsonl"  # the duplicates' lines, in the samples task's folder


@dataclass(frozen=True, slots=True)
class DroppedSample:
    """One line of dropped_samples.jsonl: a document a filter or a dedupe step removed."""

    source: str
    subset: str
    reason: str
    doc: str
    text: str  # its first SAMPLE_CHARS characters
    kept_doc: str | None = None  # a duplicate's: the document kept in its place
    kept_text: str | None = None  # a near duplicate's: the kept document's first SAMPLE_CHARS characters
    similarity: float | None = None  # a near duplicate's: estimated Jaccard with the kept document

    def json_line(self) -> str:
        line = {
            "source": self.source,
            "subset": self.subset,
            "reason": self.reason,
            "step": drop_step(self.reason),
            "doc": self.doc,
            "text": self.text,
        }
        line.update(
            {
                k: v
                for k, v in (
                    ("kept_doc", self.kept_doc),
                    ("kept_text", self.kept_text),
                    ("similarity", self.similarity),
                )
                if v is not None
            }
        )
        return json.dumps(line, sort_keys=True) + "\n"


def filter_samples(funnels: list[dict]) -> list[DroppedSample]:
    """The first PER_STEP documents each filter removed per source, in input order, from the process tasks'
    funnels (each holds the first of its file per reason)."""
    samples, taken = [], defaultdict(int)
    for r in funnels:
        for subset, f in r["funnels"].items():
            # in the order the file met them (a done record read back from the store has its keys sorted)
            met = sorted(f.get("dropped_samples", {}).items(), key=lambda item: int(item[1]["doc"].rsplit("#", 1)[1]))
            for reason, sample in met:
                if taken[r["source"], reason] < PER_STEP:
                    taken[r["source"], reason] += 1
                    samples.append(
                        DroppedSample(
                            source=r["source"], subset=subset, reason=reason, doc=sample["doc"], text=sample["text"]
                        )
                    )
    return samples


def first_filter_samples(groups: list[list[dict]]) -> list[DroppedSample]:
    """The first PER_STEP filter samples per source and reason of the whole build, from each key group's (its
    files' `filter_samples`, in input order): the same as `filter_samples` over every file's funnels."""
    samples, taken = [], defaultdict(int)
    for group in groups:
        for s in group:
            if taken[s["source"], s["reason"]] < PER_STEP:
                taken[s["source"], s["reason"]] += 1
                samples.append(DroppedSample(**s))
    return samples


def file_bytes(
    filter_samples: list[DroppedSample], work: Store, samples_folder: str, decontaminated: bytes = b""
) -> bytes:
    """dropped_samples.jsonl: the filters' samples, the decontaminated documents' (`decontaminated`: lines made by
    `pipeline.tasks.decontaminate.decontamination_outputs`), then the duplicates' as the samples task wrote them."""
    filtered = "".join(s.json_line() for s in filter_samples).encode()
    return filtered + decontaminated + work.read_bytes(f"{samples_folder}/{TASK_OUTPUT}")


@dataclass(frozen=True, slots=True)
class DuplicateCandidate:
    """A removed duplicate that may become a sample: named by keys, chosen before any text is read."""

    source: str
    subset: str
    reason: str  # EXACT_DUPLICATE or NEAR_DUPLICATE
    doc: int  # the removed document's key
    kept: int  # the key of the document kept in its place

    def keys_to_read(self) -> tuple[int, ...]:
        """The documents its sample needs the text of: the removed one, and a near duplicate's kept one (an exact
        copy's kept twin holds the same text)."""
        return (self.doc, self.kept) if self.reason == NEAR_DUPLICATE else (self.doc,)

    def files(self) -> set[int]:
        """The input files its sample is read from."""
        return {split_key(key)[0] for key in self.keys_to_read()}


def candidates_of_file(
    source: str,
    subsets: list[str],
    keys: np.ndarray,
    subset_ids: np.ndarray,
    exact: np.ndarray,
    kept: np.ndarray,
    taken: dict[tuple[str, str, str], int],
) -> list[DuplicateCandidate]:
    """A file's first removed documents (`keys`, in key order, with their subset ids, exact flags and kept
    documents) per subset and step, until `taken` (per source, subset and reason, over the count task's files)
    reaches PER_STEP."""
    found = []
    for sid, subset in enumerate(subsets):
        for reason, is_exact in ((EXACT_DUPLICATE, True), (NEAR_DUPLICATE, False)):
            wanted = PER_STEP - taken.get((source, subset, reason), 0)
            if wanted <= 0:
                continue
            rows = np.flatnonzero((subset_ids == sid) & (exact == is_exact))[:wanted]
            taken[source, subset, reason] = taken.get((source, subset, reason), 0) + len(rows)
            found += [DuplicateCandidate(source, subset, reason, int(keys[i]), int(kept[i])) for i in rows.tolist()]
    return found


def choose(candidates: list[DuplicateCandidate]) -> list[DuplicateCandidate]:
    """Up to PER_STEP samples per source, subset and step, in rounds (every step's first before any second),
    from at most SAMPLE_FILES input files: in each step's candidates (key order), the first whose files are all
    needed already, else the first that fits in the budget. Deterministic: depends only on the candidates."""
    by_step: dict[tuple[str, str, str], list[DuplicateCandidate]] = defaultdict(list)
    for c in sorted(candidates, key=lambda c: c.doc):
        by_step[c.source, c.subset, c.reason].append(c)
    files: set[int] = set()
    chosen = []
    for _ in range(PER_STEP):
        for step in sorted(by_step):
            left = by_step[step]
            pick = next((c for c in left if c.files() <= files), None) or next(
                (c for c in left if len(files | c.files()) <= SAMPLE_FILES), None
            )
            if pick is not None:
                left.remove(pick)
                files |= pick.files()
                chosen.append(pick)
    return chosen


def samples_key(chosen: list[DuplicateCandidate], process_folders: dict[int, str]) -> dict:
    """What the samples task's output is made from (its work folder's fingerprint): the chosen documents and
    the process keys of their files (each file's identity and read settings, the dedupe settings)."""
    return {"chosen": [asdict(c) for c in chosen], "files": process_folders, "chars": SAMPLE_CHARS}


@dataclass(frozen=True, slots=True)
class _ReadBack:
    doc: str
    text: str  # its first SAMPLE_CHARS characters
    signature: np.ndarray | None  # for a document of a near pair


def read_duplicates(
    folder: str,
    chosen: list[DuplicateCandidate],
    files: dict[int, InputFile],
    minhash: MinHashConfig,
    batch_documents: int,
    work: Store,
) -> dict:
    """The chosen duplicates' samples, their text read back from `files` (every file a chosen key names)."""
    started = time.perf_counter()
    wanted: dict[int, set[int]] = defaultdict(set)
    for c in chosen:
        for key in c.keys_to_read():
            wanted[split_key(key)[0]].add(split_key(key)[1])
    near = {key for c in chosen if c.reason == NEAR_DUPLICATE for key in c.keys_to_read()}
    found: dict[int, _ReadBack] = {}
    unreadable = {}
    for f in sorted(wanted):
        try:
            found.update(_read_back(files[f], wanted[f], near, minhash, batch_documents))
        except OSError as e:  # gone, or no longer readable: the samples are examples, the build goes on without them
            unreadable[files[f].url] = f"{type(e).__name__}: {e}"
    samples = [s for s in (_sample(c, found, files) for c in chosen) if s is not None]
    work.write_bytes(f"{folder}/{TASK_OUTPUT}", "".join(s.json_line() for s in samples).encode())
    record = {
        "samples": len(samples),
        "missing": len(chosen) - len(samples),
        "files_read": len(wanted) - len(unreadable),
        "unreadable": unreadable,
        "seconds": time.perf_counter() - started,
    }
    work.mark_done(folder, record)
    return record


def _read_back(
    inp: InputFile, ordinals: set[int], near: set[int], minhash: MinHashConfig, batch_documents: int
) -> dict[int, _ReadBack]:
    """The wanted documents of one file, read up to the last of them (documents come in line or row order)."""
    found = {}
    last = max(ordinals)
    with closing(inp.documents(batch_documents)) as items:
        for batch in items:
            if isinstance(batch, BadRecord):
                continue
            for i in (i for i, o in enumerate(batch.ordinals) if o in ordinals):
                key = doc_key(inp.file_index, batch.ordinals[i])
                signature = signatures([batch.texts[i]], minhash)[0] if key in near else None
                found[key] = _ReadBack(batch.doc_id(i), batch.texts[i][:SAMPLE_CHARS], signature)
            if batch.ordinals[-1] >= last:
                break
    return found


def _sample(c: DuplicateCandidate, found: dict[int, _ReadBack], files: dict[int, InputFile]) -> DroppedSample | None:
    """The candidate's sample, or None when a document it needs was not read back (its file is gone or changed)."""
    removed = found.get(c.doc)
    if removed is None:
        return None
    if c.reason == EXACT_DUPLICATE:
        file_index, ordinal = split_key(c.kept)
        kept_doc = doc_id(files[file_index].source.name, files[file_index].rel_path, ordinal)
        return DroppedSample(c.source, c.subset, c.reason, removed.doc, removed.text, kept_doc=kept_doc)
    kept = found.get(c.kept)
    if kept is None:
        return None
    similarity = round(float(estimate(removed.signature, kept.signature)), 4)
    return DroppedSample(c.source, c.subset, c.reason, removed.doc, removed.text, kept.doc, kept.text, similarity)
