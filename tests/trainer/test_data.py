from __future__ import annotations

import itertools
import shutil

import numpy as np
import pytest
import torch

from manifests.manifest import load, write_local
from manifests.outputs import MANIFEST
from manifests.shards import read_shard
from trainer.data import DataError, TokenWindows, WindowDataset, WindowLoader, check_shards, permute

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
    shards = [read_shard(s.bin_path, s.idx_path)[1] for s in manifest.shards("train")]
    assert len(shards) >= 3
    assert len(windows) == sum((len(t) - 1) // 64 for t in shards)
    first_of_second_shard = (len(shards[0]) - 1) // 64
    batch = windows.gather(np.array([0, first_of_second_shard - 1, first_of_second_shard]))
    assert np.array_equal(batch[0], shards[0][:65])
    assert np.array_equal(batch[1], shards[0][(first_of_second_shard - 1) * 64 :][:65])
    assert np.array_equal(batch[2], shards[1][:65])


def _dataset(manifest, *, rank=0, world_size=1, seed=7, context=64):
    return WindowDataset(manifest, "train", context=context, seed=seed, rank=rank, world_size=world_size)


def _loader(manifest, *, rank=0, world_size=1, seed=7, batch=4):
    return WindowLoader(_dataset(manifest, rank=rank, world_size=world_size, seed=seed), batch=batch, device=CPU)


def _stream(seed: int, n: int, epochs: int) -> np.ndarray:
    """The window order every rank count reads from, as the module docstring defines it: each epoch's
    permutation of [0, n), back to back."""
    keys = [np.random.SeedSequence([seed, epoch]).generate_state(4, dtype=np.uint64) for epoch in range(epochs)]
    return np.concatenate([permute(np.arange(n), n, k) for k in keys])


def _read(datasets, windows_each: int) -> list[np.ndarray]:
    """What ranks in lockstep read through the datasets' iterators, in stream order (round by round), as
    (window tokens) rows; every rank must end in the same state."""
    per_rank = [[torch.cat([x, y[-1:]]).numpy() for x, y in itertools.islice(iter(d), windows_each)] for d in datasets]
    states = [d.state_dict() for d in datasets]
    assert all(state == states[0] for state in states)
    return [rows[j] for j in range(windows_each) for rows in per_rank]


def test_state_dict_resumes_at_the_exact_next_window_across_epochs(sample_manifest):
    manifest = load(sample_manifest)
    first = _loader(manifest, batch=32)
    steps = len(first.windows) // 32 + 3  # runs into the second epoch
    reference = [next(first) for _ in range(steps + 5)]
    first.close()
    stopped = _loader(manifest, batch=32)
    for _ in range(steps):
        next(stopped)
    state = stopped.state_dict()
    stopped.close()
    assert state["epoch"] == 1 and state["position"] == steps * 32 - len(first.windows)
    resumed = _loader(manifest, batch=32)
    resumed.load_state_dict(state)
    for expected_inputs, expected_targets in reference[steps:]:
        inputs, targets = next(resumed)
        assert torch.equal(inputs, expected_inputs) and torch.equal(targets, expected_targets)
    resumed.close()


def test_epochs_reshuffle_and_cover_every_window(sample_manifest):
    dataset = _dataset(load(sample_manifest))
    n = len(dataset.windows)
    epoch0, epoch1 = dataset.indices(0, n), dataset.indices(n, n)
    assert np.array_equal(np.sort(epoch0), np.arange(n)) and np.array_equal(np.sort(epoch1), np.arange(n))
    assert not np.array_equal(epoch0, epoch1)


@pytest.mark.parametrize("new_world_size", [1, 2, 3, 4])
def test_a_state_continues_on_any_world_size_across_the_epoch_end_with_no_window_repeated_or_skipped(
    sample_manifest, new_world_size
):
    manifest = load(sample_manifest)
    n = len(_dataset(manifest).windows)
    before = [_dataset(manifest, rank=r, world_size=2) for r in range(2)]
    read_before = _read(before, n // 2 - 3)  # 6 or 7 windows short of the epoch's end
    state = before[0].state_dict()
    assert (state["epoch"], state["position"]) == (0, 2 * (n // 2 - 3))
    after = [_dataset(manifest, rank=r, world_size=new_world_size) for r in range(new_world_size)]
    for dataset in after:
        dataset.load_state_dict(state)
    read_after = _read(after, 12)  # over the epoch's end for every rank count
    stream = _stream(7, n, 2)[: len(read_before) + len(read_after)]
    assert np.array_equal(np.stack(read_before + read_after), after[0].windows.gather(stream))
    assert after[0].state_dict()["epoch"] == 1


def test_the_trainers_prefetching_loader_continues_the_same_stream_on_another_world_size(sample_manifest):
    """What `tokenmill train` reads: 2 ranks of micro-batch 4 for 5 micro-steps, then 3 ranks of micro-batch 2."""
    manifest = load(sample_manifest)

    def read(loaders, batches: int, state=None) -> tuple[list[np.ndarray], dict]:
        for loader in loaders:
            if state:
                loader.load_state_dict(state)
        per_rank = [
            [torch.cat([x, y[:, -1:]], 1).numpy() for x, y in (next(loader) for _ in range(batches))]
            for loader in loaders
        ]
        states = [loader.state_dict() for loader in loaders]
        for loader in loaders:
            loader.close()
        assert all(s == states[0] for s in states)
        batch = len(per_rank[0][0])  # in stream order: micro-step by micro-step, window j of each rank in turn
        return [rows[b][j] for b in range(batches) for j in range(batch) for rows in per_rank], states[0]

    before, state = read([_loader(manifest, rank=r, world_size=2) for r in range(2)], 5)
    after, _ = read([_loader(manifest, rank=r, world_size=3, batch=2) for r in range(3)], 3, state)
    n = len(_dataset(manifest).windows)
    assert np.array_equal(np.stack(before + after), _dataset(manifest).windows.gather(_stream(7, n, 1)[: 40 + 18]))


@pytest.mark.parametrize("new_world_size", [2, 3])
def test_a_version_1_state_continues_at_the_same_window(sample_manifest, new_world_size):
    """Version 1 kept each rank's position (windows read per rank) and the world size that read them."""
    manifest = load(sample_manifest)
    state = {"version": 1, "seed": 7, "world_size": 2, "epoch": 1, "position": 10}
    datasets = [_dataset(manifest, rank=r, world_size=new_world_size) for r in range(new_world_size)]
    for dataset in datasets:
        dataset.load_state_dict(state)
    n = len(datasets[0].windows)
    assert np.array_equal(
        np.stack(_read(datasets, 2)), datasets[0].windows.gather(_stream(7, n, 2)[n + 20 : n + 20 + 2 * new_world_size])
    )


def test_refuses_another_seed_or_context(sample_manifest):
    state = _dataset(load(sample_manifest)).state_dict()
    with pytest.raises(DataError, match="data seed is 7, this run's is 8; resume with --seed 7"):
        _dataset(load(sample_manifest), seed=8).load_state_dict(state)
    with pytest.raises(DataError, match="windows are 64 tokens, this run's 32"):
        _dataset(load(sample_manifest), context=32).load_state_dict(state)


def test_a_changed_manifest_is_refused_unless_allowed_and_the_change_is_named(sample_manifest, tmp_path):
    original = _dataset(load(sample_manifest))
    original.consumed = 123
    state = original.state_dict()
    changed = tmp_path / MANIFEST
    manifest = load(sample_manifest)
    shards = manifest.splits["train"].shards
    removed = shards.pop()
    shards[0].bin_sha256 = "0" * 64
    write_local(manifest, changed)
    for shard in shards + [removed]:
        for path in (shard.bin, shard.idx):
            (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / path).symlink_to(sample_manifest.parent / path)
    dataset = _dataset(load(changed))
    with pytest.raises(
        DataError, match=rf"1 removed \({removed.bin}\); 1 changed \({shards[0].bin}\).*--allow-manifest-change"
    ):
        dataset.load_state_dict(state)
    dataset.load_state_dict(state, allow_manifest_change=True)
    assert (dataset.state_dict()["epoch"], dataset.state_dict()["position"]) == (0, 123)
    assert _dataset(load(sample_manifest)).manifest_change(state) is None


def test_a_dataloader_runs_it_in_one_worker_not_several(sample_manifest):
    dataset = _dataset(load(sample_manifest))
    one = next(iter(torch.utils.data.DataLoader(dataset, batch_size=2, num_workers=1)))
    assert torch.equal(one[0], torch.from_numpy(dataset.read(0, 2)[:, :-1]))
    with pytest.raises(DataError, match="num_workers=2"):
        next(iter(torch.utils.data.DataLoader(dataset, batch_size=2, num_workers=2)))


def test_inputs_and_targets_are_shifted_by_one(sample_manifest):
    loader = _loader(load(sample_manifest))
    inputs, targets = next(loader)
    loader.close()
    assert inputs.dtype == torch.int64 and inputs.shape == (4, 64)
    assert torch.equal(inputs[:, 1:], targets[:, :-1])


def test_check_shards_names_a_truncated_shard(sample_manifest, tmp_path):
    copy = tmp_path / "m"
    shutil.copytree(sample_manifest.parent, copy)
    shard = load(copy).shards("train")[1]
    shard.bin_path.write_bytes(shard.bin_path.read_bytes()[:-2])
    with pytest.raises(DataError, match=rf"{shard.bin_path.name}: .* bytes, manifest says"):
        check_shards(load(copy), "train", checksums=False)


def test_check_shards_finds_a_changed_byte_only_with_checksums(sample_manifest, tmp_path):
    copy = tmp_path / "m"
    shutil.copytree(sample_manifest.parent, copy)
    shard = load(copy).shards("train")[2]
    data = bytearray(shard.bin_path.read_bytes())
    data[100] ^= 1
    shard.bin_path.write_bytes(bytes(data))
    check_shards(load(copy), "train", checksums=False)
    with pytest.raises(DataError, match=rf"{shard.bin_path.name}: sha256 mismatch"):
        check_shards(load(copy), "train", checksums=True)


def test_check_shards_shares_the_index_hashing_between_ranks(sample_manifest, tmp_path):
    copy = tmp_path / "m"
    shutil.copytree(sample_manifest.parent, copy)
    shard = load(copy).shards("train")[1]
    data = bytearray(shard.idx_path.read_bytes())
    data[-1] ^= 1  # an origin key: the header and the sizes stay right, only the sha256 can tell
    shard.idx_path.write_bytes(bytes(data))
    check_shards(load(copy), "train", checksums=False, rank=0, world_size=2)  # hashes shards 0, 2, ...
    with pytest.raises(DataError, match=rf"{shard.idx_path.name}: sha256 mismatch"):
        check_shards(load(copy), "train", checksums=False, rank=1, world_size=2)
