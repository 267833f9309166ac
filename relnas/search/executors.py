"""Executors: which candidates of a generation this process trains, and how the results meet.

The :class:`~relnas.search.engine.SearchEngine` owns the algorithm's order (ask, estimate, tell,
merge); an executor only answers

* :meth:`Executor.work`: the *units* this process runs in a generation, in order. A unit is one
  job position and the members of that job trained together in ONE call (one Lightning epoch):
  one member for every executor here; an executor that trains both members of a pair at once
  returns units with two members and overrides :meth:`Executor.begin_unit` /
  :meth:`Executor.unit_losses`;
* :meth:`Executor.exchange_job` / :meth:`Executor.exchange_generation`: the results of the other
  processes (the identity in one process);
* ``merge``: when the Eq. 6 merges happen: ``"per_job"`` (the paper: pair p inherits the weight set updated
  by pairs 1..p-1) or ``"per_generation"`` (every pair inherits the generation-start weight set; the
  ``tell`` calls and merges run in pair order at the generation's end).

Executors (``search.executor``; docs/scale_out.md):

* ``sequential`` (merge per job, 1 process): the paper's order, one member after the other;
* ``member_parallel`` (merge per job, 2 processes): process r trains member r of every pair; the
  two exchange their results after each pair (the same search as ``sequential``);
* ``per_generation`` (merge per generation, any number of processes): job j runs on process
  j % world_size; the results meet at the generation's end;
* ``concurrent_pair`` (merge per job, 1 process): the paper's order with both members of each pair
  trained at the same time (:class:`relnas.search.candidate_step.PairTrainer`: two CUDA streams on a
  GPU; on a CPU they alternate batch by batch and the search equals ``sequential`` bit for bit).

``auto`` (the default) is ``sequential`` in one process and ``member_parallel`` in two.
Executors check their arguments (process count, strategy) with a one-line ``ValueError``.
A new executor subclasses :class:`Executor` and registers itself with ``@EXECUTORS.register("name")``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from relnas.search.distributed import DistContext, to_cpu
from relnas.search.strategy_api import Job, Strategy
from relnas.search.weight_set import Arch
from relnas.utils.registry import Registry


@dataclass
class Candidate:
    """One member of one job while it is estimated."""

    pos: int                          # the job's position in the generation
    member: int                       # the member's position in the job
    arch: Arch
    before: Dict[str, torch.Tensor]   # the weight set's values of the tensors the candidate uses
    seed: int
    lr: float
    drop_path_prob: float


@dataclass
class MemberResult:
    """A member's losses and trained tensors (``None`` when its training diverged)."""

    val_loss: float
    train_loss: float
    trained: Optional[Dict[str, torch.Tensor]]


JobResults = Dict[int, "MemberResult"]          # member position -> result


@dataclass(frozen=True)
class Unit:
    """Members ``members`` of the job at position ``pos`` of the generation, trained in one call."""

    pos: int
    members: Tuple[int, ...]


#: the executors by name (``search.executor``); each class registers itself below its base
EXECUTORS: Registry[Callable[[DistContext], "Executor"]] = Registry("search executor")


class Executor:
    """Base class: one process, every member of every job, one member per call, merge per job."""

    name = "base"
    merge = "per_job"

    def __init__(self, dist: Optional[DistContext] = None):
        self.dist = dist if dist is not None else DistContext()

    # ------------------------------------------------------------------ checks
    def check(self, strategy: Strategy) -> None:
        """Raise ``ValueError`` (one line) when this executor cannot run ``strategy`` here."""

    # ------------------------------------------------------------------ which work
    def work(self, jobs: Sequence[Job]) -> List[Unit]:
        return [Unit(pos, (m,)) for pos, job in enumerate(jobs) for m in range(len(job.members))]

    # ------------------------------------------------------------------ exchange
    def exchange_job(self, job: Job, results: JobResults) -> JobResults:
        """Every member's result of ``job``, given this process's (called once per job that this
        process took part in, after its last unit of the job)."""
        return results

    def exchange_generation(self, jobs: Sequence[Job], results: Dict[int, JobResults]) -> Dict[int, JobResults]:
        """Every job's results of the generation, given this process's (``merge="per_generation"``)."""
        return results

    # ------------------------------------------------------------------ one call (a Lightning epoch)
    def begin_unit(self, module: Any, datamodule: Any, candidates: Sequence["Candidate"]) -> None:
        """Seed and switch ``module`` to the unit's candidate(s) before its training (the
        candidate's drop path draws from its own generator, seeded by its seed)."""
        (c,) = candidates
        torch.manual_seed(c.seed)
        if datamodule is not None and hasattr(datamodule, "set_seed"):
            datamodule.set_seed(c.seed)
        module.begin_candidate(c.arch, c.lr, c.drop_path_prob, seed=c.seed)

    def unit_losses(self, module: Any, candidates: Sequence["Candidate"]) -> List[Tuple[float, float]]:
        """``(train loss, validation loss)`` of each candidate of the unit, after its validation."""
        return [module.candidate_losses()]

    def unit_trained(self, module: Any, candidates: Sequence["Candidate"]) -> List[Optional[Dict[str, torch.Tensor]]]:
        """Each candidate's trained tensors, where they are not the weight set's current values (``None``:
        the engine reads them from the weight set); called after :meth:`unit_losses`."""
        return [None] * len(candidates)


@EXECUTORS.register("sequential")
class Sequential(Executor):
    """The paper's order in one process."""

    name = "sequential"

    def check(self, strategy: Strategy) -> None:
        if self.dist.distributed:
            raise ValueError(f"search.executor=sequential runs in one process, not {self.dist.world_size}; use "
                             f"member_parallel (2 processes, the same search) or per_generation (any number)")


@EXECUTORS.register("member_parallel")
class MemberParallel(Executor):
    """Two processes in the paper's order: process ``r`` trains member ``r`` of every pair (both
    inherit the same weight set); the two exchange losses and trained tensors after each pair, and both
    merge in the same way, so both hold the same state, bit for bit the sequential search's."""

    name = "member_parallel"

    def check(self, strategy: Strategy) -> None:
        if strategy.job_size != self.dist.world_size:
            raise ValueError(f"search.executor=member_parallel needs one process per member of a job: strategy "
                             f"{strategy.name} has {strategy.job_size} member(s) per job, the search "
                             f"{self.dist.world_size} process(es); in the paper's sequential order only the two "
                             f"members of each pair can run at once (2 processes, strategy relativenas); use "
                             f"search.executor=per_generation for other counts")

    def work(self, jobs: Sequence[Job]) -> List[Unit]:
        return [Unit(pos, (self.dist.rank,)) for pos in range(len(jobs))]

    def exchange_job(self, job: Job, results: JobResults) -> JobResults:
        (own,) = results
        mine = (own, results[own].val_loss, results[own].train_loss, to_cpu(results[own].trained))
        gathered = {m: (loss, train, trained) for m, loss, train, trained in self.dist.all_gather_object(mine)}
        n = len(job.members)
        if sorted(gathered) != list(range(n)):
            raise RuntimeError(f"job {job.index}: the processes trained members {sorted(gathered)} of a job with {n} "
                               f"(member-parallel needs one process per member)")
        return {m: results[m] if m == own else MemberResult(*gathered[m]) for m in range(n)}


@EXECUTORS.register("per_generation")
class PerGeneration(Executor):
    """Every pair inherits the generation-start weight set; job ``j`` runs on process ``j % world_size``."""

    name = "per_generation"
    merge = "per_generation"

    def check(self, strategy: Strategy) -> None:
        if strategy.sequential_only:
            raise ValueError(f"strategy {strategy.name} needs a sequential executor (search.executor=sequential): each "
                             f"job is proposed from the results of the jobs before it, so the jobs of a generation "
                             f"cannot run in parallel")

    def work(self, jobs: Sequence[Job]) -> List[Unit]:
        return [Unit(pos, (m,)) for pos, job in enumerate(jobs) if self.dist.owns(pos)
                for m in range(len(job.members))]

    def exchange_generation(self, jobs: Sequence[Job], results: Dict[int, JobResults]) -> Dict[int, JobResults]:
        if not self.dist.distributed:
            return results
        payload = {pos: {m: (r.val_loss, r.train_loss, to_cpu(r.trained)) for m, r in res.items()}
                   for pos, res in results.items()}
        out = dict(results)  # this process's own jobs keep their on-device tensors
        for rank_payload in self.dist.all_gather_object(payload):
            for pos, res in rank_payload.items():
                if pos not in out:
                    out[pos] = {m: MemberResult(*r) for m, r in res.items()}
        missing = [pos for pos in range(len(jobs)) if pos not in out]
        if missing:
            raise RuntimeError(f"no result for jobs {missing}")
        return out


