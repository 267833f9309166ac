"""Cityscapes semantic segmentation (fine annotations, 19 train ids) for the BiSeNet transfer study.

The on-disk layout is the official one, read with :class:`torchvision.datasets.Cityscapes`::

    <root>/leftImg8bit/{train,val}/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    <root>/gtFine/{train,val}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png

The label PNGs hold the 34 Cityscapes *label ids*; they are mapped to the 19 *train ids* of the
benchmark with torchvision's class table, everything else (void classes, license plate) to 255,
the ignore index.
"""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Tuple

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision import tv_tensors
from torchvision.datasets import Cityscapes
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.v2 import functional as TF

from relnas.errors import DatasetNotFoundError

__all__ = [
    "IGNORE_INDEX", "CITYSCAPES_CLASSES", "CITYSCAPES_PALETTE", "IMAGENET_MEAN", "IMAGENET_STD",
    "label_id_to_train_id", "to_train_ids", "check_cityscapes", "SegmentationTrainTransform",
    "SegmentationEvalTransform", "CityscapesSegmentation", "CityscapesDataModule",
]

IGNORE_INDEX = 255
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_TRAIN_CLASSES = sorted((c for c in Cityscapes.classes if 0 <= c.train_id < IGNORE_INDEX),
                        key=lambda c: c.train_id)
#: The 19 evaluated classes, in train-id order.
CITYSCAPES_CLASSES: Tuple[str, ...] = tuple(c.name for c in _TRAIN_CLASSES)
#: The official colour of each train id (RGB).
CITYSCAPES_PALETTE: Tuple[Tuple[int, int, int], ...] = tuple(tuple(c.color) for c in _TRAIN_CLASSES)

LAYOUT = ("<root>/leftImg8bit/{split}/<city>/<name>_leftImg8bit.png and "
          "<root>/gtFine/{split}/<city>/<name>_gtFine_labelIds.png")


def label_id_to_train_id() -> torch.Tensor:
    """A 256-entry uint8 lookup table: Cityscapes label id -> train id (255 for ignored ids)."""
    lut = torch.full((256,), IGNORE_INDEX, dtype=torch.uint8)
    for c in Cityscapes.classes:
        if 0 <= c.id < 256 and 0 <= c.train_id < IGNORE_INDEX:
            lut[c.id] = c.train_id
    return lut


_LUT = label_id_to_train_id()


def to_train_ids(label_ids: torch.Tensor) -> torch.Tensor:
    """Map a label-id map (any integer dtype, values 0..255) to train ids (int64, ignore 255)."""
    return _LUT[label_ids.long()].long()


def check_cityscapes(root: str | os.PathLike, split: str) -> None:
    """Raise a one-line :class:`DatasetNotFoundError` unless ``root`` holds the ``split`` images
    and fine labels in the official layout."""
    base = Path(root).expanduser()
    images, labels = base / "leftImg8bit" / split, base / "gtFine" / split
    missing = [str(p) for p in (images, labels) if not p.is_dir()]
    if not missing:
        has_png = any(f.endswith("_leftImg8bit.png") for _, _, fs in os.walk(images) for f in fs)
        if not has_png:
            missing = [f"{images}/<city>/*_leftImg8bit.png"]
    if missing:
        raise DatasetNotFoundError(
            f"Cityscapes {split!r} split not found ({', '.join(missing)} missing): expected "
            f"{LAYOUT.format(split=split)}; set data.root=<dir> (download leftImg8bit_trainvaltest.zip "
            "and gtFine_trainvaltest.zip from cityscapes-dataset.com and unzip them there)")


def _normalize(image: torch.Tensor) -> torch.Tensor:
    image = TF.to_dtype(image, torch.float32, scale=True)
    return TF.normalize(image, list(IMAGENET_MEAN), list(IMAGENET_STD))


