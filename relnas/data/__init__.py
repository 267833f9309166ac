"""Data: Lightning DataModules chosen by Hydra ``data=<name>``.

Small datasets live in memory as uint8 tensors (optionally on the GPU) and are augmented in
batches on the device (:class:`TensorDataModule`, :class:`TensorBatchLoader`,
:class:`BatchAugment`); ImageFolder trees use a conventional DataLoader.
"""
from __future__ import annotations

from typing import Any

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
from relnas.data.errors import DatasetNotFoundError
from relnas.data.imagefolder import ImageFolderDataModule
from relnas.data.loader import TensorBatchLoader

DATAMODULES: dict[str, type] = {
    "cifar10": CIFAR10DataModule,
    "cifar100": CIFAR100DataModule,
    "fashion_mnist": FashionMNISTDataModule,
    "digits": DigitsDataModule,
    "imagefolder": ImageFolderDataModule,
    "synthetic": SyntheticDataModule,
}


def create_datamodule(name: str, **kwargs: Any) -> Any:
    """Instantiate the DataModule registered as ``name`` with ``kwargs``."""
    try:
        cls = DATAMODULES[name]
    except KeyError:
        raise KeyError(f"unknown dataset {name!r}; known: {', '.join(sorted(DATAMODULES))}") from None
    return cls(**kwargs)


__all__ = [
    "BatchAugment", "TensorBatchLoader", "TensorDataModule", "DatasetNotFoundError",
    "CIFAR10DataModule", "CIFAR100DataModule", "FashionMNISTDataModule", "DigitsDataModule",
    "ImageFolderDataModule", "SyntheticDataModule", "DATAMODULES", "create_datamodule", "read_idx",
]
