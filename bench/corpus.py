"""The benchmarks' corpora: real text (`pipeline.sample_corpus`'s offline King James Bible, standard-library
docstrings and sources) recombined and written in the SlimPajama (JSONL.zst, `meta.redpajama_set_name`) and
StarCoderData (parquet, `content`) layouts, with planted duplicates whose truth the benchmarks measure against.

- `write_corpus(out, CorpusShape)`: any size, about 7:3 natural:code, 1% each of exact copies, near copies
  (`pipeline.sample_corpus.replace_words`, the sample corpus's edit), short documents and RedPajamaGithub
  documents (build_throughput, remix, real_build_memory, s3_requests).
- `write_recall_corpus(folder, pairs, chains, seed)`: whole KJV chapters and docstring passages, with near copies
  aimed at a Jaccard drawn from 0.5-1.0 and chains of copies (dedupe_recall).

Every copy is placed in another file than its original, so dedupe must look across files to find it.
"""

from __future__ import annotations

import json
import math
import random
import re
import time
from collections import defaultdict
from dataclasses import dataclass, field
from itertools import groupby
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import zstandard

from pipeline import sample_corpus as sample
from stages.normalize import jaccard, shingles

MIN_UNITS = 3  # no unit may dominate a document: two documents sharing one unit stay far from duplicates
PLANT_SHARE = 0.01  # of each kind: exact copies, near copies, short documents, RedPajamaGithub documents
VALIDATION_SHARE = 0.02
# A new definition starts at a line that opens a def/class/decorator at the top level or one indent in
_DEFINITION = re.compile(r"^(?:    )?(?:def |class |async def |@)", re.M)


# ------------------------------------------------------------------------------------------------ corpus


@dataclass(slots=True)
class TextPools:
    """Units of real text that documents are drawn from. Every document is a random draw of several units, so
    at any corpus size documents are distinct and no two share enough to be near duplicates by chance: only
    the planted copies are duplicates. Verse runs, docstrings and definitions are real text, unchanged."""

    verses: list[dict]  # the King James Bible, verse by verse
    docstrings: list[str]  # "json.decoder.JSONDecoder.decode\n\n<its docstring>" of the standard library
    code_headers: list[str]  # what a stdlib module holds before its first definition (docstring, imports)
    code_blocks: list[str]  # one function, class head or method of the standard library, decorators included
    short_verses: list[str]  # verses far below the 200-character short-document cut

    @classmethod
    def load(cls, unit_chars: int) -> "TextPools":
        """Units of 40 to `unit_chars` characters."""
        docstrings = [f"{name}\n\n{doc}" for _, module in sample.stdlib_docstrings() for name, doc in module]
        headers, blocks = [], []
        for _, text in sample.stdlib_code_files():
            cuts = [m.start() for m in _DEFINITION.finditer(text)]
            if cuts:
                headers.append(text[: cuts[0]].rstrip())
                blocks += [text[a:b].rstrip() for a, b in zip(cuts, cuts[1:] + [len(text)])]
        verses = sample.kjv_verses()
        short = [v["text"] for v in verses if len(v["text"]) <= sample.SHORT_MAX_CHARS]
        return cls(
            verses, _sized(docstrings, unit_chars), _sized(headers, unit_chars), _sized(blocks, unit_chars), short
        )


def _sized(units: list[str], most: int) -> list[str]:
    return [u for u in units if 40 <= len(u) <= most]


@dataclass(kw_only=True, slots=True)
class CorpusShape:
    size_mb: float  # text of all documents, about 7:3 natural:code
    natural_chars: int = 2_500  # median document length (log-normal)
    code_chars: int = 4_000
    file_mb: float = 2.0  # text per data file: enough files that 2 workers end together
    unit_chars: int = 1_500  # longest unit (verse run, docstring, definition) a document is drawn from
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.size_mb > 0 or not self.file_mb > 0:
            raise ValueError(f"size_mb {self.size_mb} and file_mb {self.file_mb} must be positive")
        if min(self.natural_chars, self.code_chars) < 300:
            raise ValueError("natural_chars and code_chars must be at least 300: shorter documents are short documents")


def _length(rng: random.Random, median: int) -> int:
    return int(min(max(rng.lognormvariate(math.log(median), 0.7), 300), 40 * median))


def _draw(target: int, unit, separator: str = "\n\n") -> str:
    parts, size = [], 0
    while size < target or len(parts) < MIN_UNITS:
        parts.append(unit())
        size += len(parts[-1]) + len(separator)
    return separator.join(parts)


