"""Train an evaluation network from scratch (docs/method.md §6): ``python -m relnas.train [overrides]``.

Examples::

    python -m relnas.train                                  # CIFAR-10 evaluation of RelativeNAS (600 epochs)
    python -m relnas.train +experiment=cifar100 genotype=outputs/search/<run>   # a searched cell
    python -m relnas.train +experiment=quickstart           # minutes on a laptop CPU
    python -m relnas.train trainer=gpu                      # one GPU, bf16
    python -m relnas.train trainer=ddp trainer.devices=4    # DDP; data.batch_size is per GPU
    python -m relnas.train resume=outputs/train/<run>       # continue from <run>/checkpoints/last.ckpt

At the end the test split is evaluated once, with the weights that ``test_checkpoint`` names
(default ``auto``: the final epoch's, or the best-on-validation checkpoint when ``data.val_size``
holds a validation split out of the training set; see :mod:`relnas.runs`), and
``result.json`` is written to the run directory, saying which rule produced each number.
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

import hydra
from omegaconf import DictConfig, OmegaConf

from relnas import runs
from relnas.errors import ConfigError
from relnas.nas.arch import ArchSpec, resolve_genotype
from relnas.train_spec import RecordTrainSpec, train_spec
from relnas.utils.instantiate import instantiate, instantiate_datamodule
from relnas.utils.io import load_checkpoint_dict, write_json
from relnas.utils.cli import command, entry_point

log = logging.getLogger(__name__)


def find_checkpoint(path: str | os.PathLike) -> Path:
    """A ``.ckpt`` file, or a run directory's checkpoint to resume from (:func:`relnas.runs.resume_checkpoint`)."""
    p = Path(path).expanduser()
    if p.is_dir():
        found = runs.resume_checkpoint(p)
        if found is not None:
            return found
        raise ConfigError(f"resume: {str(p)!r} is a directory without checkpoints/last.ckpt")
    if not p.is_file():
        raise ConfigError(f"resume: checkpoint {str(p)!r} does not exist")
    return p


def carry_best_checkpoints(ckpt: Mapping[str, Any], callbacks: list) -> None:
    """Resuming into another run directory: keep the best checkpoint of the run so far.

    Lightning's ``ModelCheckpoint`` restores its best score only when the checkpoint directory is
    unchanged; otherwise the first validation after the resume becomes the 'best', and a
    checkpoint tested by ``test_checkpoint=best_val|best_test_epoch`` would be the best of the
    resumed part only. For every monitoring ``ModelCheckpoint`` whose state in ``ckpt`` comes
    from another directory, the best checkpoint file is copied into the new directory and the
    stored state, pointed at the copy, is what the callback restores (the original run's files
    are never touched)."""
    import shutil

    from lightning.pytorch.callbacks import ModelCheckpoint

    from relnas.utils.instantiate import is_rank_zero

    def restore_as(cb: ModelCheckpoint, moved: Dict[str, Any]) -> None:
        restore = cb.load_state_dict
        cb.load_state_dict = lambda _state, _restore=restore, _moved=moved: _restore(_moved)

    states = ckpt.get("callbacks") or {}
    for cb in callbacks:
        if not isinstance(cb, ModelCheckpoint) or not cb.dirpath:
            continue
        state = states.get(cb.state_key)
        if not state or state.get("dirpath") == cb.dirpath:
            continue
        old = Path(str(state.get("best_model_path") or ""))
        if not cb.monitor or state.get("best_model_score") is None or not old.is_file():
            # nothing to carry (e.g. last.ckpt's callback): restored as its own directory's state,
            # without Lightning's warning that the best score is lost (Lightning never deletes the
            # old run's files: they lie outside this directory)
            restore_as(cb, {**state, "dirpath": cb.dirpath})
            continue
        new = Path(cb.dirpath) / old.name
        if is_rank_zero():  # one copy (DDP: every rank points its callback at it)
            new.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(old, new)
        score = state["best_model_score"]
        restore_as(cb, {**state, "dirpath": cb.dirpath, "best_model_path": str(new), "kth_best_model_path": str(new),
                        "kth_value": score, "best_k_models": {str(new): score}, "last_model_path": ""})
        log.info("resume: best checkpoint so far %s copied to %s", old, new)


