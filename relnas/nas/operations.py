"""DARTS-style candidate operations (docs/method.md §1).

Module structure and attribute names follow the official RelativeNAS/DARTS code exactly, so
that parameter and buffer names of the evaluation networks match its checkpoints.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F

from relnas.utils.registry import Registry

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


# Compute dilation-2 depthwise convs by parity phases (same result, faster on CPU). The benchmark's
# DARTS-style baseline switches it off to run the plain dilated kernels.
PHASE_DILATED_CONV = True


def dil_depthwise_conv(x: torch.Tensor, weight: torch.Tensor, stride: int, padding: int, dilation: int,
                       phase: bool) -> torch.Tensor:
    """The depthwise dilated conv of :class:`DilConv`. With ``phase`` (dilation 2, "same" padding)
    and :data:`PHASE_DILATED_CONV`, CPU tensors take undilated convs on the four pixel-parity phases
    of ``x`` (exactly the same sums: a dilation-2 tap only ever reads pixels of the output pixel's
    own parity; stride 2 reads only the even phase), which run the fast CPU kernels (the dilated
    ones are several times slower in channels-last); other devices take the plain dilated kernel.

    The device test runs inside this function, which ``torch.fx.wrap`` makes a leaf of symbolic
    tracing: traced graphs (``create_feature_extractor``) keep one call to it and so still choose
    the path per call, by the device of the actual input.
    """
    if phase and PHASE_DILATED_CONV and x.device.type == "cpu":
        k = weight.shape[-1]
        pad = (k - 1) // 2
        C = x.shape[1]
        if stride == 2:
            return F.conv2d(x[:, :, ::2, ::2], weight, padding=pad, groups=C)
        out = torch.empty_like(x)
        for p in (0, 1):
            for q in (0, 1):
                out[:, :, p::2, q::2] = F.conv2d(x[:, :, p::2, q::2], weight, padding=pad, groups=C)
        return out
    return F.conv2d(x, weight, stride=stride, padding=padding, dilation=dilation, groups=x.shape[1])


torch.fx.wrap("dil_depthwise_conv")


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
        relu, dw, pw, bn = self.op
        return bn(pw(dil_depthwise_conv(relu(x), dw.weight, dw.stride[0], dw.padding[0], dw.dilation[0],
                                              self._phase)))


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


def pointwise_stride2_conv(x: torch.Tensor, weight: torch.Tensor, offset: int) -> torch.Tensor:
    """The 1x1 stride-2 convolution of ``x[:, :, offset:, offset:]`` (:class:`FactorizedReduce`).

    A channels-last input on a CPU runs as a stride-1 convolution of the pixels the strided one
    reads (``x[:, :, offset::2, offset::2]``): the same products and sums (values and input
    gradients bit for bit on even sizes; the weight gradient sums in the kernel's own order), and
    it avoids a defect of the CPU (oneDNN) weight gradient of channels-last 1x1 stride-2
    convolutions in torch 2.14, which corrupts the heap for few input channels at some sizes (a
    (4, 8, 56, 56) input aborts the process; ``tests/nas/test_networks.py``). Other inputs (NCHW, as
    the official code runs; other devices) take the strided convolution. A leaf of ``torch.fx``
    tracing (the test runs on the actual input).
    """
    if x.device.type == "cpu" and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return F.conv2d(x[:, :, offset::2, offset::2], weight)
    return F.conv2d(x[:, :, offset:, offset:] if offset else x, weight, stride=2)


torch.fx.wrap("pointwise_stride2_conv")


class FactorizedReduce(nn.Module):
    """ReLU, two 1x1 stride-2 convs (the second on the input shifted by one pixel), concat, BN.
    The convs run through :func:`pointwise_stride2_conv` with the ``conv_1`` / ``conv_2`` weights
    (the official parameter names)."""

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
        out = torch.cat([pointwise_stride2_conv(x, self.conv_1.weight, 0),
                         pointwise_stride2_conv(x, self.conv_2.weight, 1)], dim=1)
        return self.bn(out)


OpFactory = Callable[[int, int, bool], nn.Module]

#: Every operation an evaluation network can be built from: the seven of the search space (in
#: SEARCH_OPS) plus the two that published architectures outside it use. Each factory takes
#: ``(C, stride, affine)``.
OPS: Registry[OpFactory] = Registry(
    "operation", hint="an operation of your own is known once its module is imported: imports=[<module>] on "
                      "the command line (docs/search_spaces.md#register-an-operation)")


@OPS.register("max_pool_3x3")
def _max_pool_3x3(C: int, stride: int, affine: bool) -> nn.Module:
    return nn.MaxPool2d(3, stride=stride, padding=1)


@OPS.register("avg_pool_3x3")
def _avg_pool_3x3(C: int, stride: int, affine: bool) -> nn.Module:
    return nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False)


@OPS.register("skip_connect")
def _skip_connect(C: int, stride: int, affine: bool) -> nn.Module:
    return Identity() if stride == 1 else FactorizedReduce(C, C, affine=affine)


@OPS.register("sep_conv_3x3")
def _sep_conv_3x3(C: int, stride: int, affine: bool) -> nn.Module:
    return SepConv(C, C, 3, stride, 1, affine=affine)


@OPS.register("sep_conv_5x5")
def _sep_conv_5x5(C: int, stride: int, affine: bool) -> nn.Module:
    return SepConv(C, C, 5, stride, 2, affine=affine)


@OPS.register("dil_conv_3x3")
def _dil_conv_3x3(C: int, stride: int, affine: bool) -> nn.Module:
    return DilConv(C, C, 3, stride, 2, 2, affine=affine)


@OPS.register("dil_conv_5x5")
def _dil_conv_5x5(C: int, stride: int, affine: bool) -> nn.Module:
    return DilConv(C, C, 5, stride, 4, 2, affine=affine)


@OPS.register("sep_conv_7x7")
def _sep_conv_7x7(C: int, stride: int, affine: bool) -> nn.Module:
    return SepConv(C, C, 7, stride, 3, affine=affine)


@OPS.register("conv_7x1_1x7")
def _conv_7x1_1x7(C: int, stride: int, affine: bool) -> nn.Module:
    return nn.Sequential(
        nn.ReLU(inplace=False),
        nn.Conv2d(C, C, (1, 7), stride=(1, stride), padding=(0, 3), bias=False),
        nn.Conv2d(C, C, (7, 1), stride=(stride, 1), padding=(3, 0), bias=False),
        nn.BatchNorm2d(C, affine=affine),
    )


def create_op(name: str, C: int, stride: int, affine: bool = True) -> nn.Module:
    """Build operation ``name`` for ``C`` channels; unknown names fail with the known ones listed."""
    return OPS[name](C, stride, affine)


def drop_path_reference(x: torch.Tensor, drop_prob: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """The official code's drop path, as written there: a Bernoulli mask per sample, ``x`` divided
    by the keep probability, then multiplied by the mask (two full-size kernels forward, two
    backward). :func:`drop_path` computes the same bits with one each way."""
    if drop_prob <= 0.0:
        return x
    keep_prob = 1.0 - drop_prob
    mask = torch.empty(x.size(0), 1, 1, 1, device=x.device, dtype=x.dtype).bernoulli_(keep_prob, generator=generator)
    return x.div(keep_prob) * mask


def _reciprocal(keep_prob: float, dtype: torch.dtype) -> float:
    """``1 / keep_prob`` as CUDA computes it for ``x.div(keep_prob)``: in the kernel's arithmetic
    type (float32 for float32 tensors), then a multiplication (PyTorch's ``div_true_kernel_cuda``)."""
    if dtype == torch.float32:
        return float(np.float32(1.0) / np.float32(keep_prob))
    return 1.0 / keep_prob


def drop_path(x: torch.Tensor, drop_prob: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Zero each sample's output with probability ``drop_prob`` and rescale the kept ones.

    Bit for bit the official code's arithmetic (:func:`drop_path_reference`: the same Bernoulli
    draw per sample, ``x / keep`` times the mask, and the same gradient), with the rescaling folded
    into the per-sample factor, so the full-size tensor is read and written once forward and once
    backward instead of twice. How the factor reproduces the reference exactly depends on how the
    device divides by a Python number: a CUDA kernel multiplies by the reciprocal rounded to the
    tensor's arithmetic type, so there ``x * (mask * reciprocal)``; the CPU divides, so there
    ``x / (keep / mask)`` (``keep`` for a kept sample; ``inf`` for a dropped one, and ``x / inf``
    is a zero with ``x``'s sign, as ``(x / keep) * 0`` is). Other dtypes (half, bfloat16 under
    autocast) take the reference's two steps. ``generator``: draw the mask from this generator
    (on ``x``'s device) instead of the global one.

    A leaf of ``torch.fx`` tracing (``torch.fx.wrap``): its device test runs on the actual input.
    """
    if drop_prob <= 0.0:
        return x
    keep_prob = 1.0 - drop_prob
    mask = torch.empty(x.size(0), 1, 1, 1, device=x.device, dtype=x.dtype).bernoulli_(keep_prob, generator=generator)
    if x.dtype not in (torch.float32, torch.float64):
        return x.div(keep_prob) * mask
    if x.device.type == "cuda":
        return x * mask.mul_(_reciprocal(keep_prob, x.dtype))
    return x / mask.reciprocal_().mul_(keep_prob)


torch.fx.wrap("drop_path")
