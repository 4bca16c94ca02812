"""`tokenmill stage-in`: copy + verify a build's shards from an fsspec URL (memory://, file://) to local disk.

The build under test is small but real: stdlib docstrings tokenized with the mistral sentencepiece model into
shards written with the shard format's own writer, and a manifest that validates against the schema.
"""
from __future__ import annotations

import ast
import datetime
import hashlib
import importlib.resources
import json
import sysconfig
import uuid
from pathlib import Path

import fsspec
import numpy as np
import pytest
import sentencepiece as spm

from manifests import manifest as manifest_io
from manifests.manifest import ManifestError
from manifests.shards import encode_index, open_tokens, read_index, sha256_file
from pipeline.ops.stage_in import StageInError, main, stage_in

SHARDS = {"train": 3, "validation": 1}


def _docstrings(count: int) -> list[str]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    texts = []
    for path in sorted(stdlib.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        texts += [d for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and (d := ast.get_docstring(node))]
        if len(texts) >= count:
            return texts[:count]
    return texts


def _write_shard(out: Path, name: str, docs: list[list[int]], eos: int) -> dict:
    tokens = np.array([t for doc in docs for t in doc + [eos]], dtype="<u2")
    ends = np.cumsum([len(doc) + 1 for doc in docs]).astype("<u8")
    bin_path, idx_path = out / f"{name}.bin", out / f"{name}.idx"
    bin_path.parent.mkdir(parents=True, exist_ok=True)
    bin_path.write_bytes(tokens.tobytes())
    idx_path.write_bytes(encode_index(tokens.dtype, ends, np.zeros(len(docs), "<u2"), np.arange(len(docs), dtype="<u8")))
    return {
        "bin": f"{name}.bin", "idx": f"{name}.idx",
        "bin_sha256": sha256_file(bin_path), "idx_sha256": sha256_file(idx_path),
        "bin_bytes": bin_path.stat().st_size, "idx_bytes": idx_path.stat().st_size,
        "documents": len(docs), "tokens": len(tokens), "tokens_by_source": {"docstrings": len(tokens)},
    }


def write_small_build(out: Path) -> Path:
    """A real manifest + shards + tokenizer copy, as `tokenmill build` lays them out."""
    model = (importlib.resources.files("mistral_common") / "data/tokenizer.model.v1").read_bytes()
    sp = spm.SentencePieceProcessor(model_proto=model)
    docs = sp.encode(_docstrings(120))
    out.mkdir(parents=True, exist_ok=True)
    (out / "tokenizer.model").write_bytes(model)
    splits, start = {}, 0
    for split, count in SHARDS.items():
        entries = []
        for n in range(count):
            entries.append(_write_shard(out, f"{split}/{split}-{n:05d}", docs[start : start + 20], sp.eos_id()))
            start += 20
        tokens = sum(e["tokens"] for e in entries)
        splits[split] = {"documents": sum(e["documents"] for e in entries), "tokens": tokens, "tokens_by_source": {"docstrings": tokens}, "shards": entries}
    manifest = {
        "format": manifest_io.FORMAT, "format_version": manifest_io.FORMAT_VERSION, "tool_version": "0.1.0",
        "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "recipe": {"name": "stage-in-test"}, "recipe_sha256": hashlib.sha256(b"stage-in-test").hexdigest(),
        "tokenizer": {"uri": "pkg://mistral_common/data/tokenizer.model.v1", "path": "tokenizer.model", "sha256": hashlib.sha256(model).hexdigest(),
                      "vocab_size": sp.vocab_size(), "bos_id": sp.bos_id(), "eos_id": sp.eos_id(), "add_bos": False, "add_eos": True},
        "dtype": "uint16",
        "inputs": [{"source": "docstrings", "split": "train", "path": "stdlib"}],
        "sources": [{"name": "docstrings", "id": 0, "uris": ["stdlib"], "weight": 1.0, "files": 1, "documents_read": start, "bytes_read": 0,
                     "dropped": {}, "documents_kept": start, "tokens_kept": sum(s["tokens"] for s in splits.values()), "epochs": 1.0, "subsets": {}}],
        "splits": splits,
        "mix": {"policy": "natural", "target": {"docstrings": 1.0}, "achieved": {s: {"docstrings": 1.0} for s in splits}},
        "stages": {},
        "quarantine": {"path": "quarantine.jsonl", "records": 0, "by_reason": {}},
    }
    manifest_io.write_local(manifest, out / "manifest.json")
    return out / "manifest.json"


@pytest.fixture(scope="module")
def small_build(tmp_path_factory) -> Path:
    return write_small_build(tmp_path_factory.mktemp("build") / "tl")


@pytest.fixture
def memory_build(small_build):
    """The build uploaded to fsspec's in-memory filesystem, under a root of its own."""
    fs = fsspec.filesystem("memory")
    root = f"/bucket-{uuid.uuid4().hex[:8]}/tl"
    fs.put(str(small_build.parent), root, recursive=True)
    yield f"memory://{root}/manifest.json"
    fs.rm(root, recursive=True)


def staged_files(manifest_path: Path) -> list[str]:
    data = json.loads(manifest_path.read_text())
    shards = [s for split in data["splits"].values() for s in split["shards"]]
    return sorted([s["bin"] for s in shards] + [s["idx"] for s in shards] + [data["tokenizer"]["path"]])


def test_stage_in_from_memory_copies_and_verifies_every_listed_file(small_build, memory_build, tmp_path):
    local = tmp_path / "nvme"
    result = stage_in(memory_build, local, threads=4, log=lambda line: None)

    assert sorted(result.copied) == staged_files(small_build) and result.already_present == []
    assert result.bytes_copied == sum((small_build.parent / f).stat().st_size for f in result.copied)
    assert (local / "manifest.json").read_bytes() == small_build.read_bytes()  # byte for byte: nothing rewritten
    staged = manifest_io.load(local / "manifest.json")
    for split in SHARDS:
        for shard in staged.shards(split):
            assert sha256_file(shard.bin_path) == shard.entry["bin_sha256"]
            original = read_index(small_build.parent / shard.entry["idx"])
            assert np.array_equal(open_tokens(shard.bin_path, read_index(shard.idx_path)), open_tokens(small_build.parent / shard.entry["bin"], original))
    assert sha256_file(staged.tokenizer_path()) == staged.data["tokenizer"]["sha256"]
    assert not list(local.rglob("*.part"))
    assert not (local / "quarantine.jsonl").exists()  # only what training reads


def test_stage_in_resumes_after_an_interruption(small_build, tmp_path):
    source = f"file://{small_build}"
    local = tmp_path / "nvme"
    copied_before_stop = []

    def interrupt_after_two(line: str) -> None:
        copied_before_stop.append(line)
        if len(copied_before_stop) == 2:
            raise KeyboardInterrupt  # what Ctrl-C raises in the main thread, at the same point

    with pytest.raises(KeyboardInterrupt):
        stage_in(source, local, threads=1, log=interrupt_after_two)
    assert not (local / "manifest.json").exists()
    done = sorted(str(p.relative_to(local)) for p in local.rglob("*") if p.is_file())
    # the two logged, plus any the copier thread finished before the main thread got to log them
    assert 2 <= len(done) < len(staged_files(small_build))
    # A copier killed mid-file leaves its temporary name behind; the next run must not trust it.
    (local / "train" / ".train-00002.bin.part").write_bytes(b"half a shard")

    result = stage_in(source, local, threads=4, log=lambda line: None)
    assert sorted(result.already_present) == done
    assert sorted(result.copied) == sorted(set(staged_files(small_build)) - set(done))
    assert (local / "manifest.json").read_bytes() == small_build.read_bytes()
    assert not list(local.rglob("*.part"))

    again = stage_in(source, local, log=lambda line: None)
    assert again.copied == [] and sorted(again.already_present) == staged_files(small_build)


def test_a_damaged_local_copy_is_copied_again(small_build, tmp_path):
    local = tmp_path / "nvme"
    stage_in(f"file://{small_build}", local, log=lambda line: None)
    damaged = local / "train" / "train-00001.bin"
    data = bytearray(damaged.read_bytes())
    data[10] ^= 0xFF  # same size, different bytes: only the checksum can tell
    damaged.write_bytes(bytes(data))

    result = stage_in(f"file://{small_build}", local, log=lambda line: None)
    assert result.copied == ["train/train-00001.bin"]
    assert sha256_file(damaged) == sha256_file(small_build.parent / "train" / "train-00001.bin")


def test_a_corrupted_shard_is_refused_with_its_name(small_build, tmp_path, capsys):
    corrupt = tmp_path / "corrupt"
    fsspec.filesystem("file").put(str(small_build.parent), str(corrupt), recursive=True)
    shard = corrupt / "validation" / "validation-00000.bin"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0x01
    shard.write_bytes(bytes(data))
    local = tmp_path / "nvme"

    assert main([f"file://{corrupt}/manifest.json", str(local)]) == 1
    err = capsys.readouterr().err
    assert "1 of 9 files not staged" in err
    assert f"file://{shard}: sha256 " in err and "differs from the manifest's" in err
    assert not (local / "manifest.json").exists()  # no manifest: training cannot start from a partial copy
    assert not (local / "validation" / "validation-00000.bin").exists()
    assert not list(local.rglob("*.part"))
    assert (local / "train" / "train-00000.bin").exists()  # the intact files are kept for the next run


def test_a_missing_shard_is_named(small_build, tmp_path):
    partial = tmp_path / "partial"
    fsspec.filesystem("file").put(str(small_build.parent), str(partial), recursive=True)
    (partial / "train" / "train-00002.idx").unlink()
    with pytest.raises(StageInError, match=r"train/train-00002\.idx: listed in the manifest but missing"):
        stage_in(str(partial / "manifest.json"), tmp_path / "nvme", log=lambda line: None)


@pytest.mark.parametrize(("where", "message"), [
    ("shard", "splits.train shard bin: path 'train/../../../etc/passwd' leaves the manifest's folder"),
    ("tokenizer", "tokenizer.path: path '/etc/passwd' leaves the manifest's folder"),
])
def test_paths_that_leave_the_manifest_folder_are_refused(small_build, tmp_path, where, message):
    data = json.loads(small_build.read_text())
    if where == "shard":
        data["splits"]["train"]["shards"][0]["bin"] = "train/../../../etc/passwd"
    else:
        data["tokenizer"]["path"] = "/etc/passwd"
    fs = fsspec.filesystem("memory")
    root = f"/evil-{uuid.uuid4().hex[:8]}"
    fs.pipe(f"{root}/manifest.json", json.dumps(data).encode())
    local = tmp_path / "nvme"
    with pytest.raises(ManifestError) as refused:
        stage_in(f"memory://{root}/manifest.json", local, log=lambda line: None)
    assert message in str(refused.value)
    assert not local.exists()
    fs.rm(root, recursive=True)


def test_cli_stages_and_reports(memory_build, tmp_path, capsys):
    local = tmp_path / "nvme"
    assert main([memory_build, str(local), "--threads", "2"]) == 0
    out = capsys.readouterr().out
    assert "staged 9 files into" in out and "9 copied" in out
    assert f"train with: tokenmill train --manifest {local / 'manifest.json'}" in out
    assert main([memory_build, str(local)]) == 0
    assert "0 copied (0.0 MB), 9 already there and intact" in capsys.readouterr().out


def test_cli_names_a_missing_manifest(tmp_path, capsys):
    assert main([f"file://{tmp_path}/nowhere/manifest.json", str(tmp_path / "nvme")]) == 2
    assert "no such manifest" in capsys.readouterr().err


def test_the_manifest_of_an_earlier_copy_goes_until_the_new_build_is_complete(small_build, tmp_path):
    local = tmp_path / "nvme"
    stage_in(str(small_build), local, log=lambda line: None)
    newer = tmp_path / "newer"
    fsspec.filesystem("file").put(str(small_build.parent), str(newer), recursive=True)
    data = json.loads((newer / "manifest.json").read_text())
    data["created_at"] = "2030-01-01T00:00:00+00:00"
    manifest_io.write_local(data, newer / "manifest.json")
    (newer / "train" / "train-00000.idx").write_bytes(b"not the index the manifest lists")
    (local / "train" / "train-00000.idx").unlink()  # so it must come from the newer build's damaged copy

    with pytest.raises(StageInError, match=r"train/train-00000\.idx: sha256"):
        stage_in(str(newer / "manifest.json"), local, log=lambda line: None)
    assert not (local / "manifest.json").exists()  # neither build's manifest: the copy is not whole
