"""`tokenmill stats`: stats.json against a recount of the shards, report.html read back from headless Chromium.
Everything runs on real builds of the offline sample corpus (`sample.yaml`, and `web-quality.yaml` to compare)."""

from __future__ import annotations

import html
import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import ray
import zstandard

from manifests import manifest as manifest_io
from manifests.outputs import BUILD_STATS, DROPPED_SAMPLES
from manifests.shards import read_shard
from pipeline.build.driver import build
from pipeline.build.recipe import load_recipe
from pipeline.build.registry import STAGE_NAMES, stages_of
from pipeline.report.page import (
    FORMATS,
    Series,
    chromium_command,
    cluster_documents,
    cluster_groups,
    hbar_chart,
    lookup,
    page_height,
    readable,
    screenshot,
)
from pipeline.report.stats import (
    DEFAULT_BUDGET_TOKENS,
    drop_step,
    main,
    parse_tokens,
    write_report,
)
from pipeline.tasks.lengths import LENGTH_EDGES, length_buckets
from stages.document import EXACT_DUPLICATE, NEAR_DUPLICATE

RECIPES = Path(__file__).resolve().parents[3] / "manifests" / "recipes"


def build_sample(corpus: Path, recipe: str, out: Path) -> Path:
    """A real build of the sample corpus with one of the repository's recipes; returns its manifest."""
    out.mkdir(parents=True)
    local = out / "recipe.yaml"
    # smaller shards than the recipe's, so that the train split has several
    local.write_text(
        f"extends: {RECIPES / recipe}\nmix: {{shard_tokens: 100000}}\nsources:\n"
        f"  - {{name: slimpajama, root: {corpus / 'SlimPajama-627B'}}}\n"
        f"  - {{name: starcoderdata, root: {corpus / 'starcoderdata'}}}\n"
    )
    return Path(build(load_recipe(local), str(out / "build"), workers=2, console=False).removeprefix("file://"))


@pytest.fixture(scope="module")
def builds(sample_corpus, tmp_path_factory) -> dict[str, Path]:
    started_here = not ray.is_initialized()
    root = tmp_path_factory.mktemp("builds")
    yield {name: build_sample(sample_corpus, f"{name}.yaml", root / name) for name in ("sample", "web-quality")}
    if started_here:
        ray.shutdown()


@pytest.fixture(scope="module")
def corpus(builds) -> Path:
    return builds["sample"]


@pytest.fixture(scope="module")
def report(corpus, tmp_path_factory) -> Path:
    return write_report(corpus, tmp_path_factory.mktemp("report"))


def copy_build(manifest_path: Path, to: Path) -> Path:
    """A copy of a build to damage (the module's builds are shared)."""
    shutil.copytree(manifest_path.parent, to, ignore=shutil.ignore_patterns("work"))
    return to / manifest_path.name


def recount_shards(manifest_path: Path) -> dict:
    """Per shard and per source, documents and tokens counted from the token files themselves: every document
    ends with the EOS token (add_eos), so EOS positions are the document boundaries."""
    m = manifest_io.load(manifest_path)
    names = {s.id: s.name for s in m.sources}
    shards, hist = {}, {}
    for split in m.splits:
        for ref in m.shards(split):
            index, tokens = read_shard(ref.bin_path, ref.idx_path)
            ends = np.flatnonzero(np.asarray(tokens) == m.tokenizer.eos_id) + 1
            lengths = np.diff(ends, prepend=0)
            assert len(ends) == index.documents
            row = {
                "documents": len(ends),
                "tokens": len(tokens),
                "tokens_by_source": dict.fromkeys(names.values(), 0),
                "documents_by_source": dict.fromkeys(names.values(), 0),
            }
            for length, source_id in zip(lengths.tolist(), index.source_ids.tolist()):
                name = names[source_id]
                row["tokens_by_source"][name] += length
                row["documents_by_source"][name] += 1
                bucket = next(
                    i for i in range(len(LENGTH_EDGES) - 1) if LENGTH_EDGES[i] <= length < LENGTH_EDGES[i + 1]
                )
                hist.setdefault(name, [0] * (len(LENGTH_EDGES) - 1))[bucket] += 1
            shards[ref.entry.bin] = row
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
    assert len(recount["shards"]) > 2
    assert (
        stats["checks"]["shard token files match the manifest"]["detail"]
        == f"{len(recount['shards'])} of {len(recount['shards'])} by sha256"
    )


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
            record = {
                "key": tuple(json.loads(a["data-key"])),
                "value": json.loads(a["data-value"]),
                "classes": a["class"].split(),
                "text": "",
            }
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
        "provenance": {
            **manifest,
            "recipe": manifest["recipe"]["name"],
            "input_files": len(manifest["inputs"]),
            "input_uris": {s["name"]: s["uris"] for s in manifest["sources"]},
        },
    }
    value = tables[kind]
    for part in rest:
        value = value[part]
    return value


