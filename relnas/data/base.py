"""In-memory tensor DataModule: the base of every small dataset (CIFAR, Fashion-MNIST, digits, ...).

The whole dataset lives in memory as uint8 NCHW images and int64 labels, by default on the
training device (moved once in ``setup``). Loaders are :class:`TensorBatchLoader`\\ s that slice
these tensors; augmentation and normalisation run batched on the device in
``on_after_batch_transfer`` (:class:`BatchAugment`). This removes the per-image PIL/worker
pipeline, which otherwise dominates the cost of the one-epoch candidate trainings of the search.

Splits:
    * ``train_portion=None`` (training mode): train = the whole training set (or all but a held
      out ``val_size`` images, chosen by a permutation seeded with ``split_seed``); val = the
      held-out images when ``val_size > 0``, else the test set; test = the test set.
    * ``train_portion`` in (0, 1) (search mode): the training set is permuted with
      ``split_seed``; the first ``round(train_portion * n)`` images are the search-training split
      (``train_dataloader``), the rest the search-validation split (``val_dataloader``). The test
      set is not used by the search (``test_dataloader`` still serves it).

Randomness: ``set_seed(seed)`` reseeds the training shuffle and the augmentation generator (the
search calls it once per candidate, so a resumed search is bit-exact). Both generators are also
saved and restored by ``state_dict``/``load_state_dict`` (Lightning checkpoints them).
"""
from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any

import lightning as L
import torch

from relnas.data.augment import BatchAugment
from relnas.data.loader import TensorBatchLoader

__all__ = ["TensorDataModule"]

log = logging.getLogger(__name__)

_AUG_STREAM = 0x5EED_A06  # separates the augmentation stream from the shuffling stream


def _floats(v: Sequence[float] | float) -> tuple[float, ...]:
    return (float(v),) if isinstance(v, (int, float)) else tuple(float(a) for a in v)


def _aug_seed(seed: int, rank: int) -> int:
    return (int(seed) * 1_000_003 + _AUG_STREAM + 7919 * int(rank)) % (2**63 - 1)


