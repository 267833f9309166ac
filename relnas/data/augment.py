"""Batched, on-device image augmentation (the DARTS / RelativeNAS CIFAR pipeline).

The torchvision per-image pipeline ``RandomCrop(32, padding=4) -> RandomHorizontalFlip ->
ToTensor -> Normalize -> Cutout(16)`` is reproduced here on whole uint8 NCHW batches, without a
python loop over samples, on whatever device the batch lives on.

Randomness: all random parameters (crop offsets, flip flags, cutout centres) are drawn on the CPU
from the ``torch.Generator`` given to ``__call__`` and then moved to the batch's device. They are
few numbers per sample, so this is cheap, and it makes the augmentation bit-identical for a seed
whatever device runs it.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["BatchAugment"]


def _as_tuple(v: float | Sequence[float]) -> tuple[float, ...]:
    if isinstance(v, (int, float)):
        return (float(v),)
    return tuple(float(a) for a in v)


class BatchAugment:
    """Random crop (zero padding) + horizontal flip + normalisation + Cutout on uint8 NCHW batches.

    Args:
        crop_padding: pixels of zero padding on each side before a random crop back to the input
            size (0 disables cropping). Padding is black in pixel space (value 0 before
            normalisation), as torchvision's ``RandomCrop(padding=p)``.
        flip: random horizontal flip with probability 0.5 per sample.
        cutout: side of the square zeroed per sample (0 disables). The centre is uniform over
            the image and the square is clipped at the borders (DARTS ``Cutout``); it is applied
            after normalisation, so the region is 0 in the normalised output.
        mean, std: per-channel normalisation in [0, 1] pixel units (a single value broadcasts).

    ``__call__(x, generator)`` returns float32 NCHW (contiguous) on ``x.device``;
    ``normalize(x)`` is the evaluation path (float + normalisation only).
    """

    def __init__(
        self,
        crop_padding: int = 4,
        flip: bool = True,
        cutout: int = 0,
        mean: float | Sequence[float] = 0.5,
        std: float | Sequence[float] = 0.5,
    ) -> None:
        if crop_padding < 0 or cutout < 0:
            raise ValueError(f"crop_padding and cutout must be >= 0, got {crop_padding} and {cutout}")
        self.crop_padding = int(crop_padding)
        self.flip = bool(flip)
        self.cutout = int(cutout)
        self.mean = _as_tuple(mean)
        self.std = _as_tuple(std)
        if len(self.mean) != len(self.std):
            raise ValueError(f"mean and std lengths differ: {len(self.mean)} vs {len(self.std)}")
        self._cache: dict[tuple[torch.device, int], tuple[torch.Tensor, torch.Tensor]] = {}

    def __repr__(self) -> str:
        return (f"BatchAugment(crop_padding={self.crop_padding}, flip={self.flip}, cutout={self.cutout}, "
                f"mean={self.mean}, std={self.std})")

    # ------------------------------------------------------------------ normalisation
    def _scale_shift(self, device: torch.device, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
        key = (device, channels)
        if key not in self._cache:
            mean = torch.tensor(self.mean, dtype=torch.float32)
            std = torch.tensor(self.std, dtype=torch.float32)
            if mean.numel() == 1:
                mean, std = mean.expand(channels), std.expand(channels)
            elif mean.numel() != channels:
                raise ValueError(f"mean/std have {mean.numel()} channels, the batch has {channels}")
            # (x/255 - mean)/std == x * scale + shift
            scale = 1.0 / (255.0 * std)
            shift = -mean / std
            self._cache[key] = (scale.view(1, channels, 1, 1).to(device), shift.view(1, channels, 1, 1).to(device))
        return self._cache[key]

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 (or float in 0..255) NCHW -> normalised float32 NCHW; the evaluation transform."""
        if x.dim() != 4:
            raise ValueError(f"expected an NCHW batch, got shape {tuple(x.shape)}")
        scale, shift = self._scale_shift(x.device, x.shape[1])
        return torch.addcmul(shift, x.float(), scale).contiguous()

    # ------------------------------------------------------------------ training path
    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"expected an NCHW batch, got shape {tuple(x.shape)}")
        n, _, h, w = x.shape
        device = x.device
        p = self.crop_padding
        # Draw every random number on the CPU, in a fixed order, then move to the device.
        if p > 0:
            oy = torch.randint(0, 2 * p + 1, (n,), generator=generator)
            ox = torch.randint(0, 2 * p + 1, (n,), generator=generator)
        if self.flip:
            flips = torch.rand((n,), generator=generator) < 0.5
        if self.cutout > 0:
            cy = torch.randint(0, h, (n,), generator=generator)
            cx = torch.randint(0, w, (n,), generator=generator)

        if p > 0 or self.flip:
            rows = torch.arange(h).expand(n, h)
            cols = torch.arange(w).expand(n, w)
            if self.flip:
                cols = torch.where(flips[:, None], (w - 1) - cols, cols)
            if p > 0:
                rows = rows + oy[:, None]
                cols = cols + ox[:, None]
                x = F.pad(x, (p, p, p, p))  # zeros in pixel space
            rows = rows.to(device, non_blocking=True)
            cols = cols.to(device, non_blocking=True)
            # Two gathers (rows, then columns): vectorised per-sample crop and flip.
            c, wp = x.shape[1], x.shape[3]
            x = torch.gather(x, 2, rows[:, None, :, None].expand(n, c, h, wp))
            x = torch.gather(x, 3, cols[:, None, None, :].expand(n, c, h, w))

        out = self.normalize(x)

        if self.cutout > 0:
            half = self.cutout // 2
            y1 = (cy - half).clamp(0, h)
            y2 = (cy + half).clamp(0, h)
            x1 = (cx - half).clamp(0, w)
            x2 = (cx + half).clamp(0, w)
            bounds = torch.stack([y1, y2, x1, x2]).to(device, non_blocking=True)
            r = torch.arange(h, device=device)
            q = torch.arange(w, device=device)
            in_rows = (r[None, :] >= bounds[0][:, None]) & (r[None, :] < bounds[1][:, None])  # (n, h)
            in_cols = (q[None, :] >= bounds[2][:, None]) & (q[None, :] < bounds[3][:, None])  # (n, w)
            keep = ~(in_rows[:, :, None] & in_cols[:, None, :])  # (n, h, w)
            out = out * keep[:, None].to(out.dtype)
        return out
