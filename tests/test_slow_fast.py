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


def test_slow_fast_update_matches_eq4_eq2_with_per_element_coefficients():
    rng = np.random.default_rng(3)
    lo, hi = encoding.LOWER, encoding.UPPER
    a_s, a_f = encoding.sample(rng), encoding.sample(rng)
    v = rng.normal(size=encoding.DIM) * 0.1
    state = np.random.default_rng(42)
    new_a, new_v = slow_fast_update(state, a_s, v, a_f, lo, hi)
    ref = np.random.default_rng(42)
    l1, l2 = ref.random(encoding.DIM), ref.random(encoding.DIM)
    assert len(set(np.round(l1, 12))) == encoding.DIM  # independent per element
    exp_v = l2 * v + l1 * (a_f - a_s)
    np.testing.assert_array_equal(new_v, exp_v)
    np.testing.assert_array_equal(new_a, np.clip(a_s + exp_v, lo, hi))


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


def test_schedules():
    assert cosine_lr(0, 50, 0.1) == pytest.approx(0.1)
    assert cosine_lr(25, 50, 0.1) == pytest.approx(0.05)
    assert cosine_lr(49, 50, 0.1, 1e-3) > 1e-3
    assert ramped_drop_path(0, 50, 0.3) == 0.0
    assert ramped_drop_path(25, 50, 0.3) == pytest.approx(0.15)
    assert ramped_drop_path(25, 50, 0.3, ramp=False) == 0.3


def test_diversity_zero_for_identical_population():
    v = encoding.sample(np.random.default_rng(0))
    assert diversity(np.stack([v, v, v]), encoding.LOWER, encoding.UPPER) == pytest.approx(0.0, abs=1e-12)
    pop = encoding.sample(np.random.default_rng(0), 50)
    assert 0.2 < diversity(pop, encoding.LOWER, encoding.UPPER) < 0.35  # uniform: 1/sqrt(12)
