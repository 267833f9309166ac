"""COCO person keypoints for the SimpleBaseline transfer study (top-down: one crop per person).

On-disk layout (the official COCO 2017 release)::

    <root>/annotations/person_keypoints_{train,val}2017.json
    <root>/{train,val}2017/<file_name>.jpg

Every person box is turned into a centre and a scale (pixel standard 200, padded by 1.25 and
widened to the 3:4 input aspect), the crop is affine-warped to the input size (256x192), and the
17 joints become Gaussian heatmaps at stride 4 (64x48). Training adds a random scale (+-35%),
rotation (+-45 degrees with probability 0.6, clipped at 90) and horizontal flip (left/right joints
swapped). Evaluation uses the ground-truth person boxes (the published protocol) or, when a
detections file is given, the detected person boxes.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import os
import random
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import lightning as L
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from relnas.errors import DatasetNotFoundError

__all__ = [
    "KEYPOINT_NAMES", "FLIP_PAIRS", "SKELETON", "OKS_SIGMAS", "PIXEL_STD", "box_to_center_scale",
    "affine_matrix", "apply_affine", "warp_image", "encode_heatmaps", "flip_joint_order",
    "check_coco_keypoints", "CocoKeypoints", "CocoKeypointsDataModule",
]

KEYPOINT_NAMES: Tuple[str, ...] = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee",
    "right_knee", "left_ankle", "right_ankle")
#: Left/right joint pairs (0-based), swapped by a horizontal flip.
FLIP_PAIRS: Tuple[Tuple[int, int], ...] = ((1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16))
#: The COCO person skeleton (0-based joint pairs; the json's ``skeleton`` is 1-based).
SKELETON: Tuple[Tuple[int, int], ...] = (
    (15, 13), (13, 11), (16, 14), (14, 12), (11, 12), (5, 11), (6, 12), (5, 6), (5, 7), (6, 8),
    (7, 9), (8, 10), (1, 2), (0, 1), (0, 2), (1, 3), (2, 4), (3, 5), (4, 6))
#: Per-joint OKS constants of the COCO keypoint benchmark.
OKS_SIGMAS = np.array([.26, .25, .25, .35, .35, .79, .79, .72, .72, .62, .62, 1.07, 1.07, .87, .87, .89, .89]) / 10.0
PIXEL_STD = 200.0
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

LAYOUT = "<root>/annotations/person_keypoints_{split}2017.json and <root>/{split}2017/<images>"


# ---------------------------------------------------------------------- geometry (pure)

def box_to_center_scale(box: Sequence[float], aspect_ratio: float = 192 / 256, padding: float = 1.25
                        ) -> Tuple[np.ndarray, np.ndarray]:
    """Centre (x, y) and scale (w, h in units of 200 px) of an ``[x, y, w, h]`` box, widened or
    heightened to ``aspect_ratio`` (= width / height) and enlarged by ``padding``."""
    x, y, w, h = (float(v) for v in box)
    center = np.array([x + 0.5 * w, y + 0.5 * h], dtype=np.float64)
    if w > aspect_ratio * h:
        h = w / aspect_ratio
    else:
        w = h * aspect_ratio
    return center, np.array([w, h], dtype=np.float64) / PIXEL_STD * padding


def affine_matrix(center: Sequence[float], scale: Sequence[float], rotation: float, output_size: Sequence[int],
                  flip: bool = False, inverse: bool = False) -> np.ndarray:
    """The 2x3 matrix taking image coordinates to crop coordinates (``inverse``: the reverse).

    The box of width ``scale[0] * 200`` around ``center`` maps onto the ``output_size`` =
    (width, height) crop with its centre at (width / 2, height / 2); with ``rotation`` degrees the
    crop shows the image turned counter-clockwise by that angle (a point right of the centre moves
    up); ``flip`` mirrors the crop (x -> width - 1 - x). Coordinates are pixel centres at integers."""
    out_w, out_h = float(output_size[0]), float(output_size[1])
    k = out_w / (float(scale[0]) * PIXEL_STD)
    t = math.radians(rotation)
    c, s = math.cos(t), math.sin(t)
    lin = k * np.array([[c, s], [-s, c]])  # k * R(-rotation)
    off = np.array([out_w / 2, out_h / 2]) - lin @ np.asarray(center, dtype=np.float64)
    m = np.concatenate([lin, off[:, None]], axis=1)
    if flip:
        m = np.array([[-1.0, 0.0, out_w - 1.0], [0.0, 1.0, 0.0]]) @ np.vstack([m, [0.0, 0.0, 1.0]])
    if inverse:
        m = np.linalg.inv(np.vstack([m, [0.0, 0.0, 1.0]]))[:2]
    return m


def apply_affine(points: np.ndarray, m: np.ndarray) -> np.ndarray:
    """``points`` (..., 2) through the 2x3 matrix ``m``."""
    pts = np.asarray(points, dtype=np.float64)
    return pts @ m[:, :2].T + m[:, 2]


def warp_image(image: Image.Image, m: np.ndarray, output_size: Sequence[int]) -> Image.Image:
    """Warp ``image`` with the image->crop matrix ``m`` into a crop of ``output_size`` = (w, h),
    bilinear, black outside; pixel centres follow :func:`affine_matrix` (integers)."""
    inv = np.linalg.inv(np.vstack([m, [0.0, 0.0, 1.0]]))
    # PIL samples output pixel (x, y) at inverse(x + 0.5, y + 0.5) with pixel centres at +0.5:
    # conjugate the integer-centre matrix by that half-pixel offset.
    half = np.array([[1.0, 0.0, 0.5], [0.0, 1.0, 0.5], [0.0, 0.0, 1.0]])
    minus = np.array([[1.0, 0.0, -0.5], [0.0, 1.0, -0.5], [0.0, 0.0, 1.0]])
    pil = half @ inv @ minus
    return image.transform((int(output_size[0]), int(output_size[1])), Image.Transform.AFFINE,
                           data=tuple(pil[:2].reshape(-1)), resample=Image.Resampling.BILINEAR)


def flip_joint_order(x: np.ndarray | torch.Tensor, pairs: Sequence[Tuple[int, int]] = FLIP_PAIRS, dim: int = 0):
    """Swap left and right joints along ``dim`` (a copy)."""
    perm = list(range(x.shape[dim]))
    for a, b in pairs:
        perm[a], perm[b] = b, a
    if isinstance(x, torch.Tensor):
        return x.index_select(dim, torch.tensor(perm, device=x.device))
    return np.take(x, perm, axis=dim)


def encode_heatmaps(joints: np.ndarray, visible: np.ndarray, heatmap_size: Sequence[int], stride: float,
                    sigma: float = 2.0) -> Tuple[np.ndarray, np.ndarray]:
    """Gaussian target heatmaps ``(K, H, W)`` and per-joint weights ``(K,)`` for crop-space joints.

    Joint ``(x, y)`` of the crop sits at ``(x / stride, y / stride)`` on the heatmap; its target
    is ``exp(-d^2 / (2 sigma^2))`` around that (sub-pixel) centre, cut to a ``3 sigma`` radius.
    A joint gets weight 0 when it is not labelled or its whole Gaussian lies outside the map.
    The centre is not rounded to a heatmap pixel (the original code rounds it), so that the
    argmax + quarter-pixel decoding recovers it within a quarter heatmap pixel."""
    w, h = int(heatmap_size[0]), int(heatmap_size[1])
    k = joints.shape[0]
    target = np.zeros((k, h, w), dtype=np.float32)
    weight = np.asarray(visible, dtype=np.float32).reshape(k).copy()
    radius = 3.0 * sigma
    xs, ys = np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64)
    for j in range(k):
        if weight[j] <= 0:
            continue
        mx, my = joints[j, 0] / stride, joints[j, 1] / stride
        if mx + radius < 0 or my + radius < 0 or mx - radius > w - 1 or my - radius > h - 1:
            weight[j] = 0.0
            continue
        dx2, dy2 = (xs - mx) ** 2, (ys - my) ** 2
        g = np.exp(-(dy2[:, None] + dx2[None, :]) / (2 * sigma ** 2))
        g[(np.abs(ys - my) > radius)[:, None] | (np.abs(xs - mx) > radius)[None, :]] = 0.0
        target[j] = g
    return target, weight


# ---------------------------------------------------------------------- data set

def check_coco_keypoints(root: str | os.PathLike, split: str, ann_file: Optional[str] = None) -> Tuple[Path, Path]:
    """The annotation file and image folder of ``split``, or a one-line :class:`DatasetNotFoundError`."""
    base = Path(root).expanduser()
    ann = Path(ann_file) if ann_file else base / "annotations" / f"person_keypoints_{split}2017.json"
    images = base / f"{split}2017"
    missing = [str(p) for p, ok in ((ann, ann.is_file()), (images, images.is_dir())) if not ok]
    if missing:
        raise DatasetNotFoundError(
            f"COCO keypoints {split!r} split not found ({', '.join(missing)} missing): expected "
            f"{LAYOUT.format(split=split)}; set data.root=<dir> (unzip annotations_trainval2017.zip, "
            f"{split}2017.zip from cocodataset.org there)")
    return ann, images


def load_coco(ann_file: str | os.PathLike):
    """A pycocotools ``COCO`` index of ``ann_file`` (its progress prints silenced)."""
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(ann_file))


def _clean_box(box: Sequence[float], width: int, height: int) -> Optional[List[float]]:
    x, y, w, h = (float(v) for v in box)
    x1, y1 = max(0.0, x), max(0.0, y)
    x2, y2 = min(width - 1.0, x1 + max(0.0, w - 1.0)), min(height - 1.0, y1 + max(0.0, h - 1.0))
    if w * h <= 0 or x2 < x1 or y2 < y1:
        return None
    return [x1, y1, x2 - x1, y2 - y1]


class CocoKeypoints(Dataset):
    """One item per person box: ``(image, target)``, the normalised crop (3, H, W) of
    ``input_size`` = (H, W) and a dict with the ``heatmaps`` (17, H/4, W/4), the joint ``weights``
    (17,), the crop's ``center``, ``scale``, ``rotation``, ``flip``, the ``image_id``, the box
    ``score`` and the crop-space ``joints`` (17, 3; x, y, visibility).

    ``detections``: a COCO results json of person boxes (``image_id``, ``category_id``, ``bbox``,
    ``score``) used instead of the ground-truth boxes; ``min_score`` filters them.
    ``eval_image_ids``: the images the OKS evaluation covers (all of the split's, unless
    ``max_samples`` cut it)."""

    def __init__(self, root: str | os.PathLike, split: str = "train", train: bool = False,
                 input_size: Sequence[int] = (256, 192), sigma: float = 2.0, stride: int = 4,
                 scale_factor: float = 0.35, rotation_factor: float = 45.0, rotation_p: float = 0.6,
                 flip_p: float = 0.5, ann_file: Optional[str] = None, detections: Optional[str] = None,
                 min_score: float = 0.0, max_samples: Optional[int] = None) -> None:
        ann, self.image_dir = check_coco_keypoints(root, split, ann_file)
        self.ann_file = str(ann)
        self.coco = load_coco(ann)
        self.train = bool(train)
        self.input_size = (int(input_size[1]), int(input_size[0]))  # (width, height) of the crop
        if self.input_size[0] % stride or self.input_size[1] % stride:
            raise ValueError(f"input size {self.input_size} must be a multiple of the heatmap stride {stride}")
        self.stride, self.sigma = int(stride), float(sigma)
        self.heatmap_size = (self.input_size[0] // self.stride, self.input_size[1] // self.stride)
        self.aspect = self.input_size[0] / self.input_size[1]
        self.scale_factor, self.rotation_factor = float(scale_factor), float(rotation_factor)
        self.rotation_p, self.flip_p = float(rotation_p), float(flip_p)
        self.detections = str(detections) if detections else None
        self.records = self._detection_records(detections, min_score) if detections else self._gt_records()
        truncated = max_samples is not None and 0 < int(max_samples) < len(self.records)
        if truncated:
            self.records = self.records[: int(max_samples)]
        # the images the OKS evaluation runs over: every image of the annotation file (as COCOeval's
        # default: a person in an image without any detection is a miss), or, when max_samples cut
        # the split, only the images of the kept boxes
        self.eval_image_ids = sorted({int(r["image_id"]) for r in self.records}) if truncated else \
            sorted(int(i) for i in self.coco.getImgIds())
        if not self.records:
            raise DatasetNotFoundError(f"COCO keypoints {split!r}: no person boxes with keypoints in {self.ann_file}")

    def _gt_records(self) -> List[Dict[str, Any]]:
        records = []
        person = self.coco.getCatIds(catNms=["person"]) or [1]
        for image_id in sorted(self.coco.getImgIds()):
            info = self.coco.loadImgs(image_id)[0]
            for a in self.coco.loadAnns(self.coco.getAnnIds(imgIds=image_id, catIds=person, iscrowd=False)):
                kp = np.asarray(a.get("keypoints", []), dtype=np.float64)
                if kp.size != 3 * len(KEYPOINT_NAMES) or kp.max() <= 0:
                    continue
                box = _clean_box(a["bbox"], info["width"], info["height"])
                if box is None or a.get("area", 1) <= 0:
                    continue
                center, scale = box_to_center_scale(box, self.aspect)
                records.append({"file": info["file_name"], "image_id": image_id, "center": center, "scale": scale,
                                "joints": kp.reshape(-1, 3), "score": 1.0})
        return records

    def _detection_records(self, path: str, min_score: float) -> List[Dict[str, Any]]:
        if not os.path.isfile(path):
            raise DatasetNotFoundError(f"person detections file {path} not found (a COCO results json of boxes)")
        with open(path) as f:
            dets = json.load(f)
        records = []
        for d in dets:
            if d.get("category_id", 1) != 1 or float(d.get("score", 1.0)) < min_score:
                continue
            if d["image_id"] not in self.coco.imgs:
                continue
            info = self.coco.imgs[d["image_id"]]
            center, scale = box_to_center_scale(d["bbox"], self.aspect)
            records.append({"file": info["file_name"], "image_id": d["image_id"], "center": center, "scale": scale,
                            "joints": np.zeros((len(KEYPOINT_NAMES), 3)), "score": float(d.get("score", 1.0))})
        return records

    def __len__(self) -> int:
        return len(self.records)

    def image(self, index: int) -> Image.Image:
        return Image.open(self.image_dir / self.records[index]["file"]).convert("RGB")

    def __getitem__(self, index: int):
        r = self.records[index]
        center, scale = r["center"].copy(), r["scale"].copy()
        rotation, flip = 0.0, False
        if self.train:
            sf, rf = self.scale_factor, self.rotation_factor
            scale = scale * float(np.clip(random.gauss(0.0, 1.0) * sf + 1, 1 - sf, 1 + sf))
            if random.random() <= self.rotation_p:
                rotation = float(np.clip(random.gauss(0.0, 1.0) * rf, -2 * rf, 2 * rf))
            flip = random.random() < self.flip_p
        m = affine_matrix(center, scale, rotation, self.input_size, flip=flip)
        crop = warp_image(self.image(index), m, self.input_size)
        joints = r["joints"].copy()
        joints[:, :2] = apply_affine(joints[:, :2], m)
        if flip:
            joints = flip_joint_order(joints)
        target, weight = encode_heatmaps(joints[:, :2], joints[:, 2] > 0, self.heatmap_size, self.stride, self.sigma)
        x = torch.from_numpy(np.asarray(crop, dtype=np.float32) / 255.0).permute(2, 0, 1)
        x = (x - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]
        return x, {"heatmaps": torch.from_numpy(target), "weights": torch.from_numpy(weight),
                   "center": torch.from_numpy(center), "scale": torch.from_numpy(scale),
                   "rotation": torch.tensor(rotation, dtype=torch.float64), "flip": torch.tensor(flip),
                   "image_id": torch.tensor(r["image_id"]), "score": torch.tensor(r["score"], dtype=torch.float64),
                   "joints": torch.from_numpy(joints), "index": torch.tensor(index)}


class CocoKeypointsDataModule(L.LightningDataModule):
    """Train/val loaders of COCO person keypoints. ``detections``: a person-box results json for
    the validation split (the second protocol); ``None`` evaluates on ground-truth boxes."""

    num_classes = len(KEYPOINT_NAMES)
    class_names = KEYPOINT_NAMES

    def __init__(self, root: str = "data/coco", batch_size: int = 128, eval_batch_size: int = 64,
                 num_workers: int = 4, input_size: Sequence[int] = (256, 192), sigma: float = 2.0,
                 scale_factor: float = 0.35, rotation_factor: float = 45.0, flip_p: float = 0.5,
                 detections: Optional[str] = None, pin_memory: bool = True,
                 max_train_samples: Optional[int] = None, max_val_samples: Optional[int] = None) -> None:
        super().__init__()
        self.root, self.batch_size, self.eval_batch_size = str(root), int(batch_size), int(eval_batch_size)
        self.num_workers, self.pin_memory = int(num_workers), bool(pin_memory)
        self.kw = dict(input_size=tuple(input_size), sigma=sigma, scale_factor=scale_factor,
                       rotation_factor=rotation_factor, flip_p=flip_p)
        self.detections = detections
        self.max_train, self.max_val = max_train_samples, max_val_samples
        self.train_set: Optional[CocoKeypoints] = None
        self.val_set: Optional[CocoKeypoints] = None

    def check(self) -> None:
        """Fail in one line, before any work, when a split or the detections file is missing."""
        for split in ("train", "val"):
            check_coco_keypoints(self.root, split)
        if self.detections and not os.path.isfile(self.detections):
            raise DatasetNotFoundError(f"person detections file {self.detections} not found "
                                       "(data.detections: a COCO results json of person boxes, or null)")

    def setup(self, stage: Optional[str] = None) -> None:
        if self.val_set is None:
            self.check()
            self.train_set = CocoKeypoints(self.root, "train", train=True, max_samples=self.max_train, **self.kw)
            self.val_set = CocoKeypoints(self.root, "val", train=False, detections=self.detections,
                                         max_samples=self.max_val, **self.kw)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True,
                          drop_last=len(self.train_set) > self.batch_size, num_workers=self.num_workers,
                          pin_memory=self.pin_memory, persistent_workers=self.num_workers > 0)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.eval_batch_size, shuffle=False,
                          num_workers=self.num_workers, pin_memory=self.pin_memory)

    def test_dataloader(self) -> DataLoader:
        """The validation split (COCO test-dev has no public labels)."""
        return self.val_dataloader()
