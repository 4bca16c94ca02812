"""`tokenmill verify` on a copy of the reference build: a flipped byte in any shard or index, a truncated file, and
a manifest whose paths leave its folder are refused (exit 1), naming the file."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest

from manifests.manifest import load
from manifests.outputs import MANIFEST, QUARANTINE, TOKENIZER_MODEL
from pipeline.cli import main as tokenmill_main


def verify(manifest: Path, capsys) -> tuple[int, str]:
    code = tokenmill_main(["verify", str(manifest)])
    return code, capsys.readouterr().err


def shard_files(root: Path) -> list[Path]:
    manifest = load(root)
    return [
        root / path for info in manifest.splits.values() for shard in info.shards for path in (shard.bin, shard.idx)
    ]


def test_a_flipped_byte_in_any_shard_or_index_is_found_and_named(build_copy, capsys):
    assert verify(build_copy / MANIFEST, capsys)[0] == 0
    rng = random.Random(0)
    files = shard_files(build_copy)
    assert len(files) >= 10
    for path in files:
        original = path.read_bytes()
        damaged = bytearray(original)
        damaged[rng.randrange(len(damaged))] ^= 1 << rng.randrange(8)
        path.write_bytes(bytes(damaged))
        code, err = verify(build_copy / MANIFEST, capsys)
        assert code == 1
        assert [line.split(": ", 1)[0] for line in err.splitlines() if line.startswith("BAD")] == [f"BAD  {path}"]
        assert "sha256 mismatch" in err
        path.write_bytes(original)


@pytest.mark.parametrize("suffix", [".bin", ".idx"])
def test_a_truncated_shard_is_found_and_named(build_copy, suffix, capsys):
    path = next(p for p in shard_files(build_copy) if p.suffix == suffix)
    data = path.read_bytes()
    path.write_bytes(data[:-2])
    code, err = verify(build_copy / MANIFEST, capsys)
    assert code == 1
    assert f"BAD  {path}: {len(data) - 2} bytes, manifest says {len(data)} (truncated or changed)" in err


def _point_outside(manifest: dict, field: str, path: str) -> None:
    """Change the manifest's JSON object: what it becomes is no valid manifest, which is the point."""
    if field == "tokenizer.path":
        manifest["tokenizer"]["path"] = path
    elif field == "quarantine.path":
        manifest["quarantine"]["path"] = path
    else:
        manifest["splits"]["train"]["shards"][0][field] = path


@pytest.mark.parametrize("field", ["bin", "idx", "tokenizer.path", "quarantine.path"])
@pytest.mark.parametrize("escape", ["relative", "absolute"])
def test_a_manifest_whose_paths_leave_its_folder_is_refused(build_copy, field, escape, capsys):
    """The file the path points to exists and is intact, so only the path check can refuse it."""
    manifest_path = build_copy / MANIFEST
    manifest = json.loads(manifest_path.read_text())
    inside = {"tokenizer.path": TOKENIZER_MODEL, "quarantine.path": QUARANTINE}.get(field) or manifest["splits"][
        "train"
    ]["shards"][0][field]
    outside = build_copy.parent / Path(inside).name
    shutil.copy(build_copy / inside, outside)
    _point_outside(manifest, field, f"../{outside.name}" if escape == "relative" else str(outside))
    manifest_path.write_text(json.dumps(manifest))
    code, err = verify(manifest_path, capsys)
    assert code == 1
    assert err.startswith(f"tokenmill verify: {manifest_path}: ") and "leaves the manifest's folder" in err


def test_shard_files_the_manifest_does_not_list_are_warned_about(build_copy, capsys):
    (build_copy / "train").mkdir(exist_ok=True)
    (build_copy / "train" / "train-00099.bin").write_bytes(b"left by an earlier build")
    code, err = verify(build_copy / MANIFEST, capsys)
    assert code == 0 and "warning: 1 shard files" in err and "train/train-00099.bin" in err
