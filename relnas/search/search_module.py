"""LightningModule that trains and validates the current search candidate on the weight set.

One instance (and one Trainer) serves the whole search: before each Lightning epoch (= one
candidate's one-epoch estimation) the search's executor (:mod:`relnas.search.executors`, called
by the Lightning adapter :class:`relnas.search.callback.SearchLoop`) switches the candidate with
:meth:`SearchModule.begin_candidate` and reads its losses with :meth:`SearchModule.candidate_losses`. Each candidate
gets a fresh SGD optimizer over exactly the tensors it uses; the weight set is never copied.
Losses are accumulated on the device and read once per candidate (no host sync per step).

With CUDA graphs on (``cuda_graphs="auto"``, the default, on a GPU), each candidate's training step and validation step are
captured once as CUDA graphs and replayed (:class:`relnas.search.step_graph.StepGraph`): same
arithmetic, without the per-kernel launch cost that dominates at the paper's network size.
"""
from __future__ import annotations

import logging
from typing import Optional, Union

import lightning as L
import torch

from relnas.search.step_graph import BACKENDS, StepGraph, graph_totals
from relnas.search.concurrent import (PairTrainer, channels_last_input, drop_path_generator, mean_losses, train_step,
                                      val_step)
from relnas.search.weight_set import Arch, WeightSet

log = logging.getLogger(__name__)


def channels_last_for(setting: Union[bool, str], device_type: str) -> bool:
    """Whether a search on ``device_type`` uses the channels-last (NHWC) memory format:
    ``setting`` itself when it is a bool; for ``"auto"``, NHWC except on CUDA devices. On the
    2-core CPU NHWC trains a paper-size candidate 2.2x faster than NCHW; on an H200 with CUDA graphs
    NCHW ran a search's first generation (6 candidates, process warm-up included) in 22.8 s against
    35.8 s and measured 4.02 s per candidate after it against 4.34 s for NHWC in the benchmark
    (experiments/results/bench.md, 2026-11-28)."""
    if setting in (True, False):
        return bool(setting)
    if setting != "auto":
        raise ValueError(f"channels_last must be true, false or auto, got {setting!r}")
    return str(device_type) != "cuda"


