"""Replay a fixed-shape step (forward, backward, optimizer step) as a CUDA graph.

A search candidate trains about 100 steps of one architecture at one batch shape. At the paper's
network size (C=16, L=8, batch 256) a GPU spends most of such a step waiting for the host to
launch its kernels one by one (3-4 thousand ATen operations per step; see the benchmark). :class:`StepGraph` removes that cost:

* the first ``warmup`` calls run eagerly (on CUDA on a side stream, as capture requires); they
  also create the optimizer's momentum buffers, so the captured step is a "later" SGD step;
* the next call whose inputs have the shapes of the first call captures the step once (capture
  records kernels, it runs nothing), then replays it;
* every later call with those shapes copies its inputs into the graph's static buffers and
  replays; a call with other shapes (the epoch's last, smaller batch) runs eagerly.

The step must write everything it produces in place into tensors that outlive it (loss sums,
parameters, optimizer state, BatchNorm statistics): a call returns nothing. Python-side decisions
inside the step (which operations, the drop-path probability, the learning rate) are frozen at
capture, so one ``StepGraph`` serves one candidate; make a new one per candidate.

``backend="emulate"`` runs the same bookkeeping without CUDA (capture records the function,
replay calls it on the static buffers), so tests on a CPU check that the graphed path computes
exactly what the eager path computes. If a real capture fails, the step falls back to eager
execution for good and says so once in the log.
"""
from __future__ import annotations

import contextlib
import logging
import time
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import torch

log = logging.getLogger(__name__)

BACKENDS = ("cuda", "emulate")
#: How a capture is entered: ``"lean"`` begins and ends it on the side stream directly;
#: ``"torch"`` uses ``torch.cuda.graph``, which before every capture synchronises the device and
#: empties the caching allocator (and the pinned host cache), so the next candidate's eager steps
#: allocate their memory from the driver again. A search captures two graphs per candidate.
CAPTURE_MODES = ("lean", "torch")
GRAPH_STATS = ("eager", "captures", "replays")
_Signature = Tuple[Tuple[Tuple[int, ...], torch.dtype, torch.device], ...]


def _uncached_autocast():
    """Re-enter an active CUDA autocast region with its weight-cast cache off: a cast cached
    outside the capture must not be baked into the graph (the weights change every step)."""
    if not torch.is_autocast_enabled("cuda"):
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=torch.get_autocast_dtype("cuda"), cache_enabled=False)


def _signature(inputs: Sequence[torch.Tensor]) -> _Signature:
    return tuple((tuple(t.shape), t.dtype, t.device) for t in inputs)


