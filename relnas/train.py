"""Train an evaluation network from scratch (SPEC 5): ``python -m relnas.train [overrides]``.

Examples::

    python -m relnas.train                                  # CIFAR-10 evaluation of RelativeNAS (600 epochs)
    python -m relnas.train +experiment=cifar100 genotype=outputs/search/<run>   # a searched cell
    python -m relnas.train +experiment=quickstart           # minutes on a laptop CPU
    python -m relnas.train trainer=gpu                      # one GPU, bf16
    python -m relnas.train trainer=ddp trainer.devices=4    # DDP; data.batch_size is per GPU
    python -m relnas.train resume=outputs/train/<run>       # continue from <run>/checkpoints/last.ckpt

At the end the test split is evaluated once, with the weights that ``test_checkpoint`` names
(default ``auto``: the final epoch's, or the best-on-validation checkpoint when ``data.val_size``
holds a validation split out of the training set; see :mod:`relnas.utils.selection`), and
``results.json`` is written to the run directory, saying which rule produced each number.
"""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


class ConfigError(ValueError):
    """A configuration problem found before training; its message is one line."""


# ---------------------------------------------------------------------- validation helpers

def resolve_genotype(spec: Any):
    """The genotype of ``spec`` (zoo name, JSON/YAML file, search run dir) or a one-line ConfigError."""
    from relnas.nas.genotypes import GenotypeError, get_genotype

    if spec is None or (isinstance(spec, str) and not spec.strip()):
        raise ConfigError("no genotype given: set genotype=<zoo name | genotype.json/.yaml | search run dir>")
    if isinstance(spec, DictConfig):
        spec = OmegaConf.to_container(spec, resolve=True)
    try:
        return get_genotype(spec)
    except KeyError as e:
        raise ConfigError(str(e.args[0]) if e.args else str(e)) from None
    except FileNotFoundError as e:
        raise ConfigError(f"genotype: {e}") from None
    except GenotypeError as e:
        raise ConfigError(f"genotype {spec!r} is not a valid genotype: {e}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"genotype file {spec!r} cannot be read: {e}") from None


def check_input_size(network: str, genotype, C: int, layers: int, num_classes: int, in_channels: int,
                     image_size: int, auxiliary: bool) -> None:
    """Run the network on a meta tensor (no memory, no compute) and translate shape errors into
    one line that says which image sizes work and what to change."""
    from relnas.nas.networks import build_network

    try:
        with torch.device("meta"):
            net = build_network(network, genotype, C, layers, num_classes, auxiliary=auxiliary,
                                in_channels=in_channels)
            net.train()
            net(torch.empty(2, in_channels, image_size, image_size))
    except (KeyError, ValueError) as e:
        if isinstance(e, KeyError) or "must be" in str(e) or "needs" in str(e):
            raise ConfigError(f"model: {e.args[0] if e.args else e}") from None
        raise ConfigError(_size_message(network, image_size, auxiliary, e)) from None
    except RuntimeError as e:
        raise ConfigError(_size_message(network, image_size, auxiliary, e)) from None


def _size_message(network: str, s: int, auxiliary: bool, err: Exception) -> str:
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    if network == "cifar" and auxiliary:
        return (f"NetworkCIFAR with the auxiliary head needs 32x32 input (the head expects an 8x8 feature "
                f"map; 32, 36 or 40 work), but the data gives {s}x{s}: set data.image_size=32 (where the "
                f"data set supports it) or model.auxiliary=false  [{first}]")
    if network == "cifar":
        return (f"NetworkCIFAR needs an image size divisible by 4 (two stride-2 reduction cells), but the "
                f"data gives {s}x{s}: set data.image_size (e.g. 32)  [{first}]")
    if network == "imagenet":
        return (f"NetworkImageNet needs 224x224 input (32x downsampling to the 7x7 map of its 7x7 average "
                f"pooling: image_size/32 == 7), but the data gives {s}x{s}: set data.image_size=224 or use "
                f"model.network=cifar for small images  [{first}]")
    return f"network {network!r} cannot take {s}x{s} input: {first}"


def find_checkpoint(path: str | os.PathLike) -> Path:
    """A ``.ckpt`` file, or a run directory (``<run>/checkpoints/last.ckpt``)."""
    p = Path(path).expanduser()
    if p.is_dir():
        for cand in (p / "checkpoints" / "last.ckpt", p / "last.ckpt"):
            if cand.is_file():
                return cand
        raise ConfigError(f"resume: {str(p)!r} is a directory without checkpoints/last.ckpt")
    if not p.is_file():
        raise ConfigError(f"resume: checkpoint {str(p)!r} does not exist")
    return p


def load_checkpoint_dict(path: Path) -> Dict[str, Any]:
    """Read a Lightning checkpoint of ours (weights only when possible)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        try:
            return torch.load(path, map_location="cpu", weights_only=False)
        except Exception as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ConfigError(f"cannot read checkpoint {str(path)!r}: {first}") from None


def check_resume_architecture(ckpt: Mapping[str, Any], wanted: Mapping[str, Any], path: Path) -> None:
    """Fail with one line naming the architecture keys where checkpoint and config differ."""
    from relnas.models.classifier import architecture_mismatch

    stored = ckpt.get("hyper_parameters")
    if not stored:
        raise ConfigError(f"resume: {str(path)!r} is not a relnas training checkpoint (no hyper_parameters)")
    diff = architecture_mismatch(stored, wanted)
    if diff:
        def show(k, v):
            if k == "genotype":
                from relnas.nas.genotypes import get_genotype

                try:
                    return str(get_genotype(dict(v) if isinstance(v, Mapping) else v))
                except Exception:
                    return repr(v)
            return repr(v)

        parts = "; ".join(f"{k}: checkpoint {show(k, a)} vs config {show(k, b)}" for k, (a, b) in diff.items())
        raise ConfigError(f"resume: checkpoint {str(path)!r} has a different architecture "
                          f"({', '.join(diff)} differ) - {parts}")


def _is_rank_zero() -> bool:
    return all(os.environ.get(v, "0") == "0" for v in ("RANK", "LOCAL_RANK", "NODE_RANK"))


def datamodule_info(dm) -> Dict[str, int]:
    return {"num_classes": int(dm.num_classes), "in_channels": int(dm.in_channels),
            "image_size": int(dm.image_size)}


def instantiate_datamodule(cfg_data: DictConfig, prepare: bool = True, stage: str = "fit"):
    """Instantiate the data module from its config and load it (raises DatasetNotFoundError early)."""
    if cfg_data is None or "_target_" not in cfg_data:
        raise ConfigError("no data set configured: choose one with data=<name> (see configs/data/)")
    dm = hydra.utils.instantiate(cfg_data)
    if prepare:
        if _is_rank_zero():
            dm.prepare_data()
        dm.setup(stage)
    return dm


def write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, default=str) + "\n")


def _err(acc: Optional[float]) -> Optional[float]:
    return None if acc is None else round(100.0 * (1.0 - float(acc)), 4)


# ---------------------------------------------------------------------- training

def build_model(cfg: DictConfig, genotype, info: Mapping[str, int]):
    """The :class:`ClassifierModule` of ``cfg`` for data of shape ``info`` (num_classes, in_channels,
    image_size: taken from the data module, so swapping data sets works)."""
    from relnas.models.classifier import ClassifierModule

    m = cfg.model
    optimizer = hydra.utils.instantiate(cfg.optimizer) if cfg.get("optimizer") else None
    return ClassifierModule(
        genotype=genotype, network=m.network, C=m.C, layers=m.layers, num_classes=info["num_classes"],
        in_channels=info["in_channels"], image_size=info["image_size"], auxiliary=m.auxiliary,
        auxiliary_weight=m.auxiliary_weight, drop_path_prob=m.drop_path_prob,
        label_smoothing=m.get("label_smoothing", 0.0),
        optimizer=optimizer, scheduler=OmegaConf.to_container(cfg.scheduler, resolve=True),
        epochs=cfg.epochs, channels_last=m.get("channels_last", True),
    )


def train(cfg: DictConfig) -> Dict[str, Any]:
    """Train according to ``cfg`` and return the results dict (also written to results.json)."""
    import lightning as L
    from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint

    from relnas.utils import hardware_info, instantiate_callbacks, instantiate_loggers

    start = time.time()
    out_dir = Path(cfg.paths.output_dir)
    if cfg.get("seed") is not None:
        L.seed_everything(int(cfg.seed), workers=True)

    genotype = resolve_genotype(cfg.genotype)
    m = cfg.model
    if m.network not in ("cifar", "imagenet"):
        raise ConfigError(f"unknown model.network {m.network!r}; choose cifar or imagenet")
    sched = cfg.get("scheduler") or {}
    if sched.get("name", "cosine") not in ("cosine", "linear_warmup", "constant"):
        raise ConfigError(f"unknown scheduler.name {sched.get('name')!r}; choose cosine, linear_warmup or constant")
    from relnas.utils.selection import resolve_test_rule, test_record

    val_size = int(cfg.data.get("val_size", 0) or 0)
    try:
        rule = resolve_test_rule(cfg.get("test_checkpoint", "auto"), val_size)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    print(f"genotype: {genotype}", flush=True)

    dm = instantiate_datamodule(cfg.data)
    info = datamodule_info(dm)
    check_input_size(m.network, genotype, m.C, m.layers, info["num_classes"], info["in_channels"],
                     info["image_size"], m.auxiliary)

    arch = {"network": m.network, "genotype": genotype.to_dict(), "C": int(m.C), "layers": int(m.layers),
            "num_classes": info["num_classes"], "in_channels": info["in_channels"], "auxiliary": bool(m.auxiliary)}
    ckpt_path: Optional[Path] = None
    if cfg.get("resume"):
        ckpt_path = find_checkpoint(cfg.resume)
        check_resume_architecture(load_checkpoint_dict(ckpt_path), arch, ckpt_path)
        log.info("resuming from %s", ckpt_path)

    model = build_model(cfg, genotype, info)

    from relnas.utils.loggers import close_loggers, configure_logger_cfg, run_identity

    identity = run_identity(cfg)
    loggers = instantiate_loggers(configure_logger_cfg(cfg.get("logger"), identity))
    callbacks = instantiate_callbacks(cfg.get("callbacks"))
    if not loggers:
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)

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
    test_path = best_path if rule in ("best_val", "best_test_epoch") else None
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
        "network": {**{k: v for k, v in arch.items() if k != "genotype"}, "image_size": info["image_size"],
                    "auxiliary_weight": float(m.auxiliary_weight), "drop_path_prob": float(m.drop_path_prob),
                    "label_smoothing": float(m.get("label_smoothing", 0.0))},
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
        "test_selection": test_record(rule, test_path, val_size, int(trainer.current_epoch)),
        "validation_split": test_record(rule, test_path, val_size, 0)["validation_split"],
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
        write_json(out_dir / "results.json", results)
        if "test/acc1" in test_metrics:
            print(f"test_acc1={100 * test_metrics['test/acc1']:.2f}% test_acc5={100 * test_metrics['test/acc5']:.2f}% "
                  f"(top-1 error {results['test_top1_err']:.2f}%; {rule}: {results['test_selection']['description']}) "
                  f"results: {out_dir / 'results.json'}", flush=True)
        else:
            print(f"training done; results: {out_dir / 'results.json'}", flush=True)
    close_loggers(trainer.loggers, "success")
    return results


def run(cfg: DictConfig) -> Dict[str, Any]:
    """``train`` with the expected failures turned into one ``error: ...`` line and exit status 1."""
    from relnas.data import DatasetNotFoundError
    from relnas.nas.genotypes import GenotypeError

    from relnas.utils.console import setup_console

    setup_console()
    from relnas.utils.sweep import fail_job

    try:
        return train(cfg)
    except (ConfigError, DatasetNotFoundError, GenotypeError) as e:
        fail_job(f"error: {e}")  # exits, except in a multirun (the sweep exits 1 at its end)
        return {}


@hydra.main(version_base="1.3", config_path="../configs", config_name="train")
def main(cfg: DictConfig) -> Optional[float]:
    results = run(cfg)
    err = results.get("test_top1_err")
    return None if err is None else float(err)  # for Hydra sweepers (minimise)


if __name__ == "__main__":
    main()
