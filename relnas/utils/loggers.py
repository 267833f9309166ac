"""Experiment loggers of one run: names and groups from the Hydra sweep, resume of the same W&B
run and CSV file, and a W&B run that is finished when its job ends.

* :func:`run_identity` names a run from Hydra: in a multirun, the group is the sweep (task name and
  sweep folder) and the name is the job's swept overrides (``search.population_size=4``); a single
  run is named after its output folder. Tags: the task, the search strategy, the data set.
* :func:`configure_logger_cfg` writes these into the ``logger`` config before instantiation
  (W&B name/group/tags/id, TensorBoard version folder); values the user set explicitly are kept.
* :class:`WandbLogger` finishes its W&B run in ``finalize`` (Lightning's does not, so the next job
  of a multirun in the same process reused the still-open run) and does not pass the deprecated
  ``anonymous`` setting. :class:`CSVLogger` appends to an existing ``metrics.csv`` (a resumed run)
  instead of deleting it.
* :func:`logger_ids` / the ``resume_ids`` argument carry the W&B run id through a checkpoint.
"""
from __future__ import annotations

import csv
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

from lightning.pytorch.loggers import CSVLogger as _CSVLogger
from lightning.pytorch.loggers import WandbLogger as _WandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter as _ExperimentWriter
from lightning.fabric.loggers.logger import rank_zero_experiment
from omegaconf import DictConfig, OmegaConf, open_dict

log = logging.getLogger(__name__)

__all__ = ["RunIdentity", "run_identity", "sweep_keys", "configure_logger_cfg", "logger_ids", "finish_wandb", "close_loggers",
           "WandbLogger", "CSVLogger"]


@dataclass
class RunIdentity:
    name: str
    group: Optional[str] = None
    tags: List[str] = field(default_factory=list)
    job_num: Optional[int] = None
    sweep_dir: Optional[str] = None
    overrides: Dict[str, str] = field(default_factory=dict)  # the swept keys and this job's values

    def as_dict(self) -> Dict[str, Any]:
        return {"name": self.name, "group": self.group, "tags": list(self.tags), "job_num": self.job_num,
                "sweep_dir": self.sweep_dir, "swept": dict(self.overrides)}


