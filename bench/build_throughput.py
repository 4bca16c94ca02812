"""Corpus build throughput: tokenmill against datatrove 0.10.1 on the same generated corpus, in one invocation.

    python bench/build_throughput.py --work /tmp/tm-build-bench [--size-mb 100] [--workers 2]
    tokenmill bench --work /tmp/tm-build-bench --size-mb 30 --memory-docs 1000000

1. Writes a corpus of `--size-mb` MB of real text in the SlimPajama (JSONL.zst, `meta.redpajama_set_name`) and
   StarCoderData (parquet, `content`) layouts, about 7:3 natural:code, with 1% planted exact duplicates, 1% near
   duplicates, 1% short documents and 1% RedPajamaGithub documents (`write_corpus`).
2. Measures on that corpus, each row timed on its own: bare sentencepiece `encode(list, num_threads=workers)`;
   tokenmill's tokenize stage (`Tokenizer.encode` per batch in `workers` processes, as the build runs it);
   `tokenmill build` with the sample recipe (TinyLlama's rules: subset rule, short documents, exact + MinHash
   dedupe, tokenize, mix) and with the web-quality recipe (datatrove's Gopher, C4 and FineWeb filters, StarCoder
   code rules); datatrove's own pipeline doing the same work (readers -> the same filters -> MinHash stages ->
   DocumentTokenizer -> merger) with the same sentencepiece model converted to HF tokenizers.
3. With `--memory-docs N`: per-task peak RSS and time of the build's own task functions (process, dedupe
   partition, resolve, mix) at 0.1x, 0.3x and 1x of an N-document corpus of short documents.
4. Prints one table last: MB/s of input text (UTF-8 bytes of every readable document) and ratios.

The machine is shared and noisy: compare rows of the same run, and repeat (`--repeat`) when a ratio matters.
"""
from __future__ import annotations

import argparse
import json
import math
import random
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import orjson  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import zstandard  # noqa: E402

from pipeline import sample  # noqa: E402

RECIPES = REPO / "manifests" / "recipes"
DOCSTRING_SUBSETS = sample.DOCSTRING_SUBSETS
MAX_UNIT_CHARS = 1_500  # no unit may dominate a document: two documents sharing one unit stay far from duplicates
MIN_UNITS = 3
PLANT_SHARE = 0.01  # of each kind: exact copies, near copies, short documents, RedPajamaGithub documents
VALIDATION_SHARE = 0.02
REPLACEMENT_WORDS = sample.REPLACEMENT_WORDS
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
    def load(cls) -> "TextPools":
        docstrings = []
        for rel, path in sample._stdlib_sources(sample.DOCSTRING_SKIP_DIRS):
            try:
                tree = sample._parse(path.read_bytes())
            except (SyntaxError, ValueError):  # test fixtures: deliberately broken or Python 2 code
                continue
            docstrings += [f"{name}\n\n{doc}" for name, doc in sample._docstrings(tree, sample._module_name(rel))]
        headers, blocks = [], []
        for _, text in sample._stdlib_code_files():
            cuts = [m.start() for m in _DEFINITION.finditer(text)]
            if cuts:
                headers.append(text[: cuts[0]].rstrip())
                blocks += [text[a:b].rstrip() for a, b in zip(cuts, cuts[1:] + [len(text)])]
        small = lambda units: [u for u in units if 40 <= len(u) <= MAX_UNIT_CHARS]  # noqa: E731
        verses = sample._kjv_verses()
        short = [v["text"] for v in verses if len(v["text"]) <= sample.SHORT_MAX_CHARS]
        return cls(verses, small(docstrings), small(headers), small(blocks), short)


@dataclass(kw_only=True, slots=True)
class CorpusShape:
    size_mb: float  # text of all documents, about 7:3 natural:code
    natural_chars: int = 2_500  # median document length (log-normal)
    code_chars: int = 4_000
    file_mb: float = 2.0  # text per data file: enough files that 2 workers end together
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


def _verse_run(pools: TextPools, rng: random.Random) -> str:
    """1 to 4 consecutive verses of one chapter, headed like "Genesis 1:3-5"."""
    start = rng.randrange(len(pools.verses))
    run = [v for v in pools.verses[start : start + rng.randint(1, 4)] if v["chapter"] == pools.verses[start]["chapter"]]
    head = f"{run[0]['book']} {run[0]['chapter']}:{run[0]['verse']}" + (f"-{run[-1]['verse']}" if len(run) > 1 else "")
    return head + "\n" + "\n".join(f"{v['verse']} {v['text']}" for v in run)


