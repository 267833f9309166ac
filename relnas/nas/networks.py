"""Evaluation networks (docs/method.md §5): ``NetworkCIFAR`` and ``NetworkImageNet``.

Parameter/buffer names, shapes and forward arithmetic match the official code, so its state
dicts load with ``strict=True``. ``forward`` returns ``(logits, aux_logits)``; ``aux_logits`` is
None in eval mode or without an auxiliary head. Set ``net.drop_path_prob`` to change drop path.
"""
from __future__ import annotations

import torch
import torch.fx
import torch.nn as nn

from relnas.nas.genotypes import Genotype
from relnas.nas.operations import FactorizedReduce, Identity, ReLUConvBN, create_op, drop_path
from relnas.utils.registry import Registry

# drop_path branches on the input's device: a leaf of torch.fx tracing here too (create_feature_extractor)
torch.fx.wrap("drop_path")

#: the evaluation networks by kind (``model.network``); build one from an :class:`relnas.nas.arch.ArchSpec`
NETWORKS: Registry[type] = Registry("network")


def reduction_layers(layers: int) -> tuple[int, int]:
    """Positions of the two reduction cells in a stack of ``layers`` cells."""
    return layers // 3, 2 * layers // 3


def edge_stride(reduction: bool, index: int) -> int:
    """Stride of a cell's edge reading state ``index``: 2 on a reduction cell's edges from its two
    inputs (0, 1), else 1."""
    return 2 if reduction and index < 2 else 1


class Cell(nn.Module):
    def __init__(self, genotype: Genotype, C_prev_prev: int, C_prev: int, C: int, reduction: bool,
                 reduction_prev: bool):
        super().__init__()
        if reduction_prev:
            self.preprocess0 = FactorizedReduce(C_prev_prev, C)
        else:
            self.preprocess0 = ReLUConvBN(C_prev_prev, C, 1, 1, 0)
        self.preprocess1 = ReLUConvBN(C_prev, C, 1, 1, 0)
        pairs, concat = (genotype.reduce, genotype.reduce_concat) if reduction else (genotype.normal,
                                                                                     genotype.normal_concat)
        self.reduction = reduction
        self._steps = len(pairs) // 2
        self._concat = list(concat)
        self.multiplier = len(concat)
        self._ops = nn.ModuleList()
        for name, index in pairs:
            self._ops.append(create_op(name, C, edge_stride(reduction, index), True))
        self._indices = [index for _, index in pairs]

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, drop_prob: float) -> torch.Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        for i in range(self._steps):
            op1, op2 = self._ops[2 * i], self._ops[2 * i + 1]
            h1 = op1(states[self._indices[2 * i]])
            h2 = op2(states[self._indices[2 * i + 1]])
            if self.training and drop_prob > 0.0:
                if not isinstance(op1, Identity):
                    h1 = drop_path(h1, drop_prob)
                if not isinstance(op2, Identity):
                    h2 = drop_path(h2, drop_prob)
            states.append(h1 + h2)
        return torch.cat([states[i] for i in self._concat], dim=1)


