"""`tokenmill stats`: stats.json against a recount of the shards, report.html read back from headless Chromium."""
from __future__ import annotations

import ast
import hashlib
import importlib.resources
import json
import shutil
import subprocess
import sysconfig
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm

from pipeline import manifest as manifest_io
from pipeline.report import chromium_command, lookup
from pipeline.stats import LENGTH_EDGES, length_buckets, main, write_report
from stages.document import global_doc_key
from stages.shards import encode_index, open_tokens, read_index, sha256_file

TOKENIZER = Path(str(importlib.resources.files("mistral_common") / "data/tokenizer.model.v1"))
PROSE_SUBSETS = ("RedPajamaWikipedia", "RedPajamaArXiv", "RedPajamaBook")
CODE_MODULES = ("json/decoder.py", "json/encoder.py", "textwrap.py", "string.py", "bisect.py", "heapq.py", "colorsys.py",
                "keyword.py", "fnmatch.py", "glob.py", "shlex.py", "copy.py", "base64.py", "calendar.py")


def stdlib_documents() -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(subset, text) documents: docstrings of stdlib modules as prose, the modules themselves as code."""
    lib = Path(sysconfig.get_paths()["stdlib"])
    prose, code = [], []
    for name in CODE_MODULES:
        source = (lib / name).read_text()
        code.append(("python", source))
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.Module)) and ast.get_docstring(node):
                prose.append((PROSE_SUBSETS[len(prose) % 3], ast.get_docstring(node)))
    return prose, code


def write_shard(root: Path, name: str, docs: list[tuple[int, int, list[int]]]) -> dict:
    """docs: (source id, origin key, token ids). Returns the manifest's shard entry."""
    tokens = np.concatenate([np.asarray(t, dtype="<u2") for _, _, t in docs])
    ends = np.cumsum([len(t) for _, _, t in docs], dtype=np.uint64)
    (root / f"{name}.bin").write_bytes(tokens.tobytes())
    (root / f"{name}.idx").write_bytes(encode_index(np.dtype("<u2"), ends, np.array([s for s, _, _ in docs]), np.array([o for _, o, _ in docs])))
    by_source: dict[str, int] = {}
    for source, _, t in docs:
        key = ("prose", "code")[source]
        by_source[key] = by_source.get(key, 0) + len(t)
    return {"bin": f"{name}.bin", "idx": f"{name}.idx", "bin_sha256": sha256_file(root / f"{name}.bin"), "idx_sha256": sha256_file(root / f"{name}.idx"),
            "bin_bytes": tokens.nbytes, "idx_bytes": (root / f"{name}.idx").stat().st_size, "documents": len(docs), "tokens": int(ends[-1]), "tokens_by_source": by_source}


