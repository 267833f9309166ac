"""The search engine: the algorithm's order and the whole state of a search, without Lightning.

One :class:`SearchEngine` owns the strategy, the numpy random generator, the weight set,
the history (one row per estimation) and the generation summaries. A driver (the Lightning
adapter :class:`relnas.search.lightning_adapter.SearchLightningAdapter`, or a plain loop in the tests) repeats::

    unit = engine.next_unit()                   # None when the search is done
    cands = [engine.begin(unit, m) for m in unit.members]   # compile, snapshot the used tensors
    ... train each candidate on the weight set in place, validate it ...
    for c, (train_loss, val_loss) in zip(cands, losses):
        engine.finish(c, train_loss, val_loss)  # snapshot the trained values, restore the weight set

``finish`` of a job's last member hands the job's losses to the strategy (``tell``) and merges
the trained tensors into the weight set (Eq. 6, :func:`relnas.search.weight_set.merge_eq6`); with the
``per_generation`` executor this waits for the generation's end. At a generation's end the engine
writes the history rows and the summary and notifies its recorders
(:mod:`relnas.search.recorders`: checkpoint, loggers, output files). Which units this process
runs, and how results of several processes meet, is the executor's business
(:mod:`relnas.search.executors`).

The weight set is changed by the training of a candidate (the optimizer, in place) and restored right after
it, so between candidates only the merge writes it: pair ``p`` inherits the weight set as the merges of
pairs ``1..p-1`` left it (docs/method.md §4.4).

:meth:`SearchEngine.state_dict` / :meth:`SearchEngine.load_state_dict` are the one place that says
what a search checkpoint holds.
"""
from __future__ import annotations

import logging
import math
import time
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any, Deque, Dict, List, Optional, Protocol, Sequence

import numpy as np
import torch

from relnas.search import encoding
from relnas.search.executors import Candidate, Executor, MemberResult, Sequential, Unit
from relnas.search.slow_fast import cosine_lr, diversity, ramped_drop_path
from relnas.search.strategy_api import Job, Strategy
from relnas.search.weight_set import WeightSet, merge_eq6, restore, snapshot

log = logging.getLogger(__name__)


@dataclass
class SearchSettings:
    """Per-generation schedule and estimation settings (the paper's defaults, docs/method.md §6.1)."""

    seed: int = 2
    lr: float = 0.1                  # cosine over the generations, from lr ...
    lr_min: float = 0.0              # ... toward lr_min (the official code stops at 1e-3)
    drop_path_prob: float = 0.3
    drop_path_ramp: bool = True      # official code: p * g / G
    interrupt_after: Optional[int] = None   # testing aid: raise after this many estimations


class SimulatedInterrupt(RuntimeError):
    """Raised by ``interrupt_after`` to simulate a crash (tests of resume)."""


class Recorder(Protocol):
    """What the engine notifies (see :mod:`relnas.search.recorders`)."""

    def on_generation_end(self, engine: "SearchEngine") -> None: ...

    def on_search_end(self, engine: "SearchEngine") -> None: ...


def candidate_seed(seed: int, generation: int, job: int, member: int) -> int:
    """Seed of one estimation (data order, augmentation, drop path): independent of anything
    that happened before it, so a resumed search replays a generation identically."""
    return int(np.random.SeedSequence([seed, generation, job, member]).generate_state(1)[0])