class AuxiliaryHeadCIFAR(nn.Module):
    """Auxiliary classifier after cell 2L//3; assumes an 8x8 input map (32x32 images)."""

    def __init__(self, C: int, num_classes: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.ReLU(inplace=True),
            nn.AvgPool2d(5, stride=3, padding=0, count_include_pad=False),
            nn.Conv2d(C, 128, 1, bias=False),
            nn.BatchNorm2d(128),
            nn.ReLU(inplace=True),
            nn.Conv2d(128, 768, 2, bias=False),
            nn.BatchNorm2d(768),
            nn.ReLU(inplace=True),
        )
        self.classifier = nn.Linear(768, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        return self.classifier(x.view(x.size(0), -1))


class AuxiliaryHeadImageNet(nn.Module):
    """Auxiliary classifier of the ImageNet network (no BN after the 2x2 conv, as the official code)."""

    def __init__(self, C: int, num_classes: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.ReLU(inplace=True),
            nn.AvgPool2d(5, stride=2, padding=0, count_include_pad=False),
            nn.Conv2d(C, 128, 1, bias=False),
            nn.BatchNorm2d(128),
            nn.ReLU(inplace=True),
            nn.Conv2d(128, 768, 2, bias=False),
            nn.ReLU(inplace=True),
        )
        self.classifier = nn.Linear(768, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        return self.classifier(x.view(x.size(0), -1))


class _Network(nn.Module):
    input_size: int = 32

    def _build_cells(self, genotype: Genotype, C: int, layers: int, C_prev_prev: int, C_prev: int,
                     reduction_prev: bool) -> int:
        self.cells = nn.ModuleList()
        C_curr = C
        reductions = reduction_layers(layers)
        C_aux = C_prev
        for i in range(layers):
            reduction = i in reductions
            if reduction:
                C_curr *= 2
            cell = Cell(genotype, C_prev_prev, C_prev, C_curr, reduction, reduction_prev)
            reduction_prev = reduction
            self.cells.append(cell)
            C_prev_prev, C_prev = C_prev, cell.multiplier * C_curr
            if i == reductions[1]:
                C_aux = C_prev
        self._C_aux = C_aux
        return C_prev

    def _cells_forward(self, s0: torch.Tensor, s1: torch.Tensor):
        logits_aux = None
        aux_at = 2 * self._layers // 3
        for i, cell in enumerate(self.cells):
            s0, s1 = s1, cell(s0, s1, self.drop_path_prob)
            if i == aux_at and self._auxiliary and self.training:
                logits_aux = self.auxiliary_head(s1)
        return s1, logits_aux


@NETWORKS.register("cifar")
class NetworkCIFAR(_Network):
    input_size = 32

    def __init__(self, C: int, num_classes: int, layers: int, auxiliary: bool, genotype: Genotype,
                 in_channels: int = 3, drop_path_prob: float = 0.0):
        super().__init__()
        self._layers = layers
        self._auxiliary = auxiliary
        self.drop_path_prob = drop_path_prob
        self.genotype = genotype
        stem_multiplier = 3
        C_curr = stem_multiplier * C
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, C_curr, 3, padding=1, bias=False),
            nn.BatchNorm2d(C_curr),
        )
        C_prev = self._build_cells(genotype, C, layers, C_curr, C_curr, reduction_prev=False)
        if auxiliary:
            self.auxiliary_head = AuxiliaryHeadCIFAR(self._C_aux, num_classes)
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_prev, num_classes)

    def forward(self, input: torch.Tensor):
        s0 = s1 = self.stem(input)
        s1, logits_aux = self._cells_forward(s0, s1)
        out = self.global_pooling(s1)
        logits = self.classifier(out.view(out.size(0), -1))
        return logits, logits_aux


@NETWORKS.register("imagenet")
class NetworkImageNet(_Network):
    input_size = 224

    def __init__(self, C: int, num_classes: int, layers: int, auxiliary: bool, genotype: Genotype,
                 in_channels: int = 3, drop_path_prob: float = 0.0):
        super().__init__()
        self._layers = layers
        self._auxiliary = auxiliary
        self.drop_path_prob = drop_path_prob
        self.genotype = genotype
        self.stem0 = nn.Sequential(
            nn.Conv2d(in_channels, C // 2, kernel_size=3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(C // 2),
            nn.ReLU(inplace=True),
            nn.Conv2d(C // 2, C, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(C),
        )
        self.stem1 = nn.Sequential(
            nn.ReLU(inplace=True),
            nn.Conv2d(C, C, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(C),
        )
        C_prev = self._build_cells(genotype, C, layers, C, C, reduction_prev=True)
        if auxiliary:
            self.auxiliary_head = AuxiliaryHeadImageNet(self._C_aux, num_classes)
        self.global_pooling = nn.AvgPool2d(7)
        self.classifier = nn.Linear(C_prev, num_classes)

    def forward(self, input: torch.Tensor):
        s0 = self.stem0(input)
        s1 = self.stem1(s0)
        s1, logits_aux = self._cells_forward(s0, s1)
        out = self.global_pooling(s1)
        logits = self.classifier(out.view(out.size(0), -1))
        return logits, logits_aux
