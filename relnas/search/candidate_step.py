"""A candidate's step: the train and validation step every candidate of a search runs
(:class:`Member`, with its own optimizer, loss buffers, drop-path stream and CUDA graphs), and
:class:`PairTrainer`, which trains the two members of a pair at the same time (one process, two
CUDA streams).

At the paper's network size a candidate's training step is a few thousand small kernels that
fill a fraction of a large GPU, even replayed as a CUDA graph. Both members of a RelativeNAS pair
inherit the same weight set and are estimated independently before the Eq. 6 merge, so
their estimations can run at the same time:

* member 1 trains on the weight set itself (as in the sequential order); member 2 trains on a *shadow*
  weight set, a copy of the weight set made once, into which the tensors member 2 uses (shared parts,
  operations in common with member 1, its own operations) are copied from the weight set before the pair.
  No tensor is written by both members;
* each member has its own optimizer, loss buffers, data order and augmentation stream
  (:meth:`TensorDataModule.search_batches`), drop-path generator (:func:`drop_path_generator`),
  CUDA graphs with their own memory pool, and its own CUDA stream; the host issues their steps
  alternately, so the GPU runs both streams' kernels side by side;
* afterwards the trained tensors of each member are snapshotted, the weight set is restored, and the
  caller merges them with the usual Eq. 6 merge.

The arithmetic of each member is the sequential search's (each member is a :class:`Member`, the
class :class:`relnas.search.search_module.SearchModule` trains every candidate through), so on a
CPU, where the two members simply alternate, the result equals the sequential order bit for bit;
on a GPU it equals it up to floating-point order (kernel choice, atomics).
"""
from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass, field
from typing import Callable, ContextManager, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from relnas.search.step_graph import BACKENDS, StepGraph, graph_totals
from relnas.search.weight_set import Arch, WeightSet, restore, snapshot

_DROP_STREAM = 0xD20_9A7  # separates the drop-path stream from the data-order and augmentation streams


def drop_path_seed(seed: int) -> int:
    """Seed of a candidate's drop-path generator, derived from its candidate seed."""
    return (int(seed) * 1_000_003 + _DROP_STREAM) % (2**63 - 1)


def drop_path_generator(seed: Optional[int], device: torch.device) -> Optional[torch.Generator]:
    """A candidate's own drop-path random stream on ``device`` (None: use the global generator)."""
    if seed is None:
        return None
    gen = torch.Generator(device=device)
    gen.manual_seed(drop_path_seed(seed))
    return gen