def build_fixture_corpus(root: Path, code_weight: float = 3.0) -> Path:
    """A small real build: stdlib text tokenized by the real mistral sentencepiece model, dropped and kept the
    way the build does (short documents, exact duplicates), written as shards + manifest + build_stats.json."""
    root.mkdir(parents=True, exist_ok=True)
    sp = spm.SentencePieceProcessor(model_file=str(TOKENIZER))
    prose, code = stdlib_documents()
    sources = {"prose": prose + prose[:5], "code": code}  # five exact duplicates planted in prose
    subsets, docs, seen = {}, {"train": [], "validation": []}, set()
    for source_id, (name, documents) in enumerate(sources.items()):
        for ordinal, (subset, text) in enumerate(documents, start=1):
            rec = subsets.setdefault(f"{name}/{subset}", {"source": name, "subset": subset, "documents_read": 0, "bytes_read": 0, "chars_read": 0, "dropped": {},
                                                            "documents_kept": 0, "chars_kept": 0, "tokens_kept": 0, "char_hist": [0] * 32, "token_hist": [0] * 32})
            rec["documents_read"] += 1
            rec["bytes_read"] += len(text.encode())
            rec["chars_read"] += len(text)
            reason = "short_document" if len(text) < 200 and name == "prose" else "exact_duplicate" if text in seen else None
            seen.add(text)
            if reason:
                rec["dropped"][reason] = rec["dropped"].get(reason, 0) + 1
                continue
            ids = sp.encode(text) + [sp.eos_id()]
            rec["documents_kept"] += 1
            rec["chars_kept"] += len(text)
            rec["tokens_kept"] += len(ids)
            rec["char_hist"][len(text).bit_length()] += 1
            rec["token_hist"][len(ids).bit_length()] += 1
            split = "validation" if ordinal % 10 == 0 else "train"
            docs[split].append((source_id, global_doc_key(source_id * 2 + (split == "validation"), ordinal), ids))
    half = len(docs["train"]) // 2
    shards = {"train": [write_shard(root, "train-00000", docs["train"][:half]), write_shard(root, "train-00001", docs["train"][half:])],
              "validation": [write_shard(root, "validation-00000", docs["validation"])]}
    write_manifest(root, subsets, shards, code_weight)
    stats = {"format": "tokenmill.build_stats", "version": 1, "histogram_edges": {"chars": LENGTH_EDGES, "tokens": LENGTH_EDGES}, "subsets": subsets,
             "duplicates": {"exact_removed": 5, "near_removed": 0, "cluster_sizes": {"2": 5}},
             "stages": {"fetch": {"seconds": 0.8, "tasks": 4, "input_bytes": sum(r["bytes_read"] for r in subsets.values()), "documents": sum(r["documents_read"] for r in subsets.values())},
                        "tokenize": {"seconds": 0.5, "tasks": 4, "input_bytes": 0, "documents": sum(r["documents_kept"] for r in subsets.values())}},
             "workers": 2, "wall_seconds": 1.9}
    (root / "build_stats.json").write_text(json.dumps(stats))
    return root / "manifest.json"


def write_manifest(root: Path, subsets: dict, shards: dict, code_weight: float) -> None:
    def total(name: str, key: str) -> int:
        return sum(r[key] for r in subsets.values() if r["source"] == name)

    def dropped(name: str) -> dict:
        out: dict[str, int] = {}
        for r in subsets.values():
            if r["source"] == name:
                for reason, n in r["dropped"].items():
                    out[reason] = out.get(reason, 0) + n
        return out

    splits = {}
    for split, entries in shards.items():
        by_source: dict[str, int] = {}
        for e in entries:
            for k, v in e["tokens_by_source"].items():
                by_source[k] = by_source.get(k, 0) + v
        splits[split] = {"documents": sum(e["documents"] for e in entries), "tokens": sum(e["tokens"] for e in entries), "tokens_by_source": by_source, "shards": entries}
    weights = {"prose": 7.0, "code": code_weight}
    data = {
        "format": "tokenmill.manifest", "format_version": 1, "tool_version": "0.1.0", "created_at": "2026-11-22T05:00:00Z",
        "recipe": {"name": "stats-fixture"}, "recipe_sha256": hashlib.sha256(repr(weights).encode()).hexdigest(),
        "tokenizer": {"uri": "pkg://mistral_common/data/tokenizer.model.v1", "sha256": sha256_file(TOKENIZER), "vocab_size": 32000, "bos_id": 1, "eos_id": 2, "add_bos": False, "add_eos": True},
        "dtype": "uint16",
        "inputs": [{"source": s, "split": sp, "path": f"{s}/{sp}.jsonl"} for s in weights for sp in ("train", "validation")],
        "sources": [{"name": name, "id": i, "uris": [f"file:///stdlib/{name}"], "weight": w, "files": 2,
                     "documents_read": total(name, "documents_read"), "bytes_read": total(name, "bytes_read"), "dropped": dropped(name),
                     "documents_kept": total(name, "documents_kept"), "tokens_kept": total(name, "tokens_kept"), "epochs": 1.0, "subsets": {}}
                    for i, (name, w) in enumerate(weights.items())],
        "splits": splits,
        "mix": {"policy": "natural", "target": weights, "achieved": {s: {k: v / t["tokens"] for k, v in t["tokens_by_source"].items()} for s, t in splits.items()}},
        "stages": {}, "quarantine": {"path": "quarantine.jsonl", "records": 0, "by_reason": {}},
    }
    manifest_io.write_local(data, root / "manifest.json")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return build_fixture_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def report(corpus, tmp_path_factory) -> Path:
    return write_report(corpus, tmp_path_factory.mktemp("report"))


