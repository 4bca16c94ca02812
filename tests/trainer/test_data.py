from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from manifests.manifest import load
from manifests.shards import open_tokens, read_index
from trainer.data import Cursor, DataError, TokenWindows, WindowLoader, check_shards, permute

CPU = torch.device("cpu")


@pytest.mark.parametrize("n", [1, 2, 3, 7, 64, 1000, 4097, 123_457])
def test_permute_is_a_bijection_of_the_window_range(n):
    keys = np.random.SeedSequence([5, 0]).generate_state(4, dtype=np.uint64)
    out = permute(np.arange(n), n, keys)
    assert np.array_equal(np.sort(out), np.arange(n))


def test_permute_depends_on_the_keys_and_shuffles():
    n = 10_000
    a = permute(np.arange(n), n, np.random.SeedSequence([1, 0]).generate_state(4, dtype=np.uint64))
    b = permute(np.arange(n), n, np.random.SeedSequence([1, 1]).generate_state(4, dtype=np.uint64))
    assert not np.array_equal(a, b)
    assert abs(np.corrcoef(np.arange(n), a)[0, 1]) < 0.05  # no trace of the input order


def test_windows_are_slices_of_one_shard_each(sample_manifest):
    manifest = load(sample_manifest)
    windows = TokenWindows(manifest, "train", context=64)
    shards = [open_tokens(s.bin_path, read_index(s.idx_path)) for s in manifest.shards("train")]
    assert len(shards) >= 3
    assert len(windows) == sum((len(t) - 1) // 64 for t in shards)
    first_of_second_shard = (len(shards[0]) - 1) // 64
    batch = windows.gather(np.array([0, first_of_second_shard - 1, first_of_second_shard]))
    assert np.array_equal(batch[0], shards[0][:65])
    assert np.array_equal(batch[1], shards[0][(first_of_second_shard - 1) * 64 :][:65])
    assert np.array_equal(batch[2], shards[1][:65])


def _loader(manifest, *, rank=0, world_size=1, seed=7, batch=4):
    return WindowLoader(TokenWindows(manifest, "train", context=64), batch=batch, seed=seed, rank=rank, world_size=world_size, device=CPU)


def test_state_dict_resumes_at_the_exact_next_window_across_epochs(sample_manifest):
    manifest = load(sample_manifest)
    first = _loader(manifest, batch=32)
    steps = first.per_rank // 32 + 3  # runs into the second epoch
    reference = [next(first) for _ in range(steps + 5)]
    first.close()
    stopped = _loader(manifest, batch=32)
    for _ in range(steps):
        next(stopped)
    state = stopped.state_dict()
    stopped.close()
    assert state["epoch"] == 1 and state["world_size"] == 1
    resumed = _loader(manifest, batch=32)
    resumed.load_state_dict(state)
    for expected_inputs, expected_targets in reference[steps:]:
        inputs, targets = next(resumed)
        assert torch.equal(inputs, expected_inputs) and torch.equal(targets, expected_targets)
    resumed.close()


def test_epochs_reshuffle_and_cover_every_window(sample_manifest):
    loader = _loader(load(sample_manifest))
    epoch0 = loader.indices(Cursor(epoch=0), loader.per_rank)
    epoch1 = loader.indices(Cursor(epoch=1), loader.per_rank)
    assert np.array_equal(np.sort(epoch0), np.arange(len(loader.windows)))
    assert not np.array_equal(epoch0, epoch1)


def test_refuses_a_state_from_another_world_size(sample_manifest):
    two_ranks = _loader(load(sample_manifest), rank=1, world_size=2)
    state = two_ranks.state_dict()
    one_rank = _loader(load(sample_manifest))
    with pytest.raises(DataError, match="written by 2 ranks and this run has 1.*--nproc 2"):
        one_rank.load_state_dict(state)


def test_inputs_and_targets_are_shifted_by_one(sample_manifest):
    loader = _loader(load(sample_manifest))
    inputs, targets = next(loader)
    loader.close()
    assert inputs.dtype == torch.int64 and inputs.shape == (4, 64)
    assert torch.equal(inputs[:, 1:], targets[:, :-1])


def test_check_shards_names_a_truncated_shard(sample_manifest, tmp_path):
    copy = tmp_path / "m"
    shutil.copytree(sample_manifest.parent, copy)
    shard = load(copy / "manifest.json").shards("train")[1]
    shard.bin_path.write_bytes(shard.bin_path.read_bytes()[:-2])
    with pytest.raises(DataError, match=rf"{shard.bin_path.name}: .* bytes, manifest says"):
        check_shards(load(copy / "manifest.json"), "train", checksums=False)


def test_check_shards_finds_a_changed_byte_only_with_checksums(sample_manifest, tmp_path):
    copy = tmp_path / "m"
    shutil.copytree(sample_manifest.parent, copy)
    shard = load(copy / "manifest.json").shards("train")[2]
    data = bytearray(shard.bin_path.read_bytes())
    data[100] ^= 1
    shard.bin_path.write_bytes(bytes(data))
    check_shards(load(copy / "manifest.json"), "train", checksums=False)
    with pytest.raises(DataError, match=rf"{shard.bin_path.name}: sha256 mismatch"):
        check_shards(load(copy / "manifest.json"), "train", checksums=True)
