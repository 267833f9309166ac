"""LightningModule that trains and validates the current search candidate on the weight set.

One instance (and one Trainer) serves the whole search: the search-loop callback
(:class:`relnas.search.callback.SearchLoop`) switches the candidate before each Lightning epoch
(= one candidate's one-epoch estimation) with :meth:`SearchModule.begin_candidate`. Each candidate
gets a fresh SGD optimizer over exactly the tensors it uses; the weight set is never copied.
Losses are accumulated on the device and read once per candidate (no host sync per step).
"""
from __future__ import annotations

from typing import Optional

import lightning as L
import torch
import torch.nn.functional as F

from relnas.search.weight_set import Arch, WeightSet


class SearchModule(L.LightningModule):
    def __init__(self, weight_set: WeightSet, momentum: float = 0.9, weight_decay: float = 3e-4,
                 grad_clip: float = 5.0, channels_last: bool = True):
        super().__init__()
        self.automatic_optimization = False
        self.weight_set = weight_set
        self.momentum, self.weight_decay, self.grad_clip = momentum, weight_decay, grad_clip
        self.channels_last = channels_last
        self.arch: Optional[Arch] = None
        self.drop_prob = 0.0
        self.lr = 0.0
        self._opt: Optional[torch.optim.Optimizer] = None
        self._params: list = []
        self.register_buffer("_train_sum", torch.zeros((), dtype=torch.float64), persistent=False)
        self.register_buffer("_train_n", torch.zeros((), dtype=torch.float64), persistent=False)
        self.register_buffer("_val_sum", torch.zeros((), dtype=torch.float64), persistent=False)
        self.register_buffer("_val_n", torch.zeros((), dtype=torch.float64), persistent=False)

    # ------------------------------------------------------------------ candidate switching
    def begin_candidate(self, arch: Arch, lr: float, drop_prob: float) -> None:
        """Make ``arch`` the trained candidate with a fresh SGD optimizer at ``lr``."""
        self.arch, self.lr, self.drop_prob = arch, lr, drop_prob
        self._params = self.weight_set.parameters_of(arch)
        for p in self.weight_set.parameters():
            p.grad = None
        self._opt = torch.optim.SGD(self._params, lr=lr, momentum=self.momentum, weight_decay=self.weight_decay)
        for buf in (self._train_sum, self._train_n, self._val_sum, self._val_n):
            buf.zero_()

    def candidate_losses(self) -> tuple[float, float]:
        """(mean training loss, mean validation loss) of the current candidate; one host sync."""
        vals = torch.stack([self._train_sum / self._train_n.clamp_min(1), self._val_sum / self._val_n.clamp_min(1),
                            self._val_n]).tolist()
        train, val, n_val = vals
        return train, (val if n_val > 0 else float("nan"))

    def configure_optimizers(self):  # optimizers are per candidate (begin_candidate)
        return None

    def _input(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight_set(self._input(x), self.arch, self.drop_prob)

    # ------------------------------------------------------------------ loops
    def training_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        self.manual_backward(loss)
        if self.grad_clip and self.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self._params, self.grad_clip, foreach=True)
        self._opt.step()
        self._opt.zero_grad(set_to_none=True)
        n = y.numel()
        self._train_sum += loss.detach().double() * n
        self._train_n += n

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        self._val_sum += F.cross_entropy(logits.float(), y, reduction="sum").double()
        self._val_n += y.numel()
