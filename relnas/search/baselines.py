"""Baseline search strategies over the same encoding, weight set and one-epoch estimator as
RelativeNAS: ``random`` (uniform random search) and ``evolution`` (regularized / aging evolution,
Real et al. 2019, AmoebaNet). Select them with ``strategy=random|evolution`` (``configs/strategy/``).

Both are budgeted in one-epoch estimations (``search.budget``; null = population_size x
generations). A baseline "generation" is a chunk of ``population_size`` consecutive estimations
(the last chunk may be shorter), so per-generation logging, outputs and checkpoints work as for
RelativeNAS: ``generations = ceil(budget / population_size)``. Every estimated individual gets a
fresh id (0, 1, 2, ...), and every job has a single member, whose trained weights are written back
into the weight set when its training did not diverge. Both report the best individual ever
estimated (lowest validation loss; the earliest on ties).

Regularized evolution: the first ``population_size`` estimations are random individuals (the
initial population); every later estimation is one cycle: ``sample_size`` individuals are drawn
uniformly without replacement from the population, the one with the lowest loss is the parent, the
child is the parent with exactly one integer choice (one operation or one input node of one node
of one cell) re-drawn uniformly among its *other* values, the element set to the centre of the new
interval; the child is estimated and appended, and the oldest individual is removed.

The child of a cycle depends on the losses of the previous cycles, so ``ask`` returns a
generation's jobs with only the first child filled in; ``tell`` fills in the next job's vector
(the search loop reads a job's vectors only when it starts estimating it).
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from relnas.nas.spaces import DARTS, SearchSpace
from relnas.search import encoding
from relnas.search.constraints import NO_CONSTRAINTS, SizeConstraints
from relnas.search.strategy_api import Job, JobResult, Strategy, positive_int


def _loss(x: float) -> float:
    x = float(x)
    return x if math.isfinite(x) else math.inf


def mutate(rng: np.random.Generator, vector: np.ndarray, index: Optional[int] = None,
           space: SearchSpace = DARTS) -> tuple[np.ndarray, int]:
    """Re-draw one integer choice of ``vector`` (an encoding of ``space``) to a different value (at
    its interval's centre).

    Returns ``(child, index)``; ``index`` is the mutated element (drawn uniformly when None).
    """
    child = np.asarray(vector, dtype=np.float64).copy()
    if index is None:
        index = int(rng.integers(space.dim))
    k = int(space.bounds()[1][index])  # number of choices of this element (>= 2)
    current = int(min(max(math.floor(child[index]), 0), k - 1))
    new = int(rng.integers(k - 1))
    if new >= current:
        new += 1
    child[index] = new + 0.5
    return child, int(index)


class _Budgeted(Strategy):
    """Shared bookkeeping: budget, chunked generations, fresh ids, best ever."""

    def __init__(self, population_size: int = 20, generations: int = 50, budget: Optional[int] = None,
                 space: SearchSpace = DARTS, constraints: SizeConstraints = NO_CONSTRAINTS):
        self.space, self.constraints = space, constraints
        self.population_size = positive_int("population_size", population_size)
        positive_int("generations", generations)
        self.budget = self.population_size * int(generations) if budget is None else positive_int("budget", budget)
        self.next_id = 0
        self.best_id, self.best_vector, self.best_loss = -1, None, math.inf
        self.best_violation = math.inf
        self.estimated = 0

    @property
    def generations(self) -> int:
        return -(-self.budget // self.population_size)

    def estimations_before(self, generation: int) -> int:
        """Number of estimations of generations 0..generation-1."""
        return min(self.budget, int(generation) * self.population_size)

    def _chunk(self, generation: int) -> int:
        return self.estimations_before(generation + 1) - self.estimations_before(generation)

    def _fresh_id(self) -> int:
        i = self.next_id
        self.next_id += 1
        return i

    def _record(self, ident: int, vector: np.ndarray, loss: float) -> None:
        """Count an estimation; keep the best, feasibility first (the earliest on ties)."""
        self.estimated += 1
        violation = self.violation(vector)
        if self.best_vector is None or violation < self.best_violation or \
                (violation == self.best_violation and loss < self.best_loss):
            self.best_id, self.best_vector, self.best_loss = int(ident), np.asarray(vector, np.float64).copy(), loss
            self.best_violation = violation

    def best(self) -> tuple[int, np.ndarray, float]:
        if self.best_vector is None:
            raise RuntimeError(f"{self.name}: nothing has been estimated yet")
        return self.best_id, self.best_vector.copy(), float(self.best_loss)

    def _base_state(self) -> Dict[str, Any]:
        return {"budget": self.budget, "population_size": self.population_size, "next_id": self.next_id,
                "best_id": self.best_id, "best_loss": self.best_loss, "estimated": self.estimated,
                "best_vector": None if self.best_vector is None else self.best_vector.copy()}

    def _load_base(self, state: Dict[str, Any]) -> None:
        if int(state["budget"]) != self.budget or int(state["population_size"]) != self.population_size:
            raise ValueError(f"{self.name}: checkpoint budget/population_size ({state['budget']}, "
                             f"{state['population_size']}) differ from ({self.budget}, {self.population_size})")
        self.next_id, self.best_id = int(state["next_id"]), int(state["best_id"])
        self.best_loss, self.estimated = float(state["best_loss"]), int(state["estimated"])
        bv = state["best_vector"]
        self.best_vector = None if bv is None else np.asarray(bv, dtype=np.float64).copy()
        self.best_violation = math.inf if bv is None else self.violation(self.best_vector)


class RandomSearch(_Budgeted):
    """Uniform random search: each estimation is a fresh vector drawn uniformly within the bounds."""

    name = "random"

    def __init__(self, population_size: int = 20, generations: int = 50, budget: Optional[int] = None,
                 space: SearchSpace = DARTS, constraints: SizeConstraints = NO_CONSTRAINTS):
        super().__init__(population_size, generations, budget, space, constraints)
        self.last: Dict[int, np.ndarray] = {}  # individuals of the latest generation

    def init(self, rng: np.random.Generator) -> None:
        pass

    def ask(self, rng: np.random.Generator, generation: int) -> List[Job]:
        n = self._chunk(generation)
        vectors = encoding.sample(rng, n, self.space) if n else np.zeros((0, self.space.dim))
        self.last = {}
        jobs = []
        for j in range(n):
            ident = self._fresh_id()
            self.last[ident] = vectors[j].copy()
            jobs.append(Job(j, [ident], [vectors[j].copy()]))
        return jobs

    def tell(self, rng: np.random.Generator, job: Job, losses: Sequence[float]) -> JobResult:
        loss = _loss(losses[0])
        self._record(job.members[0], job.vectors[0], loss)
        return JobResult(roles=["random"], merge_priority=[0] if math.isfinite(loss) else [])

    def population(self) -> Dict[int, np.ndarray]:
        return {i: v.copy() for i, v in self.last.items()}

    def state_dict(self) -> Dict[str, Any]:
        s = self._base_state()
        s["last_ids"] = np.asarray(list(self.last), dtype=np.int64)
        s["last_vectors"] = np.stack(list(self.last.values())) if self.last else np.zeros((0, self.space.dim))
        return s

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self._load_base(state)
        self.last = {int(i): np.asarray(v, dtype=np.float64).copy()
                     for i, v in zip(state["last_ids"], state["last_vectors"])}


class RegularizedEvolution(_Budgeted):
    """Aging evolution (AmoebaNet): tournament of ``sample_size``, one-choice mutation, the oldest dies."""

    name = "evolution"
    sequential_only = True  # a child is bred from the losses of the cycles before it

    def __init__(self, population_size: int = 20, generations: int = 50, budget: Optional[int] = None,
                 sample_size: int = 5, space: SearchSpace = DARTS,
                 constraints: SizeConstraints = NO_CONSTRAINTS):
        super().__init__(population_size, generations, budget, space, constraints)
        self.sample_size = positive_int("sample_size", sample_size)
        # the population, oldest first: ids, vectors, losses
        self.ids: List[int] = []
        self.vectors: List[np.ndarray] = []
        self.losses: List[float] = []
        self.mutations: Dict[int, Dict[str, int]] = {}  # child id -> {"parent", "index"}
        self._jobs: List[Job] = []

    def init(self, rng: np.random.Generator) -> None:
        pass

    # ------------------------------------------------------------------ proposals
    def _propose(self, rng: np.random.Generator) -> np.ndarray:
        ident = self.next_id  # the id the proposal will get (see _fill)
        k = min(self.sample_size, len(self.ids))
        picks = rng.choice(len(self.ids), size=k, replace=False)
        # the winner of the tournament, feasibility first (the smallest violation, then the lowest loss)
        parent = int(min(picks, key=lambda p: (self.violation(self.vectors[p]), self.losses[p], p)))
        child, index = mutate(rng, self.vectors[parent], space=self.space)
        self.mutations[ident] = {"parent": int(self.ids[parent]), "index": index}
        return child

    def ask(self, rng: np.random.Generator, generation: int) -> List[Job]:
        n = self._chunk(generation)
        start = self.estimations_before(generation)
        jobs: List[Job] = []
        for j in range(n):
            if start + j < self.population_size:  # the initial random population
                jobs.append(Job(j, [self._fresh_id()], [encoding.sample(rng, space=self.space)]))
            else:
                jobs.append(Job(j, [-1], [None]))  # filled in when its turn comes (see tell)
        self._jobs = jobs
        self._fill(rng, 0)
        return jobs

    def _fill(self, rng: np.random.Generator, j: int) -> None:
        if j < len(self._jobs) and self._jobs[j].vectors[0] is None:
            vec = self._propose(rng)
            self._jobs[j].members[0] = self._fresh_id()
            self._jobs[j].vectors[0] = vec

    def tell(self, rng: np.random.Generator, job: Job, losses: Sequence[float]) -> JobResult:
        loss = _loss(losses[0])
        ident = job.members[0]
        self._record(ident, job.vectors[0], loss)
        child = ident in self.mutations
        self.ids.append(int(ident))
        self.vectors.append(np.asarray(job.vectors[0], dtype=np.float64).copy())
        self.losses.append(loss)
        if child and len(self.ids) > self.population_size:  # aging: the oldest dies
            self.ids.pop(0)
            self.vectors.pop(0)
            self.losses.pop(0)
        self._fill(rng, job.index + 1)
        return JobResult(roles=["child" if child else "random"], merge_priority=[0] if math.isfinite(loss) else [])

    def end_generation(self, rng: np.random.Generator, generation: int) -> None:
        self._jobs = []

    # ------------------------------------------------------------------ accessors and state
    def population(self) -> Dict[int, np.ndarray]:
        return {i: v.copy() for i, v in zip(self.ids, self.vectors)}

    def state_dict(self) -> Dict[str, Any]:
        s = self._base_state()
        s.update({"sample_size": self.sample_size, "ids": np.asarray(self.ids, dtype=np.int64),
                  "vectors": np.stack(self.vectors) if self.vectors else np.zeros((0, self.space.dim)),
                  "losses": np.asarray(self.losses, dtype=np.float64),
                  "mutation_child": np.asarray(list(self.mutations), dtype=np.int64),
                  "mutation_parent": np.asarray([m["parent"] for m in self.mutations.values()], dtype=np.int64),
                  "mutation_index": np.asarray([m["index"] for m in self.mutations.values()], dtype=np.int64)})
        return s

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self._load_base(state)
        self.sample_size = int(state["sample_size"])
        self.ids = [int(i) for i in state["ids"]]
        self.vectors = [np.asarray(v, dtype=np.float64).copy() for v in state["vectors"]]
        self.losses = [float(x) for x in state["losses"]]
        self.mutations = {int(c): {"parent": int(p), "index": int(i)} for c, p, i in
                          zip(state["mutation_child"], state["mutation_parent"], state["mutation_index"])}
        self._jobs = []
