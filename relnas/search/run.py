"""The search entry: check the config, build the pieces from it, fit.

``run_search(cfg, run_dir)`` is what ``python -m relnas.search`` calls; tests call it directly.
In the shape of the lightning-hydra-template: every piece is instantiated from its config node
(``strategy`` from ``configs/strategy/``, ``supernet`` = the weight set, ``module`` = the
LightningModule, ``data``, ``logger``, ``trainer``), the executor is chosen by
``search.executor``, the :class:`~relnas.search.engine.SearchEngine` gets them together with its
recorders, and one Trainer fits with
:class:`~relnas.search.lightning_adapter.SearchLightningAdapter`.

Each piece checks its own arguments; :func:`check_config` builds the cheap ones (strategy,
executor) and checks what spans pieces (trainer, precision, CUDA graphs), so a bad setting fails
in one line (:class:`ConfigError`) before any data is loaded.
"""
from __future__ import annotations

import json
import logging
import signal
import time
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional

import hydra
import lightning as L
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from relnas import runs
from relnas.errors import ConfigError
from relnas.search import distributed as search_dist
from relnas.search import guards
from relnas.search.constraints import check_feasible
from relnas.search.engine import SearchEngine, SearchSettings
from relnas.search.executors import Executor, create_executor, executor_name
from relnas.search.lightning_adapter import SearchLightningAdapter
from relnas.search.recorders import OutputRecorder, recorders_for
from relnas.search.spec import SearchSpec, search_spec
from relnas.search.state import load_state
from relnas.search.step_graph import CAPTURE_MODES
from relnas.search.strategies import Strategy
from relnas.utils.console import ignore_library_warnings
from relnas.utils.instantiate import configured
from relnas.utils.loggers import close_loggers, configure_logger_cfg, logger_ids, run_identity

log = logging.getLogger(__name__)

STRATEGY_CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "strategy"


# ---------------------------------------------------------------------- config
def known_strategies() -> List[str]:
    return sorted(p.stem for p in STRATEGY_CONFIGS.glob("*.yaml"))


def resolve_config(cfg: DictConfig) -> DictConfig:
    """``cfg`` after checking that it selects a strategy (``strategy=<name>``, configs/strategy/)."""
    if not isinstance(cfg.get("strategy"), DictConfig) or "_target_" not in cfg.strategy:
        raise ConfigError(f"no search strategy: choose one with strategy=<{'|'.join(known_strategies())}>")
    return cfg


def _build(node: DictConfig, what: str, **kwargs: Any) -> Any:
    """``instantiate(node, **kwargs)``; a constructor's ValueError/TypeError becomes a one-line ConfigError."""
    return configured(f"{what} ({node.get('_target_')})", hydra.utils.instantiate, node, **kwargs)


def build_strategy(cfg: DictConfig) -> Strategy:
    return _build(cfg.strategy, "strategy")


