"""Shared helpers for the search tests: the real configs/search.yaml, composed and shrunk."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Sequence

import lightning as L
from torch.utils.data import DataLoader

from omegaconf import DictConfig

from relnas.search.search_module import SearchModule
from relnas.utils.compose import CONFIG_DIR as _CONFIG_DIR, compose_config

CONFIG_DIR = str(_CONFIG_DIR)

TINY = [
    "data=synthetic", "data.num_train=96", "data.num_test=16", "data.image_size=16", "data.batch_size=24",
    "data.eval_batch_size=48", "data.cutout=4", "data.crop_padding=2",
    "supernet.C=4", "supernet.layers=3", "search.population_size=4", "search.generations=3",
    "search.progress=false", "search.plots=false", "trainer.accelerator=cpu", "logger=none",
]


def tiny_search_cfg(run_dir: Path, overrides: Sequence[str] = ()) -> DictConfig:
    return compose_config("search", TINY + list(overrides), output_dir=run_dir)


class RecordingSearchModule(SearchModule):
    """The real SearchModule that keeps every instance (``module._target_=helpers.search.RecordingSearchModule``)."""

    instances: list = []

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        RecordingSearchModule.instances.append(self)


# ---------------------------------------------------------------------------- one pair, real path

class _Batches(L.LightningDataModule):
    """Fixed training and validation batches, in the given order (no shuffling, no augmentation)."""

    def __init__(self, train_batches, valid_batches):
        super().__init__()
        self.train_batches, self.valid_batches = list(train_batches), list(valid_batches)

    def train_dataloader(self):
        return DataLoader(self.train_batches, batch_size=None)

    def val_dataloader(self):
        return DataLoader(self.valid_batches, batch_size=None)


class _Recorder(L.Callback):
    """Listed before the search loop: sees each candidate after its training and validation,
    before the loop restores the weight set."""

    def __init__(self):
        self.candidates, self._start = [], None

    def on_train_epoch_start(self, trainer, pl_module):
        self._start = {k: v.detach().clone() for k, v in pl_module.weight_set.state_dict().items()}

    def on_train_epoch_end(self, trainer, pl_module):
        ws = pl_module.weight_set
        self.candidates.append({"genotype": pl_module.arch.genotype, "val_loss": pl_module.candidate_losses()[1],
                                "start": self._start, "lr": pl_module.lr, "drop_prob": pl_module.drop_prob,
                                "trained": {k: v.detach().clone() for k, v in ws.state_dict().items()}})


def run_pair(weight_set, vector_a, vector_b, train_batches, valid_batches, *, lr: float, momentum: float = 0.9,
             weight_decay: float = 3e-4, grad_clip: float = 5.0, tie_rule: str = "first") -> dict:
    """Drive ONE pair (``vector_a``, ``vector_b``) through the project's real candidate path: the
    search engine (:class:`SearchEngine`: begin a candidate from a snapshot of the weight set, finish:
    restore, fast/slow, Eq. 6 merge) driven by :class:`SearchLightningAdapter` around :class:`SearchModule`'s
    training and validation steps
    in a Lightning Trainer, on fixed batches, generation 0 of 1 (learning rate ``lr``, drop path 0).

    Returns ``{"a": cand, "b": cand, "fast": "a"|"b", "order": "ab"|"ba", "merged": the weight set after
    the pair}`` where ``cand`` is ``{"val_loss", "start": the weight set when the candidate began,
    "trained": full state dict after training and validation}``, and ``order`` the order in which
    the members ran. The one place to re-point at another driver of the search."""
    import numpy as np

    from relnas.search import encoding
    from relnas.search.engine import SearchEngine, SearchSettings
    from relnas.search.executors import create_executor
    from relnas.search.lightning_adapter import SearchLightningAdapter
    from relnas.search.strategies import RelativeNAS

    class FixedPair(RelativeNAS):
        def init(self, rng):  # the population is the given pair
            self.alpha = np.stack([np.asarray(vector_a, np.float64), np.asarray(vector_b, np.float64)])
            self.velocity = np.zeros_like(self.alpha)

    strategy = FixedPair(population_size=2, generations=1, tie_rule=tie_rule)
    settings = SearchSettings(seed=0, lr=lr, lr_min=0.0, drop_path_prob=0.0)
    engine = SearchEngine(strategy, weight_set, settings, create_executor("sequential", strategy),
                          rng=np.random.default_rng(0))
    loop = SearchLightningAdapter(engine, progress=False, announce=False)
    module = SearchModule(weight_set, momentum=momentum, weight_decay=weight_decay, grad_clip=grad_clip,
                          channels_last=False)
    recorder = _Recorder()
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=2, callbacks=[recorder, loop], logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, check_val_every_n_epoch=1)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(configure_optimizers|does not have many workers|"
                                                  "smaller than the logging interval|LeafSpec).*")
        trainer.fit(module, datamodule=_Batches(train_batches, valid_batches))
    assert loop.done and len(recorder.candidates) == 2
    out = {"merged": {k: v.detach().clone() for k, v in weight_set.state_dict().items()}}
    names = {str(encoding.decode(vector_a)): "a", str(encoding.decode(vector_b)): "b"}
    out["order"] = "".join(names[str(c["genotype"])] for c in recorder.candidates)
    for cand in recorder.candidates:
        out[names[str(cand["genotype"])]] = cand
    fast = [r for r in loop.history if r["role"] == "fast"][0]["individual"]
    out["fast"] = "ab"[fast]
    return out


# ---------------------------------------------------------------------------- two members, one after the other

def members_one_after_the_other(ws, archs, seeds, data, drop_prob):
    """The sequential estimation of two members (each from the same weight set) with the concurrent
    path's step code (``Member``, eager): ``[(losses, trained tensors)]`` per member; the weight set is
    restored after each. The reference the two-member-at-once trainer is compared with."""
    import torch

    from relnas.search.candidate_step import Member
    from relnas.search.weight_set import restore, snapshot

    tensors, out = ws.tensors(), []
    for arch, seed, batches in zip(archs, seeds, data):
        before = snapshot(tensors, ws.keys_of(arch.groups))
        m = Member(ws, arch, 0.05, drop_prob, seed, momentum=0.9, weight_decay=3e-4, grad_clip=5.0,
                   channels_last=True, graph_backend=None, graph_warmup=1)
        ws.train()
        for x, y in batches:
            m.run("train", x, y)
        ws.eval()
        with torch.inference_mode():
            for x, y in batches:
                m.run("val", x, y)
        ws.train()
        out.append((m.losses().tolist(), snapshot(tensors, before)))
        restore(tensors, before)
    return out
