"""A small layer over ``torch.distributed`` for running one search in several processes: the pairs
of a generation in parallel (``per_generation``), or, in the sequential order, the two members of
each pair (``member_parallel``: two processes that exchange their results after every pair). Who
trains what and when results meet is :mod:`relnas.search.executors`; this module only joins the
process group and exchanges objects.

Design (see docs/scale_out.md): every process runs its OWN single-device Lightning Trainer
(``devices=1``; on GPUs the local rank's device), so there is no data sharding and no gradient
synchronisation -- each candidate is trained on the full search-train split exactly as in a
single-process run. The processes only meet where the executor says (``per_generation``: at the
end of every generation), where :meth:`DistContext.all_gather_object` exchanges the validation losses and the trained tensors
(CPU copies) of the candidates each process estimated; every process then applies the strategy's
``tell`` calls and the Eq. 6 merges in pair order, so all of them end the generation with the same
population, random state and weight set.

The process group is set up from the environment:

* ``torchrun`` (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``);
* SLURM (``srun``, or the Hydra submitit launcher with ``tasks_per_node`` > 1): ranks from
  ``SLURM_PROCID``/``SLURM_STEP_NUM_TASKS``/``SLURM_LOCALID``, the address from the node list and a
  port derived from the job id (Lightning's :class:`SLURMEnvironment` rules);
* a process group that is already initialised is used as it is.

Otherwise the context is the trivial single process one (rank 0 of 1), and nothing is imported or
initialised. The exchanged objects are CPU tensors, so the collectives always use a ``gloo``
group (created beside the default group if that one is ``nccl``); GPUs need no NCCL set-up.
The collective timeout is ``RELNAS_DIST_TIMEOUT_MIN`` minutes (default 240): a process that
finishes its candidates early waits that long at most for the slowest one.
"""
from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass, field
from typing import Any, List

import torch

log = logging.getLogger(__name__)

TIMEOUT_ENV = "RELNAS_DIST_TIMEOUT_MIN"


def _timeout() -> datetime.timedelta:
    return datetime.timedelta(minutes=float(os.environ.get(TIMEOUT_ENV, "240")))


@dataclass
class DistContext:
    """Rank, world size and the object collectives of a (possibly trivial) process group."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    initialised_here: bool = False
    group: Any = field(default=None, repr=False)   # the gloo group of the collectives

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def owns(self, job_index: int) -> bool:
        """Job ``j`` of a generation runs on rank ``j % world_size``."""
        return job_index % self.world_size == self.rank

    def all_gather_object(self, obj: Any) -> List[Any]:
        """``obj`` of every rank, in rank order (``[obj]`` in a single process)."""
        if not self.distributed:
            return [obj]
        import torch.distributed as dist

        out: List[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj, group=self.group)
        return out

    def close(self) -> None:
        """Destroy the process group if this module created it."""
        if self.distributed and self.initialised_here:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
            self.initialised_here = False


def _env_int(name: str, default: int) -> int:
    v = os.environ.get(name)
    return int(v) if v not in (None, "") else default


def requested_world_size() -> int:
    """The number of processes the launcher started (1 when not launched by one)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    if "WORLD_SIZE" in os.environ and "RANK" in os.environ:
        return _env_int("WORLD_SIZE", 1)
    if _slurm_tasks() > 1:
        return _slurm_tasks()
    return 1


def _slurm_tasks() -> int:
    """Tasks of the current ``srun`` step (1 outside one: a batch script or an ``salloc`` shell
    that did not go through ``srun`` is a single process, whatever ``SLURM_NTASKS`` says)."""
    if "SLURM_PROCID" not in os.environ:
        return 1
    return _env_int("SLURM_STEP_NUM_TASKS", 1)


def setup() -> DistContext:
    """Join (or create) the process group described by the environment; see the module doc."""
    import torch.distributed as dist

    if not dist.is_available():
        return DistContext()
    if dist.is_initialized():
        world, rank = dist.get_world_size(), dist.get_rank()
        if world == 1:
            return DistContext()
        group = dist.new_group(backend="gloo", timeout=_timeout()) if dist.get_backend() != "gloo" else None
        return DistContext(rank, world, _env_int("LOCAL_RANK", rank % max(1, torch.cuda.device_count() or 1)),
                           False, group)
    if "WORLD_SIZE" in os.environ and "RANK" in os.environ:     # torchrun / torch.distributed.run
        world, rank, local = _env_int("WORLD_SIZE", 1), _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
        if world <= 1:
            return DistContext()
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    elif _slurm_tasks() > 1:                                     # srun / submitit with several tasks
        from lightning.fabric.plugins.environments import SLURMEnvironment

        env = SLURMEnvironment()
        world, rank, local = _slurm_tasks(), _env_int("SLURM_PROCID", 0), _env_int("SLURM_LOCALID", 0)
        os.environ["MASTER_ADDR"] = env.main_address
        os.environ["MASTER_PORT"] = str(env.main_port)
        os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(local))
    else:
        return DistContext()
    dist.init_process_group(backend="gloo", init_method="env://", rank=rank, world_size=world, timeout=_timeout())
    log.info("search process %d of %d (local rank %d) joined the process group", rank, world, local)
    return DistContext(rank, world, local, True, None)


def to_cpu(obj: Any) -> Any:
    """``obj`` with every tensor (in dicts, lists and tuples) copied to the CPU."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_cpu(v) for v in obj)
    return obj
