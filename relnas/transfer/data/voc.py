"""PASCAL VOC detection data (``torchvision.datasets.VOCDetection``) for SSD training.

On disk (the devkit layout)::

    <root>/VOCdevkit/VOC2007/JPEGImages/<id>.jpg
    <root>/VOCdevkit/VOC2007/Annotations/<id>.xml        (object/name, object/difficult, object/bndbox)
    <root>/VOCdevkit/VOC2007/ImageSets/Main/{trainval,test}.txt
    <root>/VOCdevkit/VOC2012/...                          (trainval)

Targets are ``{"boxes": float (N, 4) xyxy, "labels": int64 (N,) in 1..20 (0 = background),
"difficult": bool (N,), "image_id": int}``. Box coordinates are ``(xmin - 1, ymin - 1, xmax,
ymax)`` of the XML's 1-based inclusive pixel indices, so that areas and IoUs without "+1" equal the
devkit's (see :mod:`relnas.transfer.metrics.voc_ap`). Training drops "difficult" objects (as the
SSD recipes do) and applies the SSD augmentation with ``torchvision.transforms.v2``: photometric
distortion, zoom-out (expand up to 4x on the mean colour), IoU crop, horizontal flip, resize to
``image_size`` square. Evaluation images keep their original size (the SSD model resizes them and
maps its boxes back), so AP is computed in the original pixel coordinates.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import lightning as L
import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Subset

from relnas.errors import DatasetNotFoundError

log = logging.getLogger(__name__)

VOC_CLASSES: Tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable", "dog",
    "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
#: class id 0 is the background (torchvision detection models)
CLASS_NAMES: Tuple[str, ...] = ("__background__", *VOC_CLASSES)
#: the mean colour the zoom-out canvas is filled with (RGB, 0-255)
FILL = (124, 116, 104)


def parse_split(spec: str) -> Tuple[str, str]:
    """``"2007-trainval"`` -> ``("2007", "trainval")``."""
    try:
        year, image_set = str(spec).split("-", 1)
    except ValueError:
        raise ValueError(f"a VOC split is '<year>-<image set>' like '2007-test', got {spec!r}") from None
    if year not in {str(y) for y in range(2007, 2013)} or image_set not in ("train", "val", "trainval", "test") or \
            (image_set == "test" and year != "2007"):
        raise ValueError(f"unknown VOC split {spec!r}: years 2007-2012 with train|val|trainval, and 2007-test")
    return year, image_set


def check_voc_split(root: Path, spec: str) -> None:
    """Raise a one-line :class:`DatasetNotFoundError` naming the expected layout when missing."""
    year, image_set = parse_split(spec)
    base = root / "VOCdevkit" / f"VOC{year}"
    needed = [base / "JPEGImages", base / "Annotations", base / "ImageSets" / "Main" / f"{image_set}.txt"]
    missing = [p for p in needed if not p.exists()]
    if missing:
        raise DatasetNotFoundError(
            f"PASCAL VOC {spec} not found: {missing[0]} is missing; expected {base}/{{JPEGImages/<id>.jpg, "
            f"Annotations/<id>.xml, ImageSets/Main/{image_set}.txt}} (set task.data.root or paths.data_dir to the "
            f"directory holding VOCdevkit/; nothing is downloaded)")


def voc_target(annotation: Dict[str, Any], image_id: int) -> Dict[str, torch.Tensor]:
    """Boxes, labels and difficult flags of a parsed VOC XML dict (torchvision's ``parse_voc_xml``)."""
    objs = annotation["annotation"].get("object", [])
    if isinstance(objs, dict):
        objs = [objs]
    boxes, labels, difficult = [], [], []
    for o in objs:
        name = str(o["name"]).strip()
        if name not in VOC_CLASSES:
            raise ValueError(f"unknown VOC class {name!r} in annotation "
                             f"{annotation['annotation'].get('filename', '?')}")
        bb = o["bndbox"]
        boxes.append([float(bb["xmin"]) - 1.0, float(bb["ymin"]) - 1.0, float(bb["xmax"]), float(bb["ymax"])])
        labels.append(VOC_CLASSES.index(name) + 1)
        difficult.append(str(o.get("difficult", "0")).strip() == "1")
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(labels, dtype=torch.int64),
            "difficult": torch.tensor(difficult, dtype=torch.bool),
            "image_id": torch.tensor(image_id, dtype=torch.int64)}


def train_transforms(image_size: int):
    """The SSD training augmentation (transforms.v2)."""
    from torchvision import tv_tensors
    from torchvision.transforms import v2 as T

    return T.Compose([
        T.RandomPhotometricDistort(p=0.5),
        T.RandomZoomOut(fill={tv_tensors.Image: FILL, "others": 0}, side_range=(1.0, 4.0), p=0.5),
        T.RandomIoUCrop(),
        T.RandomHorizontalFlip(p=0.5),
        T.Resize((image_size, image_size), antialias=True),
        T.SanitizeBoundingBoxes(),
        T.ToDtype(torch.float32, scale=True),
    ])


def eval_transforms():
    from torchvision.transforms import v2 as T

    return T.Compose([T.ToDtype(torch.float32, scale=True)])


