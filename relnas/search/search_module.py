"""LightningModule that trains and validates the current search candidate on the weight set.

One instance (and one Trainer) serves the whole search: before each Lightning epoch (= one
candidate's one-epoch estimation) the search's executor (:mod:`relnas.search.executors`, called
by the Lightning adapter :class:`relnas.search.lightning_adapter.SearchLightningAdapter`) switches the candidate with
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

from relnas.search.step_graph import BACKENDS, CAPTURE_MODES, graph_totals
from relnas.search.candidate_step import Member, PairTrainer
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
                 graph_warmup: int = 1, graph_backend: Optional[str] = None, graph_capture: str = "lean"):
        """``channels_last``: NHWC inputs and weights (``True``), NCHW (``False``), or ``"auto"``:
        NHWC except on a CUDA device (:func:`channels_last_for`), decided when the fit starts.
        ``cuda_graphs``: capture each candidate's train and validation steps as CUDA graphs:
        ``"auto"`` (on when the module runs on a CUDA device), ``True`` (the same, with a warning
        on other devices) or ``False`` (eager). ``graph_warmup``: eager steps before the capture.
        ``graph_backend``: ``"emulate"`` runs the graph bookkeeping on any device (tests).
        ``graph_capture``: ``"lean"`` or ``"torch"`` (:data:`relnas.search.step_graph.CAPTURE_MODES`).
        Both members of a pair at once: :meth:`run_pair`, called by the ``concurrent_pair``
        executor (:mod:`relnas.search.executors`).

        The current candidate's estimation state (optimizer, loss sums, drop-path generator, CUDA
        graphs) is a :class:`relnas.search.candidate_step.Member`, the same class the pair trainer
        runs two of: one step code for both paths."""
        super().__init__()
        if graph_backend is not None and graph_backend not in BACKENDS:
            raise ValueError(f"unknown graph_backend {graph_backend!r}; known: {', '.join(BACKENDS)}")
        if cuda_graphs not in (True, False, "auto"):
            raise ValueError(f"cuda_graphs must be true, false or auto, got {cuda_graphs!r}")
        if channels_last not in (True, False, "auto"):
            raise ValueError(f"channels_last must be true, false or auto, got {channels_last!r}")
        if graph_capture not in CAPTURE_MODES:
            raise ValueError(f"graph_capture must be one of {', '.join(CAPTURE_MODES)}, got {graph_capture!r}")
        self.graph_capture = graph_capture
        self.automatic_optimization = False
        self.weight_set = weight_set
        self.momentum, self.weight_decay, self.grad_clip = momentum, weight_decay, grad_clip
        self.channels_last_setting = channels_last
        self.channels_last = channels_last_for(channels_last, "cpu")  # decided again on the device at fit start
        self.member: Optional[Member] = None  # the current candidate
        self.cuda_graphs, self.graph_warmup, self.graph_backend = cuda_graphs, int(graph_warmup), graph_backend
        self.skip_epoch = False          # the executor trained this epoch's pair itself (concurrently)
        self._pair_trainer: Optional[PairTrainer] = None
        self._graphs_broken = False      # a capture failed: the rest of the run is eager
        self._graph_stream = None        # one side stream for every candidate's warm-up and capture
        self.graph_stats = {"eager": 0, "captures": 0, "replays": 0}
        self.capture_seconds = 0.0       # host time spent capturing (with graph_capture=torch: torch.cuda.graph's sync + empty_cache too)

    # ------------------------------------------------------------------ candidate switching
    @property
    def arch(self) -> Optional[Arch]:
        return self.member.arch if self.member is not None else None

    @property
    def lr(self) -> float:
        return self.member.lr if self.member is not None else 0.0

    @property
    def drop_prob(self) -> float:
        return self.member.drop_prob if self.member is not None else 0.0

    def begin_candidate(self, arch: Arch, lr: float, drop_prob: float, seed: Optional[int] = None) -> None:
        """Make ``arch`` the trained candidate with a fresh SGD optimizer at ``lr``. ``seed``: the
        candidate's seed; its drop path then draws from its own generator
        (:func:`relnas.search.candidate_step.drop_path_generator`), else from the global one."""
        self._release_member()
        self.weight_set.clear_grads()
        backend = self._graph_backend()
        if backend == "cuda" and self._graph_stream is None:
            self._graph_stream = torch.cuda.Stream()
        self.member = Member(self.weight_set, arch, lr, drop_prob, seed, momentum=self.momentum,
                             weight_decay=self.weight_decay, grad_clip=self.grad_clip,
                             channels_last=self.channels_last, graph_backend=backend,
                             graph_warmup=self.graph_warmup, graph_stream=self._graph_stream,
                             backward=self.manual_backward, graph_capture=self.graph_capture)

    def candidate_losses(self) -> tuple[float, float]:
        """(mean training loss, mean validation loss) of the current candidate; one host sync.

        That sync also makes the next ``begin_candidate`` safe with CUDA graphs: the optimizer's
        momentum buffers (made on the graphs' side stream, used by replays on the current one)
        are freed there only after every replay has finished."""
        train, val, n_val = self.member.losses().tolist()
        return train, (val if n_val > 0 else float("nan"))

    def configure_optimizers(self):  # optimizers are per candidate (begin_candidate)
        return None

    def graph_report(self) -> dict:
        """Steps so far by kind (``eager``, ``captures``, ``replays``) and ``capture_s``, the host
        seconds spent capturing CUDA graphs, over every candidate trained (the current one's live
        graphs and the concurrent-pair trainer's included). Cumulative: callers take differences."""
        live, live_s = graph_totals(self.member.graphs.values() if self.member is not None else ())
        report = {k: self.graph_stats[k] + live[k] for k in live}
        report["capture_s"] = self.capture_seconds + live_s + (
            self._pair_trainer.capture_seconds if self._pair_trainer is not None else 0.0)
        return report

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.member.forward(x)

    # ------------------------------------------------------------------ both members at once
    def pair_trainer(self) -> PairTrainer:
        if self._pair_trainer is None:
            self._pair_trainer = PairTrainer(self.weight_set, momentum=self.momentum, weight_decay=self.weight_decay,
                                             grad_clip=self.grad_clip, channels_last=self.channels_last,
                                             graph_backend=self._graph_backend(), graph_warmup=self.graph_warmup,
                                             graph_capture=self.graph_capture)
        return self._pair_trainer

    def run_pair(self, archs, seeds, lr: float, drop_prob: float, train_batches, val_batches, context=None):
        """Both members of a pair at once (see :class:`PairTrainer.run`); the weight set is left unchanged."""
        self._release_member()
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
        # the module owns the weight set's memory format: decided here, where the device is known
        self.channels_last = channels_last_for(self.channels_last_setting, self.device.type)
        self.weight_set.to(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)
        if self.cuda_graphs is True and self.graph_backend is None and self.device.type != "cuda":
            log.warning("search.cuda_graphs=true has no effect on %s: the steps run eagerly", self.device)

    def _release_member(self) -> None:
        """Fold the current candidate's graph statistics into the totals and free its graphs; a
        failed capture (the member fell back to eager steps) makes every later candidate eager."""
        if self.member is None:
            return
        stats, seconds = self.member.release()
        for k, v in stats.items():
            self.graph_stats[k] += v
        self.capture_seconds += seconds
        if self.member.broken:
            self._graphs_broken = True  # StepGraph has logged why; do not try again for every candidate

    def on_fit_end(self) -> None:
        self._release_member()

    def on_validation_model_zero_grad(self) -> None:
        # Lightning's default (self.zero_grad()) walks every module for its parameters once per
        # candidate; the weight set's index does the same (grads to None) without the walk
        self.weight_set.clear_grads()

    # ------------------------------------------------------------------ loops
    def training_step(self, batch, batch_idx):
        x, y = batch
        self.member.run("train", x, y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.member.run("val", x, y)
