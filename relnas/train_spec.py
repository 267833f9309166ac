"""What defines a training run: :class:`TrainSpec`, one frozen record built once from the config
(:func:`train_spec`), stored in every checkpoint ``relnas.train`` writes (as a plain dict, beside
the checkpoint's ``format_version``) and compared field by field when the run is resumed
(:meth:`TrainSpec.check_resume`); docs/resume.md lists the fields.

The spec lists what a resumed run cannot change: the network (its weights' shapes; the input
size), the schedule (``epochs``, ``scheduler``: the restored scheduler keeps the checkpoint's
length, a cosine with the old ``T_max`` would rise again after it), drop path, the loss (auxiliary
weight, label smoothing) and the SGD settings (the restored optimizer state keeps the
checkpoint's). Whatever it does not list may differ: ``trainer.max_epochs`` (where this part of
the run stops), devices, logging, callbacks, the data's location.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, Mapping

import lightning as L
from omegaconf import DictConfig

from relnas.errors import CheckpointError, ConfigError
from relnas.nas.arch import ArchSpec
from relnas.utils.instantiate import plain

#: the version of what ``relnas.train`` adds to a Lightning checkpoint (``train_spec``)
FORMAT_VERSION = 1
#: the settings of the ``optimizer`` node that define the optimizer's steps
OPTIMIZER_FIELDS = ("lr", "momentum", "weight_decay", "nesterov")


def _key(name: str) -> Dict[str, str]:
    return {"key": name}


@dataclass(frozen=True)
class TrainSpec:
    """The fields that define a training run, each named by the config key it is read from
    (``metadata["key"]``); the network is compared as an :class:`ArchSpec`."""

    arch: ArchSpec = field(metadata=_key("model"))
    epochs: int = field(metadata=_key("epochs"))
    scheduler: Mapping[str, Any] = field(metadata=_key("scheduler"))
    drop_path_prob: float = field(metadata=_key("model.drop_path_prob"))
    auxiliary_weight: float = field(metadata=_key("model.auxiliary_weight"))
    label_smoothing: float = field(metadata=_key("model.label_smoothing"))
    image_size: int = field(metadata=_key("data.image_size"))
    optimizer: Mapping[str, Any] = field(metadata=_key("optimizer"))  # OPTIMIZER_FIELDS

    def to_dict(self) -> Dict[str, Any]:
        """The spec as plain containers (what a checkpoint stores)."""
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["arch"] = self.arch.to_dict()
        d["scheduler"], d["optimizer"] = dict(self.scheduler), dict(self.optimizer)
        return d

    def check_resume(self, ckpt: Mapping[str, Any], path: Path) -> None:
        """Refuse, in one line, a checkpoint of another format version, of another network, or
        trained with other settings than this spec's."""
        check_format(ckpt, path, "resume", "start the training again")
        saved = ckpt["train_spec"]
        stored = ArchSpec.from_dict({**saved["arch"], "image_size": self.arch.image_size})
        diff = stored.differences(self.arch)
        if diff:
            parts = "; ".join(f"{k}: checkpoint {a if k == 'genotype' else repr(a)} vs config "
                              f"{b if k == 'genotype' else repr(b)}" for k, (a, b) in diff.items())
            raise ConfigError(f"resume: checkpoint {str(path)!r} has a different architecture "
                              f"({', '.join(diff)} differ) - {parts}")
        mine = self.to_dict()
        changes = []
        for f in fields(self):
            if f.name == "arch":
                continue
            a, b = saved.get(f.name), mine[f.name]
            if f.name == "optimizer":  # one entry per setting
                changes += [(f"optimizer.{k}", (a or {}).get(k), b.get(k)) for k in OPTIMIZER_FIELDS
                            if (a or {}).get(k) != b.get(k)]
            elif a != b:
                changes.append((f.metadata["key"], a, b))
        if changes:
            parts = "; ".join(f"{k}: checkpoint {a!r} vs config {b!r}" for k, a, b in changes)
            raise ConfigError(f"resume: checkpoint {str(path)!r} was trained with other settings - {parts}; resume "
                              f"with the run's own settings (a resumed run continues its schedule, it cannot "
                              f"change it)")


def train_spec(cfg: DictConfig, arch: ArchSpec) -> TrainSpec:
    """The spec of the training ``cfg`` configures, for its network ``arch``
    (:meth:`ArchSpec.from_config`); unset model settings take :class:`ClassifierModule`'s defaults."""
    from relnas.models.classifier import ClassifierModule

    defaults = {k: p.default for k, p in inspect.signature(ClassifierModule.__init__).parameters.items()}
    model = plain(cfg.model)

    def setting(name: str) -> Any:
        value = model.get(name)
        return defaults[name] if value is None else value

    optimizer = plain(cfg.get("optimizer")) or {}
    return TrainSpec(arch=arch, epochs=int(setting("epochs")),
                     scheduler=dict(setting("scheduler") or {"name": "cosine"}),
                     drop_path_prob=float(setting("drop_path_prob")),
                     auxiliary_weight=float(setting("auxiliary_weight")),
                     label_smoothing=float(setting("label_smoothing")), image_size=int(arch.image_size),
                     optimizer={k: optimizer.get(k) for k in OPTIMIZER_FIELDS})


def check_format(ckpt: Mapping[str, Any], path: Path, what: str, hint: str) -> None:
    """Refuse (one :class:`CheckpointError` line, ``what: ...; hint``) a checkpoint that is not a
    relnas.train checkpoint of :data:`FORMAT_VERSION`."""
    version = ckpt.get("format_version")
    if version != FORMAT_VERSION or not isinstance(ckpt.get("train_spec"), Mapping):
        raise CheckpointError(f"{what}: {str(path)!r} is not a relnas.train checkpoint of format version "
                              f"{FORMAT_VERSION} (its version: {'(none)' if version is None else version}); {hint}")


class RecordTrainSpec(L.Callback):
    """Stores the run's :class:`TrainSpec` and :data:`FORMAT_VERSION` in every checkpoint."""

    def __init__(self, spec: TrainSpec):
        self.spec = spec

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           checkpoint: Dict[str, Any]) -> None:
        checkpoint["format_version"] = FORMAT_VERSION
        checkpoint["train_spec"] = self.spec.to_dict()

