"""Model size and cost: parameter count and multiply-adds (the paper's "Params" and "MAdds")."""
from __future__ import annotations

from typing import Any, Dict, Optional

import torch
import torch.nn as nn


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
    was_training = net.training
    net.eval()
    try:
        x = torch.zeros(1, channels, size, size, device=device, dtype=dtype)
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            net(x)
        flops = counter.get_total_flops()
    finally:
        net.train(was_training)
    return int(flops) // 2


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
