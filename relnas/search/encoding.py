"""The continuous encoding of a cell pair (docs/method.md §2, the paper's Table 1).

Each intermediate node j (0-based) is four reals ``[pre1, op1, pre2, op2]``; a node variable lives
in ``[0, j + 2)``, an operation variable in ``[0, len(space.ops))``. The integer part selects;
the upper bound (produced by clipping) selects the last interval. At an exact integer inside the
bounds the paper's half-open intervals apply (3.0 selects 3); the authors' code would select 2
(``decode(v, rule="official")``), see docs/deviations.md. The vector holds the normal
cell's nodes, then the reduction cell's. The search space (:class:`~relnas.nas.spaces.SearchSpace`)
fixes the operations and the number of nodes; every function takes it, the paper's space
(:data:`~relnas.nas.spaces.DARTS`: 7 operations, 4 nodes, 32 numbers) by default.
"""
from __future__ import annotations

import numpy as np

from relnas.nas.genotypes import Genotype
from relnas.nas.spaces import DARTS, SearchSpace

# the paper's space
NUM_NODES = DARTS.nodes  # intermediate nodes per cell
NUM_OPS = len(DARTS.ops)
LOWER, UPPER = DARTS.bounds()
DIM = DARTS.dim


def _check_vector(vector, space: SearchSpace) -> np.ndarray:
    v = np.asarray(vector, dtype=np.float64)
    if v.ndim != 1 or v.size != space.dim:
        raise ValueError(f"an architecture vector has {space.dim} elements (4 per node, {space.nodes} nodes, 2 cells); "
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


def decode(vector, rule: str = "paper", space: SearchSpace = DARTS) -> Genotype:
    """Decode a vector of ``space`` (32 numbers in the paper's) into a :class:`Genotype` that
    records ``space`` (values outside the bounds clip).

    ``rule`` decides only at an element exactly equal to an integer strictly inside its bounds:
    ``"paper"`` (the default, used by the search) takes the paper's half-open intervals
    ``[k, k+1)``, so 3.0 selects 3; ``"official"`` follows the authors' ``int(x - 0.1)`` for
    integers, so 3.0 selects 2. Everywhere else, the bounds included, both select the same."""
    v = _check_vector(vector, space)
    idx = _select(v, space.bounds()[1], rule)
    cells = []
    half = space.dim // 2
    for c in range(2):
        sel = idx[c * half:(c + 1) * half].reshape(space.nodes, 4)
        pairs = []
        for pre1, op1, pre2, op2 in sel:
            pairs += [(space.ops[op1], int(pre1)), (space.ops[op2], int(pre2))]
        cells.append(pairs)
    return Genotype(cells[0], space.concat, cells[1], space.concat, space=space)


def encode(genotype: Genotype, space: SearchSpace | None = None) -> np.ndarray:
    """The vector at the centre of each selected interval, so ``decode(encode(g)) == g``.

    ``space``: the space to encode in; by default the genotype's own (``genotype.space``), else
    the paper's. Only genotypes of that space encode: its number of nodes, its operations, every
    intermediate node concatenated.
    """
    space = space or genotype.space or DARTS
    out = []
    for kind, pairs, concat in (("normal", genotype.normal, genotype.normal_concat),
                                ("reduce", genotype.reduce, genotype.reduce_concat)):
        space.check_cell(kind, pairs, concat)
        for op, node in pairs:
            out += [node + 0.5, space.ops.index(op) + 0.5]
    return np.asarray(out, dtype=np.float64)


def sample(rng: np.random.Generator, n: int | None = None, space: SearchSpace = DARTS) -> np.ndarray:
    """Uniform random vector(s) within the bounds of ``space``: shape (dim,) or (n, dim)."""
    lower, upper = space.bounds()
    shape = (space.dim,) if n is None else (n, space.dim)
    return lower + rng.random(shape) * (upper - lower)
