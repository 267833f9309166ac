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
from typing import Any, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from relnas.transfer.tasks.base import TASKS, TransferModule, denormalize, prediction_grid

__all__ = [
    "ConvBNReLU", "SpatialPath", "AttentionRefinement", "ContextPath", "FeatureFusion",
    "SegmentationHead", "BiSeNet", "ohem_cross_entropy", "OhemCrossEntropy", "SegmentationModule",
]


ACTIVATIONS = ("relu", "leaky_relu")


def _activation(name: str) -> nn.Module:
    if name == "relu":
        return nn.ReLU(inplace=True)
    if name == "leaky_relu":  # the authors' in-place activated BatchNorm's default (slope 0.01)
        return nn.LeakyReLU(0.01, inplace=True)
    raise ValueError(f"unknown activation {name!r}; known: {', '.join(ACTIVATIONS)}")


class ConvBNReLU(nn.Sequential):
    def __init__(self, cin: int, cout: int, k: int = 3, stride: int = 1, act: str = "relu") -> None:
        super().__init__(nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout),
                         _activation(act))


class SpatialPath(nn.Sequential):
    """Three stride-2 convolutions (stride 8 in all) and a 1x1 projection to ``out_channels``."""

    def __init__(self, in_channels: int = 3, out_channels: int = 128, act: str = "relu") -> None:
        super().__init__(ConvBNReLU(in_channels, 64, 7, 2, act), ConvBNReLU(64, 64, 3, 2, act),
                         ConvBNReLU(64, 64, 3, 2, act), ConvBNReLU(64, out_channels, 1, act=act))


class AttentionRefinement(nn.Module):
    def __init__(self, cin: int, cout: int, act: str = "relu") -> None:
        super().__init__()
        self.conv = ConvBNReLU(cin, cout, 3, act=act)
        self.attention = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(cout, cout, 1, bias=False),
                                       nn.BatchNorm2d(cout), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        return x * self.attention(x)