def recount_shards(manifest_path: Path) -> dict:
    """Per shard and per source, documents and tokens counted from the token files themselves: every document
    ends with the EOS token (add_eos), so EOS positions are the document boundaries."""
    m = manifest_io.load(manifest_path)
    names = {s["id"]: s["name"] for s in m.data["sources"]}
    shards, hist = {}, {}
    for split in m.splits():
        for ref in m.shards(split):
            index = read_index(ref.idx_path)
            tokens = np.asarray(open_tokens(ref.bin_path, index))
            ends = np.flatnonzero(tokens == m.eos_id) + 1
            lengths = np.diff(ends, prepend=0)
            assert len(ends) == index.documents
            row = {"documents": len(ends), "tokens": len(tokens), "tokens_by_source": dict.fromkeys(names.values(), 0),
                   "documents_by_source": dict.fromkeys(names.values(), 0)}
            for length, source_id in zip(lengths.tolist(), index.source_ids.tolist()):
                name = names[source_id]
                row["tokens_by_source"][name] += length
                row["documents_by_source"][name] += 1
                bucket = next(i for i in range(len(LENGTH_EDGES) - 1) if LENGTH_EDGES[i] <= length < LENGTH_EDGES[i + 1])
                hist.setdefault(name, [0] * (len(LENGTH_EDGES) - 1))[bucket] += 1
            shards[ref.entry["bin"]] = row
    return {"shards": shards, "hist": hist}


def test_length_buckets_follow_the_log2_edges():
    lengths = np.array([0, 1, 2, 3, 4, 7, 8, 1000, 2**31 - 1])
    buckets = length_buckets(lengths)
    for length, bucket in zip(lengths.tolist(), buckets.tolist()):
        assert LENGTH_EDGES[bucket] <= length < LENGTH_EDGES[bucket + 1]


def test_stats_json_equals_what_the_shards_hold(corpus, report):
    stats = json.loads((report.parent / "stats.json").read_text())
    recount = recount_shards(corpus)
    for name, row in recount["shards"].items():
        for key, value in row.items():
            assert stats["shards"][name][key] == value, (name, key)
    assert stats["distributions"]["tokens_in_shards"] == recount["hist"]
    tokens_by_source: dict[str, int] = {}
    for row in recount["shards"].values():
        for k, v in row["tokens_by_source"].items():
            tokens_by_source[k] = tokens_by_source.get(k, 0) + v
    assert {n: s["tokens_in_shards"] for n, s in stats["sources"].items()} == tokens_by_source
    assert stats["headline"]["tokens"] == sum(tokens_by_source.values())
    assert all(c["ok"] for c in stats["checks"].values()), stats["checks"]
    assert stats["checks"]["shard token files match the manifest"]["detail"] == "3 of 3 by sha256"