class StepGraph:
    """Run ``step(*inputs)`` eagerly ``warmup`` times, then as a captured CUDA graph.

    Args:
        step: the function captured and replayed; returns nothing.
        eager_step: the function used for eager calls (default ``step``); it must compute the same
            thing (e.g. the same step with framework hooks that a graph could not replay).
        warmup: eager calls before the capture (at least 1: SGD creates its momentum buffers in
            its first step, and the graph must capture the steady-state update).
        backend: ``"cuda"`` or ``"emulate"`` (CPU testing aid, see the module docstring).
        on_capture_failure: called after a failed capture, before the eager fallback (e.g. to drop
            gradients a half-made capture may have left behind).
        pool: a ``torch.cuda.graph_pool_handle()`` to capture into, shared with graphs that are
            never replayed after this one is captured (one candidate's training graph, then its
            validation graph). Do not reuse a pool after every graph in it has been released: make
            a new handle for the next candidate.
        stream: the side stream for warm-up and capture (default: a new one). Share one among the
            graphs of a pool: the allocator reuses a pool's blocks only on the stream they came from.
        capture: ``"lean"`` (default) or ``"torch"``, see :data:`CAPTURE_MODES`; the same graph either way.
        generators: CUDA generators (``torch.Generator``) the step draws from besides the default one (e.g. a
            candidate's own drop-path stream). Each is registered with the graph before capture
            (``CUDAGraph.register_generator_state``), so every replay advances it as an eager
            step would; a torch without that method makes the capture fail, i.e. eager steps.
    """

    def __init__(self, step: Callable[..., None], eager_step: Optional[Callable[..., None]] = None,
                 warmup: int = 1, backend: str = "cuda", on_capture_failure: Optional[Callable[[], None]] = None,
                 pool: Any = None, stream: Any = None, generators: Sequence[torch.Generator] = (),
                 capture: str = "lean"):
        if backend not in BACKENDS:
            raise ValueError(f"unknown StepGraph backend {backend!r}; known: {', '.join(BACKENDS)}")
        if capture not in CAPTURE_MODES:
            raise ValueError(f"unknown capture mode {capture!r}; known: {', '.join(CAPTURE_MODES)}")
        self.capture = capture
        if warmup < 1:
            raise ValueError(f"warmup must be >= 1 (the optimizer's state must exist before capture), got {warmup}")
        self.step = step
        self.eager_step = eager_step or step
        self.warmup = int(warmup)
        self.backend = backend
        self.on_capture_failure = on_capture_failure
        self.pool = pool
        self.stats: Dict[str, int] = {"eager": 0, "captures": 0, "replays": 0}
        self.failure: Optional[BaseException] = None
        self._first: Optional[_Signature] = None
        self._graph = None
        self._static: Tuple[torch.Tensor, ...] = ()
        self._stream = stream
        self.generators = tuple(g for g in generators if g is not None)
        self.capture_seconds = 0.0  # host time spent in captures (capture="torch": with torch.cuda.graph's sync and cache emptying)

    @property
    def captured(self) -> bool:
        return self._graph is not None

    def __call__(self, *inputs: torch.Tensor) -> None:
        sig = _signature(inputs)
        if self._first is None:
            self._first = sig
        if self._graph is not None:
            if sig == self._first:
                self._replay(inputs)
            else:
                self._eager(inputs)
        elif self.failure is None and sig == self._first and self.stats["eager"] >= self.warmup:
            if self._capture(inputs):
                self._replay(inputs)
            else:
                self._eager(inputs)
        else:
            self._eager(inputs)

    def release(self) -> None:
        """Drop the graph and its static buffers (frees the graph's memory pool)."""
        self._graph, self._static = None, ()

    # ------------------------------------------------------------------ internals
    def _side_stream(self):
        if self._stream is None:
            self._stream = torch.cuda.Stream()
        return self._stream

    def _eager(self, inputs: Sequence[torch.Tensor]) -> None:
        self.stats["eager"] += 1
        if self.backend == "cuda" and self._graph is None and self.failure is None:
            # warm-up on the side stream the capture will use (lazy cuBLAS/cuDNN set-up happens here)
            stream, current = self._side_stream(), torch.cuda.current_stream()
            stream.wait_stream(current)
            with torch.cuda.stream(stream):
                self.eager_step(*inputs)
            current.wait_stream(stream)
        else:
            self.eager_step(*inputs)

    def _capture(self, inputs: Sequence[torch.Tensor]) -> bool:
        static = tuple(torch.empty_like(t) for t in inputs)
        if self.backend == "emulate":
            self._graph, self._static = self.step, static
            self.stats["captures"] += 1
            return True
        stream, current = self._side_stream(), torch.cuda.current_stream()
        graph = torch.cuda.CUDAGraph()
        autocast = _uncached_autocast()  # built outside the capture (its constructor may touch the GPU)
        t0 = time.perf_counter()
        try:
            for gen in self.generators:
                if gen.device.type == "cuda":
                    # AttributeError on a torch without it: caught below, the step stays eager
                    graph.register_generator_state(gen)
            stream.wait_stream(current)
            # thread_local: CUDA calls of other threads (loggers, monitors) do not break the capture
            if self.capture == "torch":
                with torch.cuda.graph(graph, pool=self.pool, stream=stream, capture_error_mode="thread_local"), \
                        autocast:
                    self.step(*static)
            else:  # what torch.cuda.graph does, without its device sync and cache emptying
                with torch.cuda.stream(stream), autocast:
                    graph.capture_begin(*(() if self.pool is None else (self.pool,)), capture_error_mode="thread_local")
                    try:
                        self.step(*static)
                    finally:
                        graph.capture_end()
            current.wait_stream(stream)
            self.capture_seconds += time.perf_counter() - t0
        except Exception as exc:  # noqa: BLE001 - any capture failure means: run eagerly
            # a failure inside torch.cuda.graph's __enter__/__exit__ can leave the side stream current
            torch.cuda.set_stream(current)
            self.failure = exc
            log.warning("CUDA graph capture failed (%s: %s); this candidate's steps run eagerly",
                        type(exc).__name__, exc)
            if self.on_capture_failure is not None:
                self.on_capture_failure()
            return False
        self._graph, self._static = graph, static
        self.stats["captures"] += 1
        return True

    def _replay(self, inputs: Sequence[torch.Tensor]) -> None:
        for dst, src in zip(self._static, inputs):
            dst.copy_(src)
        if self.backend == "emulate":
            self._graph(*self._static)
        else:
            self._graph.replay()
        self.stats["replays"] += 1


def graph_totals(graphs) -> Tuple[Dict[str, int], float]:
    """Steps by kind (``eager``, ``captures``, ``replays``) and capture seconds, summed over ``graphs``."""
    stats = dict.fromkeys(GRAPH_STATS, 0)
    seconds = 0.0
    for g in graphs:
        for k, v in g.stats.items():
            stats[k] += v
        seconds += g.capture_seconds
    return stats, seconds
