"""Object detection with SSDLite (torchvision's ``SSD``, SSDLite head, ``DefaultBoxGenerator``).

The network, as the authors built it (their SSDLite code, EMI-Group/TransferLearning-Tasks,
``SSDLite/vision/ssd/ssd_mobile.py`` and ``config/ssdlite_config.py``): the backbone's stride-16
and stride-32 maps, then four stride-2 inverted-residual blocks (MobileNetV2 blocks: 1x1
expansion, 3x3 depthwise, 1x1 projection; 512, 256, 256 and 64 channels with expansion ratios
0.2, 0.25, 0.5, 0.25 of their input), 6 maps in all (20, 10, 5, 3, 2, 1 cells at 320x320), an
SSDLite head and 6 default boxes per location: scales ``s_k`` (60/320 .. 285/320 on the six maps,
330/320 closing the list), a square of side ``s_k``, one of ``sqrt(s_k s_{k+1})`` and rectangles
of aspect ratio 2, 1/2, 3, 1/3 of area ``s_k^2``, centred every 16, 32, 64, 100, 150 and 300 pixels
on a 320x320 input (the authors' steps; other input sizes space the centres evenly).

The head (``head="authors"``, :class:`SeparableSSDLiteHead`) is the authors': on each map but the
last, a 3x3 depthwise conv with bias + BatchNorm + ReLU6 + a 1x1 conv, on the last (1x1, 64
channels) a plain 1x1 conv, once for the class scores and once for the box offsets; with these,
the whole model has the authors' parameter count exactly. ``head="torchvision"`` takes
torchvision's ``SSDLiteHead`` instead (no depthwise bias; a separable block on the last map too).
Training loss, box coding (weights 10, 10, 5, 5), hard-negative mining (3:1) and NMS are
torchvision's SSD. Metric: VOC07 11-point mAP (:mod:`relnas.transfer.metrics.voc_ap`).
"""
from __future__ import annotations

from collections import OrderedDict
from functools import partial
from typing import Any, ClassVar, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from relnas.transfer.backbones import feature_key
from relnas.transfer.metrics.voc_ap import VOCMeanAP
from relnas.transfer.tasks.base import TASKS, TransferModule, prediction_grid, upscale_for_display

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)



def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"

class SSDLiteFeatures(nn.Module):
    """Backbone maps of stride 16 and 32 plus the extra inverted-residual blocks, as the ordered
    dict of maps SSD consumes (``"0"`` .. ``"5"``)."""

    def __init__(self, backbone: nn.Module, extra_channels: Sequence[int] = (512, 256, 256, 64),
                 extra_expand_ratios: Sequence[float] = (0.2, 0.25, 0.5, 0.25)):
        super().__init__()
        from torchvision.models.mobilenetv2 import InvertedResidual

        info = getattr(backbone, "feature_info", None)
        if info is None:
            raise ValueError("the SSDLite backbone needs a feature_info (build it with relnas.build_backbone)")
        try:
            c16, c32 = info.at_stride(16)["num_chs"], info.at_stride(32)["num_chs"]
        except KeyError:
            raise ValueError(f"SSDLite needs the backbone's stride-16 and stride-32 maps; backbone "
                             f"{getattr(backbone, 'name', '?')} returns strides {info.reduction()} (check backbone.out_indices)") from None
        if len(extra_channels) != len(extra_expand_ratios):
            raise ValueError(f"extra_channels {list(extra_channels)} and extra_expand_ratios "
                             f"{list(extra_expand_ratios)} must have the same length")
        self.backbone = backbone
        blocks, c_in = [], c32
        for c, r in zip(extra_channels, extra_expand_ratios):
            blocks.append(InvertedResidual(int(c_in), int(c), stride=2, expand_ratio=float(r)))
            c_in = int(c)
        self.extra = nn.ModuleList(blocks)
        xavier_init(self.extra)
        self.out_channels = [int(c16), int(c32), *[int(c) for c in extra_channels]]

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        feats = self.backbone(x)
        maps = [feats[feature_key(16)], feats[feature_key(32)]]
        y = maps[-1]
        for block in self.extra:
            y = block(y)
            maps.append(y)
        return OrderedDict((str(i), m) for i, m in enumerate(maps))