def sweep_keys(sweep_overrides: Sequence[str]) -> List[str]:
    """The keys a multirun sweeps over (``a=1,2``, ``range(...)``, ``choice(...)``), in order."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(list(sweep_overrides))
    return [o.key_or_group for o in parsed if o.is_sweep_override()]


def _job_overrides(task_overrides: Sequence[str]) -> Dict[str, str]:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(list(task_overrides))
    return {o.key_or_group: o.get_value_element_as_str() for o in parsed}


def _data_name(cfg: DictConfig, choices: Mapping[str, Any]) -> Optional[str]:
    if choices.get("data"):
        return str(choices["data"])
    target = str(cfg.get("data", {}).get("_target_", "") or "")
    return target.rsplit(".", 1)[-1] or None


def run_identity(cfg: DictConfig) -> RunIdentity:
    """Name, group and tags of this run, derived from the Hydra job (see the module doc)."""
    try:
        return _run_identity(cfg)
    except Exception as e:  # noqa: BLE001 - naming must never fail a run
        log.debug("no run identity from Hydra: %s", e)
        return RunIdentity(name=str(cfg.get("task_name") or "run"))


def _run_identity(cfg: DictConfig) -> RunIdentity:
    task = str(cfg.get("task_name") or "run")
    tags = [task]
    strategy = str(OmegaConf.select(cfg, "strategy._target_") or "").rsplit(".", 1)[-1].lower()
    if strategy and task == "search":
        tags.append(f"strategy:{strategy}")
    genotype = cfg.get("genotype")
    if task != "search" and isinstance(genotype, str) and genotype:
        tags.append(f"genotype:{Path(genotype).name if '/' in genotype else genotype}")
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
        out = Path(hc.runtime.output_dir)
    except Exception:  # noqa: BLE001 - not inside a Hydra job (e.g. a test calling run_search)
        data = _data_name(cfg, {})
        return RunIdentity(name=task, tags=tags + ([f"data:{data}"] if data else []))
    data = _data_name(cfg, hc.runtime.choices)
    if data:
        tags.append(f"data:{data}")
    if hc.mode != RunMode.MULTIRUN:
        return RunIdentity(name=f"{task}-{out.name}", tags=tags)
    sweep_dir = Path(hc.sweep.dir)
    job_over = _job_overrides(hc.overrides.task)
    swept: List[str] = []
    multirun_yaml = sweep_dir / "multirun.yaml"
    if multirun_yaml.is_file():  # written by the sweeper before it launches the jobs
        try:
            swept = sweep_keys(OmegaConf.load(multirun_yaml).hydra.overrides.task)
        except Exception as e:  # noqa: BLE001 - naming must never fail a run
            log.debug("cannot read the sweep overrides of %s: %s", multirun_yaml, e)
    if not swept:
        swept = list(job_over)
    values = {k: job_over[k] for k in swept if k in job_over}
    num = int(hc.job.num) if hc.job.get("num") is not None else None
    name = ",".join(f"{k}={v}" for k, v in values.items()) or f"job{num}"
    return RunIdentity(name=name, group=f"{task}:{sweep_dir.name}", tags=tags, job_num=num,
                       sweep_dir=str(sweep_dir), overrides=values)


def _is(conf: Any, cls_name: str) -> bool:
    return isinstance(conf, DictConfig) and str(conf.get("_target_", "")).endswith(cls_name)


def _safe_folder(name: str) -> str:
    return "".join(c if c.isalnum() or c in "=,.-_+" else "_" for c in name)[:200]


def configure_logger_cfg(logger_cfg: Optional[DictConfig], identity: RunIdentity,
                         resume_ids: Optional[Mapping[str, str]] = None,
                         save_dir: Optional[str] = None) -> Optional[DictConfig]:
    """A copy of ``logger_cfg`` with the run's name, group and tags (W&B), the W&B run id to resume
    and, in a multirun, a TensorBoard version folder named after the job. ``save_dir`` (a resumed
    run's folder) replaces every logger's ``save_dir`` so that the logs continue where they were."""
    if not logger_cfg:
        return logger_cfg
    cfg = OmegaConf.create(OmegaConf.to_container(logger_cfg, resolve=True))
    resume_ids = dict(resume_ids or {})
    with open_dict(cfg):
        for key, conf in cfg.items():
            if not isinstance(conf, DictConfig) or "_target_" not in conf:
                continue
            if save_dir is not None and "save_dir" in conf:
                old = Path(str(conf.save_dir))
                # keep a sub-folder below the output dir (e.g. <out>/tensorboard)
                conf.save_dir = str(Path(save_dir) / old.name) if old.name in ("tensorboard",) else str(save_dir)
            if _is(conf, "WandbLogger"):
                if not conf.get("name"):
                    conf.name = identity.name
                if not conf.get("group") and identity.group:
                    conf.group = identity.group
                conf.tags = list(dict.fromkeys(list(conf.get("tags") or []) + identity.tags))
                if resume_ids.get("wandb") and not conf.get("id"):
                    conf.id = resume_ids["wandb"]
            elif _is(conf, "TensorBoardLogger"):
                if identity.group and conf.get("version") in ("", None):
                    conf.version = _safe_folder(identity.name)
    return cfg


def logger_ids(loggers: Sequence[Any]) -> Dict[str, str]:
    """The ids a resumed run needs to continue its logger runs (today: the W&B run id)."""
    out: Dict[str, str] = {}
    for lg in loggers:
        if isinstance(lg, _WandbLogger):
            try:
                out["wandb"] = str(lg.experiment.id)
            except Exception as e:  # noqa: BLE001
                log.debug("no W&B run id: %s", e)
    return out


def finish_wandb(exit_code: int = 0) -> None:
    """Finish the process's active W&B run, if any (each Hydra job must leave none open)."""
    try:
        import sys

        if "wandb" not in sys.modules:
            return
        import wandb

        if wandb.run is not None:
            wandb.finish(exit_code=exit_code)
    except Exception as e:  # noqa: BLE001 - never fail a job while closing its logger
        log.warning("could not finish the W&B run: %s", e)


def close_loggers(loggers: Sequence[Any], status: str = "success") -> None:
    """End of a run: finalize every logger and finish the W&B runs (Lightning finalizes its loggers
    after each fit/test but never finishes a W&B run, so the next job of a multirun in the same
    process reused it)."""
    for lg in loggers:
        try:
            lg.finalize(status)
        finally:
            if isinstance(lg, WandbLogger):
                lg.finish(status)
            elif isinstance(lg, _WandbLogger) and lg._experiment is not None:
                lg._experiment.finish(exit_code=0 if status == "success" else 1)


class WandbLogger(_WandbLogger):
    """Lightning's WandbLogger with :meth:`finish` (ends the W&B run; one run per job) and without
    the deprecated ``anonymous`` setting (W&B warns whenever it is passed)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self._wandb_init.get("anonymous") is None:
            self._wandb_init.pop("anonymous", None)

    def finish(self, status: str = "success") -> None:
        if self._experiment is not None:
            try:
                self._experiment.finish(exit_code=0 if status == "success" else 1)
            finally:
                self._experiment = None


class _AppendingWriter(_ExperimentWriter):
    """Keeps an existing ``metrics.csv`` and appends under its header (merging new columns)."""

    def _check_log_dir_exists(self) -> None:
        path = self.metrics_file_path
        if os.path.isfile(path):
            with open(path, newline="") as f:
                header = next(csv.reader(f), [])
            self.metrics_keys = list(header)  # appended rows follow the file's own column order


class CSVLogger(_CSVLogger):
    """Lightning's CSVLogger that continues an existing ``metrics.csv`` (a resumed run) instead of
    deleting it."""

    @property
    @rank_zero_experiment
    def experiment(self) -> _ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment
