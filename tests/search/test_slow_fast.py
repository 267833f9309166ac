"""The pure search maths: pairing, fast/slow selection, the slow-fast update, schedules."""

import numpy as np
import pytest

from relnas.search import encoding
from relnas.search.slow_fast import (check_population_size, cosine_lr, diversity, fast_slow, init_population,
                                     ramped_drop_path, random_pairs, slow_fast_update)


def test_random_pairs_are_disjoint_and_cover_population():
    rng = np.random.default_rng(0)
    pairs = random_pairs(rng, 20)
    assert pairs.shape == (10, 2)
    assert sorted(pairs.ravel().tolist()) == list(range(20))
    # pairing is random: a second draw differs
    assert not np.array_equal(pairs, random_pairs(rng, 20))


@pytest.mark.parametrize("n", [0, 1, 3, 7, -2, 2.0])
def test_bad_population_sizes(n):
    with pytest.raises(ValueError, match="even integer"):
        check_population_size(n)


def test_fast_slow_lower_loss_wins_and_nonfinite_loses():
    assert fast_slow(0.5, 0.7) == (0, 1)
    assert fast_slow(0.9, 0.7) == (1, 0)
    assert fast_slow(float("nan"), 3.0) == (1, 0)
    assert fast_slow(2.0, float("inf")) == (0, 1)
    assert fast_slow(1.0, 1.0) == (0, 1)


def test_init_population_in_bounds_zero_velocity():
    pop, vel = init_population(np.random.default_rng(1), 8, encoding.LOWER, encoding.UPPER)
    assert pop.shape == (8, encoding.DIM) and np.all(vel == 0)
    assert np.all(pop >= encoding.LOWER) and np.all(pop < encoding.UPPER)


def test_slow_fast_factors_are_drawn_per_element():
    """From zero velocity the step of element i is l1_i * (fast_i - slow_i); with a velocity and
    fast == slow it is l2_i * v_i. Per-element factors give a different fraction for each
    element, each in [0, 1]; one scalar factor per update would give the same fraction everywhere."""
    lo, hi = encoding.LOWER, encoding.UPPER
    a_s = np.full(encoding.DIM, 1.0)
    a_f = np.full(encoding.DIM, 1.5)
    _, v = slow_fast_update(np.random.default_rng(0), a_s, np.zeros(encoding.DIM), a_f, lo, hi)
    frac1 = v / 0.5
    assert np.all((frac1 >= 0) & (frac1 <= 1))
    assert np.ptp(frac1) > 0.5                         # scalars: ptp == 0
    _, v2 = slow_fast_update(np.random.default_rng(1), a_s, np.full(encoding.DIM, 0.2), a_s, lo, hi)
    frac2 = v2 / 0.2
    assert np.all((frac2 >= 0) & (frac2 <= 1))
    assert np.ptp(frac2) > 0.5
    # uniform on [0, 1]: over many updates the mean fraction is 1/2
    fracs = np.concatenate([slow_fast_update(np.random.default_rng(s), a_s, np.zeros(encoding.DIM), a_f, lo, hi)[1]
                            / 0.5 for s in range(50)])
    assert abs(fracs.mean() - 0.5) < 0.03


def test_slow_fast_update_by_hand_with_known_factors():
    """Eq. 4 then Eq. 2 with the factors fixed by a stub generator: v = l2 * v + l1 * (f - s),
    s' = clip(s + v); the numbers below are computed by hand."""

    class Fixed:
        def __init__(self):
            self.calls = 0

        def random(self, shape):
            self.calls += 1
            return np.full(shape, 0.5) if self.calls == 1 else np.full(shape, 0.25)  # l1, then l2

    lo, hi = np.zeros(3), np.array([2.0, 7.0, 3.0])
    a_s, v, a_f = np.array([1.0, 6.0, 2.5]), np.array([0.4, 4.0, -0.8]), np.array([0.0, 2.0, 2.9])
    new_a, new_v = slow_fast_update(Fixed(), a_s, v, a_f, lo, hi)
    # v' = 0.25 * v + 0.5 * (f - s) = [0.1 - 0.5, 1.0 - 2.0, -0.2 + 0.2] = [-0.4, -1.0, 0.0]
    np.testing.assert_allclose(new_v, [-0.4, -1.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(new_a, [0.6, 5.0, 2.5], atol=1e-12)
    # a large velocity: s + v leaves the bounds and is clipped; the velocity is kept
    new_a, new_v = slow_fast_update(Fixed(), a_s, np.array([-20.0, 40.0, 0.0]), a_s, lo, hi)
    np.testing.assert_allclose(new_v, [-5.0, 10.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(new_a, [0.0, 7.0, 2.5], atol=1e-12)


def test_slow_learner_moves_toward_fast_from_zero_velocity():
    rng = np.random.default_rng(5)
    a_s, a_f = encoding.sample(rng), encoding.sample(rng)
    new_a, _ = slow_fast_update(rng, a_s, np.zeros_like(a_s), a_f, encoding.LOWER, encoding.UPPER)
    assert np.linalg.norm(new_a - a_f) < np.linalg.norm(a_s - a_f)
    # each element moves a fraction of the way (lambda1 in [0, 1])
    frac = (new_a - a_s) / (a_f - a_s)
    assert np.all((frac >= 0) & (frac <= 1))


def test_update_clips_to_bounds_but_keeps_velocity():
    lo, hi = encoding.LOWER, encoding.UPPER
    a_s = hi - 1e-3
    big_v = np.full(encoding.DIM, 100.0)
    new_a, new_v = slow_fast_update(np.random.default_rng(0), a_s, big_v, hi, lo, hi)
    assert np.all(new_a <= hi) and np.all(new_a >= lo)
    assert np.all(new_v > 1.0)


def test_schedules_by_hand():
    # lr_g = lr_min + (lr - lr_min) / 2 * (1 + cos(pi * g / G))
    assert cosine_lr(0, 50, 0.1) == pytest.approx(0.1, abs=1e-15)
    assert cosine_lr(25, 50, 0.1) == pytest.approx(0.05, abs=1e-15)
    assert cosine_lr(1, 3, 0.1) == pytest.approx(0.075, abs=1e-15)       # cos(pi/3) = 1/2
    assert cosine_lr(2, 3, 0.1, 1e-3) == pytest.approx(0.02575, abs=1e-15)  # 1e-3 + 0.0495 * 0.5
    assert cosine_lr(49, 50, 0.1, 1e-3) == pytest.approx(0.00109767694280056, abs=1e-15)
    assert cosine_lr(49, 50, 0.1) == pytest.approx(0.05 * (1 - 0.99802672842827156), abs=1e-15)
    # drop path p * g / G (or p throughout)
    assert ramped_drop_path(0, 50, 0.3) == 0.0
    assert ramped_drop_path(25, 50, 0.3) == pytest.approx(0.15, abs=1e-15)
    assert ramped_drop_path(2, 3, 0.3) == pytest.approx(0.2, abs=1e-15)
    assert ramped_drop_path(25, 50, 0.3, ramp=False) == 0.3


def test_diversity_zero_for_identical_population():
    v = encoding.sample(np.random.default_rng(0))
    assert diversity(np.stack([v, v, v]), encoding.LOWER, encoding.UPPER) == pytest.approx(0.0, abs=1e-12)
    pop = encoding.sample(np.random.default_rng(0), 50)
    assert 0.2 < diversity(pop, encoding.LOWER, encoding.UPPER) < 0.35  # uniform: 1/sqrt(12)