def natural_document(pools: TextPools, rng: random.Random, median: int) -> tuple[str, str]:
    """(subset, text): Bible passages as RedPajamaBook, docstrings spread over the other subsets."""
    target = _length(rng, median)
    if rng.random() < 0.5:
        return "RedPajamaBook", _draw(target, lambda: _verse_run(pools, rng))
    return rng.choice(DOCSTRING_SUBSETS), _draw(target, lambda: rng.choice(pools.docstrings))


def code_document(pools: TextPools, rng: random.Random, median: int) -> str:
    """A module header followed by definitions drawn from all over the standard library."""
    body = _draw(_length(rng, median), lambda: rng.choice(pools.code_blocks), "\n\n\n")
    return rng.choice(pools.code_headers) + "\n\n\n" + body


def near_copy(text: str, rng: random.Random) -> str:
    """`text` with one word in 1,000 characters (at least one) replaced: character 13-gram Jaccard ~0.9."""
    words = text.split(" ")
    candidates = [i for i, w in enumerate(words) if w.isalpha() and len(w) > 3]
    for i in rng.sample(candidates, min(len(candidates), max(1, len(text) // 1_000))):
        words[i] = rng.choice([w for w in REPLACEMENT_WORDS if w != words[i].lower()])
    return " ".join(words)


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
            kind = "exact_duplicates" if roll < PLANT_SHARE else "near_duplicates"
            self.planted[kind] += 1
            original = self.rng.choice(self.earlier)
            return original if kind == "exact_duplicates" else near_copy(original, self.rng)
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
            subset, text = natural_document(pools, rng, shape.natural_chars)
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
        table = pa.table({
            "max_stars_repo_path": pa.array([f"Lib/generated_{k}_{i}.py" for i in range(len(docs))], pa.string()),
            "id": pa.array([f"{k}-{i}" for i in range(len(docs))], pa.string()),
            "content": pa.array(docs, pa.string()),
        })
        pq.write_table(table, root / rel)
        _count(summary, "starcoderdata", rel, len(docs), {})
    summary["planted"]["starcoderdata"].update(planter.planted)


def _count(summary: dict, source: str, rel: str, documents: int, planted: dict) -> None:
    summary["files"][source].append(rel)
    summary["documents"][source] += documents
    for kind, n in planted.items():
        summary["planted"][source][kind] = summary["planted"][source].get(kind, 0) + n


def write_corpus(out: Path, shape: CorpusShape, pools: TextPools | None = None) -> dict:
    """Write the corpus under `out` (SlimPajama-627B/, starcoderdata/, CORPUS.json) unless CORPUS.json says the
    same shape is already there; returns that summary."""
    marker = out / "CORPUS.json"
    wanted = {"shape": {f: getattr(shape, f) for f in CorpusShape.__slots__}}
    if marker.exists() and json.loads(marker.read_text())["shape"] == wanted["shape"]:
        return json.loads(marker.read_text())
    started = time.perf_counter()
    pools = pools or TextPools.load()
    summary = {**wanted, "files": {"slimpajama": [], "starcoderdata": []}, "documents": {"slimpajama": 0, "starcoderdata": 0},
               "planted": {"slimpajama": {}, "starcoderdata": {}}}
    total = int(shape.size_mb * 1e6)
    natural = int(total * sample.NATURAL_SHARE)
    _write_slimpajama(out / sample.SLIMPAJAMA_DIR, pools, shape, natural, summary)
    _write_starcoder(out / sample.STARCODER_DIR, pools, shape, total - natural, summary)
    summary["seconds"] = round(time.perf_counter() - started, 1)
    marker.write_text(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    import tempfile
    t = time.perf_counter(); pools = TextPools.load(); print("pools", time.perf_counter() - t, len(pools.verses), len(pools.docstrings), len(pools.code_headers), len(pools.code_blocks))
    print(json.dumps(write_corpus(Path(sys.argv[1]), CorpusShape(size_mb=float(sys.argv[2])), pools), indent=1)[:3000])
