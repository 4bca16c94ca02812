"""Every kind of bad input, each in a file of its own between good documents, through one real `tokenmill build`:
each bad record is counted under its reason and quarantined with its file and line/row, and every good
document, including those next to bad ones, reaches the shards."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
import zstandard

from manifests.keys import doc_key
from manifests.manifest import load
from manifests.outputs import QUARANTINE
from manifests.shards import read_index
from tests.support.faults import start_build

HUGE_DOCUMENT_BYTES = 50_000_000  # over the default max_document_bytes of 10 MB


class GoodText:
    """Documents of ~800 characters of random words: no two are near-duplicates, none is filtered."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.vocabulary = [
            "".join(self.rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(self.rng.randint(3, 9)))
            for _ in range(3000)
        ]

    def text(self) -> str:
        return " ".join(self.rng.choice(self.vocabulary) for _ in range(120))

    def line(self) -> bytes:
        return jsonl_line(self.text())

    def rows(self, n: int) -> list[bytes]:
        return [self.text().encode() for _ in range(n)]


def jsonl_line(text: str) -> bytes:
    return json.dumps({"text": text}).encode()


def zst(*lines: bytes) -> bytes:
    return zstandard.ZstdCompressor().compress(b"".join(line + b"\n" for line in lines))


def write_corpus(root: Path) -> tuple[dict[str, list[int]], list[tuple[str, str, str, str]]]:
    """Writes root/web (JSONL) and root/code (parquet). Returns the good documents ({"source/path": [line or
    row]}) and the bad ones [(source, path, location, reason)] ("byte" as location: any byte offset)."""
    good = GoodText(seed=6)
    bad_lines = {
        "invalid-json": (b'{"text": "no closing brace"', "invalid_json"),
        "invalid-utf8": (b'{"text": "caf\xe9 latin-1, not UTF-8"}', "invalid_utf8"),
        "missing-text": (json.dumps({"content": "the text is under another key"}).encode(), "missing_text"),
        "whitespace": (jsonl_line(" \n\t \u3000 "), "empty_text"),
        "nul": (jsonl_line("before\x00after" + " padding" * 40), "nul_bytes"),
        "huge": (jsonl_line("lorem ipsum " * (HUGE_DOCUMENT_BYTES // 12)), "oversized_document"),
    }
    web, code = root / "web", root / "code" / "python"
    web.mkdir(parents=True)
    code.mkdir(parents=True)
    goods: dict[str, list[int]] = {"web/good.jsonl.zst": [1, 2, 3]}
    bads = []
    (web / "good.jsonl.zst").write_bytes(zst(good.line(), good.line(), good.line()))
    for name, (line, reason) in bad_lines.items():
        (web / f"{name}.jsonl.zst").write_bytes(zst(good.line(), line, good.line()))
        goods[f"web/{name}.jsonl.zst"] = [1, 3]
        bads.append(("web", f"{name}.jsonl.zst", "line 2", reason))
    # two frames, the second cut in half: the first frame's lines are read, the rest is one bad record
    second = zst(good.line())
    (web / "truncated.jsonl.zst").write_bytes(zst(good.line(), good.line()) + second[: len(second) // 2])
    goods["web/truncated.jsonl.zst"] = [1, 2]
    bads.append(("web", "truncated.jsonl.zst", "byte", "truncated_compressed"))
    (web / "empty.jsonl.zst").write_bytes(b"")
    bads.append(("web", "empty.jsonl.zst", "file", "empty_file"))

    pq.write_table(pa.table({"content": pa.array(good.rows(3), pa.binary())}), code / "good.parquet")
    goods["code/python/good.parquet"] = [0, 1, 2]
    rows = [*good.rows(1), b" \t\n ", b"before\x00after" + b" padding" * 40, b"caf\xe9 latin-1", *good.rows(1)]
    pq.write_table(pa.table({"content": pa.array(rows, pa.binary())}), code / "rows.parquet")
    goods["code/python/rows.parquet"] = [0, 4]
    bads += [
        ("code", "python/rows.parquet", f"row {i}", r)
        for i, r in ((1, "empty_text"), (2, "nul_bytes"), (3, "invalid_utf8"))
    ]
    pq.write_table(pa.table({"text": pa.array(good.rows(2))}), code / "missing-column.parquet")
    (code / "not-parquet.parquet").write_bytes(b"this is a text file with a .parquet name\n" * 20)
    (code / "empty.parquet").write_bytes(b"")
    bads += [
        ("code", f"python/{name}.parquet", "file", reason)
        for name, reason in (
            ("missing-column", "missing_text_column"),
            ("not-parquet", "not_parquet"),
            ("empty", "empty_file"),
        )
    ]
    return goods, bads


def write_recipe(root: Path, tokenizer_model: Path) -> Path:
    recipe = {
        "name": "bad-input",
        "sources": [
            {"name": "web", "kind": "jsonl", "root": str(root / "web"), "train": ["*.jsonl.zst"]},
            {
                "name": "code",
                "kind": "parquet",
                "root": str(root / "code"),
                "train": ["python/*.parquet"],
                "text_field": "content",
            },
        ],
        "tokenizer": {"model": str(tokenizer_model)},
        "dedupe": {"partitions": 2},
        "mix": {"policy": "natural", "shard_tokens": 10_000_000},  # natural: every kept document once
    }
    path = root / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.mark.slow
def test_every_bad_input_kind_is_counted_and_quarantined_and_no_good_document_is_lost(tmp_path, tokenizer_model):
    goods, bads = write_corpus(tmp_path)
    run = start_build(write_recipe(tmp_path, tokenizer_model), tmp_path / "out", "--workers", "2")
    assert run.wait() == 0, run.stderr()[-3000:]
    out = tmp_path / "out"
    manifest = load(out)

    quarantined = [json.loads(line) for line in (out / QUARANTINE).read_text().splitlines()]
    found = sorted(
        (q["source"], q["path"], "byte" if q["location"].startswith("byte ") else q["location"], q["reason"])
        for q in quarantined
    )
    assert found == sorted(bads)
    assert all(q["error"] for q in quarantined)
    for source in manifest.sources:
        expected = {}
        for name, _, _, reason in bads:
            if name == source.name:
                expected[reason] = expected.get(reason, 0) + 1
        assert source.dropped == expected, source.name
    assert manifest.quarantine.records == len(bads)

    file_index = {f"{i.source}/{i.path}": n for n, i in enumerate(manifest.inputs)}
    expected_origins = {doc_key(file_index[path], ordinal) for path, ordinals in goods.items() for ordinal in ordinals}
    origins = set()
    for ref in manifest.shards("train"):
        origins |= set(read_index(ref.idx_path).origins.tolist())
    assert origins == expected_origins
