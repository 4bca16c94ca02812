"""Benchmark decontamination in the build: the index task, and what a process task does with each batch.

The `decontaminate` stage runs one task (`build_index`) per content of the eval sets: it reads their files,
builds the n-gram index (`stages.decontaminate.build_index`) and writes it as one .npz with its items'
names and text starts (items.jsonl, for the report). The driver reads the index once and hands it to every
process task through Ray's object store (one shared copy per node, read without copying), and each process
task matches its documents while it holds their text (`Matcher`): no second read of the corpus.

A process task's done record carries, per eval set, what matched in its file (`SetMatches`): documents,
documents dropped and flagged, documents per item, the first few matches with their span, and every flagged
document. The finalizer merges them into OUT/decontamination.json, the manifest and dropped_samples.jsonl.
"""

from __future__ import annotations

import io
import json
import time
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from manifests.outputs import DECONTAMINATION
from pipeline.work.store import Store
from stages.decontaminate import (
    DecontaminateConfig,
    EvalSet,
    Index,
    Match,
    build_index,
    match,
    read_eval_set,
    reason,
    unit_sequences,
    words,
)
from stages.document import DocBatch
from stages.tokenize import Tokenizer

INDEX, ITEMS = "index.npz", "items.jsonl"  # the index task's outputs
PER_SET = 5  # matches with their span kept per set and file (dropped_samples.jsonl shows them)
CONTEXT_CHARS = 120  # of the document on each side of a matched span, in a sample
ITEM_CHARS = 300


def eval_sets(config: DecontaminateConfig) -> list[EvalSet]:
    """Every set read and checked (`stages.decontaminate.read_eval_set`): the driver calls it before any work,
    so a missing file, a field no record has or an empty set is refused in one line."""
    return [read_eval_set(s) for s in config.sets]


def index_made_from(config: DecontaminateConfig, sets: list[EvalSet], tokenizer: Tokenizer) -> dict:
    """What the index is made from: each set's bytes (sha256) and rule; the tokenizer when a set counts tokens."""
    made_from = {
        "sets": [
            {"name": s.name, "sha256": s.sha256, "fields": c.fields, "rule": r.as_json(), "action": r.action}
            for s, c, r in zip(sets, config.sets, config.rules())
        ]
    }
    if config.uses_tokens():
        made_from["tokenizer"] = tokenizer.sha256()
    return made_from


def _encoder(tokenizer: Tokenizer):
    def encode(texts: list[str]) -> list[np.ndarray]:
        return [np.asarray(ids, np.int64) for ids in tokenizer.processor.encode(texts, add_bos=False, add_eos=False)]

    return encode


def build_index_task(folder: str, config: DecontaminateConfig, tokenizer: Tokenizer, work: Store) -> dict:
    """The `decontaminate` stage's one task: the eval sets' n-gram index, and their items' names and starts."""
    started = time.perf_counter()
    sets = eval_sets(config)
    rules = config.rules()
    index = build_index(rules, sets, _encoder(tokenizer))
    buffer = io.BytesIO()
    np.savez(buffer, **index.arrays())
    work.write_bytes(f"{folder}/{INDEX}", buffer.getvalue())
    lines = [
        json.dumps({"set": s.name, "item": item.where, "text": item.text[:ITEM_CHARS]}, sort_keys=True) + "\n"
        for s in sets
        for item in s.items
    ]
    work.write_bytes(f"{folder}/{ITEMS}", "".join(lines).encode())
    record = {
        "sets": [
            {"name": s.name, "sha256": s.sha256, "files": s.files, "rule": r.as_json(), "action": r.action, **stats}
            for s, r, stats in zip(sets, rules, index.stats)
        ],
        "ngrams": int(sum(len(t.keys) for t in index.tables.values())),
        "index_bytes": index.nbytes,
        "documents": 0,
        "seconds": time.perf_counter() - started,
    }
    work.mark_done(folder, record)
    return record


