"""The continuous encoding: the official decode cases, bounds, errors and round trips."""
from __future__ import annotations

import json

import numpy as np
import pytest

from relnas import Genotype
from relnas.nas.operations import SEARCH_OPS
from relnas.search import encoding
from relnas.search.encoding import DIM, LOWER, UPPER, decode, encode, sample

EXPECTED_UPPER = [2, 7, 2, 7, 3, 7, 3, 7, 4, 7, 4, 7, 5, 7, 5, 7] * 2


def test_bounds():
    assert DIM == 32
    assert UPPER.tolist() == EXPECTED_UPPER
    assert LOWER.tolist() == [0] * 32


def test_all_reference_decode_cases(reference_dir):
    data = json.loads((reference_dir / "decode_cases.json").read_text())
    assert data["upper"] == EXPECTED_UPPER and data["lower"] == [0] * 32
    assert len(data["cases"]) == 200
    for i, case in enumerate(data["cases"]):
        got = decode(case["vector"])
        assert got == Genotype.from_dict(case["genotype"]), f"case {i}"


@pytest.mark.parametrize("bad", [np.zeros(31), np.zeros(33), np.zeros((2, 16)), []])
def test_decode_wrong_length(bad):
    with pytest.raises(ValueError, match="32"):
        decode(bad)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_decode_non_finite(value):
    v = np.full(32, 0.5)
    v[7] = value
    with pytest.raises(ValueError, match=r"\[7\]"):
        decode(v)


def test_decode_upper_bound_selects_last_interval():
    g = decode(UPPER.copy())
    for pairs in (g.normal, g.reduce):
        for k, (op, node) in enumerate(pairs):
            assert op == SEARCH_OPS[-1]
            assert node == k // 2 + 1  # the last node allowed for intermediate node k // 2
    g0 = decode(LOWER.copy())
    assert all(op == SEARCH_OPS[0] and node == 0 for op, node in g0.normal + g0.reduce)


def test_decode_interval_edges_left_closed():
    v = np.full(32, 0.5)
    v[1] = 3.0  # exactly on an edge: selects 3
    v[3] = 3.0 - 1e-9  # just below: selects 2
    g = decode(v)
    assert g.normal[0][0] == SEARCH_OPS[3] and g.normal[1][0] == SEARCH_OPS[2]


def _random_genotype(rng):
    cells = []
    for _ in range(2):
        pairs = []
        for j in range(encoding.NUM_NODES):
            for _ in range(2):
                pairs.append((SEARCH_OPS[rng.integers(len(SEARCH_OPS))], int(rng.integers(j + 2))))
        cells.append(pairs)
    return Genotype(cells[0], [2, 3, 4, 5], cells[1], [2, 3, 4, 5])


def test_encode_decode_round_trip():
    rng = np.random.default_rng(0)
    for _ in range(200):
        g = _random_genotype(rng)
        v = encode(g)
        assert v.shape == (32,)
        assert np.all(v >= LOWER) and np.all(v < UPPER)
        assert decode(v) == g


def test_sample_in_range_and_decodes():
    rng = np.random.default_rng(1)
    vs = sample(rng, 50)
    assert vs.shape == (50, 32)
    assert np.all(vs >= LOWER) and np.all(vs <= UPPER)
    for v in vs:
        g = decode(v)
        for pairs in (g.normal, g.reduce):
            for k, (op, node) in enumerate(pairs):
                assert op in SEARCH_OPS and 0 <= node < k // 2 + 2
    assert sample(rng).shape == (32,)


def test_encode_rejects_outside_search_space():
    from relnas import GenotypeError, get_genotype

    with pytest.raises(GenotypeError):
        encode(get_genotype("NASNet"))


def _official_index(x: float) -> int:
    """The authors' decode of one element, as their code writes it (slow_fast_learning.genotype)."""
    return int(x) if x % 1 != 0 else int(x - 0.1)


def test_decode_exact_integers_inside_the_bounds_follow_the_papers_intervals():
    """relnas decodes with the paper's half-open intervals [k, k+1): an exact integer k inside the
    bounds selects k. The authors' int(x - 0.1) selects k - 1 there (decode(..., rule="official"))."""
    v = np.full(32, 0.5)
    v[0], v[1] = 1.0, 3.0      # normal node 2: input 1.0 (bound 2), op 3.0 (bound 7)
    v[4], v[7] = 2.0, 6.0      # normal node 3: input 2.0 (bound 3), second op 6.0
    v[16 + 13] = 5.0           # reduce node 5, first op 5.0
    g = decode(v)
    assert g.normal[0] == (SEARCH_OPS[3], 1)               # sep_conv_3x3 from node 1
    assert g.normal[2] == (SEARCH_OPS[0], 2)
    assert g.normal[3] == (SEARCH_OPS[6], 0)
    assert g.reduce[6][0] == SEARCH_OPS[5]
    official = decode(v, rule="official")
    assert official.normal[0] == (SEARCH_OPS[_official_index(3.0)], _official_index(1.0)) == ("skip_connect", 0)
    assert official.normal[2] == (SEARCH_OPS[0], _official_index(2.0)) == ("max_pool_3x3", 1)
    assert official.normal[3][0] == SEARCH_OPS[_official_index(6.0)] == "dil_conv_3x3"
    assert official.reduce[6][0] == SEARCH_OPS[_official_index(5.0)] == "sep_conv_5x5"
    # away from exact integers, and at the bounds, both rules agree
    for x in (0.0, 0.25, 2.999999, 3.000001, 7.0):
        w = np.full(32, 0.5)
        w[1] = x
        if x % 1 != 0 or x in (0.0, 7.0):
            assert decode(w) == decode(w, rule="official"), x
    with pytest.raises(ValueError, match="decode rule"):
        decode(v, rule="round")


def test_all_reference_decode_cases_under_the_official_rule_too(reference_dir):
    data = json.loads((reference_dir / "decode_cases.json").read_text())
    for i, case in enumerate(data["cases"]):
        assert decode(case["vector"], rule="official") == Genotype.from_dict(case["genotype"]), f"case {i}"