class DomReader(HTMLParser):
    """Section ids, figures (with whether they hold a chart) and every tagged number of a rendered page."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: list[str] = []
        self.figures: dict[str, bool] = {}
        self.values: list[dict] = []
        self._open: list[tuple[str, dict | None, str | None]] = []  # tag, value being read, figure name

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section":
            self.sections.append(a["id"])
        if tag == "svg" or (tag == "p" and "missing" in (a.get("class") or "")):
            for _, _, fig in self._open:
                if fig:
                    self.figures[fig] = tag == "svg" or self.figures[fig]
        if tag in ("br", "meta", "hr", "img"):  # void elements: no end tag follows
            return
        record = None
        if "data-key" in a:
            record = {"key": tuple(json.loads(a["data-key"])), "value": json.loads(a["data-value"]), "classes": a["class"].split(), "text": ""}
            self.values.append(record)
        if tag == "figure":
            self.figures[a["data-figure"]] = False
        self._open.append((tag, record, a.get("data-figure")))

    def handle_endtag(self, tag):
        while self._open:
            if self._open.pop()[0] == tag:
                break

    def handle_data(self, data):
        for _, record, _ in self._open:
            if record is not None:
                record["text"] += data


def chromium_dump_dom(html_path: Path, tmp: Path) -> str:
    if shutil.which("chromium") is None:
        print("SKIP: chromium is not installed (apt-get install -y chromium); report.html not rendered in a browser")
        pytest.skip("chromium is not installed: apt-get install -y chromium")
    command = chromium_command(tmp / "chromium-profile") + ["--dump-dom", html_path.resolve().as_uri()]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def read_dom(html_path: Path, tmp: Path) -> DomReader:
    reader = DomReader()
    reader.feed(chromium_dump_dom(html_path, tmp))
    return reader


def manifest_value(manifest: dict, key: tuple) -> object:
    """The manifest's own record of a figure the report shows, or KeyError when the manifest has none."""
    kind, *rest = key
    tables = {
        "splits": manifest["splits"],
        "sources": {s["name"]: s for s in manifest["sources"]},
        "shards": {e["bin"]: e for split in manifest["splits"].values() for e in split["shards"]},
        "quarantine": manifest["quarantine"],
        "provenance": {**manifest, "recipe": manifest["recipe"]["name"], "input_files": len(manifest["inputs"]),
                       "input_uris": {s["name"]: s["uris"] for s in manifest["sources"]}},
    }
    value = tables[kind]
    for part in rest:
        value = value[part]
    return value


def shown_text_matches(text: str, value: object) -> bool:
    from pipeline.report import FORMATS

    if value is None:
        return text == "–"
    if isinstance(value, list):
        return text == "".join(map(str, value))
    return text in {f(value) for name, f in FORMATS.items() if name == "text" or not isinstance(value, str)}


SECTIONS = ["headline", "funnel", "mix", "distributions", "shards", "build", "provenance", "checks"]
FIGURES = ["funnel", "mix", "token-length", "char-length", "fertility", "duplicates", "shards", "stages"]


def test_report_in_chromium_shows_every_section_and_the_manifest_numbers(corpus, report, tmp_path):
    dom = read_dom(report, tmp_path)
    assert dom.sections == SECTIONS
    assert sorted(dom.figures) == sorted(FIGURES)
    assert all(dom.figures.values()), dom.figures  # every figure holds a chart
    stats = json.loads((report.parent / "stats.json").read_text())
    manifest = json.loads(corpus.read_text())
    from_manifest = 0
    for shown in dom.values:
        assert shown["value"] == lookup(stats, shown["key"]), shown
        assert shown_text_matches(shown["text"].strip(), shown["value"]), shown
        try:
            recorded = manifest_value(manifest, shown["key"])
        except KeyError:
            continue
        assert shown["value"] == recorded, shown
        from_manifest += 1
    keys = {v["key"] for v in dom.values}
    for split, info in manifest["splits"].items():
        assert ("splits", split, "tokens") in keys
        assert all(("splits", split, "tokens_by_source", name) in keys for name in info["tokens_by_source"])
        assert all(("shards", e["bin"], "tokens") in keys for e in info["shards"])
    for source in manifest["sources"]:
        assert {("sources", source["name"], k) for k in ("documents_read", "bytes_read", "documents_kept", "tokens_kept")} <= keys
        assert all(("sources", source["name"], "dropped", r) in keys for r in source["dropped"])
    assert from_manifest > 40


def test_screenshot_is_a_png(report, tmp_path):
    if shutil.which("chromium") is None:
        print("SKIP: chromium is not installed (apt-get install -y chromium)")
        pytest.skip("chromium is not installed: apt-get install -y chromium")
    png = tmp_path / "report.png"
    from pipeline.report import screenshot

    screenshot(report, png, height=900)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.stat().st_size > 20_000  # a blank page compresses to a few kB