@EXECUTORS.register("concurrent_pair")
class ConcurrentPair(Sequential):
    """The paper's order in one process, both members of each pair trained at the same time
    (:class:`relnas.search.candidate_step.PairTrainer`, through ``module.run_pair``) at the start of
    the unit's Lightning epoch, whose own batches are then skipped; batches come from
    ``datamodule.search_epoch``. Jobs of another size run one member per unit."""

    name = "concurrent_pair"

    def __init__(self, dist: Optional[DistContext] = None):
        super().__init__(dist)
        self._result = None

    def check(self, strategy: Strategy) -> None:
        if self.dist.distributed:
            raise ValueError(f"search.executor=concurrent_pair trains both members of a pair in one process, not "
                             f"{self.dist.world_size}; use member_parallel (2 processes) or per_generation")
        if strategy.job_size != 2:
            raise ValueError(f"search.executor=concurrent_pair trains the two members of a pair at once: strategy "
                             f"{strategy.name} has {strategy.job_size} member(s) per job; use search.executor=sequential")

    def work(self, jobs: Sequence[Job]) -> List[Unit]:
        units: List[Unit] = []
        for pos, job in enumerate(jobs):
            n = len(job.members)
            units.extend([Unit(pos, tuple(range(n)))] if n == 2 else [Unit(pos, (m,)) for m in range(n)])
        return units

    def begin_unit(self, module: Any, datamodule: Any, candidates: Sequence["Candidate"]) -> None:
        self._result = None
        module.skip_epoch = False
        if len(candidates) != 2:
            super().begin_unit(module, datamodule, candidates)
            return
        if datamodule is None or not hasattr(datamodule, "search_epoch"):
            raise RuntimeError("search.executor=concurrent_pair needs a datamodule with search_epoch() "
                               "(relnas.data.TensorDataModule); use search.executor=sequential")
        trainer = getattr(module, "_trainer", None)
        context = trainer.precision_plugin.forward_context if trainer is not None else None
        device = module.device
        seeds = [c.seed for c in candidates]
        first = candidates[0]
        epochs = [datamodule.search_epoch(sd, device=device) for sd in seeds]
        self._result = module.run_pair([c.arch for c in candidates], seeds, first.lr, first.drop_path_prob,
                                       [e[0] for e in epochs], [e[1] for e in epochs], context=context)
        module.skip_epoch = True  # the pair is trained: the Lightning epoch skips its batches

    def unit_losses(self, module: Any, candidates: Sequence["Candidate"]) -> List[Tuple[float, float]]:
        if self._result is None:
            return super().unit_losses(module, candidates)
        return list(zip(self._result.train_losses, self._result.val_losses))

    def unit_trained(self, module: Any, candidates: Sequence["Candidate"]) -> List[Optional[Dict[str, torch.Tensor]]]:
        if self._result is None:
            return super().unit_trained(module, candidates)
        trained, self._result = self._result.trained, None
        return list(trained)


def executor_name(name: Optional[str]) -> str:
    """The executor name a config asks for (``search.executor``; null is ``auto``)."""
    name = "auto" if name is None else str(name)
    if name != "auto" and name not in EXECUTORS:
        raise ValueError(f"unknown search.executor {name!r}; use one of {', '.join(['auto', *EXECUTORS])}")
    return name


def merge_order(name: str) -> str:
    """``"per_job"`` or ``"per_generation"``: what an executor name means for the search's result
    (``auto``, ``sequential`` and ``member_parallel`` compute the same search)."""
    return "per_generation" if name == "per_generation" else "per_job"


def create_executor(name: str, strategy: Strategy, dist: Optional[DistContext] = None) -> Executor:
    """The executor ``name`` (``auto``: sequential in one process, member_parallel in two) for
    ``strategy`` in the process group ``dist``; ``ValueError`` when it cannot run there."""
    dist = dist if dist is not None else DistContext()
    if name == "auto":
        if not dist.distributed:
            name = "sequential"
        elif dist.world_size == 2 and strategy.job_size == 2:
            name = "member_parallel"
        else:
            raise ValueError(f"a search in {dist.world_size} processes needs search.executor=per_generation (the "
                             f"pairs of a generation in parallel, any number of processes); in the paper's sequential "
                             f"order only 2 processes can work at once (the two members of each pair, strategy "
                             f"relativenas)")
    if name not in EXECUTORS:
        raise ValueError(f"unknown search.executor {name!r}; use one of {', '.join(['auto', *EXECUTORS])}")
    executor = EXECUTORS[name](dist)
    executor.check(strategy)
    return executor
