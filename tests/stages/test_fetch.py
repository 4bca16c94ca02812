"""fetch: real .jsonl.zst / .jsonl.gz / .jsonl / parquet files with every kind of bad input planted among good
records. The good documents must all come out (count, order, text); each bad record exactly once, with its
reason and location."""

from __future__ import annotations

import gzip
import json
import unicodedata

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from stages.document import BAD_INPUT_REASONS, BadRecord, DocBatch
from stages.fetch import SourceConfig, read_documents

LOCAL = fsspec.filesystem("file")
MAX_DOCUMENT_BYTES = 5_000


def jsonl_source(**overrides) -> SourceConfig:
    settings = dict(
        name="slimpajama",
        kind="jsonl",
        root="unused",
        train=["*"],
        text_field="text",
        subset_field="meta.redpajama_set_name",
        max_document_bytes=MAX_DOCUMENT_BYTES,
    )
    return SourceConfig(**{**settings, **overrides})


def parquet_source(**overrides) -> SourceConfig:
    settings = dict(
        name="starcoderdata",
        kind="parquet",
        root="unused",
        train=["*"],
        text_field="content",
        max_document_bytes=MAX_DOCUMENT_BYTES,
    )
    return SourceConfig(**{**settings, **overrides})


def good_text(i: int) -> str:
    return f"Document {i}: the quick brown fox jumps over the lazy dog, line after line.\nCafé {i} ends here."


def good_line(i: int, subset: str = "RedPajamaC4") -> bytes:
    return json.dumps({"text": good_text(i), "meta": {"redpajama_set_name": subset}}).encode()


