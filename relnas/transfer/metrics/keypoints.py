"""Keypoint decoding and the COCO keypoint metric (OKS AP through pycocotools)."""
from __future__ import annotations

import contextlib
import io
import json
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from relnas.transfer.data.coco_keypoints import FLIP_PAIRS, OKS_SIGMAS, PIXEL_STD, affine_matrix, apply_affine, flip_joint_order

__all__ = [
    "decode_heatmaps", "flip_back", "crop_to_image", "oks", "oks_nms", "rescore", "coco_keypoint_results",
    "evaluate_coco_keypoints", "person_area", "COCO_STATS",
]

COCO_STATS = ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl")


def decode_heatmaps(heatmaps: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Joint positions (N, K, 2) in heatmap pixels and confidences (N, K) from heatmaps (N, K, H, W).

    The position is the argmax, moved by a quarter pixel towards the higher of its two
    neighbours along x and along y (where both neighbours exist); joints whose maximum is not
    positive get position (0, 0), as in the reference implementation."""
    n, k, h, w = heatmaps.shape
    flat = heatmaps.reshape(n, k, -1)
    maxvals, idx = flat.max(-1)
    x, y = (idx % w).to(heatmaps.dtype), torch.div(idx, w, rounding_mode="floor").to(heatmaps.dtype)
    coords = torch.stack([x, y], -1)
    xi, yi = idx % w, torch.div(idx, w, rounding_mode="floor")
    inner = (xi > 0) & (xi < w - 1) & (yi > 0) & (yi < h - 1)
    g = lambda dx, dy: flat.gather(-1, ((yi + dy).clamp(0, h - 1) * w + (xi + dx).clamp(0, w - 1)).unsqueeze(-1)).squeeze(-1)
    diff = torch.stack([g(1, 0) - g(-1, 0), g(0, 1) - g(0, -1)], -1)
    coords = coords + 0.25 * torch.sign(diff) * inner.unsqueeze(-1).to(heatmaps.dtype)
    coords = coords * (maxvals > 0).unsqueeze(-1).to(heatmaps.dtype)
    return coords, maxvals


def flip_back(heatmaps: torch.Tensor, pairs: Sequence[Tuple[int, int]] = FLIP_PAIRS, shift: bool = True) -> torch.Tensor:
    """Heatmaps of a mirrored input (N, K, H, W) brought back to the original's frame: mirrored
    along x, left/right joints swapped and (``shift``) moved one pixel right to compensate the
    pixel-centre offset of the mirror, as the reference flip test does."""
    out = flip_joint_order(torch.flip(heatmaps, dims=[-1]), pairs, dim=1)
    if shift:
        out = torch.cat([out[..., :1], out[..., :-1]], dim=-1)
    return out


def crop_to_image(coords: np.ndarray, center: np.ndarray, scale: np.ndarray, rotation: float,
                  size: Sequence[int]) -> np.ndarray:
    """Points (K, 2) of a crop of ``size`` = (w, h) (e.g. heatmap pixels) back to image coordinates."""
    m = affine_matrix(center, scale, rotation, size, inverse=True)
    return apply_affine(coords, m)


def oks(gt: np.ndarray, dt: np.ndarray, area: float, sigmas: np.ndarray = OKS_SIGMAS) -> float:
    """COCO object keypoint similarity of ``dt`` (K, 2+) to ``gt`` (K, 3; visibility > 0 counts)
    for an object of ``area``: mean over the labelled joints of exp(-d^2 / (2 s^2 k^2)) with
    s^2 = area and k = 2 * sigma."""
    v = gt[:, 2] > 0
    if not v.any():
        raise ValueError("oks: the ground truth has no labelled keypoint")
    d2 = ((dt[:, :2] - gt[:, :2]) ** 2).sum(1)
    e = d2 / ((2 * sigmas) ** 2) / (area + np.spacing(1)) / 2
    return float(np.exp(-e)[v].mean())


def _oks_many(g: np.ndarray, ds: np.ndarray, a_g: float, a_d: np.ndarray, vis_thre: Optional[float]) -> np.ndarray:
    vars_ = (OKS_SIGMAS * 2) ** 2
    out = np.zeros(len(ds))
    for i, d in enumerate(ds):
        e = ((d[:, 0] - g[:, 0]) ** 2 + (d[:, 1] - g[:, 1]) ** 2) / vars_ / ((a_g + a_d[i]) / 2 + np.spacing(1)) / 2
        if vis_thre is not None:
            e = e[(g[:, 2] > vis_thre) & (d[:, 2] > vis_thre)]
        out[i] = np.exp(-e).mean() if e.size else 0.0
    return out


def oks_nms(kpts: np.ndarray, scores: np.ndarray, areas: np.ndarray, thresh: float = 0.9,
            vis_thre: Optional[float] = None) -> List[int]:
    """Greedy non-maximum suppression of poses (M, K, 3) by OKS: indices kept, best first."""
    order = list(np.argsort(-scores, kind="stable"))
    keep: List[int] = []
    while order:
        i = order.pop(0)
        keep.append(int(i))
        if not order:
            break
        rest = np.array(order)
        sim = _oks_many(kpts[i], kpts[rest], areas[i], areas[rest], vis_thre)
        order = [int(j) for j, s in zip(rest, sim) if s <= thresh]
    return keep


def rescore(box_score: float, maxvals: np.ndarray, vis_thre: float = 0.2) -> float:
    """Person score = box score x the mean confidence of the joints above ``vis_thre``."""
    good = maxvals[maxvals > vis_thre]
    return float(box_score * (good.mean() if good.size else 0.0))


def coco_keypoint_results(kpts: np.ndarray, image_ids: np.ndarray, box_scores: np.ndarray, areas: np.ndarray,
                          nms_thresh: float = 0.9, vis_thre: float = 0.2) -> List[Dict[str, Any]]:
    """COCO results entries from image-space poses (M, K, 3; x, y, confidence): rescored, then
    OKS-NMS per image (the reference evaluation)."""
    results: List[Dict[str, Any]] = []
    scores = np.array([rescore(s, k[:, 2], vis_thre) for s, k in zip(box_scores, kpts)])
    for img in np.unique(image_ids):
        sel = np.flatnonzero(image_ids == img)
        keep = oks_nms(kpts[sel], scores[sel], areas[sel], nms_thresh) if nms_thresh < 1.0 else range(len(sel))
        for j in keep:
            i = sel[j]
            results.append({"image_id": int(img), "category_id": 1,
                            "keypoints": [float(v) for v in kpts[i].reshape(-1)], "score": float(scores[i])})
    return results


def evaluate_coco_keypoints(ann_file: str | os.PathLike, results: List[Dict[str, Any]],
                            image_ids: Optional[Sequence[int]] = None,
                            results_file: Optional[str] = None) -> Dict[str, Optional[float]]:
    """OKS AP/AR (``COCO_STATS``, fractions; ``None`` where the split has no such person) of
    ``results`` against ``ann_file`` with ``COCOeval(iouType="keypoints")``, over ``image_ids``
    (default: every image of the annotation file); writes the results to ``results_file``."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if results_file:
        with open(results_file, "w") as f:
            json.dump(results, f)
    if not results:
        return {k: 0.0 for k in COCO_STATS}  # nothing detected: every person missed
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(ann_file))
        dt = gt.loadRes(results)
        ev = COCOeval(gt, dt, iouType="keypoints")
        ev.params.useSegm = None
        if image_ids is not None:
            ev.params.imgIds = sorted({int(i) for i in image_ids})
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {k: float(v) if v >= 0 else None for k, v in zip(COCO_STATS, ev.stats)}


def person_area(scale: np.ndarray) -> float:
    """The area of a person crop box (the reference uses it for OKS-NMS)."""
    return float(scale[0] * PIXEL_STD * scale[1] * PIXEL_STD)
