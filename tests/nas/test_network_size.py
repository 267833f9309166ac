"""network_size: the exact size of many genotypes' evaluation networks from cached parts.

Expectations come from PyTorch's FLOP counter over the whole network built for each genotype, and
from sizes of single operations worked out by hand."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from relnas.nas import profile
from relnas.nas.arch import ArchSpec
from relnas.nas.genotypes import Genotype, get_genotype
from relnas.nas.profile import count_mult_adds, count_params, network_size
from relnas.nas.spaces import DARTS, SearchSpace
from relnas.search.constraints import SizeConstraints
from relnas.search.encoding import decode


@pytest.fixture(autouse=True)
def fresh_caches(monkeypatch):
    """Each test decides which genotype of a layout is counted whole (the first) and which from parts."""
    monkeypatch.setattr(profile, "_LAYOUTS", {})
    monkeypatch.setattr(profile, "_EDGES", {})


def whole_network_size(arch: ArchSpec, device: str) -> tuple:
    with torch.device(device):
        net = arch.build()
    return count_params(net), count_mult_adds(net, arch.image_size, arch.in_channels)


def random_cells(space, n: int, seed: int) -> list:
    rng = np.random.default_rng(seed)
    lo, hi = space.bounds()
    return [decode(rng.uniform(lo, hi), space=space) for _ in range(n)]


MOBILE = SearchSpace(("max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "dil_conv_3x3"), 4)
COMPACT = SearchSpace(("sep_conv_3x3", "max_pool_3x3", "skip_connect"), 3)

# every list starts with the genotype counted whole; the rest of each concatenation width come from parts
LAYOUTS = {
    "the paper's CIFAR network": (dict(network="cifar", C=36, layers=20), "meta",
                                  ["DARTS_V2", "RelativeNAS", "AmoebaNet"] + random_cells(COMPACT, 1, 0)
                                  + random_cells(DARTS, 1, 0) + random_cells(MOBILE, 1, 1)),
    "the paper's ImageNet network": (dict(network="imagenet", C=48, layers=14, num_classes=1000), "meta",
                                     ["RelativeNAS", "DARTS_V2"] + random_cells(DARTS, 1, 2)),
    "a CIFAR network on 64x64 one-channel images, built on the CPU": (
        dict(network="cifar", C=8, layers=8, num_classes=100, in_channels=1, image_size=64), "cpu",
        random_cells(COMPACT, 3, 3) + ["DARTS_V2", "DARTS_V1"]),
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_the_size_from_parts_equals_the_flop_counter_over_the_whole_network(layout):
    fields, device, genotypes = LAYOUTS[layout]
    for g in genotypes:
        arch = ArchSpec(genotype=g, **fields)
        assert network_size(arch) == whole_network_size(arch, device), f"{layout}: {arch.genotype}"
    widths = {(len(a.normal_concat), len(a.reduce_concat)) for a in map(get_genotype, genotypes)}
    assert len(profile._LAYOUTS) == len(widths) < len(genotypes)  # the others were counted from parts


def cell(normal_edge, reduce_edge) -> Genotype:
    """4-node cells with one given edge (the normal cell's second node's first edge, the reduction
    cell's first node's first edge); the other edges are skip connections (normal) and max pooling
    (reduction) from the inputs: neither has parameters or multiply-adds."""
    normal = [("skip_connect", 0), ("skip_connect", 1), normal_edge, ("skip_connect", 1)] + \
        [("skip_connect", 0), ("skip_connect", 1)] * 2
    reduce = [reduce_edge] + [("max_pool_3x3", 1)] + [("max_pool_3x3", 0), ("max_pool_3x3", 1)] * 3
    return Genotype(normal=normal, normal_concat=[2, 3, 4, 5], reduce=reduce, reduce_concat=[2, 3, 4, 5])


def sep_conv_3x3_size(C: int, out_hw: int) -> tuple:
    """DARTS's sep_conv_3x3 by hand: twice (3x3 depthwise, 1x1 pointwise, BatchNorm with 2C
    affine parameters), every convolution at the output resolution."""
    params = 2 * (9 * C + C * C + 2 * C)
    mult_adds = 2 * out_hw * out_hw * (9 * C + C * C)
    return params, mult_adds


def test_one_edge_changes_the_size_by_that_operation_in_every_cell_of_its_kind():
    # C=4, 5 cells at 32x32: normal cells 0, 2, 4 with 4, 8, 16 channels at 32, 16, 8 pixels;
    # reduction cells 1, 3 with 8, 16 channels, inputs at 32, 16 pixels, nodes at 16, 8
    base = ArchSpec(network="cifar", genotype=cell(("skip_connect", 2), ("max_pool_3x3", 0)), C=4, layers=5)
    params0, mult_adds0 = network_size(base)
    normal = network_size(ArchSpec(network="cifar", genotype=cell(("sep_conv_3x3", 2), ("max_pool_3x3", 0)),
                                   C=4, layers=5))
    by_hand = [sep_conv_3x3_size(4, 32), sep_conv_3x3_size(8, 16), sep_conv_3x3_size(16, 8)]
    assert (normal[0] - params0, normal[1] - mult_adds0) == (1288, 227328) == tuple(map(sum, zip(*by_hand)))
    # the reduction edge reads input 0: stride 2, so its convolutions run at the nodes' resolution
    reduce = network_size(ArchSpec(network="cifar", genotype=cell(("skip_connect", 2), ("sep_conv_3x3", 0)),
                                   C=4, layers=5))
    by_hand = [sep_conv_3x3_size(8, 16), sep_conv_3x3_size(16, 8)]
    assert (reduce[0] - params0, reduce[1] - mult_adds0) == (1168, 120832) == tuple(map(sum, zip(*by_hand)))


def test_the_budget_counts_in_millions_on_the_configured_network():
    constraints = SizeConstraints(network="cifar", C=4, layers=5)
    a = constraints.cost(cell(("skip_connect", 2), ("max_pool_3x3", 0)))
    b = constraints.cost(cell(("sep_conv_3x3", 2), ("max_pool_3x3", 0)))
    assert b.params_m - a.params_m == pytest.approx(1288e-6, abs=1e-12)
    assert b.mult_adds_m - a.mult_adds_m == pytest.approx(227328e-6, abs=1e-9)