# ---------------------------------------------------------------------- the step functions
def channels_last_input(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def train_step(net: WeightSet, arch: Arch, x: torch.Tensor, y: torch.Tensor, *, drop_prob: float,
               generator: Optional[torch.Generator], params: Sequence[torch.Tensor], opt: torch.optim.Optimizer,
               grad_clip: float, loss_sum: torch.Tensor, count: torch.Tensor, channels_last: bool,
               backward: Optional[Callable[[torch.Tensor], None]] = None) -> None:
    """One SGD step of a candidate, in place (capturable: returns nothing, host-sync free)."""
    logits = net(channels_last_input(x, channels_last), arch, drop_prob, generator)
    loss = F.cross_entropy(logits, y)
    if backward is None:
        loss.backward()
    else:
        backward(loss)
    if grad_clip and grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(params, grad_clip, foreach=True)
    opt.step()
    # gradients go back to None after every step: the eager steps before a capture leave none
    # behind, so a captured backward writes fresh gradients instead of accumulating
    opt.zero_grad(set_to_none=True)
    n = y.numel()
    loss_sum += loss.detach().double() * n
    count += n


def val_step(net: WeightSet, arch: Arch, x: torch.Tensor, y: torch.Tensor, *, loss_sum: torch.Tensor,
             count: torch.Tensor, channels_last: bool) -> None:
    logits = net(channels_last_input(x, channels_last), arch)
    loss_sum += F.cross_entropy(logits.float(), y, reduction="sum").double()
    count += y.numel()


def mean_losses(train_sum, train_n, val_sum, val_n) -> torch.Tensor:
    """(mean train loss, mean val loss, val count) on the device (read with one host sync)."""
    return torch.stack([train_sum / train_n.clamp_min(1), val_sum / val_n.clamp_min(1), val_n])


# ---------------------------------------------------------------------- one member
class Member:
    """One candidate's estimation state on a network (the weight set or the shadow): optimizer, loss
    buffers, drop-path generator and (optionally) its CUDA graphs and their memory pool. The
    sequential search (:class:`relnas.search.search_module.SearchModule`, one member per candidate)
    and the pair trainer (two at once) both train through it.

    ``backward``: how eager training steps run the backward pass (default ``loss.backward()``;
    the search module passes Lightning's ``manual_backward``); a captured step always calls
    ``loss.backward()`` (framework hooks are Python, which a graph cannot replay).
    ``graph_stream``: the side stream for warm-up and capture (default: a new one for this
    member); ``stream``: the stream this member's steps are issued on (the pair trainer's)."""

    def __init__(self, net: WeightSet, arch: Arch, lr: float, drop_prob: float, seed: Optional[int], *,
                 momentum: float, weight_decay: float, grad_clip: float, channels_last: bool,
                 graph_backend: Optional[str], graph_warmup: int, stream=None, graph_stream=None,
                 backward: Optional[Callable[[torch.Tensor], None]] = None, graph_capture: str = "lean"):
        self.net, self.arch, self.lr, self.drop_prob = net, arch, lr, drop_prob
        self.grad_clip, self.channels_last = grad_clip, channels_last
        device = next(iter(net.tensors().values())).device
        self.params = net.parameters_of(arch)
        for p in self.params:
            p.grad = None
        self.opt = torch.optim.SGD(self.params, lr=lr, momentum=momentum, weight_decay=weight_decay)
        self.sums = torch.zeros(4, dtype=torch.float64, device=device)  # train sum, train n, val sum, val n
        self.generator = drop_path_generator(seed, device)
        self.stream = stream
        self.graph_backend, self.graph_warmup = graph_backend, graph_warmup
        self.graphs: Dict[str, StepGraph] = {}
        self._pool = None
        self._graph_stream = graph_stream
        self._backward = backward
        self.graph_capture = graph_capture
        self.broken = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The candidate's logits (in the network's current train/eval mode)."""
        return self.net(channels_last_input(x, self.channels_last), self.arch, self.drop_prob, self.generator)

    def _train(self, x: torch.Tensor, y: torch.Tensor, backward: Optional[Callable[[torch.Tensor], None]] = None) -> None:
        train_step(self.net, self.arch, x, y, drop_prob=self.drop_prob, generator=self.generator,
                   params=self.params, opt=self.opt, grad_clip=self.grad_clip, loss_sum=self.sums[0],
                   count=self.sums[1], channels_last=self.channels_last, backward=backward)

    def _train_eager(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self._train(x, y, backward=self._backward)

    def _val(self, x: torch.Tensor, y: torch.Tensor) -> None:
        val_step(self.net, self.arch, x, y, loss_sum=self.sums[2], count=self.sums[3],
                 channels_last=self.channels_last)

    def _failed(self) -> None:
        self.broken = True
        for p in self.params:
            p.grad = None

    def run(self, kind: str, x: torch.Tensor, y: torch.Tensor) -> None:
        """One training (``kind="train"``) or validation (``"val"``) step: eager, or through the
        member's :class:`StepGraph` of that kind when graphs are on."""
        step, eager = (self._train, self._train_eager) if kind == "train" else (self._val, self._val)
        if self.graph_backend is None or self.broken:
            eager(x, y)
            return
        graph = self.graphs.get(kind)
        if graph is None:
            if self.graph_backend == "cuda" and self._pool is None:
                # one pool per member (train + val graphs): two members run at once, and a
                # released pool is never captured into again
                self._pool = torch.cuda.graph_pool_handle()
                if self._graph_stream is None:
                    self._graph_stream = torch.cuda.Stream()
            graph = self.graphs[kind] = StepGraph(step, eager_step=eager, warmup=self.graph_warmup,
                                                  backend=self.graph_backend, on_capture_failure=self._failed,
                                                  pool=self._pool, stream=self._graph_stream,
                                                  generators=[self.generator], capture=self.graph_capture)
        graph(x, y)

    def losses(self) -> torch.Tensor:
        return mean_losses(self.sums[0], self.sums[1], self.sums[2], self.sums[3])

    def release(self) -> Tuple[Dict[str, int], float]:
        """Drop the member's graphs (and their pool); returns their step counts and capture seconds."""
        stats, seconds = graph_totals(self.graphs.values())
        for g in self.graphs.values():
            g.release()
        self.graphs, self._pool = {}, None
        return stats, seconds


# ---------------------------------------------------------------------- the pair
@dataclass
class PairResult:
    train_losses: List[float]
    val_losses: List[float]                              # nan where a member saw no validation batch
    trained: List[Dict[str, torch.Tensor]]               # each member's trained tensors (its groups' keys)
    graph_stats: Dict[str, int] = field(default_factory=dict)