class ContextPath(nn.Module):
    """Refines the backbone's stride-16 and stride-32 maps; returns the context at stride 8 and
    at stride 16 (both ``channels`` wide)."""

    def __init__(self, in16: int, in32: int, channels: int = 128, act: str = "relu") -> None:
        super().__init__()
        self.arm16 = AttentionRefinement(in16, channels, act)
        self.arm32 = AttentionRefinement(in32, channels, act)
        self.global_context = nn.Sequential(nn.AdaptiveAvgPool2d(1), ConvBNReLU(in32, channels, 1, act=act))
        self.head32 = ConvBNReLU(channels, channels, 3, act=act)
        self.head16 = ConvBNReLU(channels, channels, 3, act=act)

    def forward(self, f16: torch.Tensor, f32: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        g = self.global_context(f32)  # (N, C, 1, 1), broadcast over the stride-32 map
        s32 = self.arm32(f32) + g
        up32 = self.head32(F.interpolate(s32, size=f16.shape[-2:], mode="nearest"))
        s16 = self.arm16(f16) + up32
        size8 = (2 * f16.shape[-2], 2 * f16.shape[-1])
        up16 = self.head16(F.interpolate(s16, size=size8, mode="nearest"))
        return up16, up32


class FeatureFusion(nn.Module):
    def __init__(self, cin: int, cout: int, reduction: int = 4, act: str = "relu") -> None:
        super().__init__()
        self.conv = ConvBNReLU(cin, cout, 1, act=act)
        self.attention = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(cout, cout // reduction, 1, bias=False), nn.ReLU(inplace=True),
            nn.Conv2d(cout // reduction, cout, 1, bias=False), nn.Sigmoid())

    def forward(self, spatial: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = self.conv(torch.cat([spatial, context], dim=1))
        return x + x * self.attention(x)


class SegmentationHead(nn.Sequential):
    """3x3 conv-BN-ReLU to ``mid`` channels, then a 1x1 conv to the class scores without a bias, as
    the authors' BiSeNet builds its outputs (so the parameter counts agree with theirs)."""

    def __init__(self, cin: int, mid: int, num_classes: int, act: str = "relu") -> None:
        super().__init__(ConvBNReLU(cin, mid, 3, act=act), nn.Conv2d(mid, num_classes, 1, bias=False))


class BiSeNet(nn.Module):
    """BiSeNet V1 on ``backbone``, a module whose forward returns its feature maps (a mapping or a
    sequence, shallow to deep) of which the last two are at strides 16 and 32 with ``in_channels``
    = (C16, C32) channels.

    ``forward`` returns the main logits (N, num_classes, H, W) in eval mode and
    ``(main, aux16, aux32)`` in training mode, all at the input's resolution.

    ``activation``: of every Conv-BN-activation block, ``"relu"`` (the BiSeNet paper) or
    ``"leaky_relu"`` (slope 0.01, the authors' transfer code); ``align_corners``: of the bilinear
    upsampling of the outputs (the authors': ``True``).
    """

    def __init__(self, backbone: nn.Module, in_channels: Sequence[int], num_classes: int = 19,
                 context_channels: int = 128, fusion_channels: int = 256, aux_channels: int = 64,
                 auxiliary: bool = True, tap_keys: Optional[Sequence[str]] = None, activation: str = "relu",
                 align_corners: bool = False) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown BiSeNet activation {activation!r}; known: {', '.join(ACTIVATIONS)}")
        if len(in_channels) != 2:
            raise ValueError(f"BiSeNet needs the backbone's stride-16 and stride-32 channels, got {list(in_channels)}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.backbone = backbone
        self.tap_keys = tuple(tap_keys) if tap_keys is not None else None
        self.num_classes = int(num_classes)
        self.align_corners = bool(align_corners)
        act = activation
        self.spatial_path = SpatialPath(3, context_channels, act)
        self.context_path = ContextPath(int(in_channels[0]), int(in_channels[1]), context_channels, act)
        self.fusion = FeatureFusion(2 * context_channels, fusion_channels, act=act)
        self.head = SegmentationHead(fusion_channels, fusion_channels, num_classes, act)
        self.aux_heads = nn.ModuleList(
            [SegmentationHead(context_channels, aux_channels, num_classes, act) for _ in range(2)]) if auxiliary else None
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
        if self.tap_keys is not None and isinstance(feats, Mapping):
            return feats[self.tap_keys[0]], feats[self.tap_keys[1]]
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
        ac = self.align_corners
        main = F.interpolate(self.head(self.fusion(sp, c8)), size=size, mode="bilinear", align_corners=ac)
        if not self.training or self.aux_heads is None:
            return main
        aux = [F.interpolate(h(c), size=size, mode="bilinear", align_corners=ac)
               for h, c in zip(self.aux_heads, (c8, c16))]
        return (main, *aux)


OHEM_MIN_KEPT_OF = ("valid", "all")


def ohem_cross_entropy(logits: torch.Tensor, target: torch.Tensor, thresh: float = 0.7,
                       min_kept_fraction: float = 1.0 / 16, ignore_index: int = 255,
                       min_kept_of: str = "valid") -> torch.Tensor:
    """Online hard-example mining cross-entropy.

    Per-pixel cross-entropy (``ignore_index`` pixels excluded); the mean over the pixels whose
    loss exceeds ``-log(thresh)`` (predicted probability of the true class below ``thresh``), or,
    when fewer than ``n_min`` pixels are that hard, over the ``n_min`` largest losses.
    ``min_kept_of="valid"``: ``n_min = floor(min_kept_fraction * labelled pixels)``;
    ``"all"`` (the authors' code): ``floor(min_kept_fraction * all pixels of the batch)``, the
    ignored pixels taking part in the ranking with loss 0."""
    if min_kept_of not in OHEM_MIN_KEPT_OF:
        raise ValueError(f"unknown OHEM min_kept_of {min_kept_of!r}; known: {', '.join(OHEM_MIN_KEPT_OF)}")
    loss = F.cross_entropy(logits, target, ignore_index=ignore_index, reduction="none").flatten()
    valid = (target != ignore_index).flatten()
    n_valid = int(valid.sum())
    if n_valid == 0:
        return logits.sum() * 0.0
    if min_kept_of == "all":
        n_min = max(1, int(loss.numel() * min_kept_fraction))  # ignored pixels: loss 0
    else:
        n_min = max(1, int(n_valid * min_kept_fraction))
        loss = loss[valid]
    hard = loss[loss > -math.log(thresh)]
    if hard.numel() < n_min:
        hard = loss.topk(min(n_min, loss.numel())).values
    return hard.mean()


class OhemCrossEntropy(nn.Module):
    """OHEM cross-entropy summed over the outputs of :class:`BiSeNet` (main and auxiliary)."""

    def __init__(self, thresh: float = 0.7, min_kept_fraction: float = 1.0 / 16, ignore_index: int = 255,
                 aux_weight: float = 1.0, min_kept_of: str = "valid") -> None:
        super().__init__()
        if not 0.0 < thresh < 1.0:
            raise ValueError(f"OHEM thresh is a probability in (0, 1), got {thresh}")
        if min_kept_of not in OHEM_MIN_KEPT_OF:
            raise ValueError(f"unknown OHEM min_kept_of {min_kept_of!r}; known: {', '.join(OHEM_MIN_KEPT_OF)}")
        self.thresh, self.min_kept_fraction = float(thresh), float(min_kept_fraction)
        self.ignore_index, self.aux_weight, self.min_kept_of = int(ignore_index), float(aux_weight), min_kept_of

    def forward(self, outputs: Union[torch.Tensor, Sequence[torch.Tensor]], target: torch.Tensor) -> torch.Tensor:
        outs = [outputs] if isinstance(outputs, torch.Tensor) else list(outputs)
        losses = [ohem_cross_entropy(o, target, self.thresh, self.min_kept_fraction, self.ignore_index,
                                     self.min_kept_of) for o in outs]
        return losses[0] + self.aux_weight * sum(losses[1:], torch.zeros((), device=target.device))


# ---------------------------------------------------------------------- the Lightning task

def _backbone_taps(backbone: nn.Module, strides: Sequence[int], head: str) -> Tuple[List[int], List[str]]:
    """Channels and output keys of the backbone maps at ``strides`` (one-line error when missing)."""
    from relnas.transfer.backbones import feature_key

    info = getattr(backbone, "feature_info", None)
    if info is None:
        raise ValueError(f"{head} needs a relnas.transfer backbone with feature_info (build_backbone(...))")
    channels, keys = [], []
    for r in strides:
        try:
            f = info.at_stride(r)
        except KeyError as e:
            raise ValueError(f"{head} needs the backbone's stride-{r} map: {e.args[0]}; "
                             f"drop backbone.out_indices or include that tap") from None
        channels.append(int(f["num_chs"]))
        keys.append(feature_key(r))
    return channels, keys


@TASKS.register("segmentation")
class SegmentationModule(TransferModule):
    """BiSeNet on Cityscapes: OHEM cross-entropy on the main and both auxiliary outputs; the
    validation metric is single-scale mIoU (``val/miou``); the test adds the multi-scale
    (``ms_scales``) + flip mIoU (``test/miou_ms_flip``). Extra arguments: ``ohem_thresh``,
    ``ohem_min_kept`` (a fraction of the pixels), ``ohem_min_kept_of`` (``valid``: of the labelled
    pixels; ``all``: of all pixels, the authors'), ``aux_weight``, ``ms_scales``, ``ms_flip``,
    ``ignore_index``."""

    task_name = "segmentation"
    paper_input_size = (1024, 1024)
    paper_num_classes = 19
    extra_input_sizes = ((1024, 2048),)  # the full Cityscapes frame (evaluation)
    paper_note = ("Cityscapes: FLOPs at a 1024x1024 crop (the training crop); full frames are 1024x2048 "
                  "(about twice the FLOPs); params exclude the two training-only auxiliary heads")
    monitor = "val/miou"
    monitor_mode = "max"
    head_modules = ("model.fusion", "model.head", "model.aux_heads")  # the authors' 10x-lr modules

    def __init__(self, model: nn.Module, num_classes: int, class_names: Optional[Sequence[str]] = None,
                 ohem_thresh: float = 0.7, ohem_min_kept: float = 1.0 / 16, aux_weight: float = 1.0,
                 ms_scales: Sequence[float] = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75), ms_flip: bool = True,
                 ignore_index: int = 255, ohem_min_kept_of: str = "valid", **kwargs: Any) -> None:
        super().__init__(model, num_classes, class_names, ohem_thresh=float(ohem_thresh),
                         ohem_min_kept=float(ohem_min_kept), ohem_min_kept_of=str(ohem_min_kept_of),
                         aux_weight=float(aux_weight),
                         ms_scales=[float(s) for s in ms_scales], ms_flip=bool(ms_flip),
                         ignore_index=int(ignore_index), **kwargs)
        from relnas.transfer.metrics.segmentation import MeanIoU

        self.criterion = OhemCrossEntropy(ohem_thresh, ohem_min_kept, ignore_index, aux_weight, str(ohem_min_kept_of))
        self.ms_scales, self.ms_flip, self.ignore_index = tuple(float(s) for s in ms_scales), bool(ms_flip), int(ignore_index)
        self.val_iou = MeanIoU(num_classes, ignore_index, self.class_names)
        self.test_iou = MeanIoU(num_classes, ignore_index, self.class_names)
        self.test_iou_ms = MeanIoU(num_classes, ignore_index, self.class_names)

    @classmethod
    def build_model(cls, backbone: nn.Module, num_classes: int, **model_cfg: Any) -> nn.Module:
        model_cfg.pop("input_size", None)  # the entry point's FLOP-count size, not a head setting
        channels, keys = _backbone_taps(backbone, (16, 32), "BiSeNet")
        return BiSeNet(backbone, channels, num_classes, tap_keys=keys, **model_cfg)

    def inference_parameters(self) -> int:
        """Parameters of the deployed network (the auxiliary heads are used in training only)."""
        aux = getattr(self.model, "aux_heads", None)
        n_aux = sum(p.numel() for p in aux.parameters()) if aux is not None else 0
        return sum(p.numel() for p in self.model.parameters()) - n_aux

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        images, masks = batch
        loss = self.criterion(self.model(images), masks)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=False, batch_size=images.shape[0])
        return loss

    def _logits(self, images: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        out = self.model(images)
        out = out[0] if isinstance(out, (tuple, list)) else out
        return F.interpolate(out, size=tuple(size), mode="bilinear", align_corners=False)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        images, masks = batch
        logits = self._logits(images, masks.shape[-2:])
        self.log("val/loss", F.cross_entropy(logits, masks, ignore_index=self.ignore_index),
                 on_epoch=True, sync_dist=True, batch_size=images.shape[0])
        self.val_iou.update(logits.argmax(1), masks)

    def on_validation_epoch_end(self) -> None:
        r = self.val_iou.compute()
        self.log("val/miou", r["miou"], prog_bar=True, sync_dist=False)
        self.val_iou.reset()

    def test_step(self, batch: Any, batch_idx: int) -> None:
        from relnas.transfer.metrics.segmentation import predict_probabilities

        images, masks = batch
        size = masks.shape[-2:]
        self.test_iou.update(self._logits(images, size).argmax(1), masks)
        probs = predict_probabilities(self._plain_forward, images, size, self.ms_scales, self.ms_flip)
        self.test_iou_ms.update(probs.argmax(1), masks)

    def _plain_forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        return out[0] if isinstance(out, (tuple, list)) else out

    def on_test_epoch_end(self) -> None:
        single, multi = self.test_iou.compute(), self.test_iou_ms.compute()
        self.log("test/miou", single["miou"])
        self.log("test/miou_ms_flip", multi["miou"])
        per_class = {n: {"iou": single["per_class_iou"][n], "iou_ms_flip": multi["per_class_iou"][n]}
                     for n in self.class_names}
        self.remember_metrics({"miou": single["miou"], "miou_ms_flip": multi["miou"],
                               "ms_scales": list(self.ms_scales), "ms_flip": self.ms_flip}, per_class)
        self.test_iou.reset()
        self.test_iou_ms.reset()

    @torch.no_grad()
    def draw_predictions(self, batch: Any, max_images: int = 4) -> torch.Tensor:
        """Per image: the prediction and the ground truth overlaid on the image in the Cityscapes
        colours (ignored pixels left uncoloured)."""
        from torchvision.utils import draw_segmentation_masks

        from relnas.transfer.data.cityscapes import CITYSCAPES_PALETTE, IMAGENET_MEAN, IMAGENET_STD

        images, masks = batch  # stacked tensors, or lists of samples of different sizes
        images, masks = list(images[:max_images]), list(masks[:max_images])
        palette = list(CITYSCAPES_PALETTE) if self.num_classes == len(CITYSCAPES_PALETTE) else None
        classes = torch.arange(self.num_classes).view(-1, 1, 1)
        was = self.model.training
        self.model.eval()
        panels, titles = [], []
        try:
            for image, mask in zip(images, masks):
                mask = mask.cpu()
                pred = self._logits(image[None].to(self.device), mask.shape[-2:]).argmax(1)[0].cpu()
                img = denormalize(image[None].cpu(), IMAGENET_MEAN, IMAGENET_STD)[0]
                if img.shape[-2:] != mask.shape[-2:]:
                    img = F.interpolate(img[None].float(), size=mask.shape[-2:], mode="bilinear",
                                        align_corners=False)[0].round().clamp(0, 255).to(torch.uint8)
                for name, lab in (("prediction", pred), ("ground truth", mask)):
                    panels.append(draw_segmentation_masks(img, lab[None] == classes, alpha=0.6, colors=palette))
                    titles.append(name)
        finally:
            self.model.train(was)
        return prediction_grid(panels, ncol=2, titles=titles)
