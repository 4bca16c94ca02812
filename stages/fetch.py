"""Fetch: stream one input file (SlimPajama JSONL or StarCoderData parquet) into `DocBatch`es.

Bad input never stops a build and never costs a good document: whatever cannot become a document comes
out, in file order between the batches, as one `BadRecord` (the pipeline quarantines and counts them), and
reading goes on with the next record. Only a genuine I/O problem of the store raises, so that the pipeline
retries the task instead of silently dropping a file.

Every document's text comes out NFC-normalized; ordinals are 1-based line numbers (JSONL) or 0-based row
numbers (parquet).
"""

from __future__ import annotations

import gzip
import os
import unicodedata
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import fsspec
import fsspec.implementations.local
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import zstandard

from manifests.config import ConfigError
from stages.document import BadRecord, DocBatch

READ_BYTES = 1 << 20  # compressed bytes per read: large enough to amortize per-call costs, small for memory
PARQUET_READ_ROWS = 1024  # rows per Arrow batch: bounds memory to ~1024 documents
PREVIEW_BYTES = 200  # how much of an offending record a BadRecord keeps for a person to look at
UNKNOWN_SUBSET = "unknown"
UNSUPPORTED_COMPRESSION = (".bz2", ".xz", ".lz4", ".zip", ".7z", ".br")
_MISSING = object()
_JSON_TYPE_NAMES = {
    int: "a number",
    float: "a number",
    bool: "a boolean",
    list: "an array",
    dict: "an object",
    type(None): "null",
}

# (ordinal, subset, text) of one good document, or a BadRecord
_Item = tuple[int, str, str] | BadRecord


@dataclass(kw_only=True, slots=True)
class SourceConfig:
    name: str
    kind: str  # "jsonl" (SlimPajama layout) or "parquet" (StarCoderData layout)
    root: str  # fsspec URL or local path; relative paths resolve against the recipe file's folder
    train: list[str]  # glob patterns under root
    validation: list[str] = field(default_factory=list)
    validation_fraction: float = 0.0  # used when `validation` is empty: a hash-chosen share of documents
    text_field: str = "text"  # JSONL key or parquet column
    subset_field: str = ""  # dotted JSONL key (e.g. meta.redpajama_set_name); empty: first folder of the path
    include_subsets: list[str] = field(default_factory=list)  # empty: all
    exclude_subsets: list[str] = field(default_factory=list)
    weight: float = 1.0
    filters: dict[str, dict[str, Any]] = field(default_factory=dict)
    max_document_bytes: int = 10_000_000  # larger documents are quarantined as oversized_document

    def __post_init__(self) -> None:
        if not self.name or not self.name.replace("_", "").replace("-", "").isalnum():
            raise ConfigError("name", "use letters, digits, '-' and '_'")
        if self.kind not in ("jsonl", "parquet"):
            raise ConfigError(
                "kind",
                f"{self.kind!r} is not a source kind; use 'jsonl' (SlimPajama layout) or 'parquet' (StarCoderData "
                "layout)",
            )
        if not self.root:
            raise ConfigError("root", "give the folder or URL that holds the source's files")
        if not self.train:
            raise ConfigError("train", "give at least one glob pattern of training files")
        if isinstance(self.weight, bool) or not isinstance(self.weight, (int, float)) or not self.weight > 0:
            raise ConfigError(
                "weight", f"{self.weight!r} is not a positive number; weights are the target token ratio, e.g. 7 and 3"
            )
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ConfigError("validation_fraction", f"{self.validation_fraction} is outside [0, 1)")
        if self.validation and self.validation_fraction:
            raise ConfigError(
                "validation_fraction", "set either `validation` patterns or `validation_fraction`, not both"
            )
        if self.max_document_bytes <= 0:
            raise ConfigError("max_document_bytes", "must be positive")


def read_documents(
    fs: fsspec.AbstractFileSystem, path: str, rel_path: str, source: SourceConfig, batch_documents: int
) -> Iterator[DocBatch | BadRecord]:
    """The documents of one input file in batches of `batch_documents`, with a BadRecord for every record
    that cannot be a document. `path` is what `fs` opens; `rel_path` (relative to the source root) is what
    batches and bad records are labelled with."""
    if batch_documents < 1:
        raise ValueError(f"batch_documents must be positive, got {batch_documents}")
    read_items = _parquet_items if source.kind == "parquet" else _jsonl_items
    batch = DocBatch(source.name, rel_path)
    for item in read_items(fs, path, rel_path, source):
        if isinstance(item, BadRecord):
            yield item
            continue
        batch.append(*item)
        if len(batch) >= batch_documents:
            yield batch
            batch = DocBatch(source.name, rel_path)
    if batch:
        yield batch