class SegmentationTrainTransform:
    """BiSeNet training augmentation on an (image, train-id mask) pair: random scale in
    ``scale_range``, random crop of ``crop_size`` (padding the image with 0 and the mask with the
    ignore index when smaller), horizontal flip, colour jitter, ImageNet normalisation."""

    def __init__(self, crop_size: Sequence[int] = (1024, 1024), scale_range: Sequence[float] = (0.75, 2.0),
                 flip_p: float = 0.5, jitter: float = 0.4) -> None:
        self.crop_size = (int(crop_size[0]), int(crop_size[1]))
        self.scale_range = (float(scale_range[0]), float(scale_range[1]))
        if not 0 < self.scale_range[0] <= self.scale_range[1]:
            raise ValueError(f"scale_range must be 0 < low <= high, got {tuple(scale_range)}")
        self.crop = v2.RandomCrop(self.crop_size, pad_if_needed=True,
                                  fill={tv_tensors.Image: 0, tv_tensors.Mask: IGNORE_INDEX})
        self.flip = v2.RandomHorizontalFlip(flip_p)
        self.jitter = v2.ColorJitter(brightness=jitter, contrast=jitter, saturation=jitter) if jitter else None

    def __call__(self, image: torch.Tensor, mask: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        image, mask = tv_tensors.Image(image), tv_tensors.Mask(mask)
        s = random.uniform(*self.scale_range)
        h, w = image.shape[-2:]
        size = [max(1, round(h * s)), max(1, round(w * s))]
        image = TF.resize(image, size, interpolation=InterpolationMode.BILINEAR, antialias=True)
        mask = TF.resize(mask, size, interpolation=InterpolationMode.NEAREST)
        image, mask = self.crop(image, mask)
        image, mask = self.flip(image, mask)
        if self.jitter is not None:
            image = self.jitter(image)
        return _normalize(image.as_subclass(torch.Tensor)), mask.as_subclass(torch.Tensor).long()


class SegmentationEvalTransform:
    """Evaluation: the image resized by ``scale`` (1.0: full resolution) and normalised; the mask
    stays at full resolution (predictions are upsampled to it)."""

    def __init__(self, scale: float = 1.0) -> None:
        self.scale = float(scale)

    def __call__(self, image: torch.Tensor, mask: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        if self.scale != 1.0:
            h, w = image.shape[-2:]
            image = TF.resize(image, [round(h * self.scale), round(w * self.scale)],
                              interpolation=InterpolationMode.BILINEAR, antialias=True)
        return _normalize(image), mask.long()


class CityscapesSegmentation(Dataset):
    """``(image, mask)`` pairs: a normalised float image (3, H, W) and an int64 train-id mask
    (H, W) with 255 for ignored pixels. Files are sorted, so index order is deterministic."""

    def __init__(self, root: str | os.PathLike, split: str = "train",
                 transform: Optional[Callable[[torch.Tensor, torch.Tensor], Any]] = None) -> None:
        check_cityscapes(root, split)
        self.root = str(Path(root).expanduser())
        self.split = split
        self.base = Cityscapes(self.root, split=split, mode="fine", target_type="semantic")
        pairs = sorted(zip(self.base.images, (t[0] for t in self.base.targets)))
        missing = [t for _, t in pairs if not os.path.isfile(t)]
        if missing:
            raise DatasetNotFoundError(
                f"Cityscapes {split!r}: {len(missing)} label file(s) missing, e.g. {missing[0]}; "
                f"expected {LAYOUT.format(split=split)}")
        self.images = [p for p, _ in pairs]
        self.labels = [t for _, t in pairs]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def load(self, index: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """The raw uint8 image (3, H, W) and its train-id mask (H, W), without transforms."""
        from torchvision.io import ImageReadMode, decode_image

        image = decode_image(self.images[index], mode=ImageReadMode.RGB)
        label = decode_image(self.labels[index], mode=ImageReadMode.GRAY)[0]
        return image, to_train_ids(label)

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.load(index)
        if self.transform is not None:
            image, mask = self.transform(image, mask)
        return image, mask


class CityscapesDataModule(L.LightningDataModule):
    """Train/val loaders of Cityscapes for segmentation.

    ``crop_size``/``scale_range``/``jitter`` configure the training augmentation; ``eval_scale``
    resizes the validation images (1.0 is the published full-resolution protocol);
    ``max_*_samples`` keep the first files only (smoke runs)."""

    num_classes = len(CITYSCAPES_CLASSES)
    class_names = CITYSCAPES_CLASSES

    def __init__(self, root: str = "data/cityscapes", batch_size: int = 16, eval_batch_size: int = 1,
                 num_workers: int = 4, crop_size: Sequence[int] = (1024, 1024),
                 scale_range: Sequence[float] = (0.75, 2.0), jitter: float = 0.4,
                 eval_scale: float = 1.0, pin_memory: bool = True, max_train_samples: Optional[int] = None,
                 max_val_samples: Optional[int] = None) -> None:
        super().__init__()
        self.root, self.batch_size, self.eval_batch_size = str(root), int(batch_size), int(eval_batch_size)
        self.num_workers, self.pin_memory = int(num_workers), bool(pin_memory)
        self.train_transform = SegmentationTrainTransform(crop_size, scale_range, jitter=jitter)
        self.eval_transform = SegmentationEvalTransform(eval_scale)
        self.max_train, self.max_val = max_train_samples, max_val_samples
        self.train_set: Optional[CityscapesSegmentation] = None
        self.val_set: Optional[CityscapesSegmentation] = None

    def check(self) -> None:
        """Fail in one line, before any work, when either split is missing."""
        for split in ("train", "val"):
            check_cityscapes(self.root, split)

    def setup(self, stage: Optional[str] = None) -> None:
        if self.val_set is None:
            self.check()
            self.train_set = CityscapesSegmentation(self.root, "train", self.train_transform)
            self.val_set = CityscapesSegmentation(self.root, "val", self.eval_transform)
            _limit(self.train_set, self.max_train)
            _limit(self.val_set, self.max_val)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True,
                          drop_last=len(self.train_set) > self.batch_size,
                          num_workers=self.num_workers, pin_memory=self.pin_memory,
                          persistent_workers=self.num_workers > 0)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.eval_batch_size, shuffle=False,
                          num_workers=self.num_workers, pin_memory=self.pin_memory)

    def test_dataloader(self) -> DataLoader:
        """The validation split (the Cityscapes test labels are not public)."""
        return self.val_dataloader()


def _limit(ds: CityscapesSegmentation, n: Optional[int]) -> None:
    if n is not None and int(n) > 0:
        ds.images, ds.labels = ds.images[: int(n)], ds.labels[: int(n)]
