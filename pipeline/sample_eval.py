"""Eval sets for the sample corpus, and their items planted in it: what the decontamination tests and the demo use.

`tokenmill sample OUT --plant-eval DIR` (or `plant_eval_items(OUT, DIR)` after `write_sample_corpus`) writes two
eval sets to DIR and plants part of their items into the sample's files; without the option the sample's bytes
are exactly as before. The items are real text the sample never holds:
- `natural.jsonl`: {"question": three verses, "answer": the next verse} of the King James New Testament, from
  Revelation backwards (the sample's Bible passages run from Genesis on and stop long before);
- `code.jsonl`: {"prompt": a function's signature and docstring, "solution": its body} of standard-library
  functions in modules the sample's code never reaches (its files are taken in path order from the start).
Planted, each in its own document: natural items verbatim (a new document of just the item), embedded in a
longer document, with case, whitespace or punctuation changed, and split across a line break; code items
appended to a StarCoderData file's content, verbatim or re-indented. The rest of each set is never planted:
it measures false matches. DIR/PLANTED_EVAL.json lists every planted item with its variant and document.
"""

from __future__ import annotations

import ast
import io
import json
import random
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import zstandard

from pipeline.sample_corpus import (
    SLIMPAJAMA,
    SLIMPAJAMA_DIR,
    STARCODER,
    STARCODER_DIR,
    ZSTD_LEVEL,
    kjv_verses,
    python_functions,
    python_sources,
)
from stages.normalize import DELETE_PUNCTUATION_AND_SPACE

NATURAL_VARIANTS = ("verbatim", "embedded", "case", "whitespace", "punctuation", "line_break")
PER_VARIANT = 60  # natural items planted per variant: 360 in all
NATURAL_UNPLANTED = 200
CODE_VARIANTS = ("verbatim", "reindented")
CODE_PER_VARIANT = 20
CODE_UNPLANTED = 40
CODE_MODULES_FROM = "u"  # stdlib paths from here on: beyond what any sample size takes (sorted path order)
CODE_LINES = (6, 40)
MIN_CHARS = 250  # the sample recipe drops documents under 200 characters without punctuation and whitespace
_SEED = 30  # its own generator: the sample's seeded choices are untouched


def natural_items(count: int) -> list[dict]:
    """`count` items of four consecutive verses of one chapter, from Revelation backwards, each at least MIN_CHARS
    long without punctuation and whitespace (so a document of the item alone passes the short-document filter)."""
    by_chapter: dict[tuple[str, int], list[str]] = {}
    for v in kjv_verses():
        by_chapter.setdefault((v["book"], v["chapter"]), []).append(v["text"])
    items = []
    for (book, chapter), verses in reversed(list(by_chapter.items())):
        for i in range(0, len(verses) - 3, 4):
            item = {"id": f"{book} {chapter}:{i + 1}", "question": " ".join(verses[i : i + 3]), "answer": verses[i + 3]}
            if len(_item_text(item, ("question", "answer")).translate(DELETE_PUNCTUATION_AND_SPACE)) < MIN_CHARS:
                continue
            items.append(item)
            if len(items) == count:
                return items
    raise ValueError(f"only {len(items)} natural items available, {count} asked")


def code_items(count: int) -> list[dict]:
    """`count` standard-library functions with a docstring and CODE_LINES lines, in path order from
    CODE_MODULES_FROM."""
    items = []
    sources = python_sources({"site-packages", "__pycache__", "test", "tests", "idle_test"})
    for function in python_functions(s for s in sources if s.rel >= CODE_MODULES_FROM):
        node = function.node
        if not isinstance(node, ast.FunctionDef):
            continue
        if ast.get_docstring(node) is None or not CODE_LINES[0] <= node.end_lineno - node.lineno + 1 <= CODE_LINES[1]:
            continue
        body_start = node.body[0].end_lineno  # the docstring's last line
        if body_start >= node.end_lineno:
            continue
        items.append(
            {
                "id": f"{function.module}:{node.name}",
                "prompt": function.text(end=body_start),
                "solution": function.text(first=body_start + 1),
            }
        )
        if len(items) == count:
            return items
    raise ValueError(f"only {len(items)} code items available, {count} asked")


def _item_text(item: dict, fields: tuple[str, ...]) -> str:
    return "\n".join(item[f] for f in fields)


def _variant(text: str, variant: str, rng: random.Random) -> str:
    words = text.split(" ")
    if variant == "case":
        return text.upper() if rng.random() < 0.5 else " ".join(w.capitalize() for w in words)
    if variant == "whitespace":
        return "".join(w + rng.choice(["  ", "\t", " \n ", "   "]) for w in words).strip()
    if variant == "punctuation":
        stripped = text.translate(str.maketrans("", "", ",.;:"))
        return " ".join(w + (rng.choice(",;!") if rng.random() < 0.2 else "") for w in stripped.split(" "))
    if variant == "line_break":
        cut = len(words) // 2
        return " ".join(words[:cut]) + "\n" + " ".join(words[cut:])
    return text


def _read_jsonl_zst(path: Path) -> list[bytes]:
    return zstandard.ZstdDecompressor().decompressobj().decompress(path.read_bytes()).splitlines()


