"""Search spaces: which operations a cell's edges choose from, and how many intermediate nodes it has.

A :class:`SearchSpace` fixes the encoding (docs/method.md §2): a cell pair of ``nodes``
intermediate nodes is ``2 x nodes x 2 x (input, operation)`` numbers, an operation variable in
``[0, len(ops))`` selecting ``ops[k]``; the cell concatenates all its intermediate nodes, as
DARTS does. The weight set holds every operation of ``ops`` on every edge.

Named spaces live in ``configs/search_space/`` (``search_space=<name>`` on the command line, with
``search_space.ops=[...]`` and ``search_space.nodes=N`` to change them); :data:`DARTS` is the
paper's space, the default. An operation is any name of the registry
:data:`relnas.nas.operations.OPS`; register one in a module of your own, imported by Python or by
the command line's ``imports=[<module>]`` (docs/search_spaces.md).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Iterable, Mapping, Tuple

import numpy as np

from relnas.errors import GenotypeError
from relnas.nas.operations import OPS, SEARCH_OPS


@dataclass(frozen=True)
class SearchSpace:
    """``ops``: the operation names an edge chooses from (their order is part of the encoding);
    ``nodes``: intermediate nodes per cell."""

    ops: Tuple[str, ...] = SEARCH_OPS
    nodes: int = 4

    def __post_init__(self) -> None:
        if isinstance(self.ops, str):
            raise ValueError(f"search_space.ops must be a list of operation names, got the string {self.ops!r}")
        ops = tuple(str(op) for op in self.ops)
        object.__setattr__(self, "ops", ops)
        if len(ops) < 2:
            raise ValueError(f"search_space.ops needs at least two operations, got {list(ops)}")
        if len(set(ops)) != len(ops):
            raise ValueError(f"search_space.ops lists an operation twice: {list(ops)}")
        unknown = [op for op in ops if op not in OPS]
        if unknown:
            raise ValueError(f"search_space.ops: {OPS.unknown(unknown)}")
        nodes = self.nodes
        if isinstance(nodes, bool) or not isinstance(nodes, (int, np.integer)) or nodes < 1:
            raise ValueError(f"search_space.nodes must be a positive integer, got {nodes!r}")
        object.__setattr__(self, "nodes", int(nodes))

    # ------------------------------------------------------------------ the encoding's shape
    @property
    def dim(self) -> int:
        """Numbers in the encoding of a cell pair: 2 cells x nodes x 2 inputs x (input, operation)."""
        return 2 * self.nodes * 4

    def bounds(self) -> Tuple[np.ndarray, np.ndarray]:
        """Lower and upper bounds of the vector (both cells), as float64 arrays: node ``j``
        (0-based) is ``[input in [0, j+2), op in [0, len(ops)), input, op]``."""
        cell = []
        for j in range(self.nodes):
            cell += [j + 2, len(self.ops), j + 2, len(self.ops)]
        upper = np.asarray(cell + cell, dtype=np.float64)
        return np.zeros_like(upper), upper

    @property
    def concat(self) -> Tuple[int, ...]:
        """The nodes a cell concatenates: every intermediate node."""
        return tuple(range(2, self.nodes + 2))

    # ------------------------------------------------------------------ genotypes
    def check_cell(self, kind: str, pairs: Iterable[Tuple[str, int]], concat: Iterable[int]) -> None:
        """Raise :class:`GenotypeError` when a cell is not one of this space."""
        pairs, concat = tuple(pairs), tuple(concat)
        if len(pairs) != 2 * self.nodes or concat != self.concat:
            raise GenotypeError(f"{kind} cell is outside the search space ({self.nodes} nodes, concat "
                                f"{self.concat[0]}..{self.concat[-1]}): {len(pairs) // 2} nodes, concat {list(concat)}")
        for op, _ in pairs:
            if op not in self.ops:
                raise GenotypeError(f"{kind}: operation {op!r} is not in the search space {self.ops}")

    def to_dict(self) -> Dict[str, Any]:
        return {"ops": list(self.ops), "nodes": self.nodes}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "SearchSpace":
        try:
            return cls(tuple(d["ops"]), d["nodes"])
        except (KeyError, TypeError) as e:
            raise GenotypeError(f"a search space is {{ops: [...], nodes: N}}, got {dict(d)!r} ({e})") from None
        except ValueError as e:
            raise GenotypeError(str(e)) from None

    def __str__(self) -> str:
        return f"{self.nodes} nodes, ops {', '.join(self.ops)}"


#: the paper's space: the seven operations of :data:`SEARCH_OPS`, 4 intermediate nodes
DARTS = SearchSpace(SEARCH_OPS, 4)