def load_index(work: Store, folder: str, record: dict, config: DecontaminateConfig) -> Index:
    arrays = np.load(io.BytesIO(work.read_bytes(f"{folder}/{INDEX}")))
    return Index.from_arrays(config.rules(), {k: arrays[k] for k in arrays.files}, [s for s in record["sets"]])


def read_items(work: Store, folder: str) -> list[dict]:
    """Every item's set, name and text start, in item-number order."""
    return [json.loads(line) for line in work.read_bytes(f"{folder}/{ITEMS}").decode().splitlines()]


# ---------------------------------------------------------------------------------------------- matching


@dataclass(slots=True)
class SetMatches:
    """What one eval set matched in one input file."""

    documents: int = 0  # that matched an item of the set
    dropped: int = 0  # removed with this set's reason (a document matching several sets counts for the first)
    flagged: int = 0
    items: dict[int, int] = field(default_factory=lambda: defaultdict(int))  # item -> documents
    samples: list[dict] = field(default_factory=list)  # the first PER_SET matches: document, span, item
    flagged_docs: list[list] = field(default_factory=list)  # [doc id, item] of every flagged document

    def as_json(self) -> dict:
        return {
            "documents": self.documents,
            "dropped": self.dropped,
            "flagged": self.flagged,
            "items": {str(k): v for k, v in sorted(self.items.items())},
            "samples": self.samples,
            "flagged_docs": self.flagged_docs,
        }


@dataclass(slots=True)
class Matcher:
    """Matches a process task's batches against the index; `by_set` accumulates what matched in the file."""

    index: Index
    by_set: dict[str, SetMatches] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.by_set = {r.name: SetMatches() for r in self.index.rules}

    @property
    def uses_words(self) -> bool:
        return "words" in self.index.tables

    @property
    def uses_tokens(self) -> bool:
        return "tokens" in self.index.tables

    def on_words(self, batch: DocBatch) -> dict[int, str]:
        """The batch's documents to drop (position -> drop reason), by the word rule."""
        if not self.uses_words:
            return {}
        w = words(batch.texts)
        found = match(self.index, "words", w.hashes, w.offsets)

        def sample(m: Match) -> dict:  # called for the few matches kept as samples
            first = w.offsets[m.doc] + m.first
            return _span(batch.texts[m.doc], int(w.starts[first]), int(w.ends[first + m.size - 1]))

        return self._record(batch, found, sample)

    def on_tokens(self, batch: DocBatch, tokens: list[np.ndarray], tokenizer: Tokenizer) -> dict[int, str]:
        """The batch's documents to drop (position -> drop reason), by the token rule, over their token ids."""
        if not self.uses_tokens:
            return {}
        units, offsets = unit_sequences(None, tokens)
        found = match(self.index, "tokens", units, offsets)
        return self._record(
            batch,
            found,
            lambda m: {
                "match": tokenizer.decode(tokens[m.doc][m.first : m.first + m.size]),
                "text": batch.texts[m.doc][: 2 * CONTEXT_CHARS],
            },
        )

    def _record(self, batch: DocBatch, found: list[Match], sample) -> dict[int, str]:
        drop: dict[int, str] = {}
        by_doc: dict[int, list[Match]] = defaultdict(list)
        for m in found:
            by_doc[m.doc].append(m)
        for doc, matches in by_doc.items():
            first_of_set = {}
            for m in matches:
                first_of_set.setdefault(m.set_no, m)
            dropping = next(
                (self.index.rules[s] for s in sorted(first_of_set) if self.index.rules[s].action == "drop"), None
            )
            if dropping is not None:
                drop[doc] = reason(dropping.name)
            for set_no, m in first_of_set.items():
                rule = self.index.rules[set_no]
                counts = self.by_set[rule.name]
                counts.documents += 1
                for item in {x.item for x in matches if x.set_no == set_no}:
                    counts.items[item] += 1
                if rule.action == "flag":
                    counts.flagged += 1
                    counts.flagged_docs.append([batch.doc_id(doc), m.item])
                elif rule is dropping:
                    counts.dropped += 1
                if len(counts.samples) < PER_SET:
                    counts.samples.append(
                        {
                            "doc": batch.doc_id(doc),
                            "subset": batch.subsets[doc],
                            "item": m.item,
                            "action": "drop"
                            if rule is dropping
                            else "flag"
                            if rule.action == "flag"
                            else "dropped by another set",
                            **sample(m),
                        }
                    )
        return drop

    def as_json(self) -> dict:
        return {name: s.as_json() for name, s in self.by_set.items()}


