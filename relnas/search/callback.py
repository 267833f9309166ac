"""The search-loop callback: drives pairing, fast/slow selection, the Eq. 6 merge and the
slow-fast update around one Lightning Trainer, where each Lightning epoch is one candidate's
one-epoch estimation (train on search-train, validate on search-valid)."""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

import lightning as L
import numpy as np
import torch

from relnas.search import encoding
from relnas.search.distributed import DistContext, to_cpu
from relnas.search.slow_fast import cosine_lr, diversity, ramped_drop_path
from relnas.search.strategies import Job, Strategy
from relnas.search.weight_set import WeightSet, merge_eq6, restore, snapshot

log = logging.getLogger(__name__)


@dataclass
class SearchSettings:
    """Per-generation schedule and estimation settings (SPEC 5 defaults)."""

    seed: int = 2
    lr: float = 0.1                  # cosine over the generations, from lr ...
    lr_min: float = 0.0              # ... toward lr_min (the official code stops at 1e-3)
    drop_path_prob: float = 0.3
    drop_path_ramp: bool = True      # official code: p * g / G
    weight_set_update: str = "sequential"   # SPEC 3: pair p inherits Omega updated by pairs 1..p-1
    interrupt_after: Optional[int] = None   # testing aid: raise after this many estimations


class SimulatedInterrupt(RuntimeError):
    """Raised by ``interrupt_after`` to simulate a crash (tests of resume)."""


def candidate_seed(seed: int, generation: int, job: int, member: int) -> int:
    """Seed of one estimation (data order, augmentation, drop path): independent of anything
    that happened before it, so a resumed search replays a generation identically."""
    return int(np.random.SeedSequence([seed, generation, job, member]).generate_state(1)[0])


@dataclass
class _Pending:
    job: Job
    member: int = 0
    arch: Any = None
    before: Dict[str, torch.Tensor] = field(default_factory=dict)
    trained: List[Optional[Dict[str, torch.Tensor]]] = field(default_factory=list)
    losses: List[float] = field(default_factory=list)
    train_losses: List[float] = field(default_factory=list)
    genotypes: List[Any] = field(default_factory=list)
    concurrent: bool = False        # both members were estimated at once (at the epoch's start)


