"""The pair sampler: (x, x_ref) from one sequence, within max_ref_gap, seeded, disjoint across DDP ranks."""

from __future__ import annotations

import numpy as np
import pytest

from kp_perception.errors import ConfigError
from kp_perception_training.data.pair_sampler import PairSampler

pytestmark = pytest.mark.timeout(30)

LENGTHS = [1, 2, 5, 40, 300]


@pytest.mark.parametrize("gap", [1, 3, 250])
def test_every_pair_respects_sequence_gap_and_distinctness(gap):
    sampler = PairSampler(LENGTHS, max_ref_gap=gap, seed=3)
    for epoch in range(5):
        pairs = sampler.pairs(epoch)
        seq, frame, ref = pairs.T
        length = np.asarray(LENGTHS)[seq]
        assert (frame >= 0).all() and (frame < length).all()
        assert (ref >= 0).all() and (ref < length).all()
        assert (np.abs(ref - frame) <= gap).all()
        multi = length > 1
        assert (ref[multi] != frame[multi]).all()
        assert (ref[~multi] == frame[~multi]).all()


def test_each_epoch_visits_every_frame_once():
    sampler = PairSampler(LENGTHS, max_ref_gap=7, seed=0)
    expected = sorted((s, f) for s, n in enumerate(LENGTHS) for f in range(n))
    for epoch in range(3):
        sampler.set_epoch(epoch)
        visited = [(s, f) for s, f, _ in sampler]
        assert len(visited) == len(sampler) == sum(LENGTHS)
        assert sorted(visited) == expected


def test_references_cover_the_whole_window_on_both_sides():
    sampler = PairSampler([300], max_ref_gap=5, seed=1)
    offsets = np.concatenate([(ref - frame) for _, frame, ref in (sampler.pairs(e).T for e in range(20))])
    assert set(offsets.tolist()) == {-5, -4, -3, -2, -1, 1, 2, 3, 4, 5}
    counts = np.bincount(offsets + 5, minlength=11)
    nonzero = counts[counts > 0]
    assert nonzero.min() > 0.6 * nonzero.mean()  # roughly uniform


def test_same_seed_and_epoch_give_the_same_pairs_and_others_differ():
    a = PairSampler(LENGTHS, max_ref_gap=10, seed=7)
    b = PairSampler(LENGTHS, max_ref_gap=10, seed=7)
    np.testing.assert_array_equal(a.pairs(4), b.pairs(4))
    assert not np.array_equal(a.pairs(4), a.pairs(5))
    assert not np.array_equal(a.pairs(4), PairSampler(LENGTHS, max_ref_gap=10, seed=8).pairs(4))


@pytest.mark.parametrize("world_size", [2, 3, 4])
def test_ddp_shards_are_disjoint_equal_and_agree_on_references(world_size):
    total = sum(LENGTHS)
    single = PairSampler(LENGTHS, max_ref_gap=9, seed=5)
    refs = {(s, f): r for s, f, r in single.pairs(2).tolist()}
    shards = [PairSampler(LENGTHS, max_ref_gap=9, seed=5, rank=r, world_size=world_size).pairs(2)
              for r in range(world_size)]
    assert {len(s) for s in shards} == {total // world_size}
    seen = [(s, f) for shard in shards for s, f, _ in shard.tolist()]
    assert len(seen) == len(set(seen))  # disjoint
    assert total - len(seen) == total % world_size  # only the remainder is dropped
    for shard in shards:
        for s, f, r in shard.tolist():
            assert refs[(s, f)] == r


def test_pair_for_matches_the_epoch_pairs():
    sampler = PairSampler([6, 9], max_ref_gap=2, seed=2)
    sampler.set_epoch(3)
    for s, f, r in sampler.pairs().tolist():
        assert sampler.pair_for(s, f) == (s, f, r)


def test_invalid_arguments_are_config_errors():
    with pytest.raises(ConfigError, match="max_ref_gap"):
        PairSampler([4], max_ref_gap=0)
    with pytest.raises(ConfigError, match="at least one frame"):
        PairSampler([4, 0])
    with pytest.raises(ConfigError, match="rank 2 outside world size 2"):
        PairSampler([4], rank=2, world_size=2)


def test_single_draws_follow_the_same_window_rule():
    sampler = PairSampler([1, 50], max_ref_gap=4, seed=0)
    assert sampler.draw_reference(0, 0, 0.7) == 0
    refs = {sampler.draw_reference(1, 2, u) for u in np.linspace(0, 0.999, 200)}
    assert refs == {0, 1, 3, 4, 5, 6}
    refs = {sampler.draw_reference(1, 49, u) for u in np.linspace(0, 0.999, 200)}
    assert refs == {45, 46, 47, 48}
