"""Size budgets inside the search: feasibility-first comparison of candidates (docs/search_spaces.md).

A cell is *feasible* when the evaluation network it is meant for (by default the paper's CIFAR
network, C=36, L=20, 32x32 images) stays within ``max_params_m`` million parameters (without the
auxiliary head) and ``max_mult_adds_m`` million multiply-adds. How far a cell is from the budget
is its *violation*: the sum, over the limits that are set, of the relative excess
``max(0, value / limit - 1)``; 0 for a feasible cell. Candidates compare by ``(violation, loss)``:
feasible beats infeasible, between infeasible ones the smaller violation wins, between feasible
ones the lower validation loss (:func:`relnas.search.slow_fast.fast_slow`). Without a limit every
violation is 0 and the comparison is the loss alone.

Sizes are counted exactly from cached parts (:func:`relnas.nas.profile.network_size`:
microseconds a genotype) and cached per genotype in the :class:`SizeConstraints` object.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Dict, Optional, Tuple

from relnas.nas.genotypes import Genotype

if TYPE_CHECKING:
    from relnas.nas.arch import ArchSpec


@dataclass(frozen=True)
class Cost:
    params_m: float      # millions of parameters, without the auxiliary head
    mult_adds_m: float   # millions of multiply-adds of one image


def _limit(name: str, value: Optional[float]) -> Optional[float]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"search.constraints.{name} must be a positive number or null, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class SizeConstraints:
    """Budgets and the evaluation network they are counted on (``network``: cifar | imagenet;
    ``image_size``: None = the network's own, 32 or 224)."""

    max_params_m: Optional[float] = None
    max_mult_adds_m: Optional[float] = None
    network: str = "cifar"
    C: int = 36
    layers: int = 20
    image_size: Optional[int] = None
    num_classes: int = 10
    in_channels: int = 3
    _costs: Dict[Genotype, Cost] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "max_params_m", _limit("max_params_m", self.max_params_m))
        object.__setattr__(self, "max_mult_adds_m", _limit("max_mult_adds_m", self.max_mult_adds_m))

    @property
    def active(self) -> bool:
        """Whether any limit is set."""
        return self.max_params_m is not None or self.max_mult_adds_m is not None

    def arch(self, genotype: Any = "RelativeNAS") -> "ArchSpec":
        """The evaluation network of ``genotype`` (:class:`~relnas.nas.arch.ArchSpec`)."""
        from relnas.nas.arch import ArchSpec

        return ArchSpec(network=self.network, genotype=genotype, C=self.C, layers=self.layers,
                        num_classes=self.num_classes, in_channels=self.in_channels, image_size=self.image_size)

    def evaluation_network(self) -> Dict[str, Any]:
        """What the sizes are counted on: ``network``, ``C``, ``layers`` and ``image_size`` (the
        network's own when unset)."""
        arch = self.arch()
        return {"network": arch.network, "C": arch.C, "layers": arch.layers, "image_size": arch.image_size}

    def cost(self, genotype: Genotype) -> Cost:
        """Parameters and multiply-adds of ``genotype``'s evaluation network (counted once per cell pair)."""
        cached = self._costs.get(genotype)
        if cached is None:
            from relnas.nas.profile import network_size

            params, mult_adds = network_size(self.arch(genotype))
            cached = Cost(params / 1e6, mult_adds / 1e6)
            self._costs[genotype] = cached
        return cached

    def violation_of(self, cost: Cost) -> float:
        """The relative excess of ``cost`` over the budget, summed over the set limits (0: feasible)."""
        total = 0.0
        for value, limit in ((cost.params_m, self.max_params_m), (cost.mult_adds_m, self.max_mult_adds_m)):
            if limit is not None:
                total += max(0.0, value / limit - 1.0)
        return total

    def violation(self, genotype: Genotype) -> float:
        """:meth:`violation_of` the genotype's cost; 0 without limits (nothing is counted then)."""
        return self.violation_of(self.cost(genotype)) if self.active else 0.0

    def describe(self, genotype: Genotype) -> str:
        """``"4.123M params (budget 3M), 610.0M multiply-adds (budget 600M)"`` for the set limits."""
        cost = self.cost(genotype)
        parts: Tuple[str, ...] = ()
        if self.max_params_m is not None:
            parts += (f"{cost.params_m:.4g}M params (budget {self.max_params_m:g}M)",)
        if self.max_mult_adds_m is not None:
            parts += (f"{cost.mult_adds_m:.1f}M multiply-adds (budget {self.max_mult_adds_m:g}M)",)
        return ", ".join(parts)


#: no limits: every violation is 0 (the paper's search)
NO_CONSTRAINTS = SizeConstraints()


def check_feasible(strategy) -> None:
    """Raise :class:`~relnas.search.guards.SearchFailed` (one line, how close the search came) when
    a budgeted search's reported cell (the best under the feasibility rule) is outside the budget:
    then no estimated candidate was feasible."""
    constraints = strategy.constraints
    if not constraints.active:
        return
    from relnas.search.encoding import decode
    from relnas.search.guards import SearchFailed

    genotype = decode(strategy.best()[1], space=strategy.space)
    if constraints.violation(genotype) > 0:
        raise SearchFailed(f"no estimated cell is within search.constraints; the closest has "
                           f"{constraints.describe(genotype)} on the {constraints.network} network C={constraints.C} "
                           f"L={constraints.layers}: raise the budget, or search cheaper operations "
                           f"(search_space=mobile, docs/search_spaces.md)")