def test_compare_shows_both_builds_and_highlights_what_differs(corpus, tmp_path):
    other = build_fixture_corpus(tmp_path / "other", code_weight=5.0)
    html_path = write_report(corpus, tmp_path / "diff", compare=other)
    dom = read_dom(html_path, tmp_path)
    assert dom.sections == ["differences"] + SECTIONS
    weight = [v for v in dom.values if v["key"] == ("sources", "code", "weight")]
    assert [v["value"] for v in weight] == [3.0, 5.0] and all("changed" in v["classes"] for v in weight)
    tokens = [v for v in dom.values if v["key"] == ("splits", "train", "tokens")]
    assert len(tokens) == 2 and not any("changed" in v["classes"] for v in tokens)
    stats = json.loads((tmp_path / "diff" / "stats.json").read_text())
    assert stats["compare"]["sources"]["code"]["weight"] == 5.0
    summary = (tmp_path / "diff" / "summary.md").read_text()
    assert "| sources › code › weight | 3 | 5 | +2 (+66.7%) |" in summary


def test_without_build_stats_the_report_comes_from_the_shards_alone(tmp_path):
    manifest_path = build_fixture_corpus(tmp_path / "corpus")
    (manifest_path.parent / "build_stats.json").unlink()
    html_path = write_report(manifest_path, tmp_path / "report")
    stats = json.loads((html_path.parent / "stats.json").read_text())
    assert stats["has_build_stats"] is False and stats["subsets"] == {}
    assert all(c["ok"] for c in stats["checks"].values()) and len(stats["checks"]) == 6
    assert stats["distributions"]["tokens_in_shards"] == recount_shards(manifest_path)["hist"]
    page = html_path.read_text()
    assert page.count("Not available: the build left no build_stats.json") == 3  # characters, fertility, duplicates


def test_damaged_shards_fail_their_checks(tmp_path, capsys):
    manifest_path = build_fixture_corpus(tmp_path / "corpus")
    root = manifest_path.parent
    data = bytearray((root / "train-00000.bin").read_bytes())
    data[10] ^= 0xFF  # same size, different bytes: only the sha256 can tell
    (root / "train-00000.bin").write_bytes(bytes(data))
    (root / "validation-00000.idx").write_bytes((root / "validation-00000.idx").read_bytes()[:-3])
    assert main([str(manifest_path), "--out", str(tmp_path / "report")]) == 1
    err = capsys.readouterr().err
    assert "train-00000.bin: sha256 mismatch" in err
    assert "validation-00000.bin: index corrupt" in err and "truncated or corrupt" in err
    stats = json.loads((tmp_path / "report" / "stats.json").read_text())
    assert stats["shards"]["train-00000.bin"]["bin_status"] == "sha256 mismatch"
    assert not stats["checks"]["shard recounts equal the manifest"]["ok"]  # the unreadable index counts nothing
    assert main([str(manifest_path), "--out", str(tmp_path / "sizes"), "--sizes-only"]) == 1
    stats = json.loads((tmp_path / "sizes" / "stats.json").read_text())
    assert stats["shards"]["train-00000.bin"]["bin_status"] == "size ok"


def test_cli_writes_the_three_files_and_names_a_missing_manifest(corpus, tmp_path, capsys):
    assert main([str(corpus), "--out", str(tmp_path / "r")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "r" / "report.html")
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == ["report.html", "stats.json", "summary.md"]
    summary = (tmp_path / "r" / "summary.md").read_text()
    manifest = json.loads(corpus.read_text())
    assert f"| tokens in shards | {sum(s['tokens'] for s in manifest['splits'].values()):,} (" in summary
    assert main([str(tmp_path / "nope.json"), "--out", str(tmp_path / "x")]) == 2
    assert "nope.json: no such manifest" in capsys.readouterr().err


def test_duplicate_cluster_sizes_group_in_powers_of_two():
    from pipeline.report import cluster_groups

    assert cluster_groups({"2": 5, "3": 1, "5": 2, "7": 1, "9": 1}) == (["2", "3", "4–7", "8–15"], [5, 1, 3, 1])