# ---------------------------------------------------------------------------------------------- shared


def _preview(raw: bytes) -> str:
    return raw[:PREVIEW_BYTES].decode("utf-8", "backslashreplace")


def _first_folder(rel_path: str) -> str:
    head, sep, _ = rel_path.lstrip("/").partition("/")
    return head if sep else UNKNOWN_SUBSET


def _open(fs: fsspec.AbstractFileSystem, path: str, bad: partial) -> tuple[object | None, BadRecord | None]:
    """The open file, or the BadRecord saying why it cannot be read. A directory, or a local file we may not
    read, will not get better on retry; on a remote store a permission error can be a transient credential
    problem, so it is raised for the pipeline to retry."""
    try:
        return fs.open(path, "rb"), None
    except IsADirectoryError as e:
        return None, bad("file", "unreadable_file", f"{e}; the input pattern matched a directory, narrow it to files")
    except PermissionError as e:
        if not isinstance(fs, fsspec.implementations.local.LocalFileSystem):
            raise
        return None, bad("file", "unreadable_file", f"{e}; give the build user read access to the file")


def _text_problem(text: str, max_bytes: int) -> tuple[str, str] | None:
    """(reason, error) when `text` cannot be a document, else None."""
    if not text or text.isspace():
        return "empty_text", "the text is empty or only whitespace"
    nul = text.find("\x00")
    if nul >= 0:
        return "nul_bytes", f"NUL character at text offset {nul}; clean the record upstream"
    if len(text) * 4 > max_bytes:  # UTF-8 takes at most 4 bytes a character: most texts need no encode
        size = len(text) if text.isascii() else len(text.encode("utf-8"))
        if size > max_bytes:
            return (
                "oversized_document",
                f"{size} bytes > max_document_bytes {max_bytes}; raise sources[].max_document_bytes to keep it",
            )
    return None


def _nfc(text: str) -> str:
    # isascii() is O(1) on CPython strings and ASCII is always NFC; the quick check is far cheaper than normalize()
    if text.isascii() or unicodedata.is_normalized("NFC", text):
        return text
    return unicodedata.normalize("NFC", text)


# ---------------------------------------------------------------------------------------------- JSONL


@dataclass
class _StreamBroken(Exception):
    """The compressed stream cannot be decoded past `offset` decompressed bytes."""

    reason: str  # truncated_compressed or corrupt_compressed
    error: str
    offset: int
    partial_line: bytes = b""


def _zstd_chunks(f) -> Iterator[bytes]:
    """Decompressed bytes of a (possibly multi-frame) .zst stream. A decompressobj rather than
    `stream_reader`, because stream_reader ends silently on a truncated frame; `eof` tells us."""
    decompressor = zstandard.ZstdDecompressor()
    frame, in_frame, offset = decompressor.decompressobj(), False, 0
    for data in iter(partial(f.read, READ_BYTES), b""):
        while data:
            try:
                out = frame.decompress(data)
            except zstandard.ZstdError as e:
                raise _StreamBroken("corrupt_compressed", f"zstd: {e}", offset) from None
            in_frame = not frame.eof
            offset += len(out)
            if out:
                yield out
            if in_frame:
                break
            data, frame = frame.unused_data, decompressor.decompressobj()
    if in_frame:
        raise _StreamBroken("truncated_compressed", "zstd stream ends inside a frame (truncated download?)", offset)


def _gzip_chunks(f) -> Iterator[bytes]:
    stream, offset = gzip.GzipFile(fileobj=f, mode="rb"), 0
    while True:
        try:
            out = stream.read1(READ_BYTES)  # read() would drop what it decoded before a truncation
        except EOFError as e:
            raise _StreamBroken("truncated_compressed", f"gzip: {e}", offset) from None
        except (gzip.BadGzipFile, zlib.error) as e:
            raise _StreamBroken("corrupt_compressed", f"gzip: {e}", offset) from None
        if not out:
            return
        offset += len(out)
        yield out