class TensorDataModule(L.LightningDataModule):
    """Base class: subclasses implement :meth:`_load` (and optionally :meth:`_download`).

    Args:
        data_dir: dataset root directory.
        batch_size: training batch size (per process).
        eval_batch_size: batch size for validation/test.
        train_portion: None (training mode) or a float in (0, 1) (search mode), see module doc.
        split_seed: seed of the permutation that makes the search / held-out split.
        val_size: in training mode, hold out this many training images as validation (0: the
            test set is the validation set).
        augment: apply the training augmentation (crop/flip/cutout) during training.
        crop_padding: zero padding for the random crop (0 disables).
        flip: random horizontal flip.
        cutout: Cutout side length (0 disables).
        on_device: move the tensors to the trainer's root device in ``setup`` (when a trainer is
            attached).
        download: download the dataset (in ``prepare_data``) when it is missing.
        seed: initial seed for shuffling and augmentation (see ``set_seed``).
        mean, std: override the dataset's normalisation statistics.
        val_augment: in search mode, validate on the search-validation split WITH the training
            augmentation (crop/flip/Cutout, as the authors' search does: its two loaders share one
            dataset object). Default False: clean validation images.
        subset: keep only this many training images (a random subset drawn with ``split_seed``,
            before any split); None keeps the whole training set. The test set is unchanged.
    """

    #: dataset name (registry key)
    name: str = "tensor"
    default_mean: tuple[float, ...] = (0.5,)
    default_std: tuple[float, ...] = (0.5,)

    def __init__(
        self,
        data_dir: str = "data",
        batch_size: int = 256,
        eval_batch_size: int = 1024,
        train_portion: float | None = None,
        split_seed: int = 0,
        val_size: int = 0,
        augment: bool = True,
        crop_padding: int = 4,
        flip: bool = True,
        cutout: int = 0,
        on_device: bool = True,
        download: bool = False,
        seed: int = 0,
        mean: Sequence[float] | float | None = None,
        std: Sequence[float] | float | None = None,
        subset: int | None = None,
        val_augment: bool = False,
    ) -> None:
        super().__init__()
        if train_portion is not None:
            train_portion = float(train_portion)
            if not 0.0 < train_portion < 1.0:
                raise ValueError(f"train_portion must be in (0, 1) or None, got {train_portion}")
        if int(val_size) < 0:
            raise ValueError(f"val_size must be >= 0, got {val_size}")
        if int(batch_size) < 1 or int(eval_batch_size) < 1:
            raise ValueError(f"batch sizes must be >= 1, got {batch_size} and {eval_batch_size}")
        if subset is not None and int(subset) < 2:
            raise ValueError(f"subset must be None or an integer >= 2, got {subset}")
        self.subset = None if subset is None else int(subset)
        self.data_dir = str(data_dir)
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size)
        self.train_portion = train_portion
        self.split_seed = int(split_seed)
        self.val_size = int(val_size)
        self.augment = bool(augment)
        self.val_augment = bool(val_augment)
        self.on_device = bool(on_device)
        self.download = bool(download)
        self._mean = _floats(self.default_mean if mean is None else mean)
        self._std = _floats(self.default_std if std is None else std)
        self.batch_augment = BatchAugment(crop_padding=crop_padding, flip=flip, cutout=cutout,
                                          mean=self._mean, std=self._std)
        self._seed = int(seed)
        self._train_gen = torch.Generator()
        self._aug_gen = torch.Generator()
        self._aug_rank = 0
        self.set_seed(self._seed)
        self.train_data: tuple[torch.Tensor, torch.Tensor] | None = None
        self.val_data: tuple[torch.Tensor, torch.Tensor] | None = None
        self.test_data: tuple[torch.Tensor, torch.Tensor] | None = None
        #: where the data came from (set by ``_load``: a path, or how it was made); logged once
        self.source: str | None = None

    # ------------------------------------------------------------------ to implement
    def _load(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return ``(x_train, y_train, x_test, y_test)``: uint8 NCHW and int64 CPU tensors.

        Raise :class:`DatasetNotFoundError` when the data is missing."""
        raise NotImplementedError

    def _download(self) -> None:
        """Fetch the dataset into ``data_dir`` (only called when ``download`` is true)."""

    # ------------------------------------------------------------------ properties
    @property
    def num_classes(self) -> int:
        raise NotImplementedError

    @property
    def in_channels(self) -> int:
        raise NotImplementedError

    @property
    def image_size(self) -> int:
        raise NotImplementedError

    @property
    def mean(self) -> tuple[float, ...]:
        return self._mean

    @property
    def std(self) -> tuple[float, ...]:
        return self._std

    @property
    def search_mode(self) -> bool:
        return self.train_portion is not None

    @property
    def device(self) -> torch.device | None:
        return None if self.train_data is None else self.train_data[0].device

    # ------------------------------------------------------------------ seeding
    def _rank_world(self) -> tuple[int, int]:
        trainer = self.trainer
        if trainer is not None:
            return int(trainer.global_rank), int(trainer.world_size)
        return 0, 1

    def set_seed(self, seed: int) -> None:
        """Reseed the training shuffle and the augmentation generator (per rank)."""
        self._seed = int(seed)
        self._aug_rank = self._rank_world()[0]
        self._train_gen.manual_seed(self._seed)
        self._aug_gen.manual_seed(_aug_seed(self._seed, self._aug_rank))

    def state_dict(self) -> dict[str, Any]:
        return {"seed": self._seed, "train_generator": self._train_gen.get_state(),
                "augment_generator": self._aug_gen.get_state(), "augment_rank": self._aug_rank}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not state_dict:
            return
        self._seed = int(state_dict["seed"])
        self._train_gen.set_state(state_dict["train_generator"])
        self._aug_rank = int(state_dict.get("augment_rank", 0))
        if self._aug_rank == self._rank_world()[0]:
            self._aug_gen.set_state(state_dict["augment_generator"])
        else:
            self._aug_rank = self._rank_world()[0]
            self._aug_gen.manual_seed(_aug_seed(self._seed, self._aug_rank))

    # ------------------------------------------------------------------ Lightning hooks
    def prepare_data(self) -> None:
        if self.download:
            self._download()

    def setup(self, stage: str | None = None) -> None:
        if self.train_data is None:
            self._load_and_split()
        trainer = self.trainer
        if trainer is not None:
            rank = int(trainer.global_rank)
            if rank != self._aug_rank:  # make the augmentation stream differ per rank
                self._aug_rank = rank
                self._aug_gen.manual_seed(_aug_seed(self._seed, rank))
            if self.on_device:
                self.to(trainer.strategy.root_device)

    def to(self, device: torch.device | str) -> TensorDataModule:
        """Move the in-memory tensors to ``device`` (no-op when already there)."""
        device = torch.device(device)
        for attr in ("train_data", "val_data", "test_data"):
            pair = getattr(self, attr)
            if pair is not None and pair[0].device != device:
                setattr(self, attr, (pair[0].to(device), pair[1].to(device)))
        return self

    def _load_and_split(self) -> None:
        if self.download:
            self._download()
        x_tr, y_tr, x_te, y_te = self._load()
        if self.source is None:
            self.source = f"{self.name} ({self.data_dir})"
        n_all = len(x_tr)
        x_tr, x_te = x_tr.contiguous(), x_te.contiguous()
        y_tr, y_te = y_tr.to(torch.int64), y_te.to(torch.int64)
        if self.subset is not None and self.subset >= len(x_tr):
            log.warning("data subset=%d is not smaller than the training set (%d images): using all %d",
                        self.subset, len(x_tr), len(x_tr))
        if self.subset is not None and self.subset < len(x_tr):
            keep = torch.randperm(len(x_tr), generator=torch.Generator().manual_seed(self.split_seed + 7777))
            keep = keep[: self.subset].sort().values
            x_tr, y_tr = x_tr[keep], y_tr[keep]
        log.info("data: %s from %s (%s training, %d test images)", self.name, self.source,
                 f"a random {len(x_tr)} of {n_all}" if len(x_tr) < n_all else str(n_all), len(x_te))
        n = len(x_tr)
        g = torch.Generator().manual_seed(self.split_seed)
        if self.train_portion is not None:
            k = min(max(int(round(self.train_portion * n)), 1), n - 1)
            perm = torch.randperm(n, generator=g)
            tr, va = perm[:k].sort().values, perm[k:].sort().values
            self.train_data = (x_tr[tr], y_tr[tr])
            self.val_data = (x_tr[va], y_tr[va])
        elif self.val_size > 0:
            if self.val_size >= n:
                raise ValueError(f"val_size={self.val_size} must be smaller than the training set ({n})")
            perm = torch.randperm(n, generator=g)
            tr, va = perm[: n - self.val_size].sort().values, perm[n - self.val_size:].sort().values
            self.train_data = (x_tr[tr], y_tr[tr])
            self.val_data = (x_tr[va], y_tr[va])
        else:
            self.train_data = (x_tr, y_tr)
            self.val_data = (x_te, y_te)
        self.test_data = (x_te, y_te)

    # ------------------------------------------------------------------ loaders
    def _loader(self, attr: str, train: bool, rank: int | None, world_size: int | None) -> TensorBatchLoader:
        if getattr(self, attr) is None:
            self.setup()
        x, y = getattr(self, attr)
        r, w = self._rank_world()
        rank = r if rank is None else rank
        world_size = w if world_size is None else world_size
        if train:
            return TensorBatchLoader(x, y, self.batch_size, shuffle=True, drop_last=False,
                                     generator=self._train_gen, rank=rank, world_size=world_size,
                                     remainder="drop")
        return TensorBatchLoader(x, y, self.eval_batch_size, shuffle=False, drop_last=False,
                                 rank=rank, world_size=world_size, remainder="pad")

    def train_dataloader(self, rank: int | None = None, world_size: int | None = None) -> TensorBatchLoader:
        """Shuffled training batches (search-train split in search mode); sharded across ranks
        by dropping the remainder (shards disjoint)."""
        return self._loader("train_data", True, rank, world_size)

    def val_dataloader(self, rank: int | None = None, world_size: int | None = None) -> TensorBatchLoader:
        """Validation batches in order (search-validation split in search mode); sharded across
        ranks by padding (every image evaluated, up to world_size-1 of them twice)."""
        return self._loader("val_data", False, rank, world_size)

    def test_dataloader(self, rank: int | None = None, world_size: int | None = None) -> TensorBatchLoader:
        """Test-set batches in order (sharded like ``val_dataloader``)."""
        return self._loader("test_data", False, rank, world_size)

    # ------------------------------------------------------------------ transforms
    def preprocess(self, x: torch.Tensor, train: bool) -> torch.Tensor:
        """uint8 NCHW -> float32 NCHW: augmented + normalised when ``train`` and ``augment``,
        else just normalised."""
        if train and self.augment:
            return self.batch_augment(x, self._aug_gen)
        return self.batch_augment.normalize(x)

    def search_batches(self, seed: int, train: bool, device: torch.device | str | None = None) -> Iterator:
        """One candidate's epoch of preprocessed batches ``(x, y)`` with private generators: the
        batches the Lightning loop yields after ``set_seed(seed)`` (training: shuffled and augmented;
        else the validation split, normalised), without touching this module's own generators, so
        that two candidates can draw their batches interleaved (``relnas.search.candidate_step``).
        Made lazily: each batch's work happens at its ``next()``. With ``val_augment`` use
        :meth:`search_epoch` (the validation batches continue the training's augmentation stream)."""
        return self._search_batches(seed, train, device, self._search_augment_generator(seed))

    def search_epoch(self, seed: int, device: torch.device | str | None = None) -> tuple[Iterator, Iterator]:
        """One candidate's training and validation batches (see :meth:`search_batches`), drawn from
        one augmentation stream as in the Lightning loop: with ``val_augment`` the validation
        batches are augmented by the generator the training batches advanced (consume the
        training batches first)."""
        augment = self._search_augment_generator(seed)
        return (self._search_batches(seed, True, device, augment),
                self._search_batches(seed, False, device, augment))

    def _search_augment_generator(self, seed: int) -> torch.Generator:
        augment = torch.Generator()
        augment.manual_seed(_aug_seed(int(seed), self._rank_world()[0]))
        return augment

    def _search_batches(self, seed: int, train: bool, device, augment: torch.Generator) -> Iterator:
        rank = self._rank_world()[0]
        shuffle = torch.Generator()
        shuffle.manual_seed(int(seed))
        if train:
            if self.train_data is None:
                self.setup()
            x, y = self.train_data
            _, world = self._rank_world()
            loader = TensorBatchLoader(x, y, self.batch_size, shuffle=True, drop_last=False, generator=shuffle,
                                       rank=rank, world_size=world, remainder="drop")
        else:
            loader = self.val_dataloader()
        augmented = self.augment and (train or (self.val_augment and self.search_mode))
        for xb, yb in loader:
            if device is not None:
                xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
            if augmented:
                yield self.batch_augment(xb, augment), yb
            else:
                yield self.batch_augment.normalize(xb), yb

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        x, y = batch
        if x.dtype != torch.uint8:  # already preprocessed
            return batch
        trainer = self.trainer
        train = trainer is not None and bool(trainer.training)
        if not train and self.val_augment and self.search_mode and trainer is not None and \
                (trainer.validating or trainer.sanity_checking):
            train = True  # the search-validation split with the training augmentation (val_augment)
        return self.preprocess(x, train=train), y

    def __repr__(self) -> str:
        mode = f"search(train_portion={self.train_portion})" if self.search_mode else "train"
        return (f"{type(self).__name__}(data_dir={self.data_dir!r}, mode={mode}, batch_size={self.batch_size}, "
                f"augment={self.augment}, {self.batch_augment!r})")