def check_train_config(cfg: DictConfig) -> None:
    """The numeric settings of a training run, checked before the genotype, the data or the model
    are touched: each failure is one :class:`ConfigError` line naming the key and what is allowed."""
    from relnas.utils.validate import check_float, check_int

    model = cfg.get("model") or {}
    opt = cfg.get("optimizer") or {}
    sched = cfg.get("scheduler") or {}
    trainer = cfg.get("trainer") or {}
    try:
        check_int("epochs", cfg.get("epochs"), minimum=1)
        if trainer.get("max_epochs") is not None:
            # -1 would be Lightning's endless training; 0 trains nothing
            check_int("trainer.max_epochs", trainer.get("max_epochs"), minimum=1)
        check_float("optimizer.lr", opt.get("lr"), 0.0, low_open=True)
        if opt.get("momentum") is not None:
            check_float("optimizer.momentum", opt.get("momentum"), 0.0, 1.0)
        if opt.get("weight_decay") is not None:
            check_float("optimizer.weight_decay", opt.get("weight_decay"), 0.0)
        check_float("model.auxiliary_weight", model.get("auxiliary_weight", 0.0), 0.0)
        check_float("model.drop_path_prob", model.get("drop_path_prob", 0.0), 0.0, 1.0)
        check_float("model.label_smoothing", model.get("label_smoothing", 0.0), 0.0, 1.0)
        check_float("trainer.gradient_clip_val", trainer.get("gradient_clip_val"), 0.0, low_open=True,
                    optional=True, hint="null disables clipping")
        check_float("scheduler.warmup_epochs", sched.get("warmup_epochs", 0), 0.0)
        check_float("scheduler.eta_min", sched.get("eta_min", 0.0), 0.0)
        check_float("scheduler.final_lr", sched.get("final_lr", 0.0), 0.0)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def _err(acc: Optional[float]) -> Optional[float]:
    return None if acc is None else round(100.0 * (1.0 - float(acc)), 4)


# ---------------------------------------------------------------------- training

def build_model(cfg: DictConfig, arch: ArchSpec):
    """The LightningModule of the ``model`` config node (``_target_``: :class:`ClassifierModule`)
    for the architecture ``arch``."""
    return instantiate(cfg.model, **arch.to_dict())


