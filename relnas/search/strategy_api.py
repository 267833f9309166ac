"""What a search strategy is to the rest of the search: the :class:`Strategy` interface, the
:class:`Job` it proposes and the :class:`JobResult` it answers with. The engine and the executors
talk to this interface only; the strategies (:mod:`relnas.search.strategies`,
:mod:`relnas.search.baselines`) implement it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Sequence

import numpy as np

from relnas.nas.spaces import DARTS, SearchSpace
from relnas.search import encoding
from relnas.search.constraints import NO_CONSTRAINTS, SizeConstraints


def positive_int(name: str, value: Any) -> int:
    """``value`` as an int, or a ``ValueError`` naming ``name`` when it is not a positive integer."""
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


@dataclass
class Job:
    """Individuals estimated together: ``members`` are individual ids, ``vectors`` their encodings."""

    index: int
    members: List[int]
    vectors: List[np.ndarray]


@dataclass
class JobResult:
    roles: List[str]                       # per member, e.g. "fast"/"slow"/"sample"/"child"
    merge_priority: List[int] = field(default_factory=list)  # member positions, later wins (Eq. 6: slow, fast)


class Strategy:
    """Base class. Subclasses implement ``init``, ``ask``, ``tell`` and the population accessors,
    and check their own constructor arguments (``ValueError`` with a one-line message).

    Class attributes the executors read: ``job_size`` (members per job: 2 for pairs, 1 for the
    baselines) and ``sequential_only`` (True when a job is proposed from the results of the jobs
    before it, so the jobs of a generation cannot run in parallel). ``space``: the search space
    whose encoding the vectors are; ``constraints``: the size budgets of the feasibility-first
    comparison (constructor arguments; the config passes ``search_space`` and ``search.constraints``).
    """

    name = "base"
    budget: int
    job_size = 1
    sequential_only = False
    space: SearchSpace = DARTS
    constraints: SizeConstraints = NO_CONSTRAINTS

    def violation(self, vector: np.ndarray) -> float:
        """The budget violation of the cell ``vector`` encodes (0: feasible; always 0 without budgets)."""
        if not self.constraints.active:
            return 0.0
        return self.constraints.violation(encoding.decode(vector, space=self.space))

    def init(self, rng: np.random.Generator) -> None:
        raise NotImplementedError

    def ask(self, rng: np.random.Generator, generation: int) -> List[Job]:
        raise NotImplementedError

    def tell(self, rng: np.random.Generator, job: Job, losses: Sequence[float]) -> JobResult:
        raise NotImplementedError

    def end_generation(self, rng: np.random.Generator, generation: int) -> None:
        pass

    @property
    def generations(self) -> int:
        raise NotImplementedError

    def population(self) -> Dict[int, np.ndarray]:
        """The current population: individual id -> vector."""
        raise NotImplementedError

    def best(self) -> tuple[int, np.ndarray, float]:
        """(id, vector, loss) of the architecture to report."""
        raise NotImplementedError

    def state_dict(self) -> Dict[str, Any]:
        raise NotImplementedError

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        raise NotImplementedError
