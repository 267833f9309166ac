"""Evaluate a trained network on a data set's test split: ``python -m relnas.evaluate ...``.

Two sources of weights:

* ``checkpoint=<.ckpt | train run dir>``: a checkpoint written by ``python -m relnas.train``; the
  architecture comes from the checkpoint (``genotype``/``model`` are ignored). For a run
  directory the weights behind its headline test number are used
  (:func:`relnas.runs.reported_checkpoint`; by default nothing chosen on the test split).
* ``reference_checkpoint=<official .pt>``: weights from the official code; the architecture is
  given by ``genotype`` and ``model.*`` (defaults: the paper's CIFAR-10 network).

Examples::

    python -m relnas.evaluate checkpoint=outputs/train/<run>
    python -m relnas.evaluate reference_checkpoint=weights/cifar10.pt              # RelativeNAS L=20 C=36
    python -m relnas.evaluate reference_checkpoint=weights/imagenet.pt data=imagefolder \\
        model.network=imagenet model.C=46 model.layers=14

Prints ``test_top1_err=..% test_top5_err=..%`` and writes ``result.json`` to the run dir.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple

import hydra
from omegaconf import DictConfig

from relnas import runs
from relnas.errors import ConfigError
from relnas.nas.arch import ArchSpec
from relnas.train_spec import check_format
from relnas.utils.instantiate import instantiate, instantiate_datamodule
from relnas.utils.cli import command, entry_point
from relnas.utils.io import load_checkpoint_dict

log = logging.getLogger(__name__)


def find_eval_checkpoint(path: str) -> Path:
    """A ``.ckpt`` file, or the checkpoint behind a train run directory's headline test number
    (:func:`relnas.runs.reported_checkpoint`)."""
    p = Path(path).expanduser()
    if p.is_file():
        return p
    if not p.is_dir():
        raise ConfigError(f"checkpoint {str(p)!r} does not exist")
    found = runs.reported_checkpoint(p)
    if found is None:
        what = runs.kind(p)
        raise ConfigError(f"checkpoint: {str(p)!r} is a {what + ' run ' if what else ''}directory without "
                          f"checkpoints/*.ckpt (is it a train run directory?)")
    return found


def read_train_checkpoint(spec: str) -> Tuple[Path, Dict[str, Any]]:
    """The checkpoint of ``spec`` (:func:`find_eval_checkpoint`) and its contents; a file that is
    not a relnas training checkpoint is one :class:`ConfigError` line."""
    path = find_eval_checkpoint(spec)
    ckpt = load_checkpoint_dict(path)
    if not isinstance(ckpt, Mapping) or not ckpt.get("hyper_parameters") or "state_dict" not in ckpt:
        raise ConfigError(f"checkpoint {str(path)!r} is not a relnas training checkpoint; "
                          f"for the official code's files use reference_checkpoint=")
    check_format(ckpt, path, "checkpoint", "train it again with this relnas")
    return path, ckpt


def classifier_from_checkpoint(ckpt: Mapping[str, Any], arch: ArchSpec):
    """The :class:`ClassifierModule` of a training checkpoint's hyper-parameters with ``arch``,
    its weights loaded strictly (a state dict that does not fit: one :class:`CheckpointError` line)."""
    from relnas.models.classifier import ClassifierModule
    from relnas.nas.checkpoint import check_state_dict, extract_state_dict

    model = ClassifierModule.from_hparams(ckpt["hyper_parameters"], **arch.to_dict())
    check_state_dict(model.net, extract_state_dict(ckpt["state_dict"]))
    model.load_state_dict(ckpt["state_dict"], strict=True)
    return model


def evaluate(cfg: DictConfig) -> Dict[str, Any]:
    from relnas.models.classifier import ClassifierModule
    from relnas.utils import hardware_info, instantiate_loggers

    start = time.time()
    if bool(cfg.get("checkpoint")) == bool(cfg.get("reference_checkpoint")):
        raise ConfigError("give exactly one of checkpoint=<.ckpt | train run dir> or "
                          "reference_checkpoint=<official .pt> (with genotype=... model.*)")
    if cfg.get("seed") is not None:
        import lightning as L

        L.seed_everything(int(cfg.seed))

    # the weights' file first (cheap), then the data
    if cfg.get("checkpoint"):
        path, ckpt = read_train_checkpoint(cfg.checkpoint)
        hp = ckpt["hyper_parameters"]
    elif not Path(str(cfg.reference_checkpoint)).expanduser().is_file():
        raise ConfigError(f"reference_checkpoint {str(cfg.reference_checkpoint)!r} does not exist")

    dm = instantiate_datamodule(cfg.data, stage="test")

    if cfg.get("checkpoint"):
        arch = ArchSpec.from_dict({**hp, "image_size": dm.image_size})
        for key in ("num_classes", "in_channels"):
            if getattr(arch, key) != int(getattr(dm, key)):
                raise ConfigError(f"checkpoint {str(path)!r} has {key}={getattr(arch, key)} but the data set gives "
                                  f"{getattr(dm, key)}: choose the data set it was trained on (data=<name>)")
        trained_size = hp.get("image_size")
        if trained_size is not None and int(trained_size) != int(dm.image_size):
            # a CIFAR network runs on other sizes too, and would be tested on images it never saw
            raise ConfigError(f"checkpoint {str(path)!r} was trained on {trained_size}x{trained_size} images but the "
                              f"data set gives {dm.image_size}x{dm.image_size}: set data.image_size={trained_size}")
        arch.replace(auxiliary=False).check_input()  # the auxiliary head does not run in evaluation
        model = classifier_from_checkpoint(ckpt, arch)
        source = {"checkpoint": str(path)}
    else:
        from relnas.nas.checkpoint import load_reference_checkpoint

        arch = ArchSpec.from_config(cfg.model, cfg.genotype, dm)
        arch.replace(auxiliary=False).check_input()
        net = load_reference_checkpoint(cfg.reference_checkpoint, network=arch.build(), map_location="cpu")
        model = ClassifierModule(**arch.to_dict(), channels_last=cfg.model.get("channels_last", True), net=net)
        source = {"reference_checkpoint": str(cfg.reference_checkpoint)}

    print(f"genotype: {model.genotype}", flush=True)
    loggers = instantiate_loggers(cfg.get("logger"))
    trainer = instantiate(cfg.trainer, logger=loggers or False, callbacks=[])
    res = trainer.test(model, datamodule=dm, verbose=False)
    metrics = {k: float(v) for k, v in (res[0] if res else {}).items()}
    acc1, acc5 = metrics.get("test/acc1"), metrics.get("test/acc5")
    summary = model.network_summary()
    results = {
        **source,
        "genotype": model.genotype.to_dict(),
        "network": {k: v for k, v in model.arch.to_dict().items() if k != "genotype"},
        "data": str(cfg.data.get("_target_")),
        "params_m": summary.get("params_m"),
        "mult_adds_m": summary.get("mult_adds_m"),
        "test_top1_err": None if acc1 is None else round(100 * (1 - acc1), 4),
        "test_top5_err": None if acc5 is None else round(100 * (1 - acc5), 4),
        "test_loss": metrics.get("test/loss"),
        "wall_time_s": round(time.time() - start, 2),
        "hardware": hardware_info(),
    }
    if trainer.is_global_zero:
        out = runs.write_result(cfg.paths.output_dir, "evaluate", "test_top1_err", results["test_top1_err"], results)
        print(f"test_top1_err={results['test_top1_err']:.2f}% test_top5_err={results['test_top5_err']:.2f}% "
              f"(test_acc1={100 * acc1:.2f}%) params={summary.get('params_m')}M results: {out}", flush=True)
    return results


#: ``evaluate`` for the command line: a known error is one ``error: ...`` line and exit status 2
run = command(evaluate)


@entry_point("evaluate")  # unknown config-group choices: one line, exit 2
@hydra.main(version_base="1.3", config_path="../configs", config_name="evaluate")
def main(cfg: DictConfig) -> Optional[float]:
    from relnas.utils.console import setup_console

    setup_console()
    results = run(cfg)
    if results is None:  # a job of a multirun that stopped with its one-line error
        return None
    return results.get("test_top1_err")


if __name__ == "__main__":
    main()
