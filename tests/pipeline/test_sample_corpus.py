"""The offline sample corpus: published layouts, what PLANTED.json says is really in the files (read back with
the fetch stage), small at --size-mb 1, byte-identical for the same arguments."""

from __future__ import annotations

import dataclasses
import json
import re
import sysconfig
from collections import Counter
from itertools import islice
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from pipeline.build.recipe import Recipe, load_recipe
from pipeline.sample_corpus import (
    SLIMPAJAMA_DIR,
    STARCODER_DIR,
    main,
    sample_recipe,
    sample_sources,
    write_sample_corpus,
)
from stages.document import BadRecord
from stages.fetch import read_documents
from stages.normalize import DELETE_PUNCTUATION_AND_SPACE, jaccard, shingles

RECIPE = Path(__file__).resolve().parents[2] / "manifests" / "recipes" / "sample.yaml"
STARCODER_SCHEMA = pa.schema(
    [
        ("max_stars_repo_path", pa.string()),
        ("max_stars_repo_name", pa.string()),
        ("max_stars_count", pa.int64()),
        ("id", pa.string()),
        ("content", pa.string()),
    ]
)


def recipe_over(corpus: Path) -> Recipe:
    return load_recipe(RECIPE, overrides={"sources": sample_sources(corpus)})


def read_back(corpus: Path) -> dict:
    """Per source: {doc id: (split, subset, text)} and the bad records, as the fetch stage sees the files."""
    fs = fsspec.filesystem("file")
    planted = read_planted(corpus)
    out = {}
    for source in recipe_over(corpus).sources:
        docs, bad = {}, []
        for rel in planted["files"][source.name]:
            for item in read_documents(fs, f"{source.root}/{rel}", rel, source, 64):
                if isinstance(item, BadRecord):
                    bad.append(item)
                    continue
                for i in range(len(item)):
                    docs[item.doc_id(i)] = (rel.split("/")[0], item.subsets[i], item.texts[i])
        out[source.name] = {"docs": docs, "bad": bad}
    return out


def read_planted(corpus: Path) -> dict:
    return json.loads((corpus / "PLANTED.json").read_text())


@pytest.fixture(scope="module")
def contents(sample_corpus) -> dict:
    return read_back(sample_corpus)


def test_layout_matches_the_published_datasets_and_the_recipe(sample_corpus):
    planted = read_planted(sample_corpus)
    slimpajama = sorted(
        p.relative_to(sample_corpus / SLIMPAJAMA_DIR).as_posix()
        for p in (sample_corpus / SLIMPAJAMA_DIR).rglob("*")
        if p.is_file()
    )
    starcoder = sorted(
        p.relative_to(sample_corpus / STARCODER_DIR).as_posix()
        for p in (sample_corpus / STARCODER_DIR).rglob("*")
        if p.is_file()
    )
    assert slimpajama == planted["files"]["slimpajama"] and starcoder == planted["files"]["starcoderdata"]
    for rel in slimpajama:
        assert re.fullmatch(r"(train|validation)/chunk[12]/example_\1_\d+\.jsonl\.zst", rel), rel
    assert {rel.split("/")[1] for rel in slimpajama if rel.startswith("train/")} == {"chunk1", "chunk2"}
    assert {rel.split("/")[1] for rel in slimpajama if rel.startswith("validation/")} == {"chunk1", "chunk2"}
    trains = [rel for rel in starcoder if rel.startswith("python/train-")]
    count = len(trains)
    assert trains == [f"python/train-{k:05d}-of-{count:05d}.parquet" for k in range(count)]
    assert set(starcoder) - set(trains) == {"python/broken-0000.parquet", "python/missing-content-0000.parquet"}
    # every file is one the sample recipe's patterns pick up
    fs = fsspec.filesystem("file")
    for source in recipe_over(sample_corpus).sources:
        matched = {
            Path(p).relative_to(source.root).as_posix()
            for pattern in source.train + source.validation
            for p in fs.glob(f"{source.root}/{pattern}")
        }
        assert matched == set(planted["files"][source.name])


def test_sample_recipe_reads_the_corpus_wherever_it_is_written(sample_corpus, tmp_path):
    """The recipe the tests and benchmarks build: the shipped one, its roots in a folder or a bucket."""
    local = load_recipe(sample_recipe(sample_corpus, tmp_path / "local"))
    assert [(s.name, s.root) for s in local.sources] == [
        ("slimpajama", str(sample_corpus / SLIMPAJAMA_DIR)),
        ("starcoderdata", str(sample_corpus / STARCODER_DIR)),
    ]
    assert local.mix == dataclasses.replace(recipe_over(sample_corpus).mix, shard_tokens=60_000)  # the rest as shipped
    remote = load_recipe(sample_recipe("s3://bucket/sample", tmp_path / "remote", mix={"shard_tokens": 1000}))
    assert [s.root for s in remote.sources] == [f"s3://bucket/sample/{d}" for d in (SLIMPAJAMA_DIR, STARCODER_DIR)]
    assert remote.mix.shard_tokens == 1000