def build_executor(cfg: DictConfig, strategy: Strategy, dist: search_dist.DistContext) -> Executor:
    try:
        name = executor_name(cfg.search.get("executor"))
        return create_executor(name, strategy, dist)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def check_config(cfg: DictConfig) -> None:
    """Fail in one line, before any work, on a config that cannot run (see the module doc)."""
    cfg = resolve_config(cfg)
    s = cfg.search
    tp = s.train_portion
    if not isinstance(tp, (int, float)) or not 0.0 < float(tp) < 1.0:
        raise ConfigError(f"search.train_portion must be in (0, 1), got {tp!r}")
    strategy = build_strategy(cfg)
    build_executor(cfg, strategy, search_dist.DistContext(rank=0, world_size=search_dist.requested_world_size()))
    budget = s.get("budget")
    if isinstance(budget, int) and strategy.budget != budget:  # RelativeNAS runs whole generations only
        log.warning("search.budget=%d is not a multiple of search.population_size=%d: strategy %s runs %d generations "
                    "= %d estimations (a baseline given the same search.budget runs %d)", budget,
                    strategy.population_size, strategy.name, strategy.generations, strategy.budget, budget)
    trainer_strategy = str(cfg.trainer.get("strategy", "auto") or "auto")
    devices, nodes = cfg.trainer.get("devices", 1), cfg.trainer.get("num_nodes", 1)
    if trainer_strategy not in ("auto", "single_device") or (isinstance(devices, int) and devices > 1) or \
            (not isinstance(devices, (int, str)) and devices is not None and len(devices) > 1) or (nodes or 1) > 1:
        raise ConfigError(
            "the search trains each candidate on one device (trainer.strategy=auto, trainer.devices=1, "
            "trainer.num_nodes=1): a DDP strategy would shard the data and average the gradients of different "
            "candidates. To use several devices, run one process per device with "
            "search.executor=per_generation, e.g. `torchrun --nproc_per_node=4 -m relnas.search "
            "search.executor=per_generation` (see docs/scale_out.md)")
    if s.get("channels_last", "auto") not in (True, False, "auto"):
        raise ConfigError(f"search.channels_last must be true, false or auto, got {s.get('channels_last')!r}")
    if s.get("graph_capture", "lean") not in CAPTURE_MODES:
        raise ConfigError(f"search.graph_capture must be {' or '.join(CAPTURE_MODES)}, got {s.get('graph_capture')!r}")
    if s.get("cuda_graphs", "auto") not in (True, False, "auto"):
        raise ConfigError(f"search.cuda_graphs must be true, false or auto, got {s.get('cuda_graphs')!r}")
    if s.get("cuda_graphs", "auto") is not False:
        if s.get("cuda_graphs") is True and str(cfg.trainer.get("accelerator", "auto")) == "cpu":
            raise ConfigError("search.cuda_graphs=true needs a GPU (trainer.accelerator=gpu or auto); "
                              "set search.cuda_graphs=auto or false on a CPU")
        if int(s.get("graph_warmup", 1)) < 1:
            raise ConfigError(f"search.graph_warmup must be >= 1 (SGD's momentum must exist before the capture), "
                              f"got {s.graph_warmup}")
    precision = str(cfg.trainer.get("precision", "32-true"))
    if precision.startswith("16"):
        raise ConfigError(f"trainer.precision={precision} is not supported by the search (per-candidate optimizers "
                          f"bypass the fp16 grad scaler); use 32-true or bf16-mixed")
    try:
        guards.validate_search_numbers(cfg)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def _read_resume(cfg: DictConfig, spec: SearchSpec) -> tuple[Dict[str, Any], Path]:
    """The checkpoint of ``cfg.resume`` and its run directory, after checking that it can continue
    with this config (the same :class:`~relnas.search.spec.SearchSpec`, or an allowed extension)."""
    run_dir = Path(cfg.resume)
    state, path = load_state(run_dir)
    changed, extension = spec.changes_from(state["spec"])
    if changed:
        hints = []
        if any(k.split(" ")[0] == "search.generations" for k in changed):
            hints.append("search.generations may only grow" if spec.extensible() else
                         "only a relativenas search without search.budget can be extended by a larger "
                         "search.generations")
        overrides = run_dir / ".hydra" / "overrides.yaml"
        hints.append(f"resume with the original values (the first run's overrides: {overrides})"
                     if overrides.is_file() else "resume with the original values")
        raise ConfigError("resume: the configuration differs from the one the search started with in: "
                          + "; ".join(changed) + "; " + "; ".join(hints))
    log.info("resuming %s from %s (after generation %d)%s", run_dir, path.name, state["generation"],
             f"; extending the search: {', '.join(extension)}" if extension else "")
    return state, run_dir


# ---------------------------------------------------------------------- run
def run_search(cfg: DictConfig, run_dir: Optional[Path] = None) -> Dict[str, Any]:
    """Run (or resume) a search as configured; returns the found genotype and its loss.

    Launched in several processes (``torchrun``, ``srun``; see :mod:`relnas.search.distributed`
    and :mod:`relnas.search.executors`), the executor spreads the work over them; only rank 0
    writes outputs, checkpoints and logs (every rank returns the result).
    """
    cfg = resolve_config(cfg)
    check_config(cfg)
    dist = search_dist.setup()
    try:
        return _run_search(cfg, run_dir, dist)
    finally:
        dist.close()