def _decompressed_chunks(f, path: str) -> Iterator[bytes]:
    if path.endswith((".zst", ".zstd")):
        return _zstd_chunks(f)
    if path.endswith(".gz"):
        return _gzip_chunks(f)
    return iter(partial(f.read, READ_BYTES), b"")


def _lines(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """Lines without their newline. A line split over many chunks is collected in a list, not by repeated
    concatenation, so that a huge document costs linear time."""
    pending: list[bytes] = []
    try:
        for chunk in chunks:
            parts = chunk.split(b"\n")
            if len(parts) == 1:
                pending.append(chunk)
                continue
            if pending:
                parts[0] = b"".join(pending) + parts[0]
            pending = [parts.pop()]
            yield from parts
    except _StreamBroken as broken:
        broken.partial_line = b"".join(pending)[:PREVIEW_BYTES]
        raise
    last = b"".join(pending)
    if last:
        yield last


def _lookup(record: dict, keys: list[str]):
    value = record
    for key in keys:
        if type(value) is not dict:
            return _MISSING
        value = value.get(key, _MISSING)
    return value


def _jsonl_items(fs: fsspec.AbstractFileSystem, path: str, rel_path: str, source: SourceConfig) -> Iterator[_Item]:
    bad = partial(BadRecord, source.name, rel_path)
    if path.endswith(UNSUPPORTED_COMPRESSION):
        yield bad(
            "file",
            "unreadable_file",
            f"compression {os.path.splitext(path)[1]} is not supported; recompress as .jsonl.zst or .jsonl.gz",
        )
        return
    f, failure = _open(fs, path, bad)
    if failure:
        yield failure
        return
    parse = partial(_jsonl_item, fields=_JsonlFields.of(source, rel_path), bad=bad)
    line_no = 0
    with f:
        try:
            for line_no, line in enumerate(_lines(_decompressed_chunks(f, path)), 1):
                item = parse(line_no, line)
                if item is not None:
                    yield item
        except _StreamBroken as broken:
            kept = f"the {line_no} complete lines before it were read" if line_no else "no complete line came before it"
            yield bad(
                f"byte {broken.offset}",
                broken.reason,
                f"{broken.error} at decompressed byte {broken.offset}; {kept}; fetch the file again",
                _preview(broken.partial_line),
            )
            return
    if line_no == 0:
        yield bad("file", "empty_file", "the file holds no lines; remove it or fetch it again")


@dataclass(slots=True)
class _JsonlFields:
    """Where a JSONL record keeps its text and subset, worked out once per file."""

    text_field: str
    text_keys: list[str]
    subset_keys: list[str]  # empty: every document gets `folder_subset`
    folder_subset: str
    max_bytes: int

    @classmethod
    def of(cls, source: SourceConfig, rel_path: str) -> "_JsonlFields":
        subset_keys = source.subset_field.split(".") if source.subset_field else []
        return cls(
            source.text_field,
            source.text_field.split("."),
            subset_keys,
            _first_folder(rel_path),
            source.max_document_bytes,
        )


def _jsonl_item(line_no: int, line: bytes, fields: _JsonlFields, bad: partial) -> _Item | None:
    """The document on one line, its BadRecord, or None for a blank line (nothing there to lose)."""
    where = f"line {line_no}"
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError as e:
        if not line.strip():
            return None
        try:
            line.decode("utf-8")
        except UnicodeDecodeError as u:
            return bad(where, "invalid_utf8", f"{u}; only this line is skipped", _preview(line))
        return bad(where, "invalid_json", str(e), _preview(line))
    if type(record) is not dict:
        return bad(
            where, "invalid_json", f"a JSONL line must be a JSON object, got {_json_type(record)}", _preview(line)
        )
    text = _lookup(record, fields.text_keys)
    if text is _MISSING:
        return bad(
            where,
            "missing_text",
            f"no `{fields.text_field}` key; set sources[].text_field to the text key",
            _preview(line),
        )
    if type(text) is not str:
        return bad(
            where, "non_string_text", f"`{fields.text_field}` is {_json_type(text)}, not a string", _preview(line)
        )
    problem = _text_problem(text, fields.max_bytes)
    if problem:
        return bad(where, *problem, _preview(line))
    subset = _lookup(record, fields.subset_keys) if fields.subset_keys else fields.folder_subset
    return line_no, subset if type(subset) is str else UNKNOWN_SUBSET, _nfc(text)


def _json_type(value) -> str:
    return _JSON_TYPE_NAMES.get(type(value), "a string")


# ---------------------------------------------------------------------------------------------- parquet


def _parquet_items(fs: fsspec.AbstractFileSystem, path: str, rel_path: str, source: SourceConfig) -> Iterator[_Item]:
    bad = partial(BadRecord, source.name, rel_path)
    f, failure = _open(fs, path, bad)
    if failure:
        yield failure
        return
    with f:
        try:
            parquet = pq.ParquetFile(f)
        except pa.ArrowInvalid as e:
            if f.seek(0, os.SEEK_END) == 0:
                yield bad("file", "empty_file", "the file is 0 bytes; remove it or fetch it again")
            else:
                yield bad("file", "not_parquet", f"{e}; fetch the file again or remove it", _preview(_head(f)))
            return
        problem = _text_column_problem(parquet.schema_arrow, source.text_field)
        if problem:
            yield bad("file", *problem)
            return
        yield from _parquet_rows(parquet, source, rel_path, bad)


def _head(f) -> bytes:
    f.seek(0)
    return f.read(PREVIEW_BYTES)


def _text_column_problem(schema: pa.Schema, column: str) -> tuple[str, str] | None:
    if column not in schema.names:
        return (
            "missing_text_column",
            f"no column `{column}` (columns: {', '.join(schema.names)}); set sources[].text_field",
        )
    kind = schema.field(column).type
    if not (
        pa.types.is_string(kind)
        or pa.types.is_large_string(kind)
        or pa.types.is_binary(kind)
        or pa.types.is_large_binary(kind)
    ):
        return (
            "non_string_text",
            f"column `{column}` is {kind}, not a string column; set sources[].text_field to the text column",
        )
    return None


def _is_corrupt_data(error: Exception) -> bool:
    """Arrow reports bad pages as ArrowException or a bare OSError; an OSError subclass (connection reset,
    timeout, permission) comes from the store itself and is raised for the pipeline to retry."""
    return isinstance(error, pa.ArrowException) or type(error) is OSError


def _parquet_rows(parquet: pq.ParquetFile, source: SourceConfig, rel_path: str, bad: partial) -> Iterator[_Item]:
    """Row group by row group, so that a corrupt page costs only the rest of its row group."""
    subset_column = source.subset_field if source.subset_field in parquet.schema_arrow.names else ""
    columns = [source.text_field] + ([subset_column] if subset_column else [])
    folder_subset = _first_folder(rel_path) if not source.subset_field else UNKNOWN_SUBSET
    group_start = 0
    for group in range(parquet.num_row_groups):
        group_end = group_start + parquet.metadata.row_group(group).num_rows
        row = group_start
        try:
            for batch in parquet.iter_batches(batch_size=PARQUET_READ_ROWS, row_groups=[group], columns=columns):
                # read as bytes and decode per row: one invalid UTF-8 value must not fail the whole batch
                values = batch.column(0).cast(pa.large_binary()).to_pylist()
                subsets = _subset_values(batch, subset_column, folder_subset)
                for i, raw in enumerate(values):
                    yield _parquet_item(row + i, raw, subsets[i], source, bad)
                row += len(values)
        except Exception as e:
            if not _is_corrupt_data(e):
                raise
            yield bad(
                f"row {row}",
                "unreadable_file",
                f"{e}; rows {row} to {group_end - 1} (row group {group}) could not "
                "be read, the other row groups were; fetch the file again",
            )
        group_start = group_end


def _subset_values(batch: pa.RecordBatch, subset_column: str, folder_subset: str) -> list[str]:
    if not subset_column:
        return [folder_subset] * batch.num_rows
    values = batch.column(1).cast(pa.large_binary()).to_pylist()
    return [UNKNOWN_SUBSET if v is None else v.decode("utf-8", "replace") for v in values]


def _parquet_item(row: int, raw: bytes | None, subset: str, source: SourceConfig, bad: partial) -> _Item:
    where = f"row {row}"
    if raw is None:
        return bad(where, "non_string_text", f"`{source.text_field}` is null")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return bad(where, "invalid_utf8", f"{e}; only this row is skipped", _preview(raw))
    problem = _text_problem(text, source.max_document_bytes)
    if problem:
        return bad(where, *problem, _preview(raw))
    return row, subset, _nfc(text)
