"""PASCAL VOC detection average precision (the VOC2007 devkit rules).

Per class, detections of all images are sorted by decreasing score; each is matched to the
ground-truth box of its image with the largest IoU; it is a true positive when that IoU exceeds
the threshold (``> 0.5``, strictly, as the devkit) and that box is neither "difficult" nor already
taken, a false positive when the IoU is too small or the box is taken, and ignored (neither) when
the box is "difficult". Difficult boxes do not count in the number of positives. AP is the
VOC2007 11-point interpolation: the mean over recall levels 0, 0.1, ..., 1 of the highest
precision at a recall at least that level (0 where that recall is never reached); with
``use_07_metric=False`` the area under the monotone precision envelope (VOC2010+).

Boxes are ``(x1, y1, x2, y2)`` in continuous pixel coordinates and areas have no "+1": the data
loader (:mod:`relnas.transfer.data.voc`) maps the devkit's 1-based inclusive pixel indices to
``(xmin - 1, ymin - 1, xmax, ymax)``, which gives exactly the devkit's "+1" widths and IoUs.
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence

import torch
from torchmetrics import Metric


def voc07_ap(recall: torch.Tensor, precision: torch.Tensor) -> float:
    """11-point interpolated AP of a precision/recall curve (detections in decreasing score)."""
    ap = 0.0
    for t in torch.linspace(0, 1, 11, dtype=torch.float64):
        mask = recall >= t - 1e-12
        ap += float(precision[mask].max()) if bool(mask.any()) else 0.0
    return ap / 11.0


def voc_area_ap(recall: torch.Tensor, precision: torch.Tensor) -> float:
    """Area under the monotone precision envelope (VOC2010+ "all points" AP)."""
    mrec = torch.cat([torch.zeros(1, dtype=torch.float64), recall.double(), torch.ones(1, dtype=torch.float64)])
    mpre = torch.cat([torch.zeros(1, dtype=torch.float64), precision.double(), torch.zeros(1, dtype=torch.float64)])
    for i in range(mpre.numel() - 2, -1, -1):
        mpre[i] = torch.maximum(mpre[i], mpre[i + 1])
    idx = torch.nonzero(mrec[1:] != mrec[:-1]).flatten()
    return float(((mrec[idx + 1] - mrec[idx]) * mpre[idx + 1]).sum())


def _iou(box: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    ix1 = torch.maximum(boxes[:, 0], box[0])
    iy1 = torch.maximum(boxes[:, 1], box[1])
    ix2 = torch.minimum(boxes[:, 2], box[2])
    iy2 = torch.minimum(boxes[:, 3], box[3])
    inter = (ix2 - ix1).clamp(min=0) * (iy2 - iy1).clamp(min=0)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / (area + areas - inter)


def class_ap(det_image: torch.Tensor, det_scores: torch.Tensor, det_boxes: torch.Tensor, gt_image: torch.Tensor,
             gt_boxes: torch.Tensor, gt_difficult: torch.Tensor, iou_threshold: float = 0.5,
             use_07_metric: bool = True) -> Optional[float]:
    """AP of one class from flat detections (image id, score, box) and ground truth (image id, box,
    difficult). ``None`` when the class has no non-difficult ground truth."""
    npos = int((~gt_difficult).sum())
    if npos == 0:
        return None
    if det_scores.numel() == 0:
        return 0.0
    order = torch.argsort(det_scores.double(), descending=True, stable=True)
    det_image, det_boxes = det_image[order], det_boxes[order].double()
    gt_boxes = gt_boxes.double()
    per_image: Dict[int, torch.Tensor] = {}
    for img in torch.unique(gt_image).tolist():
        per_image[img] = torch.nonzero(gt_image == img).flatten()
    taken = torch.zeros(gt_image.numel(), dtype=torch.bool)
    tp = torch.zeros(det_scores.numel(), dtype=torch.float64)
    fp = torch.zeros(det_scores.numel(), dtype=torch.float64)
    for d in range(det_scores.numel()):
        idx = per_image.get(int(det_image[d]))
        if idx is None or idx.numel() == 0:
            fp[d] = 1
            continue
        ious = _iou(det_boxes[d], gt_boxes[idx])
        best = int(torch.argmax(ious))
        if float(ious[best]) > iou_threshold:
            g = int(idx[best])
            if bool(gt_difficult[g]):
                continue
            if not bool(taken[g]):
                tp[d] = 1
                taken[g] = True
            else:
                fp[d] = 1
        else:
            fp[d] = 1
    tp, fp = torch.cumsum(tp, 0), torch.cumsum(fp, 0)
    recall = tp / npos
    precision = tp / torch.clamp(tp + fp, min=torch.finfo(torch.float64).eps)
    return voc07_ap(recall, precision) if use_07_metric else voc_area_ap(recall, precision)


def voc_detection_ap(preds: Sequence[Mapping[str, torch.Tensor]], targets: Sequence[Mapping[str, torch.Tensor]],
                     num_classes: int, iou_threshold: float = 0.5, use_07_metric: bool = True,
                     background: Optional[int] = 0) -> Dict[str, Any]:
    """VOC AP over images: ``preds[i]`` has ``boxes, scores, labels``; ``targets[i]`` has ``boxes,
    labels`` and optionally ``difficult`` (bool). Returns ``{"map": mean over classes with ground
    truth, "ap": [AP or None per class id]}`` (``background`` class id skipped)."""
    s = _flatten(preds, targets)
    return _compute(s, num_classes, iou_threshold, use_07_metric, background)


def _flatten(preds, targets) -> Dict[str, torch.Tensor]:
    if len(preds) != len(targets):
        raise ValueError(f"got {len(preds)} predictions for {len(targets)} targets")
    out: Dict[str, List[torch.Tensor]] = {k: [] for k in
                                          ("det_image", "det_boxes", "det_scores", "det_labels", "gt_image",
                                           "gt_boxes", "gt_labels", "gt_difficult")}
    for i, (p, t) in enumerate(zip(preds, targets)):
        img = int(t["image_id"]) if "image_id" in t else i
        n, m = p["boxes"].shape[0], t["boxes"].shape[0]
        out["det_image"].append(torch.full((n,), img, dtype=torch.long))
        out["det_boxes"].append(p["boxes"].detach().reshape(-1, 4).double().cpu())
        out["det_scores"].append(p["scores"].detach().double().cpu())
        out["det_labels"].append(p["labels"].detach().long().cpu())
        out["gt_image"].append(torch.full((m,), img, dtype=torch.long))
        out["gt_boxes"].append(t["boxes"].detach().reshape(-1, 4).double().cpu())
        out["gt_labels"].append(t["labels"].detach().long().cpu())
        diff = t.get("difficult")
        out["gt_difficult"].append(torch.zeros(m, dtype=torch.bool) if diff is None else diff.detach().bool().cpu())
    return {k: torch.cat(v) if v else torch.zeros(0) for k, v in out.items()}


def _compute(s: Mapping[str, torch.Tensor], num_classes: int, iou_threshold: float, use_07_metric: bool,
             background: Optional[int]) -> Dict[str, Any]:
    aps: List[Optional[float]] = []
    for c in range(num_classes):
        if background is not None and c == background:
            aps.append(None)
            continue
        dm, gm = s["det_labels"] == c, s["gt_labels"] == c
        aps.append(class_ap(s["det_image"][dm], s["det_scores"][dm], s["det_boxes"][dm], s["gt_image"][gm],
                            s["gt_boxes"][gm], s["gt_difficult"][gm], iou_threshold, use_07_metric))
    valid = [a for a in aps if a is not None]
    return {"map": sum(valid) / len(valid) if valid else 0.0, "ap": aps}


class VOCMeanAP(Metric):
    """torchmetrics wrapper of :func:`voc_detection_ap` (synchronised across processes).

    ``update(preds, targets)`` with torchvision detection outputs and VOC targets (``boxes``,
    ``labels``, ``difficult``, ``image_id``: a unique image index, so that images duplicated by a
    distributed sampler's padding are counted once). ``compute()`` returns ``{"map": tensor,
    "ap_per_class": tensor (nan for classes without ground truth and the background)}``.
    """

    full_state_update = False

    def __init__(self, num_classes: int, iou_threshold: float = 0.5, use_07_metric: bool = True,
                 background: Optional[int] = 0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.num_classes = int(num_classes)
        self.iou_threshold = float(iou_threshold)
        self.use_07_metric = bool(use_07_metric)
        self.background = background
        for name in ("det_image", "det_boxes", "det_scores", "det_labels", "gt_image", "gt_boxes", "gt_labels",
                     "gt_difficult", "seen"):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(self, preds: Sequence[Mapping[str, torch.Tensor]], targets: Sequence[Mapping[str, torch.Tensor]]) -> None:
        s = _flatten(preds, targets)
        dev = self.device
        self.det_image.append(s["det_image"].to(dev))
        self.det_boxes.append(s["det_boxes"].float().to(dev))
        self.det_scores.append(s["det_scores"].float().to(dev))
        self.det_labels.append(s["det_labels"].to(dev))
        self.gt_image.append(s["gt_image"].to(dev))
        self.gt_boxes.append(s["gt_boxes"].float().to(dev))
        self.gt_labels.append(s["gt_labels"].to(dev))
        self.gt_difficult.append(s["gt_difficult"].to(dev))
        ids = [int(t["image_id"]) if "image_id" in t else -1 for t in targets]
        self.seen.append(torch.tensor(ids, dtype=torch.long, device=dev))

    def _cat(self, name: str, dtype: torch.dtype, width: int = 0) -> torch.Tensor:
        v = getattr(self, name)
        if isinstance(v, torch.Tensor):
            return v.cpu()
        if not v:
            return torch.zeros((0, width) if width else (0,), dtype=dtype)
        return torch.cat([x.reshape(-1, width) if width else x.reshape(-1) for x in v]).cpu()

    def compute(self) -> Dict[str, torch.Tensor]:
        s = {"det_image": self._cat("det_image", torch.long), "det_boxes": self._cat("det_boxes", torch.float, 4),
             "det_scores": self._cat("det_scores", torch.float), "det_labels": self._cat("det_labels", torch.long),
             "gt_image": self._cat("gt_image", torch.long), "gt_boxes": self._cat("gt_boxes", torch.float, 4),
             "gt_labels": self._cat("gt_labels", torch.long), "gt_difficult": self._cat("gt_difficult", torch.bool)}
        seen = self._cat("seen", torch.long)
        if seen.numel() and bool((seen >= 0).all()) and torch.unique(seen).numel() < seen.numel():
            s = _dedupe(s)  # a distributed sampler padded the split with repeated images
        r = _compute(s, self.num_classes, self.iou_threshold, self.use_07_metric, self.background)
        ap = torch.tensor([float("nan") if a is None else a for a in r["ap"]], dtype=torch.float64)
        return {"map": torch.tensor(r["map"], dtype=torch.float64), "ap_per_class": ap}


def _dedupe(s: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    det = torch.cat([s["det_image"][:, None].double(), s["det_boxes"].double(), s["det_scores"][:, None].double(),
                     s["det_labels"][:, None].double()], 1)
    gt = torch.cat([s["gt_image"][:, None].double(), s["gt_boxes"].double(), s["gt_labels"][:, None].double(),
                    s["gt_difficult"][:, None].double()], 1)
    det = torch.unique(det, dim=0) if det.numel() else det.reshape(0, 7)
    gt = torch.unique(gt, dim=0) if gt.numel() else gt.reshape(0, 7)
    return {"det_image": det[:, 0].long(), "det_boxes": det[:, 1:5].float(), "det_scores": det[:, 5].float(),
            "det_labels": det[:, 6].long(), "gt_image": gt[:, 0].long(), "gt_boxes": gt[:, 1:5].float(),
            "gt_labels": gt[:, 5].long(), "gt_difficult": gt[:, 6].bool()}


__all__ = ["voc07_ap", "voc_area_ap", "class_ap", "voc_detection_ap", "VOCMeanAP"]