def _span(text: str, start: int, end: int) -> dict:
    """The matched span of a document and its context. Spans are counted in the lowercased text, which is the
    text's own length but for the few characters whose lowercase is longer (then the span is approximate)."""
    return {"match": text[start:end], "text": text[max(0, start - CONTEXT_CHARS) : end + CONTEXT_CHARS]}


# ---------------------------------------------------------------------------------------------- the build's outputs

SAMPLES_PER_SET = 5  # dropped_samples.jsonl lines per source and eval set


@dataclass(frozen=True, slots=True)
class Outputs:
    manifest: dict  # the manifest's `decontamination`: per set its name, sha256, rule and counts
    report: dict  # OUT/decontamination.json
    sample_lines: bytes  # dropped_samples.jsonl lines of decontaminated documents


def decontamination_outputs(work: Store, funnels: list[dict], folder: str, record: dict) -> Outputs:
    """What the process tasks' done records say the eval sets matched, merged over the files in input order."""
    items = read_items(work, folder)
    sets = []
    lines = []
    for info in record["sets"]:
        name = info["name"]
        totals = {"documents": 0, "dropped": 0, "flagged": 0}
        per_item: dict[int, int] = defaultdict(int)
        flagged, samples, taken = [], [], defaultdict(int)
        for f in funnels:
            found = f.get("decontamination", {}).get(name)
            if not found:
                continue
            for k in totals:
                totals[k] += found[k]
            for item, n in found["items"].items():
                per_item[int(item)] += n
            flagged += [[doc, items[item]["item"]] for doc, item in found["flagged_docs"]]
            for sample in found["samples"]:
                line = {
                    "source": f["source"],
                    "subset": sample["subset"],
                    "reason": reason(name),
                    "step": "decontamination",
                    "doc": sample["doc"],
                    "text": sample["text"],
                    "match": sample["match"],
                    "eval_set": name,
                    "item": items[sample["item"]]["item"],
                    "item_text": items[sample["item"]]["text"],
                    "action": sample["action"],
                }
                samples.append(line)
                if sample["action"] == "drop" and taken[f["source"]] < SAMPLES_PER_SET:
                    taken[f["source"]] += 1
                    lines.append(json.dumps({k: v for k, v in line.items() if k != "action"}, sort_keys=True) + "\n")
        matched = sorted(per_item.items(), key=lambda kv: (-kv[1], kv[0]))
        sets.append(
            {
                **{k: info[k] for k in ("name", "sha256", "files", "rule", "action", "items", "ngrams")},
                **totals,
                "items_matched": len(matched),
                "whole_string_items": info["whole_string"],
                "too_short_items": info["too_short"],
                "matched_items": [
                    {"item": items[i]["item"], "documents": n, "text": items[i]["text"]} for i, n in matched
                ],
                "samples": samples[: SAMPLES_PER_SET * 4],
                "flagged_docs": flagged,
            }
        )
    summary = [
        {
            k: s[k]
            for k in (
                "name",
                "sha256",
                "files",
                "rule",
                "action",
                "items",
                "ngrams",
                "documents",
                "dropped",
                "flagged",
                "items_matched",
            )
        }
        for s in sets
    ]
    report = {
        "format": "tokenmill.decontamination",
        "version": 1,
        "ngrams": record["ngrams"],
        "index_bytes": record["index_bytes"],
        "sets": sets,
    }
    return Outputs({"path": DECONTAMINATION, "sets": summary}, report, "".join(lines).encode())
