"""`tokenmill stage-in`: copy + verify a build's shards from an fsspec URL (memory://, file://) to local disk.

The build under test is small but real: stdlib docstrings tokenized with the mistral sentencepiece model into
shards written with the shard format's own writer, and a manifest that validates against the schema.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import fsspec
import numpy as np
import pytest

from manifests import manifest as manifest_io
from manifests.manifest import ManifestError
from manifests.outputs import MANIFEST, QUARANTINE
from manifests.shards import read_shard, sha256_file
from pipeline.ops.stage_in import StageInError, main, stage_in
from tests.support.small_build import SHARDS, write_small_build


@pytest.fixture(scope="module")
def small_build(tmp_path_factory) -> Path:
    return write_small_build(tmp_path_factory.mktemp("build") / "tl")


@pytest.fixture
def memory_build(small_build):
    """The build uploaded to fsspec's in-memory filesystem, under a root of its own."""
    fs = fsspec.filesystem("memory")
    root = f"/bucket-{uuid.uuid4().hex[:8]}/tl"
    fs.put(str(small_build.parent), root, recursive=True)
    yield f"memory://{root}/{MANIFEST}"
    fs.rm(root, recursive=True)


def staged_files(manifest_path: Path) -> list[str]:
    manifest = manifest_io.load(manifest_path)
    shards = [s for split in manifest.splits.values() for s in split.shards]
    return sorted([s.bin for s in shards] + [s.idx for s in shards] + [manifest.tokenizer.path])


def test_stage_in_from_memory_copies_and_verifies_every_listed_file(small_build, memory_build, tmp_path):
    local = tmp_path / "nvme"
    result = stage_in(memory_build, local, threads=4, log=lambda line: None)

    assert sorted(result.copied) == staged_files(small_build) and result.already_present == []
    assert result.bytes_copied == sum((small_build.parent / f).stat().st_size for f in result.copied)
    assert (local / MANIFEST).read_bytes() == small_build.read_bytes()  # byte for byte: nothing rewritten
    staged = manifest_io.load(local / MANIFEST)
    for split in SHARDS:
        for shard in staged.shards(split):
            assert sha256_file(shard.bin_path) == shard.entry.bin_sha256
            _, original = read_shard(small_build.parent / shard.entry.bin, small_build.parent / shard.entry.idx)
            assert np.array_equal(read_shard(shard.bin_path, shard.idx_path)[1], original)
    assert sha256_file(staged.tokenizer_path()) == staged.tokenizer.sha256
    assert not list(local.rglob("*.part"))
    assert not (local / QUARANTINE).exists()  # only what training reads


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
    assert not (local / MANIFEST).exists()
    done = sorted(str(p.relative_to(local)) for p in local.rglob("*") if p.is_file())
    # the two logged, plus any the copier thread finished before the main thread got to log them
    assert 2 <= len(done) < len(staged_files(small_build))
    # A copier killed mid-file leaves its temporary name behind; the next run must not trust it.
    (local / "train" / ".train-00002.bin.part").write_bytes(b"half a shard")

    result = stage_in(source, local, threads=4, log=lambda line: None)
    assert sorted(result.already_present) == done
    assert sorted(result.copied) == sorted(set(staged_files(small_build)) - set(done))
    assert (local / MANIFEST).read_bytes() == small_build.read_bytes()
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

    assert main([f"file://{corrupt}/{MANIFEST}", str(local)]) == 1
    err = capsys.readouterr().err
    assert "1 of 9 files not staged" in err
    assert f"file://{shard}: sha256 " in err and "differs from the manifest's" in err
    assert not (local / MANIFEST).exists()  # no manifest: training cannot start from a partial copy
    assert not (local / "validation" / "validation-00000.bin").exists()
    assert not list(local.rglob("*.part"))
    assert (local / "train" / "train-00000.bin").exists()  # the intact files are kept for the next run


def test_a_missing_shard_is_named(small_build, tmp_path):
    partial = tmp_path / "partial"
    fsspec.filesystem("file").put(str(small_build.parent), str(partial), recursive=True)
    (partial / "train" / "train-00002.idx").unlink()
    with pytest.raises(StageInError, match=r"train/train-00002\.idx: listed in the manifest but missing"):
        stage_in(str(partial / MANIFEST), tmp_path / "nvme", log=lambda line: None)


@pytest.mark.parametrize(
    ("where", "message"),
    [
        ("shard", "splits.train shard bin: path 'train/../../../etc/passwd' leaves the manifest's folder"),
        ("tokenizer", "tokenizer.path: path '/etc/passwd' leaves the manifest's folder"),
    ],
)
def test_paths_that_leave_the_manifest_folder_are_refused(small_build, tmp_path, where, message):
    data = json.loads(small_build.read_text())
    if where == "shard":
        data["splits"]["train"]["shards"][0]["bin"] = "train/../../../etc/passwd"
    else:
        data["tokenizer"]["path"] = "/etc/passwd"
    fs = fsspec.filesystem("memory")
    root = f"/evil-{uuid.uuid4().hex[:8]}"
    fs.pipe(f"{root}/{MANIFEST}", json.dumps(data).encode())
    local = tmp_path / "nvme"
    with pytest.raises(ManifestError) as refused:
        stage_in(f"memory://{root}/{MANIFEST}", local, log=lambda line: None)
    assert message in str(refused.value)
    assert not local.exists()
    fs.rm(root, recursive=True)


def test_cli_stages_and_reports(memory_build, tmp_path, capsys):
    local = tmp_path / "nvme"
    assert main([memory_build, str(local), "--threads", "2"]) == 0
    out = capsys.readouterr().out
    assert "staged 9 files into" in out and "9 copied" in out
    assert f"train with: tokenmill train --manifest {local / MANIFEST}" in out
    assert main([memory_build, str(local)]) == 0
    assert "0 copied (0.0 MB), 9 already there and intact" in capsys.readouterr().out


def test_cli_names_a_missing_manifest(tmp_path, capsys):
    assert main([f"file://{tmp_path}/nowhere/{MANIFEST}", str(tmp_path / "nvme")]) == 2
    assert "no such manifest" in capsys.readouterr().err


def test_the_manifest_of_an_earlier_copy_goes_until_the_new_build_is_complete(small_build, tmp_path):
    local = tmp_path / "nvme"
    stage_in(str(small_build), local, log=lambda line: None)
    newer = tmp_path / "newer"
    fsspec.filesystem("file").put(str(small_build.parent), str(newer), recursive=True)
    manifest = manifest_io.load(newer / MANIFEST)
    manifest.created_at = "2030-01-01T00:00:00+00:00"
    manifest_io.write_local(manifest, newer / MANIFEST)
    (newer / "train" / "train-00000.idx").write_bytes(b"not the index the manifest lists")
    (local / "train" / "train-00000.idx").unlink()  # so it must come from the newer build's damaged copy

    with pytest.raises(StageInError, match=r"train/train-00000\.idx: sha256"):
        stage_in(str(newer / MANIFEST), local, log=lambda line: None)
    assert not (local / MANIFEST).exists()  # neither build's manifest: the copy is not whole
