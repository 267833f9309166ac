"""ImageFolder trees (e.g. ImageNet): a conventional DataLoader + torchvision transforms pipeline."""
from __future__ import annotations

import logging

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Subset

from relnas.errors import DataError, DatasetNotFoundError

__all__ = ["ImageFolderDataModule", "IMAGENET_MEAN", "IMAGENET_STD"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ImageFolderDataModule(L.LightningDataModule):
    """``<data_dir>/<train_dir>/<class>/*`` and ``<data_dir>/<val_dir>/<class>/*`` (ImageNet layout).

    Training transform: ``RandomResizedCrop(image_size, scale=crop_scale)`` + horizontal flip
    (``flip``) + ``ColorJitter(*color_jitter)`` (brightness, contrast, saturation, hue; null
    disables) + ToTensor + Normalize. Evaluation: ``Resize(int(image_size / 0.875))`` +
    ``CenterCrop(image_size)`` + ToTensor + Normalize. Batches come out of the workers as
    normalised float32 NCHW; nothing else happens on the device.

    ``train_portion`` in (0, 1) splits the training tree (permutation seeded with ``split_seed``)
    into search-train / search-validation subsets (``val_augment=True``: the search-validation
    images get the training augmentation too, as in the authors' search); otherwise val = the ``val_dir`` tree. The test
    loader always serves the ``val_dir`` tree. Under DDP, Lightning replaces the samplers with
    ``DistributedSampler``\\ s (its ``use_distributed_sampler``).
    """

    name = "imagefolder"

    def __init__(
        self,
        data_dir: str = "data/imagenet",
        train_dir: str = "train",
        val_dir: str = "val",
        image_size: int = 224,
        batch_size: int = 256,
        eval_batch_size: int = 256,
        num_workers: int = 8,
        pin_memory: bool = True,
        persistent_workers: bool = True,
        train_portion: float | None = None,
        split_seed: int = 0,
        augment: bool = True,
        flip: bool = True,
        color_jitter: Sequence[float] | None = (0.4, 0.4, 0.4, 0.2),
        crop_scale: Sequence[float] = (0.08, 1.0),
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        seed: int = 0,
        download: bool = False,
        val_augment: bool = False,
    ) -> None:
        super().__init__()
        if train_portion is not None:
            train_portion = float(train_portion)
            if not 0.0 < train_portion < 1.0:
                raise ValueError(f"train_portion must be in (0, 1) or None, got {train_portion}")
        if download:
            raise ValueError("imagefolder cannot download; put the tree under data.data_dir and set data.download=false")
        self.data_dir = str(data_dir)
        self.train_dir, self.val_dir = str(train_dir), str(val_dir)
        self._image_size = int(image_size)
        self.batch_size, self.eval_batch_size = int(batch_size), int(eval_batch_size)
        self.num_workers = int(num_workers)
        self.pin_memory = bool(pin_memory)
        self.persistent_workers = bool(persistent_workers) and self.num_workers > 0
        self.train_portion = train_portion
        self.split_seed = int(split_seed)
        self.augment = bool(augment)
        self.val_augment = bool(val_augment)
        self.flip = bool(flip)
        self.color_jitter = None if color_jitter is None else tuple(float(c) for c in color_jitter)
        self.crop_scale = tuple(float(c) for c in crop_scale)
        self._mean = tuple(float(m) for m in mean)
        self._std = tuple(float(s) for s in std)
        self._seed = int(seed)
        self._generator = torch.Generator().manual_seed(self._seed)
        self._classes: list[str] | None = None
        self.train_set: Any = None
        self.source: str | None = None
        self.val_set: Any = None
        self.test_set: Any = None

    # ------------------------------------------------------------------ properties
    @property
    def root(self) -> Path:
        return Path(self.data_dir).expanduser()

    def _tree(self, sub: str) -> Path:
        d = self.root / sub
        if not d.is_dir():
            raise DatasetNotFoundError(
                f"image folder {d} not found; put an ImageFolder tree ({sub}/<class>/<image>) under {self.root} "
                f"or set data.data_dir")
        return d

    @property
    def classes(self) -> list[str]:
        if self._classes is None:
            d = self._tree(self.train_dir)
            self._classes = sorted(e.name for e in d.iterdir() if e.is_dir())
        return self._classes

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_channels(self) -> int:
        return 3

    @property
    def image_size(self) -> int:
        return self._image_size

    @property
    def mean(self) -> tuple[float, ...]:
        return self._mean

    @property
    def std(self) -> tuple[float, ...]:
        return self._std

    @property
    def search_mode(self) -> bool:
        return self.train_portion is not None

    # ------------------------------------------------------------------ transforms
    def train_transform(self) -> Any:
        from torchvision import transforms as T

        if not self.augment:
            return self.eval_transform()
        ts: list[Any] = [T.RandomResizedCrop(self._image_size, scale=self.crop_scale)]
        if self.flip:
            ts.append(T.RandomHorizontalFlip())
        if self.color_jitter is not None and any(self.color_jitter):
            ts.append(T.ColorJitter(*self.color_jitter))
        ts += [T.ToTensor(), T.Normalize(self._mean, self._std)]
        return T.Compose(ts)

    def eval_transform(self) -> Any:
        from torchvision import transforms as T

        return T.Compose([T.Resize(int(self._image_size / 0.875)), T.CenterCrop(self._image_size),
                          T.ToTensor(), T.Normalize(self._mean, self._std)])

    # ------------------------------------------------------------------ Lightning hooks
    def set_seed(self, seed: int) -> None:
        """Reseed the training loader's shuffling and, when num_workers > 0, the workers' random
        transforms (seeded from the same generator); with num_workers=0 they use the global RNG."""
        self._seed = int(seed)
        self._generator.manual_seed(self._seed)

    def state_dict(self) -> dict[str, Any]:
        return {"seed": self._seed, "generator": self._generator.get_state()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict:
            self._seed = int(state_dict["seed"])
            self._generator.set_state(state_dict["generator"])

    def _folder(self, root: Path, transform: Any, classes: list[str] | None = None) -> Any:
        """``ImageFolder(root)``; with ``classes`` (the training tree's), labelled by the training
        tree's class indices, so that a tree missing a class keeps every other class's label
        (torchvision numbers each tree's own folders). Trees without class folders, with classes
        the training tree lacks, or without images fail in one line."""
        from torchvision.datasets import ImageFolder

        found = sorted(e.name for e in root.iterdir() if e.is_dir())
        if not found:
            raise DatasetNotFoundError(
                f"image folder {root} has no class folders; expected an ImageFolder tree {root}/<class>/<image> "
                f"(ImageNet's validation images must be sorted into one folder per class, as train/ is)")
        if classes is not None:
            extra = sorted(set(found) - set(classes))
            if extra:
                more = f" (and {len(extra) - 5} more)" if len(extra) > 5 else ""
                raise DataError(f"image folder {root} has class folders the training tree "
                                f"{self.root / self.train_dir} lacks: {', '.join(extra[:5])}{more}; both trees "
                                f"must use the training tree's classes")
        try:
            ds = ImageFolder(str(root), transform=transform)
        except FileNotFoundError as e:  # torchvision: no image files in the class folders
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise DatasetNotFoundError(f"image folder {root}: {first}") from None
        if classes is not None and list(ds.classes) != list(classes):
            index = {c: i for i, c in enumerate(classes)}
            ds.samples = [(path, index[ds.classes[t]]) for path, t in ds.samples]
            ds.imgs = ds.samples
            ds.targets = [t for _, t in ds.samples]
            ds.classes, ds.class_to_idx = list(classes), index
        return ds

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        train_root = self._tree(self.train_dir)
        train_full = self._folder(train_root, self.train_transform())
        classes = list(train_full.classes)
        self.source = str(train_root.parent)
        logging.getLogger(__name__).info("data: image folders under %s (%d training images)", self.source,
                                         len(train_full))
        if self.train_portion is not None:
            n = len(train_full)
            k = min(max(int(round(self.train_portion * n)), 1), n - 1)
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.split_seed))
            tr, va = perm[:k].sort().values.tolist(), perm[k:].sort().values.tolist()
            # val_augment (the official search): the search-validation images get the training augmentation
            train_eval = train_full if self.val_augment else self._folder(train_root, self.eval_transform())
            self.train_set = Subset(train_full, tr)
            self.val_set = Subset(train_eval, va)
        else:
            self.train_set = train_full
            self.val_set = self._folder(self._tree(self.val_dir), self.eval_transform(), classes)
        try:
            self.test_set = self._folder(self._tree(self.val_dir), self.eval_transform(), classes)
        except DatasetNotFoundError:
            if self.train_portion is None:
                raise
            self.test_set = None

    def _dl(self, ds: Any, train: bool) -> DataLoader:
        if ds is None:
            raise RuntimeError(f"no {self.val_dir} tree under {self.root} to test on")
        return DataLoader(ds, batch_size=self.batch_size if train else self.eval_batch_size, shuffle=train,
                          drop_last=False, num_workers=self.num_workers, pin_memory=self.pin_memory,
                          persistent_workers=self.persistent_workers,
                          generator=self._generator if train else None)

    def train_dataloader(self) -> DataLoader:
        if self.train_set is None:
            self.setup()
        return self._dl(self.train_set, True)

    def val_dataloader(self) -> DataLoader:
        if self.val_set is None:
            self.setup()
        return self._dl(self.val_set, False)

    def test_dataloader(self) -> DataLoader:
        if self.train_set is None:
            self.setup()
        return self._dl(self.test_set, False)

    def preprocess(self, x: torch.Tensor, train: bool) -> torch.Tensor:
        """Batches are already transformed by the workers; uint8 input is just normalised."""
        if x.dtype == torch.uint8:
            mean = torch.tensor(self._mean, device=x.device).view(1, -1, 1, 1)
            std = torch.tensor(self._std, device=x.device).view(1, -1, 1, 1)
            return (x.float() / 255.0 - mean) / std
        return x