def _verse_run(pools: TextPools, rng: random.Random, max_chars: int) -> str:
    """1 to 4 consecutive verses of one chapter (fewer when they would pass `max_chars`), headed "Genesis 1:3-5"."""
    start = rng.randrange(len(pools.verses))
    run = [pools.verses[start]]
    for verse in pools.verses[start + 1 : start + rng.randint(1, 4)]:
        if verse["chapter"] != run[0]["chapter"] or sum(len(v["text"]) for v in run) + len(verse["text"]) > max_chars:
            break
        run.append(verse)
    head = f"{run[0]['book']} {run[0]['chapter']}:{run[0]['verse']}" + (f"-{run[-1]['verse']}" if len(run) > 1 else "")
    return head + "\n" + "\n".join(f"{v['verse']} {v['text']}" for v in run)


def natural_document(pools: TextPools, rng: random.Random, shape: CorpusShape) -> tuple[str, str]:
    """(subset, text): Bible passages as RedPajamaBook, docstrings spread over the other subsets."""
    target = _length(rng, shape.natural_chars)
    if rng.random() < 0.5:
        return "RedPajamaBook", _draw(target, lambda: _verse_run(pools, rng, shape.unit_chars))
    return rng.choice(sample.DOCSTRING_SUBSETS), _draw(target, lambda: rng.choice(pools.docstrings))


def code_document(pools: TextPools, rng: random.Random, median: int) -> str:
    """A module header followed by definitions drawn from all over the standard library."""
    body = _draw(_length(rng, median), lambda: rng.choice(pools.code_blocks), "\n\n\n")
    return rng.choice(pools.code_headers) + "\n\n\n" + body


