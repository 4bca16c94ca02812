import numpy as np
import pytest

from stages.mix import (
    SourceDocs,
    even_cuts,
    hash_order,
    in_slice,
    plan_group,
    repeat_factors,
    slice_streams,
)


def _sources(seed=0):
    rng = np.random.default_rng(seed)
    natural = SourceDocs(0, np.arange(4000, dtype=np.uint64), rng.integers(20, 2000, 4000))
    code = SourceDocs(1, np.arange(4000, 6500, dtype=np.uint64), rng.integers(50, 4000, 2500))
    return [natural, code]


def _totals(sources):
    return {s.source_id: int(s.lengths.sum()) for s in sources}


@pytest.mark.parametrize("policy", ["downsample", "upsample"])
def test_every_shard_carries_the_target_ratio(policy):
    sources = _sources()
    plan = plan_group(sources, repeat_factors(_totals(sources), {0: 7, 1: 3}, policy), seed=1, n_shards=8)
    assert len(plan.shard_starts) == 8
    for part in plan.shard_slices():
        lengths, ids = plan.lengths[part], plan.source_ids[part]
        share, one_doc = lengths[ids == 0].sum() / lengths.sum(), lengths.max() / lengths.sum()
        # within 1% of the target, or within one document for shards too small for that
        assert abs(share - 0.7) <= max(0.007, one_doc), share


def test_downsample_keeps_all_of_the_poorer_source_and_cuts_the_richer():
    sources = _sources()
    factors = repeat_factors(_totals(sources), {0: 7, 1: 3}, "downsample")
    poorer = min((0, 1), key=lambda sid: sources[sid].lengths.sum() / (0.7, 0.3)[sid])
    assert factors[poorer] == pytest.approx(1.0) and factors[1 - poorer] < 1.0
    plan = plan_group(sources, factors, seed=1, n_shards=1)
    taken = {sid: plan.lengths[plan.source_ids == sid].sum() for sid in (0, 1)}
    assert taken[poorer] == sources[poorer].lengths.sum()
    assert abs(taken[0] / (taken[0] + taken[1]) - 0.7) < 0.002
    for sid in (0, 1):  # no document taken twice when downsampling
        positions = plan.positions[plan.source_ids == sid]
        assert len(np.unique(positions)) == len(positions)


def test_upsample_repeats_the_poorer_source_in_whole_passes():
    sources = _sources()
    factors = repeat_factors(_totals(sources), {0: 7, 1: 3}, "upsample")
    assert factors[0] > 1
    plan = plan_group(sources, factors, seed=1, n_shards=1)
    counts = np.bincount(plan.positions[plan.source_ids == 0], minlength=len(sources[0].lengths))
    assert counts.min() >= int(factors[0]) and counts.max() <= int(factors[0]) + 1


def test_natural_takes_everything_once():
    sources = _sources()
    assert repeat_factors(_totals(sources), {0: 7, 1: 3}, "natural") == {0: 1.0, 1: 1.0}
    plan = plan_group(sources, {0: 1.0, 1: 1.0}, seed=1, n_shards=3)
    assert len(plan.lengths) == 6500 and plan.lengths.sum() == sum(s.lengths.sum() for s in sources)


def test_the_hash_order_of_a_document_does_not_depend_on_the_others_present():
    keys = np.arange(1000, dtype=np.uint64) * np.uint64(7919)
    full = keys[hash_order(keys, 1, 0, 0)]
    some = keys[::3]
    assert np.array_equal(some[hash_order(some, 1, 0, 0)], full[np.isin(full, some)])
    assert not np.array_equal(full, keys[hash_order(keys, 2, 0, 0)])  # the seed changes it


def test_plan_is_deterministic_and_seed_dependent():
    factors = {0: 0.5, 1: 1.0}
    a, b, c = (plan_group(_sources(), factors, seed=s, n_shards=4) for s in (1, 1, 2))
    assert np.array_equal(a.positions, b.positions) and np.array_equal(a.shard_starts, b.shard_starts)
    assert not np.array_equal(a.positions, c.positions)


def test_shards_are_cut_at_document_boundaries_into_near_equal_sizes():
    lengths = np.random.default_rng(3).integers(1, 500, 5000)
    starts = even_cuts(lengths, 7)
    sizes = [lengths[s:e].sum() for s, e in zip(starts, list(starts[1:]) + [len(lengths)])]
    assert len(sizes) == 7 and sum(sizes) == lengths.sum()
    assert all(abs(s - lengths.sum() / 7) <= lengths.max() for s in sizes)


def test_stream_slices_give_every_document_to_exactly_one_group_in_proportion():
    rng = np.random.default_rng(5)
    files = {0: rng.integers(1, 300, (12, 40)), 1: rng.integers(1, 5000, (2, 300))}  # many small files, two big ones
    streams = {sid: (np.arange(len(docs)) + 100 * sid, docs.sum(axis=1)) for sid, docs in files.items()}
    groups = slice_streams(streams, 5)
    for sid, docs in files.items():
        owners = np.zeros(docs.size, int)
        for g, slices in enumerate(groups):
            (piece,) = [s for s in slices if s.source_id == sid]
            for file_index, offset in piece.files:
                row = file_index - 100 * sid
                owners[row * docs.shape[1] : (row + 1) * docs.shape[1]] += in_slice(offset, docs[row], piece)
            assert piece.tokens == pytest.approx(docs.sum() / 5)
        assert (owners == 1).all()  # each document in exactly one group