# raw line -> expected reason; each is planted once among good lines
BAD_LINES = {
    b'{"text": "cut off in the mid': "invalid_json",
    b"plain words, not JSON": "invalid_json",
    b"[1, 2, 3]": "invalid_json",
    b'{"text": "caf\xe9 in Latin-1"}': "invalid_utf8",
    b'{"text": "encoded surrogate \xed\xa0\x80 here"}': "invalid_utf8",
    b'{"meta": {"redpajama_set_name": "RedPajamaC4"}}': "missing_text",
    b'{"text": 17}': "non_string_text",
    b'{"text": true}': "non_string_text",
    b'{"text": ["a", "list"]}': "non_string_text",
    b'{"text": null}': "non_string_text",
    b'{"text": ""}': "empty_text",
    b'{"text": " \\n\\t  "}': "empty_text",
    b'{"text": "a NUL \\u0000 inside"}': "nul_bytes",
    json.dumps({"text": "x" * (MAX_DOCUMENT_BYTES + 1)}).encode(): "oversized_document",
    json.dumps({"text": "\u00e9" * (MAX_DOCUMENT_BYTES // 2 + 1)}).encode(): "oversized_document",  # 2 bytes each
}


def mixed_lines() -> tuple[list[bytes], list[tuple[int, str]], dict[str, str]]:
    """Good lines with every bad line planted between them, and a blank line.
    Returns (lines, [(line number, text) of good documents], {"line N": reason})."""
    lines, good, bad = [], [], {}
    for k, (raw, reason) in enumerate(BAD_LINES.items()):
        for i in (2 * k, 2 * k + 1):
            lines.append(good_line(i))
            good.append((len(lines), good_text(i)))
        lines.append(raw)
        bad[f"line {len(lines)}"] = reason
    lines.append(b"")  # a blank line carries nothing: neither a document nor a bad record
    lines.append(good_line(999))
    good.append((len(lines), good_text(999)))
    return lines, good, bad


def compress(data: bytes, suffix: str) -> bytes:
    if suffix == ".jsonl.zst":
        return zstandard.ZstdCompressor(level=3).compress(data)
    if suffix == ".jsonl.gz":
        return gzip.compress(data, mtime=0)
    return data


def read_all(path, rel_path: str, source: SourceConfig, fs=LOCAL, batch_documents: int = 4):
    """(good documents as (ordinal, subset, text), bad records, batches)."""
    docs, bad, batches = [], [], []
    for item in read_documents(fs, str(path), rel_path, source, batch_documents):
        if isinstance(item, BadRecord):
            bad.append(item)
            continue
        assert isinstance(item, DocBatch)
        batches.append(item)
        docs += zip(item.ordinals, item.subsets, item.texts)
    return docs, bad, batches


@pytest.mark.parametrize("suffix", [".jsonl.zst", ".jsonl.gz", ".jsonl"])
def test_every_bad_line_is_quarantined_once_and_every_good_document_kept(tmp_path, suffix):
    lines, good, bad = mixed_lines()
    path = tmp_path / f"example_train_0{suffix}"
    path.write_bytes(compress(b"\n".join(lines) + b"\n", suffix))

    docs, records, batches = read_all(path, f"train/chunk1/{path.name}", jsonl_source())

    assert [(o, t) for o, _, t in docs] == [(o, unicodedata.normalize("NFC", t)) for o, t in good]
    assert {s for _, s, _ in docs} == {"RedPajamaC4"}
    assert {r.location: r.reason for r in records} == bad
    assert len(records) == len(bad)
    for r in records:
        assert r.reason in BAD_INPUT_REASONS
        assert (r.source, r.path) == ("slimpajama", f"train/chunk1/{path.name}")
        assert r.error and r.raw and len(r.raw.encode("utf-8", "surrogatepass")) <= 4 * 200
    assert [len(b) for b in batches[:-1]] == [4] * (len(batches) - 1) and 1 <= len(batches[-1]) <= 4
    assert {(b.source, b.path) for b in batches} == {("slimpajama", f"train/chunk1/{path.name}")}


def test_text_is_nfc_normalized_and_subsets_come_from_the_dotted_key(tmp_path):
    decomposed = "Cafe\u0301 \u212b ao\u0308"  # e + combining acute, the Angstrom sign, o + combining diaeresis
    records = [
        {"text": decomposed, "meta": {"redpajama_set_name": "RedPajamaBook"}},
        {"text": "already NFC: caf\u00e9", "meta": {}},
        {"text": "no meta at all"},
        {"text": "meta is not an object", "meta": "RedPajamaC4"},
    ]
    path = tmp_path / "a.jsonl.zst"
    path.write_bytes(compress(b"\n".join(json.dumps(r).encode() for r in records), ".jsonl.zst"))

    docs, bad, _ = read_all(path, "train/chunk1/a.jsonl.zst", jsonl_source())

    assert not bad
    assert docs == [
        (1, "RedPajamaBook", unicodedata.normalize("NFC", decomposed)),
        (2, "unknown", "already NFC: caf\u00e9"),
        (3, "unknown", "no meta at all"),
        (4, "unknown", "meta is not an object"),
    ]
    assert docs[0][2] == "Caf\u00e9 \u00c5 a\u00f6"


def test_without_subset_field_the_subset_is_the_first_folder(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_bytes(good_line(1) + b"\n")
    docs, _, _ = read_all(path, "wikipedia/part-1.jsonl", jsonl_source(subset_field=""))
    assert docs == [(1, "wikipedia", good_text(1))]


def test_truncated_zst_keeps_every_document_before_the_break(tmp_path):
    kept, lost = [good_line(i) + b"\n" for i in range(50)], [good_line(i) + b"\n" for i in range(50, 60)]
    stream = zstandard.ZstdCompressor(level=3).compressobj()
    head = stream.compress(b"".join(kept)) + stream.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
    tail = stream.compress(b"".join(lost)) + stream.flush()
    path = tmp_path / "cut.jsonl.zst"
    path.write_bytes(head + tail[: len(tail) // 2])

    docs, bad, _ = read_all(path, "cut.jsonl.zst", jsonl_source())

    assert [t for _, _, t in docs] == [good_text(i) for i in range(50)]
    assert [r.reason for r in bad] == ["truncated_compressed"]
    assert bad[0].location == f"byte {len(b''.join(kept))}"


@pytest.mark.parametrize("suffix", [".jsonl.zst", ".jsonl.gz"])
def test_a_download_cut_anywhere_keeps_a_prefix_and_yields_one_record(tmp_path, suffix):
    texts = [good_text(i) * 20 for i in range(400)]  # ~800 KB: several zstd blocks
    data = compress(b"".join(json.dumps({"text": t}).encode() + b"\n" for t in texts), suffix)
    path = tmp_path / f"cut{suffix}"
    path.write_bytes(data[: int(len(data) * 0.7)])

    docs, bad, _ = read_all(path, path.name, jsonl_source())

    assert 0 < len(docs) < len(texts)
    assert [t for _, _, t in docs] == texts[: len(docs)]
    assert [r.reason for r in bad] == ["truncated_compressed"]


def test_corrupt_compressed_data_keeps_what_came_before(tmp_path):
    good = zstandard.ZstdCompressor(level=3).compress(b"".join(good_line(i) + b"\n" for i in range(5)))
    path = tmp_path / "garbage-after.jsonl.zst"
    path.write_bytes(good + b"this is not a zstd frame")
    docs, bad, _ = read_all(path, path.name, jsonl_source())
    assert [t for _, _, t in docs] == [good_text(i) for i in range(5)]
    decoded = sum(len(good_line(i)) + 1 for i in range(5))
    assert [(r.reason, r.location) for r in bad] == [("corrupt_compressed", f"byte {decoded}")]

    path = tmp_path / "not-gzip.jsonl.gz"
    path.write_bytes(b"plain text pretending to be gzip\n")
    docs, bad, _ = read_all(path, path.name, jsonl_source())
    assert docs == [] and [(r.reason, r.location) for r in bad] == [("corrupt_compressed", "byte 0")]


def test_concatenated_zst_frames_are_all_read(tmp_path):
    frames = [zstandard.ZstdCompressor(level=3).compress(good_line(i) + b"\n") for i in range(3)]
    path = tmp_path / "frames.jsonl.zst"
    path.write_bytes(b"".join(frames))
    docs, bad, _ = read_all(path, path.name, jsonl_source())
    assert [t for _, _, t in docs] == [good_text(i) for i in range(3)] and not bad


@pytest.mark.parametrize("name", ["empty.jsonl.zst", "empty.jsonl.gz", "empty.jsonl", "empty.parquet"])
def test_an_empty_file_is_one_record(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(gzip.compress(b"", mtime=0) if name.endswith(".gz") else b"")
    source = parquet_source() if name.endswith(".parquet") else jsonl_source()
    docs, bad, batches = read_all(path, name, source)
    assert docs == [] and batches == []
    assert [(r.reason, r.location) for r in bad] == [("empty_file", "file")]


def test_unreadable_inputs_are_one_record_each(tmp_path):
    folder = tmp_path / "looks-like-a-file.jsonl.zst"
    folder.mkdir()
    bz2 = tmp_path / "old.jsonl.bz2"
    bz2.write_bytes(b"BZh9 anything")
    for path, source in [(folder, jsonl_source()), (folder, parquet_source()), (bz2, jsonl_source())]:
        docs, bad, _ = read_all(path, path.name, source)
        assert docs == [] and [(r.reason, r.location) for r in bad] == [("unreadable_file", "file")], path


def write_parquet(
    path, contents: list, *, row_group_size: int = 4, column: str = "content", binary: bool = False
) -> None:
    n = len(contents)
    text = pa.array(contents, pa.binary())
    table = pa.table(
        {
            "max_stars_repo_path": [f"Lib/m{i}.py" for i in range(n)],
            "max_stars_repo_name": ["python/cpython"] * n,
            "max_stars_count": pa.array([1] * n, pa.int64()),
            "id": [str(i) for i in range(n)],
            column: text if binary else text.cast(pa.string(), safe=False),
        }
    )
    pq.write_table(table, path, row_group_size=row_group_size)


def code(i: int) -> str:
    return f"def f{i}(x):\n    return x + {i}  # caf\u00e9\n"


@pytest.mark.parametrize("binary", [False, True])
def test_parquet_rows_bad_values_quarantined_good_rows_kept(tmp_path, binary):
    planted = {
        2: (None, "non_string_text"),
        4: (b"", "empty_text"),
        5: (b"  \n\t", "empty_text"),
        7: (b"x = '\x00'", "nul_bytes"),
        9: (b"caf\xe9 latin-1", "invalid_utf8"),
        11: (b"#" * (MAX_DOCUMENT_BYTES + 1), "oversized_document"),
    }
    contents = [planted[i][0] if i in planted else code(i).encode() for i in range(14)]
    contents[12] = "e\u0301 = 1\n".encode()  # decomposed: comes out NFC
    path = tmp_path / "train-00000-of-00001.parquet"
    write_parquet(path, contents, binary=binary)

    docs, bad, batches = read_all(path, "python/train-00000-of-00001.parquet", parquet_source(), batch_documents=3)

    expected = [(i, "python", code(i)) for i in range(14) if i not in planted]
    expected[-2] = (12, "python", "\u00e9 = 1\n")
    assert docs == expected
    assert {r.location: r.reason for r in bad} == {f"row {i}": reason for i, (_, reason) in planted.items()}
    assert all(len(b) == 3 for b in batches[:-1])


def test_parquet_subset_column_when_the_recipe_names_one(tmp_path):
    path = tmp_path / "t.parquet"
    write_parquet(path, [code(0).encode(), code(1).encode()])
    docs, _, _ = read_all(path, "t.parquet", parquet_source(subset_field="max_stars_repo_name"))
    assert [s for _, s, _ in docs] == ["python/cpython"] * 2


def test_parquet_file_level_problems(tmp_path):
    no_content = tmp_path / "missing-content.parquet"
    write_parquet(no_content, [code(0).encode()], column="text")
    numbers = tmp_path / "numbers.parquet"
    pq.write_table(pa.table({"content": [1, 2, 3]}), numbers)
    broken = tmp_path / "broken-0000.parquet"
    broken.write_bytes(b"<html>503 Service Unavailable</html>\n")
    truncated = tmp_path / "truncated.parquet"
    write_parquet(truncated, [code(i).encode() for i in range(20)])
    truncated.write_bytes(truncated.read_bytes()[:-100])

    for path, reason in [
        (no_content, "missing_text_column"),
        (numbers, "non_string_text"),
        (broken, "not_parquet"),
        (truncated, "not_parquet"),
    ]:
        docs, bad, _ = read_all(path, f"python/{path.name}", parquet_source())
        assert docs == [] and [(r.reason, r.location) for r in bad] == [(reason, "file")], path
        assert "content" in bad[0].error or reason == "not_parquet"  # the message names the column to fix


def test_a_corrupt_parquet_page_costs_only_its_row_group(tmp_path):
    path = tmp_path / "corrupt.parquet"
    write_parquet(path, [code(i).encode() for i in range(12)], row_group_size=4)
    page = pq.ParquetFile(path).metadata.row_group(1).column(4).data_page_offset
    data = bytearray(path.read_bytes())
    data[page : page + 16] = b"\xff" * 16
    path.write_bytes(bytes(data))

    docs, bad, _ = read_all(path, "python/corrupt.parquet", parquet_source())

    assert [o for o, _, _ in docs] == [0, 1, 2, 3, 8, 9, 10, 11]
    assert [t for _, _, t in docs] == [code(i) for i in (0, 1, 2, 3, 8, 9, 10, 11)]
    assert [(r.reason, r.location) for r in bad] == [("unreadable_file", "row 4")]
    assert "rows 4 to 7" in bad[0].error


def test_memory_filesystem_reads_like_local(tmp_path):
    lines, good, bad = mixed_lines()
    memory = fsspec.filesystem("memory")
    memory.pipe("/fetch-test/train/a.jsonl.zst", compress(b"\n".join(lines), ".jsonl.zst"))
    local_parquet = tmp_path / "p.parquet"
    write_parquet(local_parquet, [code(i).encode() for i in range(6)])
    memory.pipe("/fetch-test/python/p.parquet", local_parquet.read_bytes())
    try:
        docs, records, _ = read_all(
            "memory://fetch-test/train/a.jsonl.zst", "train/a.jsonl.zst", jsonl_source(), fs=memory
        )
        assert [(o, t) for o, _, t in docs] == [(o, unicodedata.normalize("NFC", t)) for o, t in good]
        assert {r.location: r.reason for r in records} == bad

        fs, path = fsspec.core.url_to_fs("memory://fetch-test/python/p.parquet")
        docs, records, _ = read_all(path, "python/p.parquet", parquet_source(), fs=fs)
        assert docs == [(i, "python", code(i)) for i in range(6)] and not records
    finally:
        memory.rm("/fetch-test", recursive=True)


def test_batch_documents_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="batch_documents"):
        next(read_documents(LOCAL, str(tmp_path / "x.jsonl"), "x.jsonl", jsonl_source(), 0))
