"""BatchedIntegers: numpy's integers(high) of many generators at once, bit for bit."""

import numpy as np
import pytest
from gymnasium.utils import seeding

from bow_gym.envs.draws import BatchedIntegers

# 3 * 2**30 rejects a quarter of its words: the redraw path runs often.
HIGHS = [1, 2, 7, 64, 1000, 3 * 2**30, 2**32 - 1]


def _pairs(n, seed0=0):
    ours = [seeding.np_random(seed0 + i)[0] for i in range(n)]
    reference = [seeding.np_random(seed0 + i)[0] for i in range(n)]
    return ours, reference


@pytest.mark.parametrize("high", HIGHS)
def test_draws_equal_one_integers_call_per_generator(high):
    n = 9
    ours, reference = _pairs(n)
    draws = BatchedIntegers(n)
    for i, rng in enumerate(ours):
        draws.adopt(i, rng)
    pick = np.random.default_rng(0)
    for _ in range(40):  # odd and even draws per generator: both halves of its outputs
        envs = np.flatnonzero(pick.random(n) < 0.6)
        got = draws.draw(ours, envs, high)
        assert got.dtype == np.int64
        assert got.tolist() == [int(reference[i].integers(high)) for i in envs.tolist()]


def test_publish_leaves_each_generator_in_its_single_state():
    n = 5
    ours, reference = _pairs(n, 11)
    draws = BatchedIntegers(n)
    for i, rng in enumerate(ours):
        draws.adopt(i, rng)
    for k in range(3):
        envs = np.arange(n) if k != 1 else np.array([0, 3])
        assert draws.draw(ours, envs, 50).tolist() == [int(reference[i].integers(50))
                                                       for i in envs.tolist()]
    draws.publish(ours)
    assert not draws.owned.any()
    for a, b in zip(ours, reference, strict=True):
        assert a.bit_generator.state == b.bit_generator.state
    # Given up, the generators draw for themselves and stay equal whatever else draws from them.
    ours[2].random()
    reference[2].random()
    assert draws.draw(ours, np.arange(n), 50).tolist() == [int(r.integers(50)) for r in reference]


def test_generators_it_does_not_own_draw_for_themselves():
    n = 4
    ours, reference = _pairs(n, 3)
    for r in (ours[1], reference[1]):
        r.integers(10)  # keeps a half-word: not adopted
    ours[2], reference[2] = np.random.Generator(np.random.MT19937(5)), np.random.Generator(
        np.random.MT19937(5))
    draws = BatchedIntegers(n)
    for i, rng in enumerate(ours):
        draws.adopt(i, rng)
    assert draws.owned.tolist() == [True, False, False, True]
    for _ in range(5):
        assert draws.draw(ours, np.arange(n), 33).tolist() == [int(r.integers(33))
                                                               for r in reference]


def test_bad_bound_is_refused():
    with pytest.raises(ValueError, match=r"high must be in \[1, 2\*\*32\), got 0"):
        BatchedIntegers(2).draw([np.random.default_rng(0)] * 2, np.array([0]), 0)
