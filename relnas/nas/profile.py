"""Model size and cost: parameter count and multiply-adds (the paper's "Params" and "MAdds").

:func:`count_params` and :func:`count_mult_adds` count one network; :func:`network_size` counts
the evaluation networks of many genotypes exactly, from cached parts (microseconds a genotype).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

import torch
import torch.nn as nn

if TYPE_CHECKING:
    from relnas.nas.arch import ArchSpec


def count_params(net: nn.Module, exclude_auxiliary: bool = True) -> int:
    """Number of parameters; by default without the auxiliary head (as papers report it)."""
    return sum(p.numel() for name, p in net.named_parameters()
               if not (exclude_auxiliary and "auxiliary" in name.split(".")[0]))


def _default_input_size(net: nn.Module) -> int:
    return int(getattr(net, "input_size", 32))


def _in_channels(net: nn.Module) -> int:
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            return m.in_channels
    return 3


def count_mult_adds(net: nn.Module, input_size: Optional[int] = None, in_channels: Optional[int] = None) -> int:
    """Multiply-adds of one forward pass on a single ``in_channels x input_size x input_size`` image.

    Counted with :class:`torch.utils.flop_counter.FlopCounterMode` in eval mode (so the auxiliary
    head does not run) without gradients; FLOPs / 2 = multiply-adds. Pooling, BN and ReLU are not
    counted, as usual. ``input_size`` defaults to the network's own (32 CIFAR, 224 ImageNet), and
    ``in_channels`` to the stem's.
    """
    from torch.utils.flop_counter import FlopCounterMode

    size = _default_input_size(net) if input_size is None else int(input_size)
    channels = _in_channels(net) if in_channels is None else int(in_channels)
    try:
        param = next(net.parameters())
        device, dtype = param.device, param.dtype
    except StopIteration:
        device, dtype = torch.device("cpu"), torch.float32
    return _mult_adds(net, torch.zeros(1, channels, size, size, device=device, dtype=dtype))


def _mult_adds(net: nn.Module, x: torch.Tensor) -> int:
    """Multiply-adds of ``net(x)`` in eval mode without gradients (the FLOP counter's FLOPs / 2)."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = net.training
    net.eval()
    try:
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            net(x)
        flops = counter.get_total_flops()
    finally:
        net.train(was_training)
    return int(flops) // 2


# ---------------------------------------------------------------------- many genotypes, one layout
@dataclass(frozen=True)
class _CellSlot:
    """A cell's place in the network: its channels per node, kind, and the resolution of its
    (preprocessed) inputs and of its nodes."""

    C: int
    reduction: bool
    inputs_hw: Tuple[int, ...]
    nodes_hw: Tuple[int, ...]


@dataclass(frozen=True)
class _Layout:
    cells: Tuple[_CellSlot, ...]
    rest: Tuple[int, int]   # (params, mult-adds) of everything but the cells' edge operations


# Pure caches of counts (keys hold the classes and factories counted, so a re-registered name counts anew)
_LAYOUTS: Dict[tuple, _Layout] = {}
_EDGES: Dict[tuple, Tuple[int, int]] = {}


def _edge_size(name: str, C: int, stride: int, hw: Tuple[int, ...]) -> Tuple[int, int]:
    """(params, mult-adds) of operation ``name`` on ``C`` channels at input resolution ``hw``."""
    from relnas.nas.operations import OPS, create_op

    key = (name, OPS[name], C, stride, hw)
    size = _EDGES.get(key)
    if size is None:
        with torch.device("meta"):
            op = create_op(name, C, stride, True)
        size = (sum(p.numel() for p in op.parameters()), _mult_adds(op, torch.zeros(1, C, *hw, device="meta")))
        _EDGES[key] = size
    return size


def _edges_size(arch: "ArchSpec", cells: Tuple[_CellSlot, ...]) -> Tuple[int, int]:
    """(params, mult-adds) of the edge operations of ``arch``'s cells placed in ``cells``."""
    from relnas.nas.networks import edge_stride

    g = arch.genotype
    params = mult_adds = 0
    for cell in cells:
        for name, index in (g.reduce if cell.reduction else g.normal):
            p, m = _edge_size(name, cell.C, edge_stride(cell.reduction, index),
                              cell.inputs_hw if index < 2 else cell.nodes_hw)
            params, mult_adds = params + p, mult_adds + m
    return params, mult_adds


def _count_whole(arch: "ArchSpec") -> Tuple[Tuple[int, int], Tuple[_CellSlot, ...]]:
    """(params, mult-adds) of ``arch``'s whole network (built on the meta device) and its cells' slots."""
    from relnas.nas.networks import Cell

    with torch.device("meta"):
        net = arch.build()
    slots: List[_CellSlot] = []

    def record(cell: nn.Module, inputs: tuple, out: torch.Tensor) -> None:
        s1 = inputs[1]  # preprocess1 is a 1x1 stride-1 convolution: the inputs' resolution
        slots.append(_CellSlot(int(out.shape[1]) // cell.multiplier, bool(cell.reduction),
                               tuple(int(d) for d in s1.shape[2:]), tuple(int(d) for d in out.shape[2:])))

    hooks = [m.register_forward_hook(record) for m in net.modules() if isinstance(m, Cell)]
    try:
        size = (count_params(net), count_mult_adds(net, arch.image_size, arch.in_channels))
    finally:
        for h in hooks:
            h.remove()
    return size, tuple(slots)


def network_size(arch: "ArchSpec") -> Tuple[int, int]:
    """Parameters (without the auxiliary head) and multiply-adds of one image of ``arch``'s network,
    equal to :func:`count_params` and :func:`count_mult_adds` of the built network.

    A network's count is the sum of its parts' (stem, classifier, each cell's preprocessing and
    edge operations), and only the edge operations depend on a cell's operations and inputs: the
    other parts depend on the genotype only through how many nodes each kind of cell concatenates
    (the channels a cell passes on). So the first genotype of each layout (network, C, cells,
    classes, input channels, image size, concatenation widths) is counted whole on the meta device
    (shapes only), which also records each cell's channels, kind and resolutions, and its count
    without its edge operations is kept; every other genotype of the layout is that plus its edge
    operations, each counted once per (operation, channels, stride, resolution) alone on the meta
    device. The parts are cached for the process."""
    arch = replace(arch, auxiliary=False)  # the same counts, a smaller network to build
    g = arch.genotype
    from relnas.nas.networks import NETWORKS

    key = (NETWORKS[arch.network], arch.C, arch.layers, arch.num_classes, arch.in_channels, arch.image_size,
           len(g.normal_concat), len(g.reduce_concat))
    layout = _LAYOUTS.get(key)
    if layout is None:
        whole, cells = _count_whole(arch)
        edges = _edges_size(arch, cells)
        _LAYOUTS[key] = _Layout(cells, (whole[0] - edges[0], whole[1] - edges[1]))
        return whole
    edges = _edges_size(arch, layout.cells)
    return layout.rest[0] + edges[0], layout.rest[1] + edges[1]


def network_summary(net: nn.Module, input_size: Optional[int] = None,
                    in_channels: Optional[int] = None) -> Dict[str, Any]:
    """Params and multiply-adds (millions, params without the auxiliary head) and cell layout."""
    params = count_params(net, exclude_auxiliary=True)
    size = _default_input_size(net) if input_size is None else int(input_size)
    madds = count_mult_adds(net, size, in_channels)
    cells = list(getattr(net, "cells", []))
    return {
        "params": params,
        "params_m": round(params / 1e6, 4),
        "params_with_auxiliary": count_params(net, exclude_auxiliary=False),
        "mult_adds": madds,
        "mult_adds_m": round(madds / 1e6, 2),
        "input_size": size,
        "cells": len(cells),
        "reduction_positions": [i for i, c in enumerate(cells) if getattr(c, "reduction", False)],
    }
