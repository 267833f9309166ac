"""Train a backbone on another vision task: ``python -m relnas.transfer [overrides]``.

Examples::

    python -m relnas.transfer +experiment=voc_ssdlite backbone=RelativeNAS backbone.weights=outputs/train/<run>
    python -m relnas.transfer +experiment=voc_ssdlite backbone=mobilenet_v2 backbone.weights=DEFAULT trainer=gpu
    python -m relnas.transfer +experiment=cityscapes_bisenet backbone=RelativeNAS backbone.weights=<.pt>
    python -m relnas.transfer +experiment=coco_simplebaseline backbone=cell backbone.name=outputs/search/<run>
    python -m relnas.transfer +experiment=voc_ssdlite resume=outputs/transfer/<run>

Config groups ``task`` (configs/task/) and ``backbone`` (configs/backbone/), each built by Hydra
from its ``_target_`` (:func:`instantiate_task`, :func:`backbone_from_config`); trainer, logger and
callbacks as ``relnas.train``. At the end the weights ``test_checkpoint`` names (:func:`resolve_test_checkpoint`:
the final weights by default) are evaluated on the test split, and ``result.json`` (task, backbone, weights, params and FLOPs at
the task's input size, metrics, per-class numbers, wall time, hardware) and ``predictions.png``
(predictions next to ground truth on the first validation images) are written to the run dir.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from relnas.transfer.authors import load_authors_weights, looks_like_authors
from relnas.utils.instantiate import configured, instantiate, located, plain, refuse_unknown_keys
from relnas.utils.cli import command, entry_point

log = logging.getLogger(__name__)


NO_BACKBONE = ("no backbone given: set backbone=<RelativeNAS | DARTS_V2 | NASNet | AmoebaNet | mobilenet_v2 | "
               "shufflenet_v2_x1_0 | mnasnet1_0> or backbone=cell backbone.name=<genotype file | search run>")


TEST_RULES = ("auto", "final", "best_test_epoch")


def resolve_test_checkpoint(rule: Optional[str]) -> str:
    """Which weights a transfer run evaluates at the end (``test_checkpoint``). The transfer data
    sets hold no validation split out of their training sets (VOC07 test, Cityscapes val and
    COCO val2017 are the evaluation splits, and validation runs on them), so ``auto`` is
    ``final``, the weights after the last step; ``best_test_epoch`` takes the checkpoint with the
    best validation metric, i.e. chosen on the evaluation split itself (optimistic; for
    comparison with tables reported that way). One-line ConfigError for anything else."""
    from relnas.errors import ConfigError

    rule = str(rule or "auto")
    if rule == "best_val":
        raise ConfigError("test_checkpoint=best_val needs a validation split held out from the training set, which the "
                          "transfer data sets do not have: use test_checkpoint=final (default) or best_test_epoch")
    if rule not in TEST_RULES:
        raise ConfigError(f"unknown test_checkpoint={rule!r}; choose one of {', '.join(TEST_RULES)}")
    return "final" if rule == "auto" else rule


def _positive_or_none(value: Any) -> Optional[int]:
    return int(value) if value is not None and int(value) > 0 else None


def backbone_node(cfg_backbone: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
    """``cfg.backbone`` as a plain mapping, checked without building anything (cheap): a known
    name given, and no key its ``_target_`` (:func:`relnas.transfer.backbones.build_backbone`) does
    not take; one line each."""
    from relnas.errors import ConfigError
    from relnas.transfer.backbones import check_backbone_name

    node = dict(plain(cfg_backbone) or {})
    if node.get("name") in (None, "", "???"):
        raise ConfigError(NO_BACKBONE)
    check_backbone_name(str(node["name"]))
    refuse_unknown_keys(located(node, "backbone"), node, "backbone")
    return node


def backbone_from_config(cfg_backbone: Optional[Mapping[str, Any]]):
    """The backbone of ``cfg.backbone``, built by Hydra from its ``_target_`` (checked first:
    :func:`backbone_node`)."""
    node = backbone_node(cfg_backbone)
    return configured(f"backbone ({node['_target_']})", instantiate, node, _convert_="all")


def task_class(cfg_task: Optional[Mapping[str, Any]]):
    """The task's LightningModule class, ``task._target_`` (a one-line ConfigError listing the
    task classes when it names none)."""
    from relnas.errors import ConfigError
    from relnas.transfer.tasks import TASKS
    from relnas.transfer.tasks.base import TransferModule

    try:
        cls = located(cfg_task, "task")
    except ConfigError:
        cls = None
    if not (isinstance(cls, type) and issubclass(cls, TransferModule)):
        known = ", ".join(f"{c.__module__}.{c.__qualname__}" for c in TASKS.values())
        raise ConfigError(f"unknown task {(cfg_task or {}).get('_target_')!r} (task._target_); known: {known} "
                          f"(task={'|'.join(TASKS)})")
    return cls


def instantiate_task(cfg_task: Mapping[str, Any], backbone, num_classes: int, class_names=None,
                     input_size: Any = None):
    """The LightningModule of ``task._target_``, built by Hydra with the keys of ``task.module`` and
    the run's arguments: the network ``build_model(backbone, num_classes, **task.model)``, the class
    names, the optimizer factory (``task.optimizer``), ``task.scheduler``, ``task.epochs``, the input
    size (``input_size``, else ``task.model.input_size``, else the paper's) and the backbone's
    description. A setting the task refuses is a one-line ConfigError."""
    cls = task_class(cfg_task)
    model_cfg = dict(plain(cfg_task.get("model")) or {})
    if input_size is not None and "input_size" in model_cfg:
        model_cfg["input_size"] = list(input_size)
    size = input_size if input_size is not None else model_cfg.get("input_size", cls.paper_input_size)
    backbone.check_input_size([size, size] if isinstance(size, int) else size)
    model = configured(f"task.model ({cls.task_name})", cls.build_model, backbone, int(num_classes), **model_cfg)
    optimizer = hydra.utils.instantiate(cfg_task["optimizer"]) if cfg_task.get("optimizer") else None
    node = {"_target_": cfg_task["_target_"], **(plain(cfg_task.get("module")) or {})}
    return configured(f"task ({cls.task_name})", instantiate, node, _convert_="all", model=model,
                      num_classes=int(num_classes), class_names=class_names, optimizer=optimizer,
                      scheduler=plain(cfg_task.get("scheduler")), epochs=int(cfg_task.get("epochs", 1)),
                      input_size=size,
                      backbone_info=backbone.describe())


def build_task(cfg: DictConfig, num_classes: int, class_names, backbone=None):
    """The task's LightningModule for ``cfg`` (backbone built from ``cfg.backbone`` unless given)."""
    if backbone is None:
        backbone = backbone_from_config(cfg.backbone)
    return instantiate_task(cfg.task, backbone, num_classes, class_names)


def check_checkpoint_fits(ckpt: Mapping[str, Any], module, path: Path, what: str) -> None:
    """One line when a transfer checkpoint was made for another task, class count or backbone."""
    from relnas.errors import ConfigError

    hp = ckpt.get("hyper_parameters") or {}
    if not hp or "task" not in hp:
        raise ConfigError(f"{what}: {str(path)!r} is not a relnas.transfer checkpoint (no task hyper-parameters)")
    mine = module.hparams
    if hp["task"] != mine["task"]:
        raise ConfigError(f"{what}: {str(path)!r} is a {hp['task']!r} checkpoint, this run is {mine['task']!r}")
    if int(hp.get("num_classes", -1)) != int(mine["num_classes"]):
        raise ConfigError(f"{what}: {str(path)!r} was trained for {hp.get('num_classes')} classes but the data set has "
                          f"{mine['num_classes']}: class-count mismatch (use a checkpoint of the same data set, or "
                          f"start from backbone weights with backbone.weights=...)")
    theirs_bb = (hp.get("backbone") or {}).get("name")
    if theirs_bb is not None and theirs_bb != mine["backbone"].get("name"):
        raise ConfigError(f"{what}: {str(path)!r} has backbone {theirs_bb!r}, this run {mine['backbone'].get('name')!r}: "
                          f"set backbone={theirs_bb}")
    sd = ckpt.get("state_dict") or {}
    own = module.state_dict()
    for k, v in own.items():
        if k in sd and tuple(sd[k].shape) != tuple(v.shape):
            raise ConfigError(f"{what}: {str(path)!r}: shape of {k!r} is {tuple(sd[k].shape)}, the model needs "
                              f"{tuple(v.shape)} (different head settings?)")


def first_images(loader, n: int):
    """The first ``n`` samples of an evaluation loader as one ``(images, targets)`` batch (lists
    or stacked tensors, as the loader gives them)."""
    images, targets = [], []
    for x, y in loader:
        images.extend(list(x))
        targets.extend(list(y) if isinstance(y, (list, tuple)) else [{k: v[i] for k, v in y.items()} for i in range(len(x))]
                       if isinstance(y, dict) else list(y))
        if len(images) >= n:
            break
    images, targets = images[:n], targets[:n]
    if images and all(isinstance(i, torch.Tensor) and i.shape == images[0].shape for i in images):
        if all(isinstance(t, torch.Tensor) for t in targets) and all(t.shape == targets[0].shape for t in targets):
            return torch.stack(images), torch.stack(targets)
    return images, targets


def transfer(cfg: DictConfig) -> Dict[str, Any]:
    """Train and evaluate according to ``cfg``; return the results dict (also in result.json)."""
    import lightning as L
    from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint

    from relnas.errors import ConfigError
    from relnas.train import find_checkpoint, load_checkpoint_dict
    from relnas.utils.instantiate import is_rank_zero as _is_rank_zero
    from relnas import runs
    from relnas.transfer.tasks.base import model_cost, save_png
    from relnas.utils import hardware_info, instantiate_callbacks, instantiate_loggers

    start = time.time()
    out_dir = Path(cfg.paths.output_dir)
    if cfg.get("seed") is not None:
        L.seed_everything(int(cfg.seed), workers=True)
    cls = task_class(cfg.task)
    rule = resolve_test_checkpoint(cfg.get("test_checkpoint"))  # settings first: before data and models
    if "data" not in cfg.task or "_target_" not in cfg.task.data:
        raise ConfigError(f"task {cls.task_name!r} has no data config (task.data._target_)")
    backbone_node(cfg.backbone)  # name and keys first: cheap and early
    dm = hydra.utils.instantiate(cfg.task.data)  # a missing data set fails here, before any model is built
    if _is_rank_zero():
        dm.prepare_data()
    dm.setup("fit")
    backbone = backbone_from_config(cfg.backbone)
    module = build_task(cfg, int(dm.num_classes), list(dm.class_names), backbone=backbone)

    train = int(cfg.task.get("epochs", 1)) > 0  # task.epochs=0: evaluate only, whatever trainer.max_steps says
    bb = backbone.describe()
    ckpt_path: Optional[Path] = None
    if cfg.get("resume"):
        ckpt_path = find_checkpoint(cfg.resume)
        ckpt = load_checkpoint_dict(ckpt_path)
        check_checkpoint_fits(ckpt, module, ckpt_path, "resume")
        theirs = (ckpt.get("hyper_parameters") or {}).get("backbone") or {}
        if theirs.get("name"):  # the backbone's provenance is the interrupted run's
            bb = dict(theirs)
        if not train:
            module.load_state_dict(ckpt["state_dict"], strict=True)
        log.info("resuming from %s", ckpt_path)
    elif cfg.get("init_weights"):
        p = Path(str(cfg.init_weights)).expanduser()
        if p.is_dir():
            p = find_checkpoint(p)
        if not p.is_file():
            raise ConfigError(f"init_weights: {str(p)!r} does not exist")
        ckpt = load_checkpoint_dict(p)
        if looks_like_authors(cls.task_name, ckpt):
            load_authors_weights(module.model, cls.task_name, ckpt, f"init_weights {str(p)!r}")
            log.info("initialised the task network from the authors' %s model %s", cls.task_name, p)
            origin = f"the authors' {cls.task_name} model"
        else:
            check_checkpoint_fits(ckpt, module, p, "init_weights")
            module.load_state_dict(ckpt["state_dict"], strict=True)
            log.info("initialised the task network from %s", p)
            origin = ((ckpt.get("hyper_parameters") or {}).get("backbone") or {}).get("weights")
        # the whole network, backbone included, comes from the checkpoint: not a random backbone
        bb = {k: v for k, v in bb.items() if k != "weights_warning"}
        bb.update(weights=str(p), pretrained=True, weights_source="init_weights", weights_origin=origin)
        log.info("backbone weights: from init_weights %s (any random-initialisation warning above no longer "
                 "applies)", p)
    module.hparams["backbone"] = dict(bb)  # what later checkpoints of this run record

    cost = model_cost(module, module.hparams.input_size)
    print(f"task {cls.task_name}: backbone {bb['name']} ({'pretrained: ' + str(bb['weights']) if bb['pretrained'] else 'RANDOM INIT'}), "
          f"{cost['params_m']:.3f}M params, {cost['flops_m']:.1f}M FLOPs (multiply-adds) at "
          f"{cost['input_size'][0]}x{cost['input_size'][1]}", flush=True)

    loggers = instantiate_loggers(cfg.get("logger"))
    callbacks = instantiate_callbacks(cfg.get("callbacks"))
    if not loggers:
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    if trainer.is_global_zero:
        for lg in trainer.loggers:
            lg.log_hyperparams({"config": OmegaConf.to_container(cfg, resolve=True)})
            lg.log_hyperparams({f"model/{k}": v for k, v in cost.items() if k != "input_size"})

    if train:
        try:
            trainer.fit(module, datamodule=dm, ckpt_path=str(ckpt_path) if ckpt_path else None)
        except ValueError as e:  # Lightning's check of an iteration-counted validation interval, in one line
            if "val_check_interval" not in str(e) or trainer.global_step > 0:
                raise
            raise ConfigError(
                f"trainer.val_check_interval={cfg.trainer.get('val_check_interval')} counts iterations across epochs "
                "only with trainer.check_val_every_n_epoch=null; to validate every n epochs set "
                "trainer.check_val_every_n_epoch=<n> trainer.val_check_interval=1.0") from e
    else:
        print("task.epochs=0: no training, evaluating the initial weights", flush=True)

    ckpt_cbs = [c for c in trainer.callbacks if isinstance(c, ModelCheckpoint)]
    best_cb = next((c for c in ckpt_cbs if c.monitor), None)
    best_path = best_cb.best_model_path if best_cb is not None and best_cb.best_model_path else None
    test_path = runs.tested_checkpoint(rule, best_path)
    if rule == "best_test_epoch" and test_path is None:
        log.warning("test_checkpoint=best_test_epoch but no best checkpoint was kept (no training or no "
                    "validation yet): testing the final weights")
        rule = "final"
    if cfg.get("test_after_training", True) and not trainer.interrupted:
        trainer.test(module, datamodule=dm, ckpt_path=test_path, verbose=False)
    final = module.final_metrics()

    picture = None
    n_pics = int((cfg.get("predictions") or {}).get("num_images", 4))
    if trainer.is_global_zero and n_pics > 0:
        module.cpu().eval()
        batch = first_images(dm.val_dataloader(), n_pics)
        with torch.no_grad():
            grid = module.draw_predictions(batch, max_images=n_pics)
        picture = str(save_png(grid, out_dir / "predictions.png"))

    results = {
        "task": cls.task_name,
        "backbone": bb["name"],
        "backbone_info": bb,
        "weights": bb["weights"],
        "pretrained": bb["pretrained"],
        **({"weights_warning": bb["weights_warning"]} if "weights_warning" in bb else {}),
        "data": str(cfg.task.data.get("_target_")),
        "num_classes": int(module.num_classes),
        "class_names": list(module.class_names),
        "input_size": cost["input_size"],
        "params_m": cost["params_m"],
        "flops_m": cost["flops_m"],
        "flops_convention": "multiply-adds (FlopCounterMode FLOPs / 2) of one image at input_size",
        "metrics": final.get("metrics", {}),
        "per_class": final.get("per_class", {}),
        "test_checkpoint": test_path or "final weights",
        "test_selection": runs.test_record(rule, test_path, 0, int(trainer.current_epoch), metric=cls.monitor,
                                      protocol=""),
        "epochs": int(cfg.task.get("epochs", 0)),
        # the recipe's length when it is counted in iterations (cityscapes_bisenet: 80K); epochs is then a bound
        "max_steps": _positive_or_none(cfg.trainer.get("max_steps")),
        "epochs_run": int(trainer.current_epoch),
        "global_step": int(trainer.global_step),
        "resumed_from": str(ckpt_path) if ckpt_path else None,
        "init_weights": str(cfg.init_weights) if cfg.get("init_weights") else None,
        "predictions_png": picture,
        "world_size": int(trainer.world_size),
        "seed": cfg.get("seed"),
        "wall_time_s": round(time.time() - start, 2),
        "hardware": hardware_info(),
    }
    if trainer.is_global_zero:
        metric = str(cls.monitor).split("/", 1)[-1]  # the monitored metric, without val/
        path = runs.write_result(out_dir, "transfer", metric, results["metrics"].get(metric), results)
        shown = ", ".join(f"{k}={v:.4f}" for k, v in results["metrics"].items() if isinstance(v, float))
        print(f"{cls.task_name} done: {shown or 'no test metrics'}; results: {path}", flush=True)
    return results


@command
def run(cfg: DictConfig) -> Dict[str, Any]:
    """``transfer`` for the command line: a known error (:class:`relnas.errors.RelnasError`) is one
    ``error: ...`` line and exit status 2 (in a multirun the job fails and the sweep goes on)."""
    return transfer(cfg)


@entry_point("transfer")  # unknown config-group choices: one line, exit 2
@hydra.main(version_base="1.3", config_path="../../configs", config_name="transfer")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