def test_parquet_columns_are_starcoderdata_s(sample_corpus):
    for path in sorted((sample_corpus / STARCODER_DIR / "python").glob("train-*.parquet")):
        table = pq.read_table(path)
        assert table.schema.remove_metadata() == STARCODER_SCHEMA
        # duplicates planted in StarCoderData come from mirrors and forks, as they do on GitHub
        assert set(table.column("max_stars_repo_name").to_pylist()) <= {
            "python/cpython",
            "python-mirror/cpython",
            "python-fork/cpython",
        }
        assert all(p.startswith("Lib/") and p.endswith(".py") for p in table.column("max_stars_repo_path").to_pylist())
    missing = pq.read_table(sample_corpus / STARCODER_DIR / "python" / "missing-content-0000.parquet")
    assert missing.column_names == STARCODER_SCHEMA.names[:-1] and missing.num_rows > 0
    readable = sorted((sample_corpus / STARCODER_DIR / "python").glob("train-*.parquet")) + [
        sample_corpus / STARCODER_DIR / "python" / "missing-content-0000.parquet"
    ]
    ids = [i for path in readable for i in pq.read_table(path).column("id").to_pylist()]
    assert len(ids) == len(set(ids))


def test_jsonl_lines_are_slimpajama_records(sample_corpus):
    path = sample_corpus / SLIMPAJAMA_DIR / "validation" / "chunk1" / "example_validation_0.jsonl.zst"
    lines = zstandard.ZstdDecompressor().decompressobj().decompress(path.read_bytes()).splitlines()
    records = [json.loads(line) for line in lines]
    assert records and all(set(r) == {"text", "meta"} and set(r["meta"]) == {"redpajama_set_name"} for r in records)


def test_planted_counts_are_what_the_files_hold(sample_corpus, contents):
    planted = read_planted(sample_corpus)
    for name, got in contents.items():
        splits = Counter(split if name == "slimpajama" else "train" for split, _, _ in got["docs"].values())
        assert dict(splits) == planted["documents"][name]
        assert dict(Counter(r.reason for r in got["bad"])) == planted["bad_records"][name]
        texts = Counter(text for _, _, text in got["docs"].values())
        assert sum(n - 1 for n in texts.values()) == planted["planted"]["exact_duplicates"][name]
        assert sum(len(t.encode()) for t in texts.elements()) == planted["text_bytes"][name]
    slimpajama = contents["slimpajama"]["docs"].values()
    short = [t for _, _, t in slimpajama if len(t.translate(DELETE_PUNCTUATION_AND_SPACE)) < 200]
    assert len(short) == planted["planted"]["short_documents"]["slimpajama"]
    github = [t for _, subset, t in slimpajama if subset == "RedPajamaGithub"]
    assert len(github) == planted["planted"]["excluded_subset"]["slimpajama"]
    validation = sum(1 for split, _, _ in slimpajama if split == "validation")
    assert 0.01 <= validation / len(slimpajama) <= 0.04


def test_planted_pairs_are_exact_and_near_duplicates_in_different_files(sample_corpus, contents):
    planted = read_planted(sample_corpus)
    docs = {doc_id: text for got in contents.values() for doc_id, (_, _, text) in got["docs"].items()}
    for kind in ("exact_duplicates", "near_duplicates"):
        pairs = planted["pairs"][kind]
        assert len(pairs) == sum(planted["planted"][kind].values())
        for a, b in pairs:
            assert a.split("#")[0] != b.split("#")[0], "a copy lives in another file than its original"
            if kind == "exact_duplicates":
                assert docs[a] == docs[b]
            else:
                assert docs[a] != docs[b] and jaccard(shingles(docs[a]), shingles(docs[b])) >= 0.95
    for name in ("slimpajama", "starcoderdata"):
        assert planted["planted"]["near_duplicates"][name] >= 2


def test_about_seven_to_three_natural_to_code(sample_corpus):
    size = read_planted(sample_corpus)["text_bytes"]
    natural = size["slimpajama"] / (size["slimpajama"] + size["starcoderdata"])
    assert 0.6 <= natural <= 0.8


def test_size_1_is_small_and_the_cli_says_what_it_wrote(tmp_path, capsys):
    assert main([str(tmp_path / "s"), "--size-mb", "1", "--seed", "3"]) == 0
    printed = capsys.readouterr().out
    planted = read_planted(tmp_path / "s")
    assert planted["seed"] == 3 and "near_duplicates" in printed and "truncated_compressed" in printed
    assert 0.7e6 <= sum(planted["text_bytes"].values()) <= 1.5e6
    assert sum(f.stat().st_size for f in (tmp_path / "s").rglob("*") if f.is_file()) < 1e6


def test_same_arguments_give_identical_bytes(tmp_path):
    def files(root: Path) -> dict[str, bytes]:
        return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    write_sample_corpus(tmp_path / "a", size_mb=0.5, seed=11)
    write_sample_corpus(tmp_path / "b", size_mb=0.5, seed=11)
    write_sample_corpus(tmp_path / "c", size_mb=0.5, seed=12)
    a, b, c = files(tmp_path / "a"), files(tmp_path / "b"), files(tmp_path / "c")
    assert a == b
    assert a.keys() == c.keys() and a != c


