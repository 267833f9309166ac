"""Semantic segmentation with BiSeNet (V1) on a relnas backbone: the Cityscapes transfer study.

BiSeNet (Yu et al., ECCV 2018) as its public implementations build it:

- spatial path: three stride-2 Conv-BN-ReLU (7x7 3->64, 3x3 64->64, 3x3 64->64) and a 1x1
  Conv-BN-ReLU to 128 channels, at stride 8;
- context path on the backbone's stride-16 and stride-32 maps: an attention-refinement module
  (3x3 Conv-BN-ReLU to 128, global pool, 1x1 conv, BN, sigmoid, multiply) on each, a global-pool
  context (1x1 Conv-BN-ReLU of the pooled stride-32 map) added to the refined stride-32 map, each
  sum upsampled (nearest) and smoothed by a 3x3 Conv-BN-ReLU, the stride-16 result at stride 8;
- feature-fusion module: concatenation (256), 1x1 Conv-BN-ReLU, channel attention (global pool,
  1x1 conv to 1/4, ReLU, 1x1 conv back, sigmoid) applied as ``x + x * a``;
- heads: 3x3 Conv-BN-ReLU then a 1x1 conv to the classes, on the fused map (256 channels) and,
  in training only, auxiliary heads (64 channels) on the two context outputs; every output is
  bilinearly upsampled to the input size;
- loss: online hard-example mining cross-entropy (OHEM) on each output, summed.
"""
from __future__ import annotations

import math
from typing import Dict, List, Mapping, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ConvBNReLU", "SpatialPath", "AttentionRefinement", "ContextPath", "FeatureFusion",
    "SegmentationHead", "BiSeNet", "ohem_cross_entropy", "OhemCrossEntropy",
]


