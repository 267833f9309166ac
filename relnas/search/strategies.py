"""Search strategies over the continuous encoding. Each generation a strategy proposes *jobs*:
a pair of individuals (RelativeNAS) or a single one (baselines). The search loop estimates every
member of a job from the weight set, merges the trained weights, and hands the losses back.

A strategy keeps all its state in plain numpy arrays and lists (``state_dict``), and draws every
random number from the generator it is given, so a search is resumable bit for bit.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

from relnas.nas.spaces import DARTS, SearchSpace
from relnas.search import encoding
from relnas.search.baselines import RandomSearch, RegularizedEvolution
from relnas.search.constraints import NO_CONSTRAINTS, SizeConstraints
from relnas.search.slow_fast import check_population_size, fast_slow, init_population, random_pairs, slow_fast_update
from relnas.search.strategy_api import Job, JobResult, Strategy, positive_int
from relnas.utils.registry import Registry

TIE_RULES = ("first", "official")


class RelativeNAS(Strategy):
    """Slow-fast learning (docs/method.md §3): random pairs, the slow learner moves toward the fast one."""

    name = "relativenas"
    job_size = 2

    def __init__(self, population_size: int = 20, generations: int = 50, budget: Optional[int] = None,
                 tie_rule: str = "first", space: SearchSpace = DARTS,
                 constraints: SizeConstraints = NO_CONSTRAINTS):
        """``tie_rule``: what equal (finite) validation losses do. ``"first"``: the pair's first
        member is the fast learner, for the update and the merge. ``"official"``: as the authors'
        script, the first member is the teacher of the architecture update (``mask = loss_a >
        loss_b``) but the second member's weights win the merge (``if loss_a < loss_b`` merges
        with ``a`` as teacher, else ``b``)."""
        if tie_rule not in TIE_RULES:
            raise ValueError(f"unknown tie_rule {tie_rule!r}; use one of {', '.join(TIE_RULES)}")
        self.tie_rule = tie_rule
        self.space, self.constraints = space, constraints
        self.population_size = check_population_size(population_size)
        positive_int("generations", generations)
        if budget is not None:  # a budget in estimations fixes the number of generations
            generations = positive_int("budget", budget) // self.population_size
            if generations < 1:
                raise ValueError(f"budget {budget} is smaller than one generation ({self.population_size} estimations)")
        self._generations = int(generations)
        self.budget = self.population_size * self._generations
        self.alpha: Optional[np.ndarray] = None
        self.velocity: Optional[np.ndarray] = None
        self.losses = np.full(self.population_size, np.inf)
        self.violations = np.zeros(self.population_size)  # of each individual's estimated vector

    @property
    def generations(self) -> int:
        return self._generations

    def init(self, rng: np.random.Generator) -> None:
        self.alpha, self.velocity = init_population(rng, self.population_size, *self.space.bounds())

    def ask(self, rng: np.random.Generator, generation: int) -> List[Job]:
        pairs = random_pairs(rng, self.population_size)
        return [Job(p, [int(a), int(b)], [self.alpha[a].copy(), self.alpha[b].copy()]) for p, (a, b) in enumerate(pairs)]

    def tell(self, rng: np.random.Generator, job: Job, losses: Sequence[float]) -> JobResult:
        violations = [self.violation(v) for v in job.vectors]
        f, s = fast_slow(losses[0], losses[1], *violations)
        sid = job.members[s]
        for m, loss, violation in zip(job.members, losses, violations):
            self.losses[m], self.violations[m] = loss, violation
        # the slow learner's update uses the fast learner's vector as estimated (job.vectors)
        self.alpha[sid], self.velocity[sid] = slow_fast_update(rng, self.alpha[sid], self.velocity[sid],
                                                               job.vectors[f], *self.space.bounds())
        roles = ["fast", "slow"] if f == 0 else ["slow", "fast"]
        if self.tie_rule == "official" and losses[0] == losses[1] and math.isfinite(losses[0]) \
                and violations[0] == violations[1]:
            return JobResult(roles=roles, merge_priority=[0, 1])  # the second member's weights win the merge
        return JobResult(roles=roles, merge_priority=[s, f])

    def population(self) -> Dict[int, np.ndarray]:
        return {i: self.alpha[i].copy() for i in range(self.population_size)}

    def best(self) -> tuple[int, np.ndarray, float]:
        # the best of the last generation, feasibility first (the smallest violation, then the lowest
        # validation loss): always a fast learner, whose vector the update left unchanged, so
        # alpha[i] is exactly the estimated architecture
        least = np.flatnonzero(self.violations == self.violations.min())
        i = int(least[np.argmin(self.losses[least])])
        return i, self.alpha[i].copy(), float(self.losses[i])

    def state_dict(self) -> Dict[str, Any]:
        return {"alpha": self.alpha.copy(), "velocity": self.velocity.copy(), "losses": self.losses.copy(),
                "violations": self.violations.copy()}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.alpha = np.asarray(state["alpha"], dtype=np.float64).copy()
        self.velocity = np.asarray(state["velocity"], dtype=np.float64).copy()
        self.losses = np.asarray(state["losses"], dtype=np.float64).copy()
        self.violations = np.asarray(state["violations"], dtype=np.float64).copy()


STRATEGIES: Registry[Callable[..., Strategy]] = Registry("search strategy", "strategies")
STRATEGIES.register("relativenas", RelativeNAS)
STRATEGIES.register("random", RandomSearch)
STRATEGIES.register("evolution", RegularizedEvolution)


def register_strategy(name: str, factory: Callable[..., Strategy]) -> None:
    STRATEGIES.register(name, factory)


def create_strategy(name: str, **kwargs: Any) -> Strategy:
    """The strategy registered as ``name`` (the configs build strategies from ``configs/strategy/``
    through their ``_target_``; this is the programmatic way)."""
    return STRATEGIES[name](**kwargs)

