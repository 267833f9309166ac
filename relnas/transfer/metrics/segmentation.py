"""Segmentation metrics and inference: dataset-level mIoU (torchmetrics) and multi-scale + flip
prediction, the two numbers of the Cityscapes protocol."""
from __future__ import annotations

from typing import Callable, Dict, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassJaccardIndex

__all__ = ["MeanIoU", "predict_probabilities", "MULTI_SCALES"]

#: The multi-scale evaluation of the published BiSeNet protocol (with horizontal flip).
MULTI_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)


class MeanIoU(nn.Module):
    """Dataset-level IoU: one confusion matrix accumulated over every pixel of every image
    (``ignore_index`` pixels skipped), then per-class IoU = TP / (TP + FP + FN) and the mean over
    the classes that occur in the predictions or the labels (torchmetrics' macro average).

    ``update(preds, target)`` takes class indices (N, H, W) or logits (N, C, H, W)."""

    def __init__(self, num_classes: int, ignore_index: int = 255,
                 class_names: Optional[Sequence[str]] = None) -> None:
        super().__init__()
        self.num_classes = int(num_classes)
        self.class_names = tuple(class_names) if class_names is not None else tuple(
            str(i) for i in range(self.num_classes))
        if len(self.class_names) != self.num_classes:
            raise ValueError(f"{len(self.class_names)} class names for {self.num_classes} classes")
        kw = dict(num_classes=self.num_classes, ignore_index=ignore_index, validate_args=False)
        self.mean = MulticlassJaccardIndex(average="macro", **kw)
        self.per_class = MulticlassJaccardIndex(average="none", **kw)

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        if preds.is_floating_point():
            preds = preds.argmax(1)
        self.mean.update(preds, target)
        self.per_class.update(preds, target)

    def compute(self) -> Dict[str, object]:
        """``{"miou": float, "per_class_iou": {name: float or None}}`` (fractions in [0, 1]; ``None``
        for a class neither labelled nor predicted on a labelled pixel, which the mean leaves out)."""
        per = self.per_class.compute().tolist()
        with self.per_class.sync_context():  # every process's pixels under DDP (a no-op otherwise)
            cm = self.per_class.confmat.clone()
        present = (cm.sum(0) + cm.sum(1)).tolist()  # predicted + labelled pixels of each class
        return {"miou": float(self.mean.compute()),
                "per_class_iou": {n: (float(v) if k > 0 else None) for n, v, k in zip(self.class_names, per, present)}}

    def reset(self) -> None:
        self.mean.reset()
        self.per_class.reset()


@torch.no_grad()
def predict_probabilities(model: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor,
                          out_size: Sequence[int], scales: Sequence[float] = (1.0,),
                          flip: bool = False, size_divisor: int = 32) -> torch.Tensor:
    """Class probabilities (N, C, *out_size): the softmax of ``model`` (logits at its input's
    resolution) on ``images`` resized by each of ``scales`` (and mirrored when ``flip``), each
    resized to ``out_size`` and summed (normalised by the number of passes). Rescaled sides are
    rounded to a multiple of ``size_divisor`` (the backbone's output stride)."""
    h, w = images.shape[-2:]
    total: Optional[torch.Tensor] = None
    passes = 0
    for s in scales:
        d = max(1, int(size_divisor))
        size = (max(d, round(h * s / d) * d), max(d, round(w * s / d) * d))
        x = images if s == 1.0 else F.interpolate(images, size=size, mode="bilinear", align_corners=False)
        for mirrored in ((False, True) if flip else (False,)):
            inp = torch.flip(x, dims=[-1]) if mirrored else x
            logits = model(inp)
            if mirrored:
                logits = torch.flip(logits, dims=[-1])
            logits = F.interpolate(logits.float(), size=tuple(out_size), mode="bilinear", align_corners=False)
            p = logits.softmax(1)
            total = p if total is None else total + p
            passes += 1
    assert total is not None, "scales must not be empty"
    return total / passes
