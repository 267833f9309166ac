"""Data: Lightning DataModules chosen by Hydra ``data=<name>``.

Small datasets live in memory as uint8 tensors (optionally on the GPU) and are augmented in
batches on the device (:class:`TensorDataModule`, :class:`TensorBatchLoader`,
:class:`BatchAugment`); ImageFolder trees use a conventional DataLoader. The config group
``configs/data/`` is the list of data modules (each file's ``_target_``).
"""
from __future__ import annotations

from relnas.data.augment import BatchAugment
from relnas.data.base import TensorDataModule
from relnas.data.datasets import (
    CIFAR10DataModule,
    CIFAR100DataModule,
    DigitsDataModule,
    FashionMNISTDataModule,
    SyntheticDataModule,
    read_idx,
)
from relnas.data.imagefolder import ImageFolderDataModule
from relnas.data.loader import TensorBatchLoader
from relnas.errors import DatasetNotFoundError

__all__ = [
    "BatchAugment", "TensorBatchLoader", "TensorDataModule", "DatasetNotFoundError",
    "CIFAR10DataModule", "CIFAR100DataModule", "FashionMNISTDataModule", "DigitsDataModule",
    "ImageFolderDataModule", "SyntheticDataModule", "read_idx",
]