class SearchModule(L.LightningModule):
    def __init__(self, weight_set: WeightSet, momentum: float = 0.9, weight_decay: float = 3e-4,
                 grad_clip: float = 5.0, channels_last: Union[bool, str] = True, cuda_graphs: Union[bool, str] = "auto",
                 graph_warmup: int = 1, graph_backend: Optional[str] = None):
        """``channels_last``: NHWC inputs and weights (``True``), NCHW (``False``), or ``"auto"``:
        NHWC except on a CUDA device (:func:`channels_last_for`), decided when the fit starts.
        ``cuda_graphs``: capture each candidate's train and validation steps as CUDA graphs:
        ``"auto"`` (on when the module runs on a CUDA device), ``True`` (the same, with a warning
        on other devices) or ``False`` (eager). ``graph_warmup``: eager steps before the capture.
        ``graph_backend``: ``"emulate"`` runs the graph bookkeeping on any device (tests).
        Both members of a pair at once: :meth:`run_pair`, called by the ``concurrent_pair``
        executor (:mod:`relnas.search.executors`)."""
        super().__init__()
        if graph_backend is not None and graph_backend not in BACKENDS:
            raise ValueError(f"unknown graph_backend {graph_backend!r}; known: {', '.join(BACKENDS)}")
        if cuda_graphs not in (True, False, "auto"):
            raise ValueError(f"cuda_graphs must be true, false or auto, got {cuda_graphs!r}")
        if channels_last not in (True, False, "auto"):
            raise ValueError(f"channels_last must be true, false or auto, got {channels_last!r}")
        self.automatic_optimization = False
        self.weight_set = weight_set
        self.momentum, self.weight_decay, self.grad_clip = momentum, weight_decay, grad_clip
        self.channels_last_setting = channels_last
        self.channels_last = channels_last_for(channels_last, "cpu")  # decided again on the device at fit start
        self.arch: Optional[Arch] = None
        self.drop_prob = 0.0
        self.lr = 0.0
        self._opt: Optional[torch.optim.Optimizer] = None
        self._params: list = []
        self._drop_gen: Optional[torch.Generator] = None  # the candidate's own drop-path stream
        self.cuda_graphs, self.graph_warmup, self.graph_backend = cuda_graphs, int(graph_warmup), graph_backend
        self.skip_epoch = False          # the executor trained this epoch's pair itself (concurrently)
        self._pair_trainer: Optional[PairTrainer] = None
        self._graphs: dict = {}          # "train"/"val" -> StepGraph of the current candidate
        self._graphs_broken = False      # a capture failed: the rest of the run is eager
        self._graph_pool = None          # the current candidate's CUDA graph memory pool (train + val)
        self._graph_stream = None        # one side stream for every warm-up and capture
        self.graph_stats = {"eager": 0, "captures": 0, "replays": 0}
        self.capture_seconds = 0.0       # host time spent capturing (includes torch.cuda.graph's sync + empty_cache)
        self.register_buffer("_train_sum", torch.zeros((), dtype=torch.float64), persistent=False)
        self.register_buffer("_train_n", torch.zeros((), dtype=torch.float64), persistent=False)
        self.register_buffer("_val_sum", torch.zeros((), dtype=torch.float64), persistent=False)
        self.register_buffer("_val_n", torch.zeros((), dtype=torch.float64), persistent=False)

    # ------------------------------------------------------------------ candidate switching
    def begin_candidate(self, arch: Arch, lr: float, drop_prob: float, seed: Optional[int] = None) -> None:
        """Make ``arch`` the trained candidate with a fresh SGD optimizer at ``lr``. ``seed``: the
        candidate's seed; its drop path then draws from its own generator
        (:func:`relnas.search.concurrent.drop_path_generator`), else from the global one."""
        self.arch, self.lr, self.drop_prob = arch, lr, drop_prob
        self._drop_gen = drop_path_generator(seed, self.device)
        self._release_graphs()
        self._params = self.weight_set.parameters_of(arch)
        self.weight_set.clear_grads()
        self._opt = torch.optim.SGD(self._params, lr=lr, momentum=self.momentum, weight_decay=self.weight_decay)
        for buf in (self._train_sum, self._train_n, self._val_sum, self._val_n):
            buf.zero_()

    def candidate_losses(self) -> tuple[float, float]:
        """(mean training loss, mean validation loss) of the current candidate; one host sync.

        That sync also makes the next ``begin_candidate`` safe with CUDA graphs: the optimizer's
        momentum buffers (made on the graphs' side stream, used by replays on the current one)
        are freed there only after every replay has finished."""
        vals = mean_losses(self._train_sum, self._train_n, self._val_sum, self._val_n).tolist()
        train, val, n_val = vals
        return train, (val if n_val > 0 else float("nan"))

    def configure_optimizers(self):  # optimizers are per candidate (begin_candidate)
        return None

    def graph_report(self) -> dict:
        """Steps so far by kind (``eager``, ``captures``, ``replays``) and ``capture_s``, the host
        seconds spent capturing CUDA graphs, over every candidate trained (the current one's live
        graphs and the concurrent-pair trainer's included). Cumulative: callers take differences."""
        live, live_s = graph_totals(self._graphs.values())
        report = {k: self.graph_stats[k] + live[k] for k in live}
        report["capture_s"] = self.capture_seconds + live_s + (
            self._pair_trainer.capture_seconds if self._pair_trainer is not None else 0.0)
        return report

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight_set(channels_last_input(x, self.channels_last), self.arch, self.drop_prob, self._drop_gen)

    # ------------------------------------------------------------------ both members at once
    def pair_trainer(self) -> PairTrainer:
        if self._pair_trainer is None:
            self._pair_trainer = PairTrainer(self.weight_set, momentum=self.momentum, weight_decay=self.weight_decay,
                                             grad_clip=self.grad_clip, channels_last=self.channels_last,
                                             graph_backend=self._graph_backend(), graph_warmup=self.graph_warmup)
        return self._pair_trainer

    def run_pair(self, archs, seeds, lr: float, drop_prob: float, train_batches, val_batches, context=None):
        """Both members of a pair at once (see :class:`PairTrainer.run`); Omega is left unchanged."""
        self._release_graphs()
        self.weight_set.clear_grads()
        trainer = self.pair_trainer()
        result = trainer.run(archs, seeds, lr, drop_prob, train_batches, val_batches,
                             **({"context": context} if context is not None else {}))
        for k, v in result.graph_stats.items():
            self.graph_stats[k] += v
        if trainer.graphs_broken:
            self._graphs_broken = True
        return result

    def on_train_batch_start(self, batch, batch_idx):
        if self.skip_epoch:
            return -1  # this epoch's pair is done: skip the epoch's batches and its validation
        return None

    # ------------------------------------------------------------------ CUDA graphs
    def _graph_backend(self) -> Optional[str]:
        if self.cuda_graphs is False or self._graphs_broken:
            return None
        if self.graph_backend is not None:
            return self.graph_backend
        return "cuda" if self.device.type == "cuda" else None

    def on_fit_start(self) -> None:
        # the module owns Omega's memory format: decided here, where the device is known
        self.channels_last = channels_last_for(self.channels_last_setting, self.device.type)
        self.weight_set.to(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)
        if self.cuda_graphs is True and self.graph_backend is None and self.device.type != "cuda":
            log.warning("search.cuda_graphs=true has no effect on %s: the steps run eagerly", self.device)

    def _run(self, kind: str, step, eager_step, *inputs: torch.Tensor) -> None:
        """Run one step of ``kind`` ("train"/"val"): through the candidate's StepGraph when graphs
        are on, else eagerly."""
        backend = self._graph_backend()
        if backend is None:
            eager_step(*inputs)
            return
        graph = self._graphs.get(kind)
        if graph is None:
            if backend == "cuda" and self._graph_pool is None:
                self._graph_pool = torch.cuda.graph_pool_handle()
                if self._graph_stream is None:
                    self._graph_stream = torch.cuda.Stream()
            graph = self._graphs[kind] = StepGraph(step, eager_step=eager_step, warmup=self.graph_warmup,
                                                   backend=backend, on_capture_failure=self._capture_failed,
                                                   pool=self._graph_pool, stream=self._graph_stream,
                                                   generators=[self._drop_gen])
        graph(*inputs)

    def _capture_failed(self) -> None:
        self._graphs_broken = True  # StepGraph has logged why; do not try again for every candidate
        self.weight_set.clear_grads()

    def _release_graphs(self) -> None:
        stats, seconds = graph_totals(self._graphs.values())
        for k, v in stats.items():
            self.graph_stats[k] += v
        self.capture_seconds += seconds
        for graph in self._graphs.values():
            graph.release()
        self._graphs = {}
        # a pool whose graphs are all released must not be captured into again: a new one per candidate
        self._graph_pool = None

    def on_fit_end(self) -> None:
        self._release_graphs()

    def on_validation_model_zero_grad(self) -> None:
        # Lightning's default (self.zero_grad()) walks every module for its parameters once per
        # candidate; Omega's index does the same (grads to None) without the walk
        self.weight_set.clear_grads()

    # ------------------------------------------------------------------ loops
    def _train_step(self, x: torch.Tensor, y: torch.Tensor, graphed: bool = True) -> None:
        # graphed: loss.backward(); Lightning's manual_backward adds only Python hooks, which a graph cannot replay
        train_step(self.weight_set, self.arch, x, y, drop_prob=self.drop_prob, generator=self._drop_gen,
                   params=self._params, opt=self._opt, grad_clip=self.grad_clip, loss_sum=self._train_sum,
                   count=self._train_n, channels_last=self.channels_last,
                   backward=None if graphed else self.manual_backward)

    def _train_step_eager(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self._train_step(x, y, graphed=False)

    def _val_step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        val_step(self.weight_set, self.arch, x, y, loss_sum=self._val_sum, count=self._val_n,
                 channels_last=self.channels_last)

    def training_step(self, batch, batch_idx):
        x, y = batch
        self._run("train", self._train_step, self._train_step_eager, x, y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self._run("val", self._val_step, self._val_step, x, y)