def plant_eval_items(corpus: Path, eval_dir: Path) -> dict:
    """Write DIR/natural.jsonl and DIR/code.jsonl and plant part of their items into the sample at `corpus` (written
    by `write_sample_corpus`); returns (and writes to DIR/PLANTED_EVAL.json) what went where."""
    corpus, eval_dir = Path(corpus), Path(eval_dir)
    planted_before = json.loads((corpus / "PLANTED.json").read_text())
    pairs = {doc for kind in planted_before["pairs"].values() for pair in kind for doc in pair}
    rng = random.Random(_SEED)
    natural = natural_items(PER_VARIANT * len(NATURAL_VARIANTS) + NATURAL_UNPLANTED)
    code = code_items(CODE_PER_VARIANT * len(CODE_VARIANTS) + CODE_UNPLANTED)
    eval_dir.mkdir(parents=True, exist_ok=True)
    (eval_dir / "natural.jsonl").write_bytes(b"".join(orjson.dumps(i) + b"\n" for i in natural))
    (eval_dir / "code.jsonl").write_bytes(b"".join(orjson.dumps(i) + b"\n" for i in code))
    planted = {"natural": [], "code": []}
    _plant_natural(corpus / SLIMPAJAMA_DIR, natural, pairs, rng, planted["natural"])
    _plant_code(corpus / STARCODER_DIR, code, pairs, rng, planted["code"])
    summary = {
        "sets": {
            "natural": {"file": "natural.jsonl", "fields": ["question", "answer"], "items": len(natural)},
            "code": {"file": "code.jsonl", "fields": ["prompt", "solution"], "items": len(code)},
        },
        "planted": planted,
    }
    (eval_dir / "PLANTED_EVAL.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def _plant_natural(root: Path, items: list[dict], pairs: set[str], rng: random.Random, planted: list[dict]) -> None:
    files = sorted(p for p in root.glob("train/chunk*/*.jsonl.zst") if p.stat().st_size)
    contents = {p: _read_jsonl_zst(p) for p in files}
    hosts = [
        (p, n)
        for p, lines in contents.items()
        for n, line in enumerate(lines)
        if _host(line, f"{SLIMPAJAMA}/{p.relative_to(root)}#{n + 1}", pairs)
    ]
    hosts = rng.sample(hosts, len(hosts))
    embedded: dict[tuple[Path, int], list[tuple[int, str]]] = {}  # host -> (item number, text), a few items per host
    for item_no in range(PER_VARIANT * len(NATURAL_VARIANTS)):
        variant = NATURAL_VARIANTS[item_no // PER_VARIANT]
        text = _variant(_item_text(items[item_no], ("question", "answer")), variant, rng)
        if variant == "verbatim":  # a document of its own, at the end of a file
            path = files[item_no % len(files)]
            contents[path].append(orjson.dumps({"text": text, "meta": {"redpajama_set_name": "RedPajamaC4"}}))
            where = (path, len(contents[path]))
        else:
            host = hosts[item_no % len(hosts)]
            embedded.setdefault(host, []).append((item_no, text))
            where = (host[0], host[1] + 1)
        planted.append(
            {
                "item": f"natural.jsonl#{item_no + 1}",
                "variant": variant,
                "doc": f"{SLIMPAJAMA}/{where[0].relative_to(root)}#{where[1]}",
            }
        )
    for (path, index), texts in embedded.items():
        doc = orjson.loads(contents[path][index])
        spaces = [i for i, c in enumerate(doc["text"]) if c == " "]
        cuts = sorted(rng.sample(spaces, len(texts)))  # each item at its own space of the original text
        parts, start = [], 0
        for cut, (_, text) in zip(cuts, texts):
            parts += [doc["text"][start:cut], " ", text, " "]
            start = cut
        doc["text"] = "".join(parts) + doc["text"][start:]
        contents[path][index] = orjson.dumps(doc)
    compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
    for path, lines in contents.items():
        path.write_bytes(compressor.compress(b"".join(line + b"\n" for line in lines)))


def _host(line: bytes, doc: str, pairs: set[str]) -> bool:
    """A document an item may be embedded in: valid, long, kept by the recipe's filters, in no planted pair."""
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError:
        return False
    text = record.get("text")
    return (
        isinstance(text, str)
        and len(text) >= 1000
        and doc not in pairs
        and " " in text
        and record.get("meta", {}).get("redpajama_set_name") != "RedPajamaGithub"
    )


def _plant_code(root: Path, items: list[dict], pairs: set[str], rng: random.Random, planted: list[dict]) -> None:
    files = sorted(root.glob("python/train-*.parquet"))
    tables = {p: pq.read_table(p).to_pylist() for p in files}
    hosts = [
        (p, r)
        for p, rows in tables.items()
        for r, row in enumerate(rows)
        if f"{STARCODER}/{p.relative_to(root)}#{r}" not in pairs
    ]
    hosts = rng.sample(hosts, len(hosts))
    item_no = 0
    for variant in CODE_VARIANTS:
        for _ in range(CODE_PER_VARIANT):
            text = _item_text(items[item_no], ("prompt", "solution"))
            if variant == "reindented":  # tabs for 4 spaces, trailing spaces: the words stay the same
                text = "\n".join(line.replace("    ", "\t") + "  " for line in text.splitlines())
            path, row = hosts[item_no % len(hosts)]  # a few functions per file when there are few files
            tables[path][row]["content"] += "\n\n" + text + "\n"
            planted.append(
                {
                    "item": f"code.jsonl#{item_no + 1}",
                    "variant": variant,
                    "doc": f"{STARCODER}/{path.relative_to(root)}#{row}",
                }
            )
            item_no += 1
    for path, rows in tables.items():
        schema = pq.read_schema(path)
        buffer = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), buffer)
        path.write_bytes(buffer.getvalue())
