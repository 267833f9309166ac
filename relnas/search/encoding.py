"""The continuous encoding of a cell pair (docs/method.md §2, the paper's Table 1).

Each intermediate node j (0-based) is four reals ``[pre1, op1, pre2, op2]``; a node variable lives
in ``[0, j + 2)``, an operation variable in ``[0, len(SEARCH_OPS))``. The integer part selects;
the upper bound (produced by clipping) selects the last interval. At an exact integer inside the
bounds the paper's half-open intervals apply (3.0 selects 3); the authors' code would select 2
(``decode(v, rule="official")``), see docs/deviations.md. The vector holds the normal
cell's nodes, then the reduction cell's.
"""
from __future__ import annotations

import numpy as np

from relnas.nas.genotypes import Genotype, GenotypeError
from relnas.nas.operations import SEARCH_OPS

NUM_NODES = 4  # intermediate nodes per cell
NUM_OPS = len(SEARCH_OPS)


def bounds(num_nodes: int = NUM_NODES, num_ops: int = NUM_OPS) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper bounds of the vector (both cells), as float64 arrays."""
    cell = []
    for j in range(num_nodes):
        cell += [j + 2, num_ops, j + 2, num_ops]
    upper = np.asarray(cell + cell, dtype=np.float64)
    return np.zeros_like(upper), upper


LOWER, UPPER = bounds()
DIM = LOWER.size


def _check_vector(vector) -> np.ndarray:
    v = np.asarray(vector, dtype=np.float64)
    if v.ndim != 1 or v.size != DIM:
        raise ValueError(f"an architecture vector has {DIM} elements (4 per node, {NUM_NODES} nodes, 2 cells); "
                         f"got shape {tuple(v.shape)}")
    bad = np.flatnonzero(~np.isfinite(v))
    if bad.size:
        raise ValueError(f"architecture vector has non-finite values at indices {bad.tolist()}")
    return v


DECODE_RULES = ("paper", "official")


def _select(x: np.ndarray, upper: np.ndarray, rule: str = "paper") -> np.ndarray:
    if rule == "paper":
        # left-closed intervals [k, k+1); the upper bound itself selects the last interval
        k = np.floor(x)
    elif rule == "official":
        # the authors' decode: int(x) if x % 1 != 0 else int(x - 0.1), i.e. right-closed intervals
        # (k, k+1]: an exact integer k > 0 selects k - 1 (and 0 selects 0)
        k = np.ceil(x) - 1
    else:
        raise ValueError(f"unknown decode rule {rule!r}; use one of {', '.join(DECODE_RULES)}")
    return np.clip(k.astype(np.int64), 0, upper.astype(np.int64) - 1)


def decode(vector, rule: str = "paper") -> Genotype:
    """Decode a 32-dimensional vector into a :class:`Genotype` (values outside the bounds clip).

    ``rule`` decides only at an element exactly equal to an integer strictly inside its bounds:
    ``"paper"`` (the default, used by the search) takes the paper's half-open intervals
    ``[k, k+1)``, so 3.0 selects 3; ``"official"`` follows the authors' ``int(x - 0.1)`` for
    integers, so 3.0 selects 2. Everywhere else, the bounds included, both select the same."""
    v = _check_vector(vector)
    idx = _select(v, UPPER, rule)
    cells = []
    half = DIM // 2
    for c in range(2):
        sel = idx[c * half:(c + 1) * half].reshape(NUM_NODES, 4)
        pairs = []
        for pre1, op1, pre2, op2 in sel:
            pairs += [(SEARCH_OPS[op1], int(pre1)), (SEARCH_OPS[op2], int(pre2))]
        cells.append(pairs)
    concat = list(range(2, NUM_NODES + 2))
    return Genotype(cells[0], concat, cells[1], concat)


def encode(genotype: Genotype) -> np.ndarray:
    """The vector at the centre of each selected interval, so ``decode(encode(g)) == g``.

    Only genotypes of the search space encode: 4 nodes, the seven search operations, concat 2..5.
    """
    out = []
    for kind, pairs, concat in (("normal", genotype.normal, genotype.normal_concat),
                                ("reduce", genotype.reduce, genotype.reduce_concat)):
        if len(pairs) != 2 * NUM_NODES or tuple(concat) != tuple(range(2, NUM_NODES + 2)):
            raise GenotypeError(f"{kind} cell is outside the search space ({NUM_NODES} nodes, concat 2..5)")
        for op, node in pairs:
            if op not in SEARCH_OPS:
                raise GenotypeError(f"{kind}: operation {op!r} is not in the search space {SEARCH_OPS}")
            out += [node + 0.5, SEARCH_OPS.index(op) + 0.5]
    return np.asarray(out, dtype=np.float64)


def sample(rng: np.random.Generator, n: int | None = None) -> np.ndarray:
    """Uniform random vector(s) within the bounds: shape (DIM,) or (n, DIM)."""
    shape = (DIM,) if n is None else (n, DIM)
    return LOWER + rng.random(shape) * (UPPER - LOWER)