def xavier_init(module: nn.Module) -> None:
    """Xavier-uniform weights for every convolution in ``module`` (biases keep PyTorch's default),
    as the authors initialise their SSDLite extras and heads."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.xavier_uniform_(m.weight)


def _separable_predictor(c_in: int, c_out: int, last: bool) -> nn.Module:
    if last:  # the 1x1 map: a plain 1x1 conv
        return nn.Conv2d(c_in, c_out, 1)
    return nn.Sequential(nn.Conv2d(c_in, c_in, 3, padding=1, groups=c_in), nn.BatchNorm2d(c_in),
                         nn.ReLU6(inplace=True), nn.Conv2d(c_in, c_out, 1))


class SeparableSSDLiteHead(nn.Module):
    """The authors' SSDLite head with torchvision's interface (``classification_head`` and
    ``regression_head``, each an ``SSDScoringHead``; ``forward`` returns ``bbox_regression`` and
    ``cls_logits``), so torchvision's ``SSD`` trains and decodes it: per map but the last, 3x3
    depthwise conv (with bias) + BatchNorm + ReLU6 + 1x1 conv; on the last map a 1x1 conv."""

    def __init__(self, in_channels: Sequence[int], num_anchors: Sequence[int], num_classes: int) -> None:
        super().__init__()
        from torchvision.models.detection.ssd import SSDScoringHead

        def column(per_anchor: int) -> nn.ModuleList:
            n = len(in_channels)
            return nn.ModuleList(_separable_predictor(int(c), int(a) * per_anchor, k == n - 1)
                                 for k, (c, a) in enumerate(zip(in_channels, num_anchors)))

        self.classification_head = SSDScoringHead(column(int(num_classes)), int(num_classes))
        self.regression_head = SSDScoringHead(column(4), 4)
        xavier_init(self)

    def forward(self, x: List[torch.Tensor]) -> Dict[str, torch.Tensor]:
        return {"bbox_regression": self.regression_head(x), "cls_logits": self.classification_head(x)}


# the authors' centre spacing (pixels) of the default boxes on the six maps of a 320x320 input
AUTHORS_STEPS_320 = (16, 32, 64, 100, 150, 300)
HEADS = ("authors", "torchvision")


def build_ssdlite(backbone: nn.Module, num_classes: int, input_size: int | Sequence[int] = 320,
                  extra_channels: Sequence[int] = (512, 256, 256, 64),
                  extra_expand_ratios: Sequence[float] = (0.2, 0.25, 0.5, 0.25),
                  aspect_ratios: Sequence[float] = (2, 3),
                  scales: Sequence[float] = (0.1875, 0.328125, 0.46875, 0.609375, 0.75, 0.890625, 1.03125),
                  steps_320: Optional[Sequence[float]] = AUTHORS_STEPS_320, head: str = "authors",
                  score_thresh: float = 0.01, nms_thresh: float = 0.45, detections_per_img: int = 200,
                  topk_candidates: int = 400, image_mean: Sequence[float] = IMAGENET_MEAN,
                  image_std: Sequence[float] = IMAGENET_STD):
    """torchvision ``SSD`` with an SSDLite head on ``backbone`` (see the module docstring).

    ``steps_320``: the default-box centre spacing in pixels per map, applied when the input is
    320x320 (the maps are then 20, 10, 5, 3, 2, 1 cells; the authors' 100/150/300 on the last three
    are not 320 / cells); ``None``, or any other input size: centres spread evenly over the image.
    ``head``: ``"authors"`` (:class:`SeparableSSDLiteHead`) or ``"torchvision"`` (``SSDLiteHead``)."""
    from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
    from torchvision.models.detection.ssd import SSD
    from torchvision.models.detection.ssdlite import SSDLiteHead

    if head not in HEADS:
        raise ValueError(f"unknown SSDLite head {head!r}; known: {', '.join(HEADS)}")
    features = SSDLiteFeatures(backbone, extra_channels, extra_expand_ratios)
    n_maps = len(features.out_channels)
    if len(scales) != n_maps + 1:
        raise ValueError(f"scales needs {n_maps + 1} values for {n_maps} feature maps (the last closes the list), "
                         f"got {len(scales)}")
    size = _pair(input_size)
    steps = None
    if steps_320 is not None and size == (320, 320):
        if len(steps_320) != n_maps:
            raise ValueError(f"steps_320 needs one value per feature map ({n_maps}), got {list(steps_320)}")
        steps = [float(s) for s in steps_320]
    anchors = DefaultBoxGenerator([list(aspect_ratios) for _ in range(n_maps)], scales=[float(s) for s in scales],
                                  steps=steps)
    if head == "authors":
        predictor = SeparableSSDLiteHead(features.out_channels, anchors.num_anchors_per_location(), int(num_classes))
    else:
        predictor = SSDLiteHead(features.out_channels, anchors.num_anchors_per_location(), int(num_classes),
                                partial(nn.BatchNorm2d, eps=0.001, momentum=0.03))
    return SSD(features, anchors, size, int(num_classes), image_mean=list(image_mean), image_std=list(image_std),
               head=predictor, score_thresh=score_thresh, nms_thresh=nms_thresh,
               detections_per_img=detections_per_img, topk_candidates=topk_candidates)


def _pair(s: Any) -> Tuple[int, int]:
    if isinstance(s, (int, float)):
        return int(s), int(s)
    s = list(s)
    return (int(s[0]), int(s[0])) if len(s) == 1 else (int(s[0]), int(s[1]))


def _palette(n: int) -> List[Tuple[int, int, int]]:
    import colorsys

    return [tuple(int(255 * c) for c in colorsys.hsv_to_rgb((i * 0.61803) % 1.0, 0.85, 1.0)) for i in range(n)]


def _draw(draw_bounding_boxes, image: torch.Tensor, boxes: torch.Tensor, labels: List[str], colors) -> torch.Tensor:
    if len(boxes) == 0:
        return image
    return draw_bounding_boxes(image, boxes, labels=labels, colors=colors, width=2, label_colors="white",
                               label_background_colors=colors, fill_labels=True)


@TASKS.register("detection")
class DetectionModule(TransferModule):
    """SSDLite on PASCAL VOC. Logs ``train/loss`` (and its two parts), ``val/map``; the test run
    keeps ``map`` and the per-class AP for ``result.json``."""

    task_name: ClassVar[str] = "detection"
    paper_input_size: ClassVar[Tuple[int, int]] = (320, 320)
    paper_num_classes: ClassVar[int] = 21
    paper_note: ClassVar[str] = "PASCAL VOC: 20 classes + background, 320x320 input"
    monitor: ClassVar[str] = "val/map"
    monitor_mode: ClassVar[str] = "max"

    def __init__(self, model: nn.Module, num_classes: int, class_names: Optional[Sequence[str]] = None,
                 draw_score_thresh: float = 0.3, draw_max_boxes: int = 10, **kwargs: Any) -> None:
        super().__init__(model, num_classes, class_names, draw_score_thresh=float(draw_score_thresh),
                         draw_max_boxes=int(draw_max_boxes), **kwargs)
        self.val_map = VOCMeanAP(num_classes)
        self.test_map = VOCMeanAP(num_classes)

    @classmethod
    def build_model(cls, backbone: nn.Module, num_classes: int, **model_cfg: Any) -> nn.Module:
        return build_ssdlite(backbone, num_classes, **model_cfg)

    def profile_forward(self, x: torch.Tensor) -> Any:
        """Backbone, extra blocks and head on a normalised, resized batch (no resizing, anchors, NMS)."""
        return self.model.head(list(self.model.backbone(x).values()))

    # ------------------------------------------------------------------ steps
    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        images, targets = batch
        losses = self.model(images, [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets])
        loss = sum(losses.values())
        bs = len(images)
        self.log("train/loss", loss.detach(), on_step=True, on_epoch=True, prog_bar=True, batch_size=bs)
        self.log("train/loss_box", losses["bbox_regression"].detach(), on_step=False, on_epoch=True, batch_size=bs)
        self.log("train/loss_cls", losses["classification"].detach(), on_step=False, on_epoch=True, batch_size=bs)
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        images, targets = batch
        self.val_map.update(self.model(images), targets)

    def test_step(self, batch, batch_idx: int) -> None:
        images, targets = batch
        self.test_map.update(self.model(images), targets)

    def _per_class(self, ap: torch.Tensor) -> Dict[str, Optional[float]]:
        return {name: (None if torch.isnan(ap[c]) else round(float(ap[c]), 6))
                for c, name in enumerate(self.class_names) if c != 0}

    def on_validation_epoch_end(self) -> None:
        r = self.val_map.compute()
        self.val_map.reset()
        self.log("val/map", float(r["map"]), prog_bar=True, sync_dist=False)

    def on_test_epoch_end(self) -> None:
        r = self.test_map.compute()
        self.test_map.reset()
        self.log("test/map", float(r["map"]))
        self.remember_metrics({"map": round(float(r["map"]), 6), "map_definition": "VOC2007 11-point, IoU > 0.5, "
                               "difficult objects excluded"}, self._per_class(r["ap_per_class"]))

    # ------------------------------------------------------------------ pictures
    def draw_predictions(self, batch, max_images: int = 4) -> torch.Tensor:
        from torchvision.utils import draw_bounding_boxes

        images, targets = batch
        images, targets = list(images)[:max_images], list(targets)[:max_images]
        was = self.model.training
        self.model.eval()
        with torch.no_grad():
            preds = self.model([im.to(self.device) for im in images])
        self.model.train(was)
        colors = _palette(self.num_classes)
        thr, top = float(self.hparams.draw_score_thresh), int(self.hparams.draw_max_boxes)
        panels, titles = [], []
        for im, p, t in zip(images, preds, targets):
            base, f = upscale_for_display(im.detach().cpu().mul(255).round().clamp(0, 255).to(torch.uint8))
            keep = (p["scores"] >= thr).nonzero().flatten()[:top].cpu()
            boxes, labels, scores = p["boxes"].cpu()[keep] * f, p["labels"].cpu()[keep], p["scores"].cpu()[keep]
            pred = _draw(draw_bounding_boxes, base, boxes, [f"{self.class_names[int(c)]} {float(s):.2f}"
                                                           for c, s in zip(labels, scores)],
                         [colors[int(c)] for c in labels])
            gl = t["labels"].cpu()
            diff = t.get("difficult", torch.zeros_like(gl, dtype=torch.bool)).cpu()
            gt = _draw(draw_bounding_boxes, base, t["boxes"].cpu() * f,
                       [self.class_names[int(c)] + (" (difficult)" if d else "") for c, d in zip(gl, diff)],
                       [colors[int(c)] for c in gl])
            panels += [pred, gt]
            titles += [f"prediction: {_count(len(keep), 'box', 'boxes')}, score >= {thr:g}",
                       f"ground truth: {_count(len(gl), 'object', 'objects')}"]
        return prediction_grid(panels, ncol=2, titles=titles)


__all__ = ["DetectionModule", "SSDLiteFeatures", "build_ssdlite"]