def _check_health(engine: SearchEngine, s: DictConfig) -> None:
    """Fail (after the recorders wrote the tables and a result.json that says why) when the
    search's candidates diverged; see :func:`relnas.search.guards.check_health`."""
    try:
        guards.check_health(engine.history, float(s.get("max_diverged_share", 0.5)), float(s.lr))
        check_feasible(engine.strategy)
    except guards.SearchFailed as e:
        for recorder in engine.recorders:
            if hasattr(recorder, "on_search_failed"):
                recorder.on_search_failed(engine, str(e))
        raise


def _interrupted(e: BaseException, engine: SearchEngine, run_dir: Path, dist: search_dist.DistContext) -> SystemExit:
    """The exit of a search stopped by a signal, after one line that says what is saved and how to
    continue. Lightning turns SIGTERM into ``SIGTERMException``, a ``SystemExit`` without a code
    (status 0: a scheduler or a shell script would take the stopped search for a finished one), and
    Ctrl-C into ``SystemExit(1)``; the status becomes 128 + the signal (143 for SIGTERM, 130 for
    SIGINT), as for a process the signal ended."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    if isinstance(e, SIGTERMException):
        what, code = "SIGTERM", 128 + signal.SIGTERM
    elif isinstance(e, KeyboardInterrupt) or (isinstance(e, SystemExit) and e.code == 1):
        what, code = "SIGINT (Ctrl-C)", 128 + signal.SIGINT
    else:  # another exit (its own status) before the search's end
        what, code = f"an exit ({e.code!r})", (e.code if isinstance(e.code, int) and e.code else 1)
    if dist.is_main and engine.done:  # stopped between the last generation's checkpoint and the outputs
        log.error("the search was interrupted by %s after its last generation, before its outputs were written: "
                  "`python -m relnas.search resume=%s` and the same overrides writes them", what, run_dir)
    elif dist.is_main:
        total = engine.strategy.generations
        saved = (f"they are saved in {run_dir / 'search_state.pt'}; continue with "
                 f"`python -m relnas.search resume={run_dir}` and the same overrides" if engine.generation
                 else "no generation was complete, nothing is saved: start the search again")
        log.error("the search was interrupted by %s in generation %d of %d (%d of %d complete): %s",
                  what, min(engine.generation + 1, total), total, engine.generation, total, saved)
    return SystemExit(code)


def _uses_cuda(cfg: DictConfig) -> bool:
    """Whether the search's Trainer will run on a CUDA device (its accelerator setting)."""
    accelerator = str(cfg.trainer.get("accelerator", "auto"))
    return accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())


def _trainer_devices(cfg: DictConfig, dist: search_dist.DistContext) -> Dict[str, Any]:
    """One device per process: on GPUs the local rank's GPU."""
    gpu = _uses_cuda(cfg)
    if dist.distributed and gpu and torch.cuda.device_count() > 0:
        index = dist.local_rank % torch.cuda.device_count()
        torch.cuda.set_device(index)
        return {"devices": [index], "num_nodes": 1}
    return {"devices": 1, "num_nodes": 1}


