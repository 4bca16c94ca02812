import numpy as np
import pytest

from stages.mix import SourceDocs, plan_split


def _sources(seed=0):
    rng = np.random.default_rng(seed)
    natural = SourceDocs(0, np.arange(4000, dtype=np.uint64), rng.integers(20, 2000, 4000))
    code = SourceDocs(1, np.arange(4000, 6500, dtype=np.uint64), rng.integers(50, 4000, 2500))
    return [natural, code]


def _shard_shares(plan, source_id=0):
    shares = []
    for part in plan.shard_slices():
        lengths, ids = plan.lengths[part], plan.source_ids[part]
        shares.append((lengths[ids == source_id].sum() / lengths.sum(), lengths.max() / lengths.sum()))
    return shares


@pytest.mark.parametrize("policy", ["downsample", "upsample"])
def test_every_shard_carries_the_target_ratio(policy):
    plan = plan_split(_sources(), {0: 7, 1: 3}, policy, seed=1, shard_tokens=500_000)
    assert len(plan.shard_starts) > 3
    for i, (share, one_doc) in enumerate(_shard_shares(plan)[:-1]):
        # within 1% of the target, or within one document for shards too small for that
        assert abs(share - 0.7) <= max(0.007, one_doc), (i, share)


def test_downsample_keeps_all_of_the_poorer_source_and_cuts_the_richer():
    sources = _sources()
    plan = plan_split(sources, {0: 7, 1: 3}, "downsample", seed=1, shard_tokens=10**9)
    taken = {sid: plan.lengths[plan.source_ids == sid].sum() for sid in (0, 1)}
    poorer = min((0, 1), key=lambda sid: sources[sid].lengths.sum() / (0.7, 0.3)[sid])
    assert taken[poorer] == sources[poorer].lengths.sum()
    assert abs(taken[0] / (taken[0] + taken[1]) - 0.7) < 0.002
    assert plan.epochs[poorer] == 1.0 and plan.epochs[1 - poorer] < 1.0
    # no document taken twice when downsampling
    for sid in (0, 1):
        positions = plan.positions[plan.source_ids == sid]
        assert len(np.unique(positions)) == len(positions)


def test_upsample_repeats_the_poorer_source_in_whole_shuffled_epochs():
    sources = _sources()
    plan = plan_split(sources, {0: 7, 1: 3}, "upsample", seed=1, shard_tokens=10**9)
    counts = np.bincount(plan.positions[plan.source_ids == 0], minlength=len(sources[0].lengths))
    epochs = plan.epochs[0]
    assert epochs > 1
    assert counts.min() >= int(epochs) and counts.max() <= int(epochs) + 1


def test_natural_takes_everything_once():
    sources = _sources()
    plan = plan_split(sources, {0: 7, 1: 3}, "natural", seed=1, shard_tokens=100_000)
    assert len(plan.lengths) == 6500
    assert plan.lengths.sum() == sum(s.lengths.sum() for s in sources)


def test_plan_is_deterministic_and_seed_dependent():
    a = plan_split(_sources(), {0: 7, 1: 3}, "downsample", seed=1, shard_tokens=300_000)
    b = plan_split(_sources(), {0: 7, 1: 3}, "downsample", seed=1, shard_tokens=300_000)
    c = plan_split(_sources(), {0: 7, 1: 3}, "downsample", seed=2, shard_tokens=300_000)
    assert np.array_equal(a.positions, b.positions) and np.array_equal(a.shard_starts, b.shard_starts)
    assert not np.array_equal(a.positions, c.positions)


def test_shards_are_cut_at_document_boundaries_near_the_target_size():
    plan = plan_split(_sources(), {0: 7, 1: 3}, "natural", seed=1, shard_tokens=200_000)
    sizes = [plan.lengths[s].sum() for s in plan.shard_slices()]
    assert sum(sizes) == plan.lengths.sum()
    assert all(abs(s - 200_000) <= plan.lengths.max() for s in sizes[:-1])