class ConvBNReLU(nn.Sequential):
    def __init__(self, cin: int, cout: int, k: int = 3, stride: int = 1) -> None:
        super().__init__(nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class SpatialPath(nn.Sequential):
    """Three stride-2 convolutions (stride 8 in all) and a 1x1 projection to ``out_channels``."""

    def __init__(self, in_channels: int = 3, out_channels: int = 128) -> None:
        super().__init__(ConvBNReLU(in_channels, 64, 7, 2), ConvBNReLU(64, 64, 3, 2),
                         ConvBNReLU(64, 64, 3, 2), ConvBNReLU(64, out_channels, 1))


class AttentionRefinement(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = ConvBNReLU(cin, cout, 3)
        self.attention = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(cout, cout, 1, bias=False),
                                       nn.BatchNorm2d(cout), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        return x * self.attention(x)


class ContextPath(nn.Module):
    """Refines the backbone's stride-16 and stride-32 maps; returns the context at stride 8 and
    at stride 16 (both ``channels`` wide)."""

    def __init__(self, in16: int, in32: int, channels: int = 128) -> None:
        super().__init__()
        self.arm16 = AttentionRefinement(in16, channels)
        self.arm32 = AttentionRefinement(in32, channels)
        self.global_context = nn.Sequential(nn.AdaptiveAvgPool2d(1), ConvBNReLU(in32, channels, 1))
        self.head32 = ConvBNReLU(channels, channels, 3)
        self.head16 = ConvBNReLU(channels, channels, 3)

    def forward(self, f16: torch.Tensor, f32: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        g = self.global_context(f32)  # (N, C, 1, 1), broadcast over the stride-32 map
        s32 = self.arm32(f32) + g
        up32 = self.head32(F.interpolate(s32, size=f16.shape[-2:], mode="nearest"))
        s16 = self.arm16(f16) + up32
        size8 = (2 * f16.shape[-2], 2 * f16.shape[-1])
        up16 = self.head16(F.interpolate(s16, size=size8, mode="nearest"))
        return up16, up32


class FeatureFusion(nn.Module):
    def __init__(self, cin: int, cout: int, reduction: int = 4) -> None:
        super().__init__()
        self.conv = ConvBNReLU(cin, cout, 1)
        self.attention = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(cout, cout // reduction, 1, bias=False), nn.ReLU(inplace=True),
            nn.Conv2d(cout // reduction, cout, 1, bias=False), nn.Sigmoid())

    def forward(self, spatial: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = self.conv(torch.cat([spatial, context], dim=1))
        return x + x * self.attention(x)


class SegmentationHead(nn.Sequential):
    def __init__(self, cin: int, mid: int, num_classes: int) -> None:
        super().__init__(ConvBNReLU(cin, mid, 3), nn.Conv2d(mid, num_classes, 1, bias=True))


class BiSeNet(nn.Module):
    """BiSeNet V1 on ``backbone``, a module whose forward returns its feature maps (a mapping or a
    sequence, shallow to deep) of which the last two are at strides 16 and 32 with ``in_channels``
    = (C16, C32) channels.

    ``forward`` returns the main logits (N, num_classes, H, W) in eval mode and
    ``(main, aux16, aux32)`` in training mode, all at the input's resolution.
    """

    def __init__(self, backbone: nn.Module, in_channels: Sequence[int], num_classes: int = 19,
                 context_channels: int = 128, fusion_channels: int = 256, aux_channels: int = 64,
                 auxiliary: bool = True) -> None:
        super().__init__()
        if len(in_channels) != 2:
            raise ValueError(f"BiSeNet needs the backbone's stride-16 and stride-32 channels, got {list(in_channels)}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.backbone = backbone
        self.num_classes = int(num_classes)
        self.spatial_path = SpatialPath(3, context_channels)
        self.context_path = ContextPath(int(in_channels[0]), int(in_channels[1]), context_channels)
        self.fusion = FeatureFusion(2 * context_channels, fusion_channels)
        self.head = SegmentationHead(fusion_channels, fusion_channels, num_classes)
        self.aux_heads = nn.ModuleList(
            [SegmentationHead(context_channels, aux_channels, num_classes) for _ in range(2)]) if auxiliary else None
        self._init_head()

    def _init_head(self) -> None:
        for name, m in self.named_modules():
            if name.startswith("backbone"):
                continue
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, a=1)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def _taps(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        feats = self.backbone(x)
        maps: List[torch.Tensor] = list(feats.values()) if isinstance(feats, Mapping) else list(feats)
        if len(maps) < 2:
            raise ValueError(f"the backbone returned {len(maps)} feature map(s); BiSeNet needs the stride-16 and stride-32 maps")
        return maps[-2], maps[-1]

    def forward(self, x: torch.Tensor) -> Union[torch.Tensor, Tuple[torch.Tensor, ...]]:
        size = x.shape[-2:]
        f16, f32 = self._taps(x)
        c8, c16 = self.context_path(f16, f32)
        sp = self.spatial_path(x)
        if sp.shape[-2:] != c8.shape[-2:]:  # odd input sizes: align the stride-8 maps
            c8 = F.interpolate(c8, size=sp.shape[-2:], mode="bilinear", align_corners=False)
        main = F.interpolate(self.head(self.fusion(sp, c8)), size=size, mode="bilinear", align_corners=False)
        if not self.training or self.aux_heads is None:
            return main
        aux = [F.interpolate(h(c), size=size, mode="bilinear", align_corners=False)
               for h, c in zip(self.aux_heads, (c8, c16))]
        return (main, *aux)


def ohem_cross_entropy(logits: torch.Tensor, target: torch.Tensor, thresh: float = 0.7,
                       min_kept_fraction: float = 1.0 / 16, ignore_index: int = 255) -> torch.Tensor:
    """Online hard-example mining cross-entropy.

    Per-pixel cross-entropy (``ignore_index`` pixels excluded); the mean over the pixels whose
    loss exceeds ``-log(thresh)`` (predicted probability of the true class below ``thresh``), or,
    when fewer than ``min_kept_fraction`` of the valid pixels are that hard, over the
    ``floor(min_kept_fraction * n_valid)`` largest losses."""
    loss = F.cross_entropy(logits, target, ignore_index=ignore_index, reduction="none").flatten()
    valid = (target != ignore_index).flatten()
    n_valid = int(valid.sum())
    if n_valid == 0:
        return logits.sum() * 0.0
    n_min = max(1, int(n_valid * min_kept_fraction))
    loss = loss[valid]
    hard = loss[loss > -math.log(thresh)]
    if hard.numel() < n_min:
        hard = loss.topk(n_min).values
    return hard.mean()


class OhemCrossEntropy(nn.Module):
    """OHEM cross-entropy summed over the outputs of :class:`BiSeNet` (main and auxiliary)."""

    def __init__(self, thresh: float = 0.7, min_kept_fraction: float = 1.0 / 16, ignore_index: int = 255,
                 aux_weight: float = 1.0) -> None:
        super().__init__()
        if not 0.0 < thresh < 1.0:
            raise ValueError(f"OHEM thresh is a probability in (0, 1), got {thresh}")
        self.thresh, self.min_kept_fraction = float(thresh), float(min_kept_fraction)
        self.ignore_index, self.aux_weight = int(ignore_index), float(aux_weight)

    def forward(self, outputs: Union[torch.Tensor, Sequence[torch.Tensor]], target: torch.Tensor) -> torch.Tensor:
        outs = [outputs] if isinstance(outputs, torch.Tensor) else list(outputs)
        losses = [ohem_cross_entropy(o, target, self.thresh, self.min_kept_fraction, self.ignore_index) for o in outs]
        return losses[0] + self.aux_weight * sum(losses[1:], torch.zeros((), device=target.device))