class PairTrainer:
    """Estimates the two members of a pair at the same time on ``weight_set``.

    ``run`` leaves the weight set as it found it and returns each member's trained tensors; the caller
    merges them (Eq. 6). ``graph_backend``: None (eager), ``"cuda"`` or ``"emulate"`` (see
    :class:`StepGraph`). On CUDA each member runs on its own stream; elsewhere the members
    alternate batch by batch.
    """

    def __init__(self, weight_set: WeightSet, *, momentum: float = 0.9, weight_decay: float = 3e-4,
                 grad_clip: float = 5.0, channels_last: bool = True, graph_backend: Optional[str] = None,
                 graph_warmup: int = 1, graph_capture: str = "lean"):
        if graph_backend is not None and graph_backend not in BACKENDS:
            raise ValueError(f"unknown graph_backend {graph_backend!r}; known: {', '.join(BACKENDS)}")
        self.weight_set = weight_set
        self.momentum, self.weight_decay, self.grad_clip = momentum, weight_decay, grad_clip
        self.channels_last, self.graph_backend, self.graph_warmup = channels_last, graph_backend, graph_warmup
        self.graph_capture = graph_capture
        self._shadow: Optional[WeightSet] = None
        self._streams = None
        self.graph_stats = {"eager": 0, "captures": 0, "replays": 0}
        self.capture_seconds = 0.0
        self.graphs_broken = False

    def shadow(self) -> WeightSet:
        """Member 2's weight set: a copy of the weight set (made once; moved along when it moves)."""
        device = next(iter(self.weight_set.tensors().values())).device
        if self._shadow is None:
            self.weight_set.clear_grads()
            self._shadow = copy.deepcopy(self.weight_set)
        if next(iter(self._shadow.tensors().values())).device != device:
            self._shadow = self._shadow.to(device)
        return self._shadow

    def run(self, archs: Sequence[Arch], seeds: Sequence[Optional[int]], lr: float, drop_prob: float,
            train_batches: Sequence[Iterable], val_batches: Sequence[Iterable],
            context: Callable[[], ContextManager] = contextlib.nullcontext) -> PairResult:
        """Train both members one epoch on their ``train_batches`` and validate them on their
        ``val_batches`` (iterables of preprocessed ``(x, y)`` on the weight set's device, consumed lazily:
        on CUDA each batch is made on its member's stream). ``archs`` are compiled against the weight set.
        ``context``: entered around every step (e.g. Lightning's precision context)."""
        if len(archs) != 2 or len(seeds) != 2 or len(train_batches) != 2 or len(val_batches) != 2:
            raise ValueError("PairTrainer.run trains exactly two members")
        ws, shadow = self.weight_set, self.shadow()
        ws_t, shadow_t = ws.tensors(), shadow.tensors()
        cuda = ws_t[next(iter(ws_t))].device.type == "cuda"
        keys = [ws.keys_of(a.groups) for a in archs]
        before = snapshot(ws_t, keys[0])
        with torch.no_grad():  # member 2 starts from the weight set's values of every tensor it uses
            for k in keys[1]:
                shadow_t[k].copy_(ws_t[k])
        nets = [ws, shadow]
        member_archs = [archs[0], shadow.compile(archs[1].genotype)]
        if cuda and self._streams is None:
            self._streams = [torch.cuda.Stream(), torch.cuda.Stream()]
        streams = self._streams if cuda else [None, None]
        backend = None if self.graphs_broken else self.graph_backend
        members = [Member(nets[i], member_archs[i], lr, drop_prob, seeds[i], momentum=self.momentum,
                          weight_decay=self.weight_decay, grad_clip=self.grad_clip,
                          channels_last=self.channels_last, graph_backend=backend,
                          graph_warmup=self.graph_warmup, stream=streams[i],
                          graph_capture=self.graph_capture) for i in range(2)]
        current = torch.cuda.current_stream() if cuda else None
        if cuda:
            for s in streams:
                s.wait_stream(current)  # the copies and snapshots above come first
        try:
            for net in nets:
                net.train()
            self._interleave(members, "train", train_batches, context)
            for net in nets:
                net.eval()
            with torch.inference_mode():
                self._interleave(members, "val", val_batches, context)
        finally:
            for net in nets:
                net.train()
            if cuda:
                for s in streams:
                    current.wait_stream(s)
        vals = torch.stack([m.losses() for m in members]).tolist()  # the one host sync of the pair
        train_losses = [v[0] for v in vals]
        val_losses = [v[1] if v[2] > 0 else float("nan") for v in vals]
        trained = [snapshot(ws_t, keys[0]), snapshot(shadow_t, keys[1])]
        restore(ws_t, before)  # the weight set is changed only by the merge
        stats = {"eager": 0, "captures": 0, "replays": 0}
        for m in members:
            s, seconds = m.release()
            for k, v in s.items():
                stats[k] += v
                self.graph_stats[k] += v
            self.capture_seconds += seconds
            if m.broken:
                self.graphs_broken = True
            for p in m.params:
                p.grad = None
        return PairResult(train_losses, val_losses, trained, stats)

    @staticmethod
    def _interleave(members: Sequence[Member], kind: str, batches: Sequence[Iterable],
                    context: Callable[[], ContextManager]) -> None:
        its: List[Optional[Iterator]] = [iter(b) for b in batches]
        while any(it is not None for it in its):
            for i, m in enumerate(members):
                if its[i] is None:
                    continue
                with (torch.cuda.stream(m.stream) if m.stream is not None else contextlib.nullcontext()):
                    batch = next(its[i], None)  # made on this member's stream
                    if batch is None:
                        its[i] = None
                        continue
                    with context():
                        m.run(kind, *batch)
