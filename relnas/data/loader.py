"""A minimal re-iterable batch loader over in-memory tensors (no workers, no collation)."""
from __future__ import annotations

import math
from collections.abc import Iterator

import torch

__all__ = ["TensorBatchLoader"]


class TensorBatchLoader:
    """Yields ``(x, y)`` batches by slicing in-memory tensors (which may live on the GPU).

    Args:
        x, y: images (uint8 NCHW) and labels (int64), same length, same device.
        batch_size: batch size (per rank).
        shuffle: draw a fresh random permutation each epoch (each ``iter()``) from this loader's
            ``torch.Generator`` (a CPU generator; the permutation is then moved to the data's
            device). Without shuffling, batches are contiguous slices (views, no copies).
        drop_last: drop the last incomplete batch.
        seed: seed of the generator (``set_seed`` resets it).
        generator: use this generator instead of creating one (e.g. one owned by a DataModule so
            its state survives re-creation of loaders); ``seed`` is then ignored.
        rank, world_size: distributed sharding. Every rank must use the same seed (the
            permutation is the same on all ranks) and rank ``r`` takes ``perm[r::world_size]``.
        remainder: what to do when ``len(x)`` is not a multiple of ``world_size``, so that every
            rank gets the same number of samples (collectives stay in step):
            ``"drop"`` (default) drops the last ``len(x) % world_size`` samples of the
            (shuffled) order, so shards are exactly disjoint;
            ``"pad"`` repeats samples from the start of the order (as ``DistributedSampler``
            with ``drop_last=False``), so every sample is seen but a few twice.
            With ``world_size == 1`` nothing is dropped or padded.

    The epoch's permutation is drawn lazily, at the first ``next()`` (``__iter__`` is a
    generator), not at ``iter()``: Lightning calls ``iter()`` on the first epoch's loader before
    ``on_train_epoch_start`` (it does not prefetch sized iterables), so a ``set_seed`` in that hook
    still governs the epoch's order.
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        batch_size: int,
        shuffle: bool = False,
        drop_last: bool = False,
        seed: int = 0,
        generator: torch.Generator | None = None,
        rank: int = 0,
        world_size: int = 1,
        remainder: str = "drop",
    ) -> None:
        if len(x) != len(y):
            raise ValueError(f"x and y lengths differ: {len(x)} vs {len(y)}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"bad rank/world_size: {rank}/{world_size}")
        if remainder not in ("drop", "pad"):
            raise ValueError(f"remainder must be 'drop' or 'pad', got {remainder!r}")
        self.x, self.y = x, y
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.rank, self.world_size = int(rank), int(world_size)
        self.remainder = remainder
        if generator is None:
            generator = torch.Generator()
            generator.manual_seed(int(seed))
        self.generator = generator

    # ------------------------------------------------------------------ sizes
    @property
    def num_samples(self) -> int:
        """Samples this rank yields per epoch."""
        n = len(self.x)
        if self.world_size == 1:
            return n
        return n // self.world_size if self.remainder == "drop" else math.ceil(n / self.world_size)

    def __len__(self) -> int:
        m = self.num_samples
        return m // self.batch_size if self.drop_last else math.ceil(m / self.batch_size)

    def set_seed(self, seed: int) -> None:
        """Reset the shuffling generator."""
        self.generator.manual_seed(int(seed))

    # ------------------------------------------------------------------ iteration
    def _indices(self) -> torch.Tensor | None:
        """This rank's sample order, or None for the identity (contiguous slices)."""
        n = len(self.x)
        if not self.shuffle and self.world_size == 1:
            return None
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        if self.world_size > 1:
            m = self.num_samples
            total = m * self.world_size
            if total > n:  # pad by wrapping around
                order = torch.cat([order, order[: total - n]])
            order = order[:total][self.rank :: self.world_size]
        return order.to(self.x.device, non_blocking=True)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        idx = self._indices()
        m = self.num_samples
        b = self.batch_size
        stop = (m // b) * b if self.drop_last else m
        for start in range(0, stop, b):
            end = min(start + b, m)
            if idx is None:
                yield self.x[start:end], self.y[start:end]
            else:
                sel = idx[start:end]
                yield self.x.index_select(0, sel), self.y.index_select(0, sel)

    def __repr__(self) -> str:
        return (f"TensorBatchLoader(n={len(self.x)}, batch_size={self.batch_size}, shuffle={self.shuffle}, "
                f"rank={self.rank}/{self.world_size}, device={self.x.device})")