def _run_search(cfg: DictConfig, run_dir: Optional[Path], dist: search_dist.DistContext) -> Dict[str, Any]:
    s = cfg.search
    spec = search_spec(cfg)
    resume_state = None
    if cfg.get("resume"):
        resume_state, run_dir = _read_resume(cfg, spec)
    run_dir = Path(run_dir) if run_dir is not None else Path.cwd()
    if dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)

    # the pieces, each from its config node
    strategy = build_strategy(cfg)
    executor = build_executor(cfg, strategy, dist)
    data_kwargs = {"train_portion": float(s.train_portion)}
    if s.get("subset") is not None:  # search on a random subset of the training set
        data_kwargs["subset"] = int(s.subset)
    if s.get("val_augment", False):  # validate with the training augmentation (the authors' search)
        data_kwargs["val_augment"] = True
    datamodule = _build(cfg.data, "data", **data_kwargs)  # its argument checks fail in one line
    datamodule.setup("fit")  # loads the data once here (the source is logged, sizes are checked)
    extra = {"data_source": getattr(datamodule, "source", None)}  # result.json stays deterministic
    identity = run_identity(cfg)
    torch.manual_seed(int(cfg.seed))
    weight_set = _build(cfg.supernet, "supernet", num_classes=datamodule.num_classes,
                        in_channels=datamodule.in_channels)
    settings = SearchSettings(seed=int(cfg.seed), lr=float(s.lr), lr_min=float(s.lr_min),
                              drop_path_prob=float(s.drop_path_prob), drop_path_ramp=bool(s.drop_path_ramp),
                              interrupt_after=s.get("interrupt_after"))
    engine = SearchEngine(strategy, weight_set, settings, executor, rng=np.random.default_rng(int(cfg.seed)))
    if resume_state is not None:
        engine.load_state_dict(resume_state)
    plots = bool(s.get("plots", True))

    if engine.done:
        log.info("the search in %s is already complete (extend it with a larger search.generations)", run_dir)
        engine.recorders = [OutputRecorder(run_dir, plots, extra)] if dist.is_main else []
        _check_health(engine, s)
        return dict(engine.end_search(), run_dir=run_dir)

    from relnas.utils import instantiate_loggers

    # a resumed search continues its W&B run (id from the checkpoint) and its log folders
    logger_cfg = configure_logger_cfg(cfg.get("logger"), identity,
                                      resume_ids=(resume_state or {}).get("logger_ids"),
                                      save_dir=str(run_dir) if resume_state is not None else None)
    loggers = instantiate_loggers(logger_cfg) if dist.is_main else []
    for lg in loggers:
        lg.log_hyperparams({**OmegaConf.to_container(cfg, resolve=True), "run": identity.as_dict(),
                            "data_source": extra["data_source"]})
    if dist.is_main:
        engine.recorders = recorders_for(run_dir, spec.to_dict(), loggers, plots, logger_ids(loggers), extra)
    module = _build(cfg.module, "module", weight_set=weight_set)
    adapter = SearchLightningAdapter(engine, progress=bool(s.get("progress", True)), announce=dist.is_main)
    trainer: L.Trainer = hydra.utils.instantiate(
        cfg.trainer, max_epochs=engine.remaining_estimations(), callbacks=[adapter], logger=loggers or False,
        **_trainer_devices(cfg, dist),
        enable_checkpointing=False, num_sanity_val_steps=0, enable_progress_bar=False, check_val_every_n_epoch=1,
        default_root_dir=str(run_dir), _convert_="partial")
    start = time.time()
    try:
        with warnings.catch_warnings():
            ignore_library_warnings()  # expected here: per-candidate optimizers, per-generation logging
            trainer.fit(module, datamodule=datamodule)
    except BaseException as e:
        close_loggers(loggers, "failed")
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise _interrupted(e, engine, run_dir, dist) from e
        raise
    if not engine.done:
        close_loggers(loggers, "failed")
        raise RuntimeError(f"the search stopped after generation {engine.generation} of {strategy.generations}; "
                           f"continue with resume={run_dir}")
    if dist.is_main:  # how this part of the run went (not in result.json, which a resume reproduces)
        (run_dir / runs.RUN_INFO_FILE).write_text(json.dumps({"time_s": round(time.time() - start, 2),
                                                      "run": identity.as_dict()}, indent=2) + "\n")
    try:
        _check_health(engine, s)
    except guards.SearchFailed:
        close_loggers(loggers, "failed")
        raise
    result = engine.end_search()
    close_loggers(loggers, "success")
    result["time_s"] = time.time() - start
    result["run_dir"] = run_dir
    return result