def shown_text_matches(text: str, value: object) -> bool:
    if value is None:
        return text == "–"
    if isinstance(value, list):
        return text == "".join(map(str, value))
    return text in {f(value) for name, f in FORMATS.items() if name == "text" or not isinstance(value, str)}


SECTIONS = ["headline", "funnel", "mix", "budget", "distributions", "shards", "build", "provenance", "checks"]
FIGURES = ["funnel", "mix", "token-length", "char-length", "fertility", "duplicates", "shards", "stages"]


def test_report_in_chromium_shows_every_section_and_the_manifest_numbers(corpus, report, tmp_path):
    dom = read_dom(report, tmp_path)
    assert dom.sections == SECTIONS
    assert sorted(dom.figures) == sorted(FIGURES)
    assert all(dom.figures.values()), dom.figures  # every figure holds a chart
    stats = json.loads((report.parent / "stats.json").read_text())
    manifest = manifest_io.to_dict(manifest_io.load(corpus))  # the JSON object: the report's keys are its paths
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
        assert {
            ("sources", source["name"], k) for k in ("documents_read", "bytes_read", "documents_kept", "tokens_kept")
        } <= keys
        assert all(("sources", source["name"], "dropped", r) in keys for r in source["dropped"])
    assert from_manifest > 40


def test_screenshot_is_a_png_of_the_whole_page(report, tmp_path):
    if shutil.which("chromium") is None:
        print("SKIP: chromium is not installed (apt-get install -y chromium)")
        pytest.skip("chromium is not installed: apt-get install -y chromium")
    png = tmp_path / "report.png"
    screenshot(report, png)
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.stat().st_size > 20_000  # a blank page compresses to a few kB
    height = int.from_bytes(data[20:24], "big")  # the IHDR chunk: width, then height
    assert int.from_bytes(data[16:20], "big") == 1280 and height == page_height(report, 1280) > 3000  # nothing cropped


def test_compare_shows_both_builds_and_highlights_what_differs(builds, tmp_path):
    html_path = write_report(builds["sample"], tmp_path / "diff", compare=builds["web-quality"])
    dom = read_dom(html_path, tmp_path)
    assert dom.sections == ["differences"] + SECTIONS
    kept = [v for v in dom.values if v["key"] == ("sources", "slimpajama", "documents_kept")]
    assert len(kept) == 2 and kept[0]["value"] > kept[1]["value"]  # web-quality's filters drop more
    assert all("changed" in v["classes"] for v in kept)
    read = [v for v in dom.values if v["key"] == ("sources", "starcoderdata", "documents_read")]
    assert len(read) == 2 and read[0]["value"] == read[1]["value"] and not any("changed" in v["classes"] for v in read)
    stats = json.loads((tmp_path / "diff" / "stats.json").read_text())
    assert stats["compare"]["provenance"]["recipe"] == "web-quality"
    summary = (tmp_path / "diff" / "summary.md").read_text()
    data, timings = summary.split("### The data")[1].split("### Time and speed")
    assert f"| slimpajama: documents kept | {kept[0]['value']:,} | {kept[1]['value']:,} | " in data
    assert "process stage: seconds" in timings and "seconds" not in data and "›" not in summary
    page = html_path.read_text()
    assert 'data-table="differences"' in page and 'data-table="timing-differences"' in page


def test_without_build_stats_the_report_comes_from_the_manifest_and_shards(corpus, tmp_path):
    manifest_path = copy_build(corpus, tmp_path / "build")
    (manifest_path.parent / BUILD_STATS).unlink()
    html_path = write_report(manifest_path, tmp_path / "report")
    stats = json.loads((html_path.parent / "stats.json").read_text())
    manifest = manifest_io.load(manifest_path)
    assert stats["has_build_stats"] is False
    assert sorted(stats["subsets"]) == sorted(f"{s.name}/{sub}" for s in manifest.sources for sub in s.subsets)
    assert all(c["ok"] for c in stats["checks"].values()) and len(stats["checks"]) == 6
    assert stats["distributions"]["tokens_in_shards"] == recount_shards(manifest_path)["hist"]
    assert (
        html_path.read_text().count("Not available: the build left no build_stats.json") == 3
    )  # characters, fertility, duplicates


def test_damaged_shards_fail_their_checks(corpus, tmp_path, capsys):
    manifest_path = copy_build(corpus, tmp_path / "build")
    root = manifest_path.parent
    splits = manifest_io.load(manifest_path).splits
    train_bin, validation_idx = splits["train"].shards[0].bin, splits["validation"].shards[0].idx
    data = bytearray((root / train_bin).read_bytes())
    data[10] ^= 0xFF  # same size, different bytes: only the sha256 can tell
    (root / train_bin).write_bytes(bytes(data))
    (root / validation_idx).write_bytes((root / validation_idx).read_bytes()[:-3])
    assert main([str(manifest_path), "--out", str(tmp_path / "report")]) == 1
    err = capsys.readouterr().err
    assert f"{train_bin}: sha256 mismatch" in err
    assert f"{validation_idx.removesuffix('.idx')}.bin: index " in err and "truncated or changed" in err
    stats = json.loads((tmp_path / "report" / "stats.json").read_text())
    assert stats["shards"][train_bin]["bin_status"].startswith("sha256 mismatch")
    assert not stats["checks"]["shard recounts equal the manifest"]["ok"]  # the unreadable index counts nothing
    assert main([str(manifest_path), "--out", str(tmp_path / "sizes"), "--sizes-only"]) == 1
    stats = json.loads((tmp_path / "sizes" / "stats.json").read_text())
    assert stats["shards"][train_bin]["bin_status"] == "size ok"


def test_cli_writes_the_three_files_and_names_a_missing_manifest(corpus, tmp_path, capsys):
    assert main([str(corpus), "--out", str(tmp_path / "r")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "r" / "report.html")
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == ["report.html", "stats.json", "summary.md"]
    summary = (tmp_path / "r" / "summary.md").read_text()
    tokens = sum(s.tokens for s in manifest_io.load(corpus).splits.values())
    assert f"| tokens in shards | {tokens:,} (" in summary
    assert main([str(tmp_path / "nope.json"), "--out", str(tmp_path / "x")]) == 2
    assert "nope.json: no such manifest" in capsys.readouterr().err


def test_duplicate_cluster_sizes_group_in_powers_of_two():
    assert cluster_groups({"2": 5, "3": 1, "5": 2, "7": 1, "9": 1}) == (["2", "3", "4–7", "8–15"], [5, 1, 3, 1])
    assert cluster_documents({"2": 5, "3": 1, "5": 2, "7": 1, "9": 1}) == [10, 3, 17, 9]


def test_a_log_axis_starts_at_one():
    svg = hbar_chart(["a", "b"], [Series("clusters", [1, 300], "#000")], log=True)
    assert [t.split("<")[0] for t in svg.split('class="tick">')[1:]] == ["1", "10", "100", "1K"]


def test_the_funnel_the_stages_and_the_warnings(report):
    stats = json.loads((report.parent / "stats.json").read_text())
    for row in [*stats["sources"].values(), *stats["subsets"].values()]:
        assert row["records_read"] == row["documents_read"] + row["dropped_by_step"]["bad input"]
    for source in stats["sources"].values():  # the chart's first bar is the table's first column
        assert source["funnel"]["records read"]["left"] == source["records_read"]
    assert list(stats["build"]["stages"]) == [
        s.name for s in stages_of(load_recipe("sample"))
    ]  # the sample's preset verifies nothing
    process = stats["build"]["stages"]["process"]
    assert stats["headline"]["text_mb_per_s"] == process["text_mb_per_s"] > 0
    assert all(s["text_mb_per_s"] is None for name, s in stats["build"]["stages"].items() if name != "process")
    validation = stats["splits"]["validation"]["documents"]
    assert validation < 100 and stats["warnings"] == [
        f"the validation split holds {validation} documents, fewer than 100: its loss is too noisy to compare runs by; "
        "add validation files or raise the sources' validation_fraction"
    ]
    page = report.read_text()
    assert (
        "⚠ the validation split holds" in page and "bad records in no subset" in page and "MB/s of input text" in page
    )


def test_subset_shares_and_the_token_budget(corpus, report, tmp_path):
    stats = json.loads((report.parent / "stats.json").read_text())
    train = stats["splits"]["train"]["tokens"]
    assert sum(r["train_share"] for r in stats["subsets"].values()) == pytest.approx(
        1.0, rel=1e-4
    )  # rounded token counts
    for name, source in stats["sources"].items():
        mine = [r for r in stats["subsets"].values() if r["source"] == name]
        assert sum(r["train_tokens"] for r in mine) == pytest.approx(source["train_tokens"], abs=len(mine))
    budget = stats["budget"]
    assert budget["tokens"] == DEFAULT_BUDGET_TOKENS and budget["passes"] == DEFAULT_BUDGET_TOKENS / train
    for name, row in budget["sources"].items():
        unique = stats["sources"][name]["tokens_kept"] - stats["splits"]["validation"]["tokens_by_source"].get(name, 0)
        assert row["unique_tokens"] == unique
        assert row["epochs"] == pytest.approx(DEFAULT_BUDGET_TOKENS * stats["sources"][name]["train_share"] / unique)
    assert main([str(corpus), "--out", str(tmp_path / "small"), "--budget", "2M"]) == 0
    small = json.loads((tmp_path / "small" / "stats.json").read_text())["budget"]
    assert small["tokens"] == 2_000_000 and small["passes"] == pytest.approx(2_000_000 / train)
    assert "Token budget: 2M tokens" in (tmp_path / "small" / "summary.md").read_text()


def test_token_counts_read_as_people_write_them():
    assert [parse_tokens(t) for t in ("3T", "500B", "1.5M", "2e9", "3000")] == [
        3 * 10**12,
        5 * 10**11,
        1_500_000,
        2 * 10**9,
        3000,
    ]
    for bad in ("lots", "0", "-1T", "inf"):
        with pytest.raises(Exception, match="token count"):
            parse_tokens(bad)


def test_compare_names_read_as_words():
    assert readable(("sources", "slimpajama", "documents_kept")) == "slimpajama: documents kept"
    assert readable(("sources", "slimpajama", "dropped", "short_document")) == "slimpajama: removed by short_document"
    assert readable(("mix", "achieved", "train", "starcoderdata")) == "train split: share of starcoderdata"
    assert readable(("build", "stages", "process", "text_mb_per_s")) == "process stage: MB/s of input text"


def test_examples_of_what_each_filter_removed(corpus, report):
    written = [json.loads(line) for line in (corpus.parent / DROPPED_SAMPLES).read_text().splitlines()]
    written = [w for w in written if w["step"] == "filters"]
    filtered = {(s.name, r) for s in manifest_io.load(corpus).sources for r in s.dropped if drop_step(r) == "filters"}
    assert filtered and {(w["source"], w["reason"]) for w in written} == filtered
    assert all(
        len(w["text"]) <= 300 and w["doc"].startswith(f"{w['source']}/") and "kept_doc" not in w for w in written
    )
    shown = [
        s for s in json.loads((report.parent / "stats.json").read_text())["dropped_samples"] if s["step"] == "filters"
    ]
    assert {(s["source"], s["reason"]) for s in shown} == filtered
    page = report.read_text()
    assert 'data-table="dropped-samples"' in page
    assert all(html.escape(s["text"][:40].replace("\n", " ↵ ")) in page for s in shown)  # escaped, line breaks shown


def input_text(corpus: Path, doc: str) -> str:
    """The text of the sample corpus's document `source/path#line-or-row`, read straight from its input file."""
    name, _, rest = doc.partition("/")
    path, _, ordinal = rest.rpartition("#")
    if name == "starcoderdata":
        return (
            pq.read_table(corpus / "starcoderdata" / path, columns=["content"]).column("content")[int(ordinal)].as_py()
        )
    with open(corpus / "SlimPajama-627B" / path, "rb") as f:
        lines = zstandard.ZstdDecompressor().stream_reader(f).read().split(b"\n")
    return json.loads(lines[int(ordinal) - 1])["text"]


def test_examples_of_what_each_dedupe_step_removed_are_the_input_texts(sample_corpus, corpus, report):
    written = [json.loads(line) for line in (corpus.parent / DROPPED_SAMPLES).read_text().splitlines()]
    duplicates = [w for w in written if w["reason"] in (EXACT_DUPLICATE, NEAR_DUPLICATE)]
    # both sources have planted exact and near copies, each in another file than its original
    assert {(w["source"], w["step"]) for w in duplicates} == {
        (s, step) for s in ("slimpajama", "starcoderdata") for step in ("exact duplicates", "near duplicates")
    }
    for w in duplicates:
        assert w["text"] == input_text(sample_corpus, w["doc"])[:300] and w["doc"] != w["kept_doc"]
        if w["step"] == "exact duplicates":
            assert (
                input_text(sample_corpus, w["kept_doc"]) == input_text(sample_corpus, w["doc"]) and "kept_text" not in w
            )
        else:
            assert w["kept_text"] == input_text(sample_corpus, w["kept_doc"])[:300] and 0.5 < w["similarity"] <= 1
    planted = json.loads((sample_corpus / "PLANTED.json").read_text())["pairs"]
    pairs = {kind: {(copy, original) for original, copy in planted[kind]} for kind in planted}
    assert {(w["doc"], w["kept_doc"]) for w in duplicates if w["step"] == "exact duplicates"} & pairs[
        "exact_duplicates"
    ]
    assert {(w["doc"], w["kept_doc"]) for w in duplicates if w["step"] == "near duplicates"} & pairs["near_duplicates"]
    shown = [s for s in json.loads((report.parent / "stats.json").read_text())["dropped_samples"] if "kept_doc" in s]
    assert {(s["source"], s["step"]) for s in shown} == {(w["source"], w["step"]) for w in duplicates}
    page = report.read_text()
    assert 'data-table="duplicate-samples"' in page and "each has a kept twin" not in page
    assert all(html.escape(s["kept_text"][:40].replace("\n", " ↵ ")) in page for s in shown if "kept_text" in s)


def write_markup_corpus(root: Path, chapters: list[str]) -> tuple[list[str], list[str]]:
    """Two JSONL files: a.jsonl's documents start with markup and an ampersand; b.jsonl holds an exact copy of
    a's first document, a near copy of its second (every 40th word replaced) and a document of its own."""
    root.mkdir()
    a = [f"<script>alert('{n}')</script> Tom & Jerry {n}: {text}" for n, text in enumerate(chapters[:3])]
    words = a[1].split(" ")
    b = [a[0], " ".join("REPLACED" if i % 40 == 20 else w for i, w in enumerate(words)), chapters[3]]
    for name, texts in (("a.jsonl", a), ("b.jsonl", b)):
        (root / name).write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return a, b


def test_duplicates_with_markup_are_sampled_escaped_the_same_bytes_every_build_and_not_redone(tmp_path, kjv_chapters):
    a, b = write_markup_corpus(tmp_path / "in", [kjv_chapters[("Genesis", n)] for n in (1, 2, 3, 4)])
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"name: markup\nsources:\n  - {{name: web, kind: jsonl, root: {tmp_path / 'in'}, train: ['*.jsonl']}}\n"
        "tokenizer: {model: 'pkg://mistral_common/data/tokenizer.model.v1'}\ndedupe: {partitions: 2}\nmix: "
        "{shard_tokens: 100000}\n"
    )
    built = [
        Path(build(load_recipe(recipe), str(tmp_path / out), workers=workers, console=False).removeprefix("file://"))
        for out, workers in (("one", 2), ("two", 1), ("one", 2))
    ]  # the third resumes the first
    written = [json.loads(line) for line in (built[0].parent / DROPPED_SAMPLES).read_text().splitlines()]
    exact, near = written
    assert exact == {
        "source": "web",
        "subset": "unknown",
        "reason": EXACT_DUPLICATE,
        "step": "exact duplicates",
        "doc": "web/b.jsonl#1",
        "text": a[0][:300],
        "kept_doc": "web/a.jsonl#1",
    }
    assert (near["doc"], near["text"], near["kept_doc"], near["kept_text"]) == (
        "web/b.jsonl#2",
        b[1][:300],
        "web/a.jsonl#2",
        a[1][:300],
    )
    assert 0.78 <= near["similarity"] < 1
    assert (built[1].parent / DROPPED_SAMPLES).read_bytes() == (built[0].parent / DROPPED_SAMPLES).read_bytes()
    assert json.loads(built[2].read_text())["stages"]["samples"]["skipped"] == 1
    report = write_report(built[0], tmp_path / "report")
    stages = [n for n in STAGE_NAMES if n != "decontaminate"]  # no eval sets here
    assert (
        list(json.loads((report.parent / "stats.json").read_text())["build"]["stages"]) == stages
    )  # verified, in order
    page = report.read_text()
    assert (
        "<script>alert(" not in page and "&lt;script&gt;alert(&#x27;0&#x27;)&lt;/script&gt; Tom &amp; Jerry 0" in page
    )
    assert "&lt;script&gt;alert(&#x27;1&#x27;)&lt;/script&gt; Tom &amp; Jerry 1" in page
    # In the browser the markup is text in the examples' cells, not an element (last: skipped without chromium).
    dom = chromium_dump_dom(report, tmp_path)
    assert "<script>alert(" not in dom and "&lt;script&gt;alert('1')&lt;/script&gt; Tom &amp; Jerry 1" in dom
