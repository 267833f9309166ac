"""DARTS-style candidate operations (SPEC section 1).

Module structure and attribute names follow the official RelativeNAS/DARTS code exactly, so
that parameter and buffer names of the evaluation networks match its checkpoints.
"""
from __future__ import annotations

from typing import Callable, Dict

import torch
import torch.nn as nn
import torch.nn.functional as F

# The order is part of the encoding: an operation variable in [k, k+1) selects SEARCH_OPS[k].
SEARCH_OPS: tuple[str, ...] = (
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
)


class ReLUConvBN(nn.Module):
    def __init__(self, C_in: int, C_out: int, kernel_size: int, stride: int, padding: int, affine: bool = True):
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_out, kernel_size, stride=stride, padding=padding, bias=False),
            nn.BatchNorm2d(C_out, affine=affine),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


def dilated_depthwise(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)`` for a depthwise conv with dilation 2 and "same" padding, computed as undilated
    convs on the four pixel-parity phases of ``x`` (exactly the same sums: a dilation-2 tap only
    ever reads pixels of the output pixel's own parity). The dilated kernels are a slow path of
    the CPU backends (several times slower than undilated ones in channels-last); the phase form
    runs the fast kernels. Stride 2 reads only the even phase."""
    k = conv.kernel_size[0]
    pad = (k - 1) // 2
    C = x.shape[1]
    if conv.stride[0] == 2:
        return F.conv2d(x[:, :, ::2, ::2], conv.weight, padding=pad, groups=C)
    out = torch.empty_like(x)
    for p in (0, 1):
        for q in (0, 1):
            out[:, :, p::2, q::2] = F.conv2d(x[:, :, p::2, q::2], conv.weight, padding=pad, groups=C)
    return out


# Compute dilation-2 depthwise convs by parity phases (same result, faster on CPU). The benchmark's
# DARTS-style baseline switches it off to run the plain dilated kernels.
PHASE_DILATED_CONV = True


class DilConv(nn.Module):
    def __init__(self, C_in: int, C_out: int, kernel_size: int, stride: int, padding: int, dilation: int,
                 affine: bool = True):
        super().__init__()
        self._phase = dilation == 2 and padding == kernel_size - 1 and stride in (1, 2)
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_in, kernel_size=kernel_size, stride=stride, padding=padding, dilation=dilation,
                      groups=C_in, bias=False),
            nn.Conv2d(C_in, C_out, kernel_size=1, padding=0, bias=False),
            nn.BatchNorm2d(C_out, affine=affine),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self._phase and PHASE_DILATED_CONV and x.device.type == "cpu"):
            return self.op(x)
        relu, dw, pw, bn = self.op
        return bn(pw(dilated_depthwise(dw, relu(x))))


class SepConv(nn.Module):
    def __init__(self, C_in: int, C_out: int, kernel_size: int, stride: int, padding: int, affine: bool = True):
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_in, kernel_size=kernel_size, stride=stride, padding=padding, groups=C_in, bias=False),
            nn.Conv2d(C_in, C_in, kernel_size=1, padding=0, bias=False),
            nn.BatchNorm2d(C_in, affine=affine),
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_in, kernel_size=kernel_size, stride=1, padding=padding, groups=C_in, bias=False),
            nn.Conv2d(C_in, C_out, kernel_size=1, padding=0, bias=False),
            nn.BatchNorm2d(C_out, affine=affine),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Identity(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class FactorizedReduce(nn.Module):
    """ReLU, two 1x1 stride-2 convs (the second on the input shifted by one pixel), concat, BN."""

    def __init__(self, C_in: int, C_out: int, affine: bool = True):
        super().__init__()
        if C_out % 2:
            raise ValueError(f"FactorizedReduce needs an even number of output channels, got {C_out}")
        self.relu = nn.ReLU(inplace=False)
        self.conv_1 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, padding=0, bias=False)
        self.conv_2 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, padding=0, bias=False)
        self.bn = nn.BatchNorm2d(C_out, affine=affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(x)
        out = torch.cat([self.conv_1(x), self.conv_2(x[:, :, 1:, 1:])], dim=1)
        return self.bn(out)


def _conv_7x1_1x7(C: int, stride: int, affine: bool) -> nn.Module:
    return nn.Sequential(
        nn.ReLU(inplace=False),
        nn.Conv2d(C, C, (1, 7), stride=(1, stride), padding=(0, 3), bias=False),
        nn.Conv2d(C, C, (7, 1), stride=(stride, 1), padding=(3, 0), bias=False),
        nn.BatchNorm2d(C, affine=affine),
    )


OpFactory = Callable[[int, int, bool], nn.Module]

# Registry of every operation an evaluation network can be built from: the seven of the search
# space (in SEARCH_OPS) plus the two that published architectures outside it use.
OPS: Dict[str, OpFactory] = {
    "max_pool_3x3": lambda C, stride, affine: nn.MaxPool2d(3, stride=stride, padding=1),
    "avg_pool_3x3": lambda C, stride, affine: nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False),
    "skip_connect": lambda C, stride, affine: Identity() if stride == 1 else FactorizedReduce(C, C, affine=affine),
    "sep_conv_3x3": lambda C, stride, affine: SepConv(C, C, 3, stride, 1, affine=affine),
    "sep_conv_5x5": lambda C, stride, affine: SepConv(C, C, 5, stride, 2, affine=affine),
    "dil_conv_3x3": lambda C, stride, affine: DilConv(C, C, 3, stride, 2, 2, affine=affine),
    "dil_conv_5x5": lambda C, stride, affine: DilConv(C, C, 5, stride, 4, 2, affine=affine),
    "sep_conv_7x7": lambda C, stride, affine: SepConv(C, C, 7, stride, 3, affine=affine),
    "conv_7x1_1x7": _conv_7x1_1x7,
}


def create_op(name: str, C: int, stride: int, affine: bool = True) -> nn.Module:
    """Build operation ``name`` for ``C`` channels; unknown names fail with the known ones listed."""
    try:
        factory = OPS[name]
    except KeyError:
        raise KeyError(f"unknown operation {name!r}; known operations: {', '.join(OPS)}") from None
    return factory(C, stride, affine)


def drop_path(x: torch.Tensor, drop_prob: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Zero each sample's output with probability ``drop_prob`` and rescale the kept ones.

    Same arithmetic as the official code (a Bernoulli mask per sample, divide then multiply).
    ``generator``: draw the mask from this generator (on ``x``'s device) instead of the global one.
    """
    if drop_prob <= 0.0:
        return x
    keep_prob = 1.0 - drop_prob
    mask = torch.empty(x.size(0), 1, 1, 1, device=x.device, dtype=x.dtype).bernoulli_(keep_prob, generator=generator)
    return x.div(keep_prob) * mask