class VOCDetectionSet(Dataset):
    """One VOC split as ``(image float (3, H, W) in [0, 1], target)`` pairs."""

    def __init__(self, root: str | Path, spec: str, train: bool, image_size: int = 320, id_offset: int = 0):
        from torchvision.datasets import VOCDetection

        self.root = Path(root).expanduser()
        check_voc_split(self.root, spec)
        year, image_set = parse_split(spec)
        self.voc = VOCDetection(str(self.root), year=year, image_set=image_set, download=False)
        self.train = train
        self.id_offset = int(id_offset)
        self.transforms = train_transforms(image_size) if train else eval_transforms()

    def __len__(self) -> int:
        return len(self.voc)

    def __getitem__(self, i: int):
        from PIL import Image
        from torchvision import tv_tensors
        from torchvision.transforms.v2 import functional as TF

        img = Image.open(self.voc.images[i]).convert("RGB")
        target = voc_target(self.voc.parse_voc_xml(_xml_root(self.voc.annotations[i])), self.id_offset + i)
        image = tv_tensors.Image(TF.pil_to_tensor(img))
        h, w = image.shape[-2:]
        if self.train:  # difficult objects are not trained on
            keep = ~target["difficult"]
            target = {"boxes": target["boxes"][keep], "labels": target["labels"][keep], "image_id": target["image_id"]}
        target["boxes"] = tv_tensors.BoundingBoxes(target["boxes"], format="XYXY", canvas_size=(h, w))
        image, target = self.transforms(image, target)
        target = {k: (v.as_subclass(torch.Tensor) if isinstance(v, torch.Tensor) else v) for k, v in target.items()}
        return image.as_subclass(torch.Tensor), target


def _xml_root(path: str):
    from xml.etree.ElementTree import parse as ET_parse

    return ET_parse(path).getroot()


def collate_detection(batch: Sequence[Tuple[torch.Tensor, Dict[str, torch.Tensor]]]):
    """Lists of images and targets (images may differ in size)."""
    images, targets = zip(*batch)
    return list(images), list(targets)


class VOCDataModule(L.LightningDataModule):
    """VOC2007+2012 trainval for training, VOC2007 test for validation and test (as the paper).

    Args:
        root: the directory holding ``VOCdevkit/``.
        train_sets: splits ``"<year>-<set>"`` concatenated for training.
        val_set: the evaluation split (validation and test).
        image_size: the square training size (the SSD input).
        batch_size, eval_batch_size, num_workers: loaders (batch sizes per process).
        max_train_images, max_val_images: use only the first images (smoke tests).
    """

    num_classes = len(CLASS_NAMES)
    class_names = list(CLASS_NAMES)

    def __init__(self, root: str = "data", train_sets: Sequence[str] = ("2007-trainval", "2012-trainval"),
                 val_set: str = "2007-test", image_size: int = 320, batch_size: int = 32, eval_batch_size: int = 32,
                 num_workers: int = 4, max_train_images: Optional[int] = None,
                 max_val_images: Optional[int] = None) -> None:
        super().__init__()
        self.root = Path(str(root)).expanduser()
        self.train_sets = [str(s) for s in train_sets]
        self.val_set = str(val_set)
        for s in [*self.train_sets, self.val_set]:
            parse_split(s)
        self.image_size = int(image_size)
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size)
        self.num_workers = int(num_workers)
        self.max_train_images = max_train_images
        self.max_val_images = max_val_images
        self.train_set: Optional[Dataset] = None
        self.val_set_data: Optional[Dataset] = None

    def setup(self, stage: Optional[str] = None) -> None:
        for s in [*self.train_sets, self.val_set] if stage in (None, "fit") else [self.val_set]:
            check_voc_split(self.root, s)
        if stage in (None, "fit") and self.train_set is None:
            parts: List[Dataset] = []
            offset = 1_000_000
            for s in self.train_sets:
                parts.append(VOCDetectionSet(self.root, s, train=True, image_size=self.image_size, id_offset=offset))
                offset += 1_000_000
            ds: Dataset = ConcatDataset(parts)
            if self.max_train_images is not None:
                ds = Subset(ds, range(min(int(self.max_train_images), len(ds))))
            self.train_set = ds
        if self.val_set_data is None:
            ds = VOCDetectionSet(self.root, self.val_set, train=False, image_size=self.image_size)
            if self.max_val_images is not None:
                ds = Subset(ds, range(min(int(self.max_val_images), len(ds))))
            self.val_set_data = ds

    def _loader(self, ds: Dataset, batch_size: int, shuffle: bool, drop_last: bool = False) -> DataLoader:
        return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, num_workers=self.num_workers,
                          collate_fn=collate_detection, drop_last=drop_last,
                          persistent_workers=self.num_workers > 0, pin_memory=torch.cuda.is_available())

    def train_dataloader(self) -> DataLoader:
        assert self.train_set is not None, "call setup('fit') first"
        return self._loader(self.train_set, self.batch_size, shuffle=True,
                            drop_last=len(self.train_set) >= 2 * self.batch_size)

    def val_dataloader(self) -> DataLoader:
        if self.val_set_data is None:
            self.setup("validate")
        return self._loader(self.val_set_data, self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()


__all__ = ["VOC_CLASSES", "CLASS_NAMES", "VOCDataModule", "VOCDetectionSet", "check_voc_split", "collate_detection",
           "parse_split", "train_transforms", "voc_target"]