def test_rewriting_replaces_an_earlier_sample_but_not_foreign_data(tmp_path):
    write_sample_corpus(tmp_path / "s", size_mb=2.5)
    write_sample_corpus(tmp_path / "s", size_mb=0.5)
    listed = read_planted(tmp_path / "s")["files"]
    on_disk = sorted(
        p.relative_to(tmp_path / "s" / SLIMPAJAMA_DIR).as_posix()
        for p in (tmp_path / "s" / SLIMPAJAMA_DIR).rglob("*.zst")
    )
    assert on_disk == listed["slimpajama"]

    (tmp_path / "foreign" / SLIMPAJAMA_DIR).mkdir(parents=True)
    with pytest.raises(FileExistsError, match="PLANTED.json"):
        write_sample_corpus(tmp_path / "foreign", size_mb=0.5)


def test_public_text_sources_are_what_the_sample_and_the_bench_draw_from():
    from pipeline import sample_corpus as sample

    verses = sample.kjv_verses()
    assert verses[0]["book"] == "Genesis" and (verses[0]["chapter"], verses[0]["verse"]) == (1, 1)
    assert verses[0]["text"].startswith("In the beginning God created the heaven and the earth")
    modules = dict(sample.stdlib_docstrings())
    names = [name for name, _ in modules["json/decoder.py"]]
    assert names[0] == "json.decoder" and "json.decoder.JSONDecoder.decode" in names
    assert not any(rel.startswith(("lib2to3/", "distutils/")) for rel in modules)  # DOCSTRING_SKIP_DIRS
    assert "json/decoder.py" not in dict(sample.stdlib_docstrings({"json/decoder.py"}))
    code = list(islice(sample.stdlib_code_files(), 50))
    assert [rel for rel, _ in code] == sorted(rel for rel, _ in code)
    assert all("\x00" not in text and text.strip() for _, text in code)


def test_bench_and_the_eval_sets_use_only_the_public_api_of_the_sample():
    """bench/build_throughput.py imports `pipeline.sample_corpus` as `sample`: every `sample.X` it uses is in
    __all__; and every name the benchmarks and `pipeline.sample_eval` import from it is too."""
    import ast

    from pipeline import sample_corpus as sample

    root = Path(__file__).resolve().parents[2]
    used = {
        node.attr
        for node in ast.walk(ast.parse((root / "bench" / "build_throughput.py").read_text()))
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "sample"
    }
    assert used and used <= set(sample.__all__), sorted(used - set(sample.__all__))
    imported = {
        (path.name, alias.name)
        for path in [*sorted((root / "bench").glob("*.py")), root / "pipeline" / "sample_eval.py"]
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ImportFrom) and node.module == "pipeline.sample_corpus"
        for alias in node.names
    }
    assert {name for _, name in imported} >= {"python_functions", "python_sources", "kjv_verses"}
    assert [(f, name) for f, name in sorted(imported) if name not in sample.__all__] == []


def test_python_functions_are_every_module_s_functions_in_path_order(tmp_path):
    from pipeline.sample_corpus import python_functions, python_sources

    (tmp_path / "b.py").write_text('def late():\n    """Doc."""\n    return 1\n')
    (tmp_path / "a.py").write_text("class K:\n    def method(self):\n        pass\n\n\nasync def top():\n    pass\n")
    (tmp_path / "skipped").mkdir()
    (tmp_path / "skipped" / "c.py").write_text("def hidden():\n    pass\n")
    (tmp_path / "broken.py").write_text("def (:\n")
    sources = python_sources({"skipped"}, tmp_path)
    assert [s.rel for s in sources] == ["a.py", "b.py", "broken.py"]
    assert [(f.module, f.node.name) for f in python_functions(sources)] == [("a.py", "top"), ("b.py", "late")]
    functions = list(python_functions(sources, methods=True))
    assert [f.node.name for f in functions] == ["top", "method", "late"]
    assert functions[2].text() == 'def late():\n    """Doc."""\n    return 1'
    assert functions[2].text(first=3) == "    return 1" and functions[2].text(end=2) == 'def late():\n    """Doc."""'
    assert next(iter(python_sources(set()))).path.is_relative_to(Path(sysconfig.get_paths()["stdlib"]))


def test_writing_the_same_sample_again_keeps_every_file_and_its_identity(tmp_path):
    """`tokenmill sample` after `make demo` rewrote identical files with new mtimes, so every
    input got a new identity and the next build re-ran every process task. Identical bytes are left alone."""
    from pipeline.build.inputs import list_inputs

    write_sample_corpus(tmp_path, size_mb=1.5, seed=0)
    files = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    before = [i.identity() for i in list_inputs(recipe_over(tmp_path))]
    write_sample_corpus(tmp_path, size_mb=1.5, seed=0)
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()} == files
    assert [i.identity() for i in list_inputs(recipe_over(tmp_path))] == before
    write_sample_corpus(tmp_path, size_mb=1.5, seed=1)  # another sample replaces the files, leaving none of the first
    assert {p for p in tmp_path.rglob("*") if p.is_file()} <= set(files) | {tmp_path / "PLANTED.json"}