def train(cfg: DictConfig) -> Dict[str, Any]:
    """Train according to ``cfg`` and return the results dict (also written to result.json)."""
    import lightning as L
    from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint

    from relnas.utils import hardware_info, instantiate_callbacks, instantiate_loggers

    start = time.time()
    out_dir = Path(cfg.paths.output_dir)
    if cfg.get("seed") is not None:
        L.seed_everything(int(cfg.seed), workers=True)

    check_train_config(cfg)
    genotype = resolve_genotype(cfg.genotype)  # a wrong genotype fails before the data is loaded
    from relnas.models.classifier import SCHEDULERS

    sched = cfg.get("scheduler") or {}
    if sched.get("name", "cosine") not in SCHEDULERS:
        raise ConfigError(f"unknown scheduler.name {sched.get('name')!r}; choose one of {', '.join(SCHEDULERS)}")
    if sched.get("name") == "official_imagenet" and int(cfg.epochs) <= 5:
        raise ConfigError(f"scheduler.name=official_imagenet needs epochs > 5 (its last 5 epochs decay "
                          f"separately), got {cfg.epochs}")
    val_size = int(cfg.data.get("val_size", 0) or 0)
    try:
        rule = runs.resolve_test_rule(cfg.get("test_checkpoint", "auto"), val_size)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    ckpt_path = find_checkpoint(cfg.resume) if cfg.get("resume") else None  # before the data is loaded
    print(f"genotype: {genotype}", flush=True)
    dm = instantiate_datamodule(cfg.data)
    arch = ArchSpec.from_config(cfg.model, genotype, dm)
    arch.check_input()

    spec = train_spec(cfg, arch)
    resumed: Optional[Mapping[str, Any]] = None
    if ckpt_path is not None:
        resumed = load_checkpoint_dict(ckpt_path)
        spec.check_resume(resumed, ckpt_path)
        log.info("resuming from %s", ckpt_path)

    model = build_model(cfg, arch)

    from relnas.utils.loggers import close_loggers, configure_logger_cfg, run_identity

    identity = run_identity(cfg)
    loggers = instantiate_loggers(configure_logger_cfg(cfg.get("logger"), identity))
    callbacks = instantiate_callbacks(cfg.get("callbacks")) + [RecordTrainSpec(spec)]
    if resumed is not None:
        carry_best_checkpoints(resumed, callbacks)
        resumed = None  # the trainer reads the file itself
    if not loggers:
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)

    if trainer.is_global_zero:
        write_json(out_dir / "genotype.json", genotype.to_dict())
        for lg in trainer.loggers:
            lg.log_hyperparams({"config": OmegaConf.to_container(cfg, resolve=True)})

    trainer.fit(model, datamodule=dm, ckpt_path=str(ckpt_path) if ckpt_path else None)

    best_val = model.best_val()
    ckpt_cbs = [c for c in trainer.callbacks if isinstance(c, ModelCheckpoint)]
    best_cb = next((c for c in ckpt_cbs if c.monitor), None)
    best_path = best_cb.best_model_path if best_cb is not None and best_cb.best_model_path else None
    last_path = next((str(Path(c.dirpath) / "last.ckpt") for c in ckpt_cbs
                      if c.dirpath and (Path(c.dirpath) / "last.ckpt").is_file()), None)
    profile = model.profile or model.network_summary()

    test_metrics: Dict[str, float] = {}
    test_path = runs.tested_checkpoint(rule, best_path)
    if rule != "final" and test_path is None:
        log.warning("test_checkpoint=%s but no best checkpoint was kept (callbacks?): testing the final weights",
                    rule)
        rule = "final"
    if cfg.get("test_after_training", True) and not trainer.interrupted:
        res = trainer.test(model, datamodule=dm, ckpt_path=test_path, verbose=False)
        test_metrics = {k: float(v) for k, v in (res[0] if res else {}).items()}

    results = {
        "genotype": genotype.to_dict(),
        "genotype_source": str(cfg.genotype),
        "network": {**{k: v for k, v in arch.to_dict().items() if k != "genotype"},
                    **{k: model.hparams[k] for k in ("auxiliary_weight", "drop_path_prob", "label_smoothing")}},
        "data": str(cfg.data.get("_target_")),
        "data_source": getattr(dm, "source", None),
        "params_m": profile.get("params_m"),
        "mult_adds_m": profile.get("mult_adds_m"),
        "best_val_epoch": None if best_val is None else best_val["epoch"],
        "best_val_top1_err": None if best_val is None else _err(best_val["acc1"]),
        "best_val_top5_err": None if best_val is None else _err(best_val["acc5"]),
        "test_top1_err": _err(test_metrics.get("test/acc1")),
        "test_top5_err": _err(test_metrics.get("test/acc5")),
        "test_loss": test_metrics.get("test/loss"),
        "test_checkpoint": test_path or "final weights",
        "test_selection": runs.test_record(rule, test_path, val_size, int(trainer.current_epoch)),
        "validation_split": runs.validation_split(val_size),
        "run": identity.as_dict(),
        "epochs": int(cfg.epochs),
        "epochs_run": int(trainer.current_epoch),
        "global_step": int(trainer.global_step),
        "resumed_from": str(ckpt_path) if ckpt_path else None,
        "best_checkpoint": best_path,
        "last_checkpoint": last_path,
        "world_size": int(trainer.world_size),
        "seed": cfg.get("seed"),
        "wall_time_s": round(time.time() - start, 2),
        "hardware": hardware_info(),
    }
    if trainer.is_global_zero:
        path = runs.write_result(out_dir, "train", "best_val_top1_err", results["best_val_top1_err"], results)
        if "test/acc1" in test_metrics:
            print(f"test_acc1={100 * test_metrics['test/acc1']:.2f}% test_acc5={100 * test_metrics['test/acc5']:.2f}% "
                  f"(top-1 error {results['test_top1_err']:.2f}%; {rule}: {results['test_selection']['description']}) "
                  f"results: {path}", flush=True)
        else:
            print(f"training done; results: {path}", flush=True)
    close_loggers(trainer.loggers, "success")
    return results


@command
def run(cfg: DictConfig) -> Dict[str, Any]:
    """``train`` for the command line: the console set up once; a known error is one ``error: ...``
    line and exit status 2 (in a multirun the job fails and the sweep goes on)."""
    from relnas.utils.console import setup_console

    setup_console()
    return train(cfg)


@entry_point("train")  # unknown config-group choices: one line, exit 2
@hydra.main(version_base="1.3", config_path="../configs", config_name="train")
def main(cfg: DictConfig) -> Optional[float]:
    results = run(cfg)
    if results is None:  # a job of a multirun that stopped with its one-line error
        return None
    err = results.get("test_top1_err")
    return None if err is None else float(err)  # for Hydra sweepers (minimise)


if __name__ == "__main__":
    main()
