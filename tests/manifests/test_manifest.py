"""manifests/manifest.py: the typed manifest and its JSON (a round trip changes no byte), and the one loader's
refusals, each naming the manifest and what is wrong."""

from __future__ import annotations

import json
import uuid

import fsspec
import numpy as np
import pytest

from manifests.documents import Documents, write_documents
from manifests.manifest import Funnel, ManifestError, Provenance, dumps, load, parse, to_dict, write_local
from manifests.outputs import MANIFEST


@pytest.fixture
def written(tmp_path, tokenizer_entry):
    docs = Documents(["a.txt", "b.txt"], np.array([5, 6, 2, 7, 2], np.uint16), np.array([3, 2]))
    return write_documents(tmp_path / "out", {"train": docs}, tokenizer=tokenizer_entry, shard_tokens=1)


def test_json_to_typed_and_back_changes_no_byte(written):
    manifest = load(written)
    manifest.tokenizer.path = "tokenizer.model"
    funnel = Funnel(documents_read=2, bytes_read=9, dropped={"short": 1}, documents_kept=1, tokens_kept=3)
    manifest.sources[0].subsets = {"(file)": funnel}
    manifest.provenance = Provenance(work="file:///w", dedupe="d", mix="m", reused={"mix": 1}, verify="v")
    text = dumps(manifest)
    assert parse(text, "m") == manifest and dumps(parse(text, "m")) == text
    assert to_dict(parse(text, "m")) == json.loads(text)
    data = json.loads(text)
    assert data["provenance"]["verify"] == "v" and data["tokenizer"]["path"] == "tokenizer.model"
    assert text == json.dumps(json.loads(text), indent=2, sort_keys=True) + "\n"  # keys sorted, two-space indent


def test_optional_fields_left_unset_are_absent_from_the_json(written):
    data = json.loads(written.read_text())
    assert "provenance" not in data and "path" not in data["tokenizer"]
    assert load(written).provenance is None and load(written).tokenizer_path() is None


def test_the_loader_takes_a_folder_or_any_fsspec_url(written):
    assert load(written.parent) == load(written)
    root = f"/manifest-{uuid.uuid4().hex[:8]}"
    fsspec.filesystem("memory").pipe(f"{root}/{MANIFEST}", written.read_bytes())
    assert load(f"memory://{root}") == load(written)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: "{not json", "not valid JSON (line 1)"),
        (
            lambda d: {**d, "format_version": 2},
            "format_version 2, this tokenmill reads 1; upgrade tokenmill or rebuild",
        ),
        (lambda d: {**d, "dtype": "int8"}, "field `dtype`"),
        (
            lambda d: {k: v for k, v in d.items() if k != "splits"},
            "field `(top level)`: 'splits' is a required property",
        ),
        (
            lambda d: {**d, "quarantine": {**d["quarantine"], "path": "../q.jsonl"}},
            "quarantine.path: path '../q.jsonl' leaves",
        ),
        (
            lambda d: {**d, "sources": [{**d["sources"][0], "subsets": {"a": {"documents": 1}}}]},
            "rebuild with this tokenmill",
        ),
    ],
)
def test_the_loader_refuses_with_the_manifest_and_the_field_named(written, change, message):
    changed = change(json.loads(written.read_text()))
    written.write_text(changed if isinstance(changed, str) else json.dumps(changed))
    with pytest.raises(ManifestError) as refused:
        load(written)
    assert str(refused.value).startswith(f"{written}: ") and message in str(refused.value)


def test_a_missing_manifest_or_split_is_named(written, tmp_path):
    missing = tmp_path / "nowhere" / MANIFEST
    with pytest.raises(ManifestError, match=f"{missing}: no such manifest; run `tokenmill build"):
        load(tmp_path / "nowhere" / MANIFEST)
    with pytest.raises(ManifestError, match="no split 'test'; it has train"):
        load(written).shards("test")


def test_an_invalid_manifest_is_never_written(written, tmp_path):
    manifest = load(written)
    manifest.dtype = "float32"
    with pytest.raises(ManifestError, match="field `dtype`"):
        write_local(manifest, tmp_path / MANIFEST)
    assert not (tmp_path / MANIFEST).exists()
