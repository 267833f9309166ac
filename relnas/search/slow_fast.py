"""Slow-fast learning (docs/method.md §3): pairing, fast/slow selection and the pseudo-gradient update.

Pure functions over numpy arrays; every random draw comes from the ``numpy.random.Generator``
passed in, so a search is reproducible from its seed and resumable from the generator's state.
Nothing here is specific to neural networks: any continuous encoding with bounds works.
"""
from __future__ import annotations

import math
from typing import Tuple

import numpy as np


def check_population_size(n: int) -> int:
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 2 or n % 2:
        raise ValueError(f"population_size must be an even integer >= 2 (it is split into pairs), got {n!r}")
    return int(n)


def init_population(rng: np.random.Generator, n: int, lower: np.ndarray, upper: np.ndarray
                    ) -> Tuple[np.ndarray, np.ndarray]:
    """``n`` vectors uniform in ``[lower, upper)`` and their zero velocities."""
    check_population_size(n)
    population = lower + rng.random((n, lower.size)) * (upper - lower)
    return population, np.zeros_like(population)


def random_pairs(rng: np.random.Generator, n: int) -> np.ndarray:
    """Split individuals ``0..n-1`` at random into ``n // 2`` disjoint pairs, shape ``(n // 2, 2)``."""
    check_population_size(n)
    return rng.permutation(n).reshape(n // 2, 2)


def fast_slow(loss_a: float, loss_b: float, violation_a: float = 0.0, violation_b: float = 0.0) -> Tuple[int, int]:
    """Indices within the pair ``(fast, slow)``, feasibility first (relnas/search/constraints.py):
    the smaller budget violation is the fast learner (0 = feasible, so feasible beats infeasible);
    at equal violations (two feasible members: always without budgets) the lower validation loss.

    Non-finite losses count as +inf (a diverged candidate loses); a tie goes to the first member.
    """
    if violation_a != violation_b:
        return (0, 1) if violation_a < violation_b else (1, 0)
    a = loss_a if math.isfinite(loss_a) else math.inf
    b = loss_b if math.isfinite(loss_b) else math.inf
    return (0, 1) if a <= b else (1, 0)


def slow_fast_update(rng: np.random.Generator, alpha_slow: np.ndarray, velocity_slow: np.ndarray,
                     alpha_fast: np.ndarray, lower: np.ndarray, upper: np.ndarray
                     ) -> Tuple[np.ndarray, np.ndarray]:
    """Move the slow learner toward the fast one (Eq. 4 then Eq. 2, then clip to the bounds).

    ``v <- l2 * v + l1 * (alpha_f - alpha_s)``; ``alpha_s <- clip(alpha_s + v)`` with ``l1``, ``l2``
    drawn uniformly from [0, 1] independently for every element. Returns new arrays.
    """
    lam1 = rng.random(alpha_slow.shape)
    lam2 = rng.random(alpha_slow.shape)
    velocity = lam2 * velocity_slow + lam1 * (alpha_fast - alpha_slow)
    alpha = np.clip(alpha_slow + velocity, lower, upper)
    return alpha, velocity


def cosine_lr(generation: int, generations: int, lr_max: float, lr_min: float = 0.0) -> float:
    """Learning rate of 0-based ``generation``: cosine from ``lr_max`` toward ``lr_min`` over the run."""
    return lr_min + 0.5 * (lr_max - lr_min) * (1.0 + math.cos(math.pi * generation / generations))


def ramped_drop_path(generation: int, generations: int, drop_path_prob: float, ramp: bool = True) -> float:
    """Drop-path probability of 0-based ``generation`` (the official code: ``p * g / G``)."""
    return drop_path_prob * generation / generations if ramp else drop_path_prob


def diversity(population: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> float:
    """Mean per-dimension standard deviation of the population, in units of each dimension's range."""
    return float(np.mean(np.std(population, axis=0) / (upper - lower)))