class SearchLoop(L.Callback):
    def __init__(self, strategy: Strategy, settings: SearchSettings, rng: np.random.Generator,
                 generation: int = 0, history: Optional[List[Dict[str, Any]]] = None,
                 on_generation_end: Optional[Callable[["SearchLoop", L.Trainer], None]] = None,
                 progress: bool = True, dist: Optional[DistContext] = None):
        self.strategy, self.settings, self.rng = strategy, settings, rng
        # several processes (per_generation mode only): job j of a generation runs on rank
        # j % world_size; the results meet at the generation's end (_finish_generation)
        self.dist = dist if dist is not None else DistContext()
        self._done_jobs: List[tuple] = []
        self.generation = generation
        self.history: List[Dict[str, Any]] = history if history is not None else []
        self.on_generation_end_fn = on_generation_end
        self.progress = progress
        self._jobs: List[Job] = []
        self._job_idx = 0
        self._pending: Optional[_Pending] = None
        self._estimations = 0
        self._bar = None
        self._gen_start = time.time()
        self.generation_summaries: List[Dict[str, Any]] = []

    # ------------------------------------------------------------------ helpers
    @property
    def done(self) -> bool:
        return self.generation >= self.strategy.generations

    def estimations_before(self, generation: int) -> int:
        """Estimations done by generations 0..generation-1 (a strategy whose budget is not a
        multiple of its generations says so with its own ``estimations_before``)."""
        own = getattr(self.strategy, "estimations_before", None)
        if own is not None:
            return int(own(generation))
        return generation * (self.strategy.budget // self.strategy.generations)

    @property
    def member_parallel(self) -> bool:
        """Several processes in the paper's sequential order: process ``r`` trains member ``r`` of
        every pair (both inherit the same Omega), and the two meet after each pair for the merge."""
        return self.dist.distributed and self.settings.weight_set_update == "sequential"

    def remaining_estimations(self) -> int:
        return self.strategy.budget - self.estimations_before(self.generation)

    def lr_of(self, g: int) -> float:
        return cosine_lr(g, self.strategy.generations, self.settings.lr, self.settings.lr_min)

    def drop_of(self, g: int) -> float:
        return ramped_drop_path(g, self.strategy.generations, self.settings.drop_path_prob, self.settings.drop_path_ramp)

    # ------------------------------------------------------------------ Lightning hooks
    def on_fit_start(self, trainer: L.Trainer, pl_module) -> None:
        if self.progress and trainer.is_global_zero and self.dist.is_main:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self.strategy.budget, initial=self.estimations_before(self.generation),
                             desc="search", unit="cand", dynamic_ncols=True, leave=True)
        if self.dist.distributed and not self.done:
            # a process may own no job of the first generation(s): it still joins their gathers
            self._start_generation()
            self._advance_idle(trainer, pl_module)

    def _start_generation(self) -> None:
        self._jobs = self.strategy.ask(self.rng, self.generation)
        self._job_idx = 0
        self._gen_start = time.time()
        self._gen_rows: List[Dict[str, Any]] = []
        self._done_jobs = []
        self._skip_unowned()

    def _skip_unowned(self) -> None:
        if self.member_parallel:
            return  # every process takes part in every pair
        while self._job_idx < len(self._jobs) and not self.dist.owns(self._job_idx):
            self._job_idx += 1

    def _advance_idle(self, trainer: L.Trainer, pl_module) -> None:
        """Finish every generation in which this process owns no (more) job, so that the next
        Lightning epoch always has a candidate to train, or the search is done."""
        while not self.done and self._job_idx >= len(self._jobs):
            self._finish_generation(trainer, pl_module)
            if not self.done:
                self._start_generation()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module) -> None:
        if not self._jobs or self._job_idx >= len(self._jobs):
            self._start_generation()
        if self._pending is None:
            self._pending = _Pending(self._jobs[self._job_idx])
            if self.member_parallel:
                self._pending.member = self.dist.rank
        p = self._pending
        concurrent = self._pair_concurrently(pl_module, p)
        pl_module.skip_epoch = concurrent
        if concurrent:
            self._estimate_pair_concurrently(trainer, pl_module, p)
            return
        ws: WeightSet = pl_module.weight_set
        vector = p.job.vectors[p.member]
        genotype = encoding.decode(vector)
        p.genotypes.append(genotype)
        p.arch = ws.compile(genotype)
        tensors = ws.tensors()
        keys = ws.keys_of(p.arch.groups)
        # per_generation mode defers every merge to the generation's end, so Omega still holds its
        # generation-start values here: all pairs inherit the same Omega
        p.before = snapshot(tensors, keys)
        seed = candidate_seed(self.settings.seed, self.generation, p.job.index, p.member)
        torch.manual_seed(seed)
        dm = trainer.datamodule
        if dm is not None and hasattr(dm, "set_seed"):
            dm.set_seed(seed)
        pl_module.begin_candidate(p.arch, self.lr_of(self.generation), self.drop_of(self.generation), seed=seed)

    def _pair_concurrently(self, pl_module, p: _Pending) -> bool:
        """Both members of this job at once (one process, two streams): a fresh two-member job,
        not split over processes, a module that asks for it and a datamodule that can serve it."""
        ask = getattr(pl_module, "pair_concurrently", None)
        return (ask is not None and ask() and not self.member_parallel and p.member == 0
                and len(p.job.members) == 2)

    def _estimate_pair_concurrently(self, trainer: L.Trainer, pl_module, p: _Pending) -> None:
        dm = trainer.datamodule
        if dm is None or not hasattr(dm, "search_batches"):
            raise RuntimeError("search.concurrent_pair needs a datamodule with search_batches() "
                               "(relnas.data.TensorDataModule); set search.concurrent_pair=false")
        ws: WeightSet = pl_module.weight_set
        archs, seeds = [], []
        for m, vector in enumerate(p.job.vectors):
            genotype = encoding.decode(vector)
            p.genotypes.append(genotype)
            archs.append(ws.compile(genotype))
            seeds.append(candidate_seed(self.settings.seed, self.generation, p.job.index, m))
        device = pl_module.device
        result = pl_module.run_pair(archs, seeds, self.lr_of(self.generation), self.drop_of(self.generation),
                                    [dm.search_batches(sd, train=True, device=device) for sd in seeds],
                                    [dm.search_batches(sd, train=False, device=device) for sd in seeds],
                                    context=trainer.precision_plugin.forward_context)
        for m in range(2):
            self._record(p, m, result.train_losses[m], result.val_losses[m], result.trained[m])
        p.member = 2
        p.concurrent = True

    def _record(self, p: _Pending, member: int, train_loss: float, val_loss: float,
                trained: Optional[Dict[str, torch.Tensor]]) -> None:
        """Keep one member's estimate (a diverged member loses its pair; its weights never enter Omega)."""
        diverged = not (math.isfinite(train_loss) and math.isfinite(val_loss))
        if diverged:
            log.warning("generation %d job %d member %d diverged (train %.4g, val %.4g): it loses its pair",
                        self.generation, p.job.index, member, train_loss, val_loss)
            val_loss = math.inf
        p.trained.append(None if diverged else trained)
        p.losses.append(val_loss)
        p.train_losses.append(train_loss)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module) -> None:
        # Lightning 2 runs the epoch-end validation before this hook
        p = self._pending
        ws: WeightSet = pl_module.weight_set
        tensors = ws.tensors()
        if p.concurrent:
            done_now = len(p.job.members)
        else:
            train_loss, val_loss = pl_module.candidate_losses()
            self._record(p, p.member, train_loss, val_loss, snapshot(tensors, p.before))
            restore(tensors, p.before)  # Omega is changed only by the merge
            done_now = 1
            if self.member_parallel:
                done_now = self._gather_members(p)
            else:
                p.member += 1
        self._estimations += done_now
        if self._bar is not None:
            best = min([r["val_loss"] for r in self._gen_rows] + p.losses)
            self._bar.set_postfix_str(f"gen {self.generation + 1}/{self.strategy.generations} "
                                      f"job {p.job.index + 1}/{len(self._jobs)} best {best:.4f}")
            self._bar.update(done_now)
        if p.member == len(p.job.members):
            if self.settings.weight_set_update == "per_generation":
                # tell() and the merge wait for the generation's end (in job order, on every process)
                self._done_jobs.append((self._job_idx, p))
            else:
                self._finish_job(p, tensors)
            self._pending = None
            self._job_idx += 1
            self._skip_unowned()
            if self._job_idx >= len(self._jobs):
                self._finish_generation(trainer, pl_module)
                if self.dist.distributed and not self.done:
                    self._start_generation()
                    self._advance_idle(trainer, pl_module)
        if self.settings.interrupt_after is not None and self._estimations >= self.settings.interrupt_after:
            raise SimulatedInterrupt(f"simulated interruption after {self._estimations} estimations")

    def on_fit_end(self, trainer: L.Trainer, pl_module) -> None:
        if self._bar is not None:
            self._bar.close()

    def on_exception(self, trainer: L.Trainer, pl_module, exception: BaseException) -> None:
        if self._bar is not None:
            self._bar.close()

    # ------------------------------------------------------------------ bookkeeping
    def _finish_job(self, p: _Pending, tensors: Dict[str, torch.Tensor]) -> None:
        result = self.strategy.tell(self.rng, p.job, p.losses)
        ordered = [p.trained[i] for i in result.merge_priority]
        if len(ordered) == 2:
            merge_eq6(tensors, ordered[-1], ordered[0])
        else:
            merge_eq6(tensors, ordered[0] if ordered else None, None)
        lr = self.lr_of(self.generation)
        for i, member in enumerate(p.job.members):
            self._gen_rows.append({
                "generation": self.generation + 1, "individual": member, "pair": p.job.index,
                "role": result.roles[i], "val_loss": p.losses[i], "train_loss": p.train_losses[i], "lr": lr,
                "drop_path_prob": self.drop_of(self.generation),
                "vector": " ".join(f"{v:.6f}" for v in p.job.vectors[i]), "genotype": str(p.genotypes[i]),
            })

    def _gather_members(self, p: _Pending) -> int:
        """Member-parallel mode: collect every member's result of ``p`` from the processes (this
        one keeps its own on-device tensors) so that all can merge in the same way; returns the
        number of estimations the pair took."""
        own = p.member
        mine = (own, p.losses[-1], p.train_losses[-1], to_cpu(p.trained[-1]))
        results = {m: (loss, train, trained) for m, loss, train, trained in self.dist.all_gather_object(mine)}
        n = len(p.job.members)
        if sorted(results) != list(range(n)):
            raise RuntimeError(f"generation {self.generation + 1} job {p.job.index}: the processes trained members "
                               f"{sorted(results)} of a job with {n} (member-parallel needs one process per member)")
        own_trained = p.trained[-1]
        p.losses = [results[m][0] for m in range(n)]
        p.train_losses = [results[m][1] for m in range(n)]
        p.trained = [own_trained if m == own else results[m][2] for m in range(n)]
        p.genotypes = [encoding.decode(v) for v in p.job.vectors]
        p.member = n
        return n

    def _gather_jobs(self) -> Dict[int, _Pending]:
        """The finished jobs of this generation from every process, by job position."""
        local = {pos: p for pos, p in self._done_jobs}
        if not self.dist.distributed:
            return local
        payload = {pos: (p.losses, p.train_losses, to_cpu(p.trained)) for pos, p in local.items()}
        results = dict(local)
        for rank_payload in self.dist.all_gather_object(payload):
            for pos, (losses, train_losses, trained) in rank_payload.items():
                if pos in results:
                    continue  # this process's own job: keep the on-device tensors
                job = self._jobs[pos]
                results[pos] = _Pending(job, member=len(job.members), trained=trained, losses=list(losses),
                                        train_losses=list(train_losses),
                                        genotypes=[encoding.decode(v) for v in job.vectors])
                if self._bar is not None:
                    self._bar.update(len(job.members))
        missing = [pos for pos in range(len(self._jobs)) if pos not in results]
        if missing:
            raise RuntimeError(f"generation {self.generation + 1}: no result for jobs {missing}")
        return results

    def _finish_generation(self, trainer: L.Trainer, pl_module) -> None:
        if self.settings.weight_set_update == "per_generation":
            # every pair inherited the generation-start Omega; now tell() and the Eq. 6 merges in
            # pair order (the same on every process, so all end with the same state)
            results = self._gather_jobs()
            tensors = pl_module.weight_set.tensors()
            for pos in range(len(self._jobs)):
                self._finish_job(results[pos], tensors)
            self._done_jobs = []
        self.strategy.end_generation(self.rng, self.generation)
        self.history.extend(self._gen_rows)
        losses = np.array([r["val_loss"] for r in self._gen_rows], dtype=np.float64)
        finite = losses[np.isfinite(losses)]
        pop = np.stack(list(self.strategy.population().values()))
        summary = {
            "generation": self.generation + 1,
            "best_loss": float(finite.min()) if finite.size else math.inf,
            "mean_loss": float(finite.mean()) if finite.size else math.inf,
            "diversity": diversity(pop, encoding.LOWER, encoding.UPPER),
            "lr": self.lr_of(self.generation),
            "drop_path_prob": self.drop_of(self.generation),
            "diverged": int((~np.isfinite(losses)).sum()),
            "time_s": time.time() - self._gen_start,
        }
        self.generation_summaries.append(summary)
        self.generation += 1
        msg = (f"generation {summary['generation']}/{self.strategy.generations}: best {summary['best_loss']:.4f} "
               f"mean {summary['mean_loss']:.4f} diversity {summary['diversity']:.3f} lr {summary['lr']:.4g} "
               f"({summary['time_s']:.1f}s)")
        if trainer.is_global_zero and self.dist.is_main:
            (self._bar.write if self._bar is not None else print)(msg)
            log.info(msg)
        if self.on_generation_end_fn is not None:
            self.on_generation_end_fn(self, trainer)
        if self.done:
            trainer.should_stop = True

    # ------------------------------------------------------------------ state
    def state_dict(self) -> Dict[str, Any]:
        return {"generation": self.generation, "rng": self.rng.bit_generator.state,
                "strategy": self.strategy.state_dict(), "history": list(self.history),
                "summaries": list(self.generation_summaries)}