@dataclass(slots=True)
class _Planter:
    """Plants copies of documents of earlier files, so that a copy is never in the same file as its original."""

    rng: random.Random
    earlier: list[str] = field(default_factory=list)  # candidate originals from files already written
    current: list[str] = field(default_factory=list)
    planted: dict[str, int] = field(default_factory=lambda: {"exact_duplicates": 0, "near_duplicates": 0})

    def document(self, make) -> str:
        roll = self.rng.random()
        if self.earlier and roll < 2 * PLANT_SHARE:
            original = self.rng.choice(self.earlier)
            # a near copy: one word in 1,000 characters (at least one) replaced, character 13-gram Jaccard ~0.9
            copy = (
                None if roll < PLANT_SHARE else sample.replace_words(original, max(1, len(original) // 1_000), self.rng)
            )
            self.planted["exact_duplicates" if copy is None else "near_duplicates"] += 1
            return copy or original
        text = make()
        if self.rng.random() < 4 * PLANT_SHARE and len(self.current) < 50_000:
            self.current.append(text)
        return text

    def next_file(self) -> None:
        self.earlier += self.current
        self.current = []


def _slimpajama_lines(pools: TextPools, shape: CorpusShape, planter: _Planter, budget: int) -> tuple[list[bytes], dict]:
    rng, lines, size, counts = planter.rng, [], 0, {"short_documents": 0, "excluded_subset": 0}
    while size < budget:
        roll = rng.random()
        if roll < PLANT_SHARE:
            subset, text = "RedPajamaBook", rng.choice(pools.short_verses)
            counts["short_documents"] += 1
        elif roll < 2 * PLANT_SHARE:
            subset, text = "RedPajamaGithub", code_document(pools, rng, shape.code_chars)
            counts["excluded_subset"] += 1
        else:
            subset, text = natural_document(pools, rng, shape)
            text = planter.document(lambda: text)
        lines.append(orjson.dumps({"text": text, "meta": {"redpajama_set_name": subset}}))
        size += len(text.encode())
    return lines, counts


def _write_slimpajama(root: Path, pools: TextPools, shape: CorpusShape, budget: int, summary: dict) -> None:
    planter = _Planter(random.Random(shape.seed))
    validation = budget * VALIDATION_SHARE / 2
    files = [f"validation/chunk{c}/example_validation_0.jsonl.zst" for c in (1, 2)]
    train_files = max(2, round((budget - 2 * validation) / (shape.file_mb * 1e6)))
    files += [f"train/chunk{1 + k % 2}/example_train_{k // 2}.jsonl.zst" for k in range(train_files)]
    compressor = zstandard.ZstdCompressor(level=sample.ZSTD_LEVEL)
    for k, rel in enumerate(files):
        share = validation if k < 2 else (budget - 2 * validation) / train_files
        lines, counts = _slimpajama_lines(pools, shape, planter, int(share))
        planter.next_file()
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(compressor.compress(b"\n".join(lines) + b"\n"))
        _count(summary, "slimpajama", rel, len(lines), counts)
    summary["planted"]["slimpajama"].update(planter.planted)


def _write_starcoder(root: Path, pools: TextPools, shape: CorpusShape, budget: int, summary: dict) -> None:
    planter = _Planter(random.Random(shape.seed + 1))
    count = max(2, round(budget / (shape.file_mb * 1e6)))
    for k in range(count):
        docs, size = [], 0
        while size < budget / count:
            docs.append(planter.document(lambda: code_document(pools, planter.rng, shape.code_chars)))
            size += len(docs[-1].encode())
        planter.next_file()
        rel = f"python/train-{k:05d}-of-{count:05d}.parquet"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        table = pa.table(
            {
                "max_stars_repo_path": pa.array([f"Lib/generated_{k}_{i}.py" for i in range(len(docs))], pa.string()),
                "id": pa.array([f"{k}-{i}" for i in range(len(docs))], pa.string()),
                "content": pa.array(docs, pa.string()),
            }
        )
        pq.write_table(table, root / rel)
        _count(summary, "starcoderdata", rel, len(docs), {})
    summary["planted"]["starcoderdata"].update(planter.planted)


def _count(summary: dict, source: str, rel: str, documents: int, planted: dict) -> None:
    summary["files"][source].append(rel)
    summary["documents"][source] += documents
    for kind, n in planted.items():
        summary["planted"][source][kind] = summary["planted"][source].get(kind, 0) + n


def write_corpus(out: Path, shape: CorpusShape) -> dict:
    """Write the corpus under `out` (SlimPajama-627B/, starcoderdata/, CORPUS.json) unless CORPUS.json says the
    same shape is already there; returns that summary."""
    marker = out / "CORPUS.json"
    wanted = {"shape": {f: getattr(shape, f) for f in CorpusShape.__slots__}}
    if marker.exists() and json.loads(marker.read_text())["shape"] == wanted["shape"]:
        return json.loads(marker.read_text())
    started = time.perf_counter()
    pools = TextPools.load(shape.unit_chars)
    summary = {
        **wanted,
        "files": {"slimpajama": [], "starcoderdata": []},
        "documents": {"slimpajama": 0, "starcoderdata": 0},
        "planted": {"slimpajama": {}, "starcoderdata": {}},
    }
    total = int(shape.size_mb * 1e6)
    natural = int(total * sample.NATURAL_SHARE)
    _write_slimpajama(out / sample.SLIMPAJAMA_DIR, pools, shape, natural, summary)
    _write_starcoder(out / sample.STARCODER_DIR, pools, shape, total - natural, summary)
    summary["seconds"] = round(time.perf_counter() - started, 1)
    marker.write_text(json.dumps(summary, indent=1))
    return summary


# ------------------------------------------------------------------------------------------------ recall corpus

FILE_BYTES = 400_000  # text per input file
MIN_CHARS = 1_500  # planted originals are at least this long, so 1-4 spans can reach any Jaccard in 0.5-1.0


def natural_documents() -> list[tuple[str, str]]:
    """(subset, text): every KJV chapter, and each stdlib module's docstrings in passages of ~1-4 KB."""
    docs = []
    for (book, chapter), verses in groupby(sample.kjv_verses(), key=lambda v: (v["book"], v["chapter"])):
        docs.append(
            (
                "RedPajamaBook",
                f"{book} {chapter}\n\n" + "\n".join(f"{chapter}:{v['verse']} {v['text']}" for v in verses),
            )
        )
    for _, docstrings in sample.stdlib_docstrings():
        passage = ""
        for name, doc in docstrings:
            passage += f"{name}\n\n{doc}\n\n"
            if len(passage) >= 4_000:
                docs.append(("RedPajamaWikipedia", passage.strip()))
                passage = ""
        if len(passage) >= 1_000:
            docs.append(("RedPajamaWikipedia", passage.strip()))
    return docs


def code_documents(budget: int) -> list[tuple[str, str]]:
    docs, size = [], 0
    for _, text in sample.stdlib_code_files():
        if size >= budget:
            break
        docs.append(("python", text))
        size += len(text)
    return docs


def near_copy_at(text: str, target: float, rng: random.Random, vocabulary: list[str]) -> tuple[str, float]:
    """`text` with words replaced in 1-4 spans, the replaced count searched so the Jaccard is nearest `target`."""
    words = text.split(" ")
    spans = rng.randint(1, 4)
    starts = sorted(rng.sample(range(len(words)), spans))
    fill = [rng.choice(vocabulary) for _ in words]
    original = shingles(text)

    def copy(m: int) -> str:
        per = -(-m // spans)
        out = list(words)
        for s in starts:
            for i in range(s, min(s + per, len(words))):
                out[i] = fill[i]
        return " ".join(out)

    low, high = 1, len(words)
    while low < high:  # the Jaccard falls as more words are replaced: the smallest m at or below the target
        mid = (low + high) // 2
        if jaccard(original, shingles(copy(mid))) > target:
            low = mid + 1
        else:
            high = mid
    best = min((max(1, low - 1), low), key=lambda m: abs(jaccard(original, shingles(copy(m))) - target))
    text_copy = copy(best)
    return text_copy, jaccard(original, shingles(text_copy))


def plant_recall_pairs(files: dict[str, list[dict]], pairs: int, chains: int, rng: random.Random) -> list[dict]:
    """Plants `pairs` near copies of distinct long documents, each in another file than its original, and
    `chains` chains of 4-6 documents, each a copy of the one before at J 0.85-0.9 (a chain's ends are far apart)."""
    docs = [(name, d) for name, entries in files.items() for d in entries if len(d["text"]) >= MIN_CHARS]
    vocabulary = sorted({w for _, d in docs[:200] for w in d["text"].split() if w.isalpha() and len(w) > 2})
    names = sorted(files)
    planted = []

    def place(name: str, doc: dict, target: float, chain: int | None) -> dict:
        text, j = near_copy_at(doc["text"], target, rng, vocabulary)
        same_source = [n for n in names if n != name and n.split("/")[0] == name.split("/")[0]]
        other = [n for n in names if n.split("/")[0] != name.split("/")[0]]
        home = rng.choice(other if rng.random() < 0.2 else same_source)
        copy = {"text": text, "subset": doc["subset"], "id": f"planted-{len(planted)}"}
        files[home].insert(rng.randint(0, len(files[home])), copy)
        planted.append({"original": doc["id"], "copy": copy["id"], "jaccard": j, "chain": chain})
        return copy

    originals = rng.sample(docs, pairs + chains)
    for name, doc in originals[:pairs]:
        place(name, doc, rng.uniform(0.85, 1.0) if rng.random() < 0.4 else rng.uniform(0.5, 0.85), None)
    for number, (name, doc) in enumerate(originals[pairs:]):
        for _ in range(rng.randint(3, 5)):
            doc = place(name, doc, rng.uniform(0.85, 0.9), number)
    return planted


def write_recall_corpus(folder: Path, pairs: int, chains: int, seed: int) -> tuple[dict[str, dict], list[dict]]:
    """The corpus under `folder`; returns {"source/rel path#ordinal": document} and the planted pairs."""
    rng = random.Random(seed)
    natural = natural_documents()
    code = code_documents(int(sum(len(t) for _, t in natural) * 3 / 7))
    files: dict[str, list[dict]] = defaultdict(list)
    for prefix, docs, kind in (("slimpajama", natural, "jsonl"), ("starcoderdata", code, "parquet")):
        rng.shuffle(docs)
        count = max(2, sum(len(t) for _, t in docs) // FILE_BYTES)
        for i, (subset, text) in enumerate(docs):
            name = (
                f"{prefix}/train/chunk1/train_{i % count:03d}.jsonl.zst"
                if kind == "jsonl"
                else f"{prefix}/python/train-{i % count:05d}.parquet"
            )
            files[name].append({"text": text, "subset": subset, "id": f"{prefix}-{i}"})
    validation = files.pop(
        sorted(n for n in files if n.startswith("slimpajama"))[-1]
    )  # SlimPajama has a validation split
    files["slimpajama/validation/chunk1/validation_000.jsonl.zst"] = validation[:20]
    planted = plant_recall_pairs({n: e for n, e in files.items() if "validation" not in n}, pairs, chains, rng)
    by_key = {}
    for name, entries in files.items():
        path = folder / name.replace("slimpajama/", "SlimPajama-627B/", 1)
        path.parent.mkdir(parents=True, exist_ok=True)
        if name.endswith(".jsonl.zst"):
            lines = b"".join(
                orjson.dumps({"text": d["text"], "meta": {"redpajama_set_name": d["subset"]}}) + b"\n" for d in entries
            )
            path.write_bytes(zstandard.ZstdCompressor(level=3).compress(lines))
            by_key.update({f"{name}#{line}": d for line, d in enumerate(entries, 1)})
        else:
            pq.write_table(
                pa.table(
                    {
                        "max_stars_repo_path": [f"Lib/{i}.py" for i in range(len(entries))],
                        "max_stars_repo_name": ["python/cpython"] * len(entries),
                        "max_stars_count": pa.array([1] * len(entries), pa.int64()),
                        "id": [d["id"] for d in entries],
                        "content": [d["text"] for d in entries],
                    }
                ),
                path,
            )
            by_key.update({f"{name}#{row}": d for row, d in enumerate(entries)})
    return by_key, planted