class SearchEngine:
    def __init__(self, strategy: Strategy, weight_set: WeightSet, settings: Optional[SearchSettings] = None,
                 executor: Optional[Executor] = None, recorders: Sequence[Recorder] = (),
                 rng: Optional[np.random.Generator] = None):
        space = strategy.space
        if (tuple(weight_set.ops), weight_set.num_nodes) != (space.ops, space.nodes):
            raise ValueError(f"the weight set (ops {', '.join(weight_set.ops)}; {weight_set.num_nodes} nodes) is not "
                             f"built for the strategy's search space ({space}); build both from search_space")
        self.strategy, self.weight_set = strategy, weight_set
        self.settings = settings if settings is not None else SearchSettings()
        self.executor = executor if executor is not None else Sequential()
        self.recorders: List[Recorder] = list(recorders)
        self.rng = rng if rng is not None else np.random.default_rng(self.settings.seed)
        self.generation = 0
        self.history: List[Dict[str, Any]] = []
        self.summaries: List[Dict[str, Any]] = []
        self.estimations_seen = 0     # estimations whose results this process has (its own and exchanged)
        self._initialised = False     # strategy.init has run (or the state was loaded)
        self._jobs: List[Job] = []
        self._units: Deque[Unit] = deque()
        self._in_flight = 0           # candidates begun and not finished
        self._results: Dict[int, Dict[int, MemberResult]] = {}   # this generation, by job position
        self._pending_tell: Dict[int, Dict[int, MemberResult]] = {}  # per_generation: told at the end
        self._rows: List[Dict[str, Any]] = []
        self._started = False
        self._gen_start = time.time()
        self._finished_here = 0       # estimations of this run: own and exchanged per job (interrupt_after)

    # ------------------------------------------------------------------ schedule
    @property
    def done(self) -> bool:
        return self.generation >= self.strategy.generations

    @property
    def jobs(self) -> List[Job]:
        """The current generation's jobs."""
        return self._jobs

    def estimations_before(self, generation: int) -> int:
        """Estimations done by generations 0..generation-1 (a strategy whose budget is not a
        multiple of its generations says so with its own ``estimations_before``)."""
        own = getattr(self.strategy, "estimations_before", None)
        if own is not None:
            return int(own(generation))
        return generation * (self.strategy.budget // self.strategy.generations)

    def remaining_estimations(self) -> int:
        return self.strategy.budget - self.estimations_before(self.generation)

    def lr_of(self, g: int) -> float:
        return cosine_lr(g, self.strategy.generations, self.settings.lr, self.settings.lr_min)

    def drop_of(self, g: int) -> float:
        return ramped_drop_path(g, self.strategy.generations, self.settings.drop_path_prob,
                                self.settings.drop_path_ramp)

    def generation_rows(self) -> List[Dict[str, Any]]:
        """History rows of the current generation so far (jobs already told)."""
        return list(self._rows)

    # ------------------------------------------------------------------ the order
    def next_unit(self) -> Optional[Unit]:
        """The next members this process trains together, or ``None`` when the search is done.
        Generations in which this process has nothing (left) to do are finished on the way."""
        self.settle()
        if self.done:
            return None
        self._in_flight += len(self._units[0].members)
        return self._units.popleft()

    def begin(self, unit: Unit, member: int) -> Candidate:
        """Compile the member's architecture and snapshot the tensors it uses."""
        job = self._jobs[unit.pos]
        arch = self.weight_set.compile(encoding.decode(job.vectors[member], space=self.strategy.space))
        before = snapshot(self.weight_set.tensors(), self.weight_set.keys_of(arch.groups))
        seed = candidate_seed(self.settings.seed, self.generation, job.index, member)
        return Candidate(unit.pos, member, arch, before, seed, self.lr_of(self.generation), self.drop_of(self.generation))

    def finish(self, cand: Candidate, train_loss: float, val_loss: float,
               trained: Optional[Dict[str, torch.Tensor]] = None) -> None:
        """Record a trained candidate: keep its trained tensors (unless it diverged; ``trained``:
        given by an executor that trained it off the weight set, else read from the weight set), restore
        the weight set; after the job's last member, ``tell`` and merge (or keep them for the generation's
        end), and after the generation's last job, end the generation."""
        job = self._jobs[cand.pos]
        diverged = not (math.isfinite(train_loss) and math.isfinite(val_loss))
        if diverged:
            log.warning("generation %d pair %d: individual %d diverged (train loss %.4g, val loss %.4g) and loses "
                        "its pair", self.generation + 1, job.index + 1, job.members[cand.member], train_loss,
                        val_loss)
            val_loss = math.inf
        tensors = self.weight_set.tensors()
        trained = None if diverged else (trained if trained is not None else snapshot(tensors, cand.before))
        restore(tensors, cand.before)  # the weight set is changed only by the merge
        results = self._results.setdefault(cand.pos, {})
        results[cand.member] = MemberResult(float(val_loss), float(train_loss), trained)
        self._in_flight -= 1
        self._finished_here += 1
        self.estimations_seen += 1
        if self._in_flight == 0 and not any(u.pos == cand.pos for u in self._units):
            complete = self.executor.exchange_job(job, results)
            self.estimations_seen += len(complete) - len(results)
            self._finished_here += len(complete) - len(results)
            del self._results[cand.pos]
            if self.executor.merge == "per_generation":
                self._pending_tell[cand.pos] = complete
            else:
                self._tell(cand.pos, complete)
        self.settle()
        limit = self.settings.interrupt_after
        if limit is not None and self._finished_here >= limit:
            raise SimulatedInterrupt(f"simulated interruption after {self._finished_here} estimations")

    def settle(self) -> None:
        """Start the next generation when none is running, and end every generation in which this
        process has no unit left (so a driver always has a unit to run, or the search is done)."""
        if not self._initialised:
            self.strategy.init(self.rng)
            self._initialised = True
        while not self.done and self._in_flight == 0:
            if not self._started:
                self._start_generation()
            if self._units:
                return
            self._end_generation()

    def _start_generation(self) -> None:
        self._jobs = self.strategy.ask(self.rng, self.generation)
        self._units = deque(self.executor.work(self._jobs))
        self._results, self._pending_tell, self._rows = {}, {}, []
        self._gen_start = time.time()
        self._started = True

    def _tell(self, pos: int, results: Dict[int, MemberResult]) -> None:
        job = self._jobs[pos]
        members = [results[m] for m in range(len(job.members))]
        told = self.strategy.tell(self.rng, job, [r.val_loss for r in members])
        ordered = [members[i].trained for i in told.merge_priority]
        tensors = self.weight_set.tensors()
        if len(ordered) == 2:
            merge_eq6(tensors, ordered[-1], ordered[0])
        else:
            merge_eq6(tensors, ordered[0] if ordered else None, None)
        lr, drop = self.lr_of(self.generation), self.drop_of(self.generation)
        for i, member in enumerate(job.members):
            genotype = encoding.decode(job.vectors[i], space=self.strategy.space)
            cost = self.strategy.constraints.cost(genotype)  # on the evaluation network, with or without limits
            self._rows.append({
                "generation": self.generation + 1, "individual": member, "pair": job.index + 1,
                "role": told.roles[i], "val_loss": members[i].val_loss, "train_loss": members[i].train_loss,
                "lr": lr, "drop_path_prob": drop, **asdict(cost),
                "vector": " ".join(f"{v:.6f}" for v in job.vectors[i]), "genotype": str(genotype),
            })

    def _end_generation(self) -> None:
        if self.executor.merge == "per_generation":
            # every pair inherited the generation-start weight set; now tell() and the Eq. 6 merges in
            # pair order (the same on every process, so all end with the same state)
            results = self.executor.exchange_generation(self._jobs, self._pending_tell)
            self.estimations_seen += sum(len(r) for p, r in results.items() if p not in self._pending_tell)
            for pos in range(len(self._jobs)):
                self._tell(pos, results[pos])
            self._pending_tell = {}
        self.strategy.end_generation(self.rng, self.generation)
        self.history.extend(self._rows)
        losses = np.array([r["val_loss"] for r in self._rows], dtype=np.float64)
        finite = losses[np.isfinite(losses)]
        pop = np.stack(list(self.strategy.population().values()))
        summary = {
            "generation": self.generation + 1,
            "best_loss": float(finite.min()) if finite.size else math.inf,
            "mean_loss": float(finite.mean()) if finite.size else math.inf,
            "diversity": diversity(pop, *self.strategy.space.bounds()),
            "lr": self.lr_of(self.generation),
            "drop_path_prob": self.drop_of(self.generation),
            "diverged": int((~np.isfinite(losses)).sum()),
            "time_s": time.time() - self._gen_start,
        }
        self.summaries.append(summary)
        self.generation += 1
        self._rows, self._jobs, self._started = [], [], False
        for recorder in self.recorders:
            recorder.on_generation_end(self)

    def end_search(self) -> Dict[str, Any]:
        """Notify the recorders that the search is complete; returns :meth:`result`."""
        if not self.done:
            raise RuntimeError(f"the search stopped after generation {self.generation} of "
                               f"{self.strategy.generations}")
        for recorder in self.recorders:
            recorder.on_search_end(self)
        return self.result()

    def result(self) -> Dict[str, Any]:
        """The architecture the strategy reports: genotype, individual id, loss and vector."""
        best_id, best_vec, best_loss = self.strategy.best()
        return {"genotype": encoding.decode(best_vec, space=self.strategy.space), "individual": best_id, "val_loss": best_loss,
                "vector": best_vec}

    # ------------------------------------------------------------------ state
    def state_dict(self) -> Dict[str, Any]:
        """Everything a search needs to continue after its last complete generation."""
        if self._started or self._in_flight:
            raise RuntimeError("a search's state is taken between generations")
        return {"generation": self.generation, "rng": self.rng.bit_generator.state,
                "strategy": self.strategy.state_dict(), "history": list(self.history),
                "summaries": list(self.summaries),
                "weight_set": {k: v.detach().cpu() for k, v in self.weight_set.state_dict().items()}}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.weight_set.load_state_dict(state["weight_set"])
        self.strategy.load_state_dict(state["strategy"])
        self.rng.bit_generator.state = state["rng"]
        self.generation = int(state["generation"])
        self.history, self.summaries = list(state["history"]), list(state["summaries"])
        self.estimations_seen = len(self.history)
        self._initialised, self._started = True, False
