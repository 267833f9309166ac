"""Lightning module that trains an evaluation network (NetworkCIFAR / NetworkImageNet) from scratch.

The training protocols of docs/method.md §6.2-6.4:

* loss = CE(logits) + ``auxiliary_weight`` * CE(aux_logits) (aux logits exist in training only),
  with optional label smoothing (ImageNet: 0.1);
* drop path ramped linearly over the epochs: ``net.drop_path_prob = p * epoch / epochs``, set at
  the start of every training epoch (as the official code does);
* gradient-norm clipping is the Trainer's job (``trainer.gradient_clip_val: 5``);
* SGD from a ``_partial_: true`` optimizer config (``optimizer(params)``);
* schedulers (``scheduler.name``):

  - ``cosine``: ``CosineAnnealingLR(T_max=epochs, eta_min)`` stepped once per *epoch*, as the
    official CIFAR code;
  - ``linear_warmup``: linear warm-up over ``warmup_epochs`` then linear decay to ``final_lr`` at
    the end of ``epochs`` (the ImageNet protocol); a ``LambdaLR`` stepped once per optimizer
    *step*, so that the warm-up "from 0" does not waste whole epochs at tiny learning rates
    (the first step uses ``lr / warmup_steps``);
  - ``official_imagenet``: the authors' ImageNet script (``train_imagenet.py``), set once per
    *epoch* ``e`` (0-based) of ``epochs`` = E: warm-up ``lr * (e + 1) / warmup_epochs`` for
    ``e < warmup_epochs`` (0.1, 0.2, ... 0.5 for lr 0.5 and 5 epochs), then
    ``lr * (E - 5 - e) / (E - 5)``, and over the last 5 epochs a smaller slope
    ``lr * (E - e) / ((E - 5) * 5)`` (:func:`official_imagenet_factor`);
  - ``constant``: no schedule.

Metrics: ``train/loss``, ``train/acc1``, ``val/loss``, ``val/acc1``, ``val/acc5``, ``test/loss``,
``test/acc1``, ``test/acc5`` (accuracies as fractions in [0, 1]; top-5 becomes top-k with
k = min(5, num_classes)), plus ``model/params_m`` and ``model/mult_adds_m`` at fit start.
"""
from __future__ import annotations

import inspect
import math
from typing import Any, Callable, Dict, List, Mapping, Optional

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from relnas.errors import ConfigError
from relnas.nas.arch import ArchSpec
from relnas.nas.genotypes import Genotype
from relnas.nas.profile import count_mult_adds, count_params
from relnas.utils.instantiate import plain

SCHEDULERS = ("cosine", "linear_warmup", "official_imagenet", "constant")


def official_imagenet_factor(epoch: int, epochs: int, warmup_epochs: int = 5) -> float:
    """The authors' ImageNet learning rate of 0-based ``epoch`` as a fraction of the initial one:
    warm-up ``(e + 1) / warmup_epochs``, then linear decay ``(E - 5 - e) / (E - 5)``; the last 5
    epochs use ``(E - e) / ((E - 5) * 5)`` ("a smaller slope because lr / 250 is relatively large")."""
    if epochs <= 5:
        raise ValueError(f"scheduler official_imagenet needs more than 5 epochs, got {epochs}")
    if epoch < warmup_epochs:
        return (epoch + 1) / warmup_epochs
    if epochs - epoch > 5:
        return (epochs - 5 - epoch) / (epochs - 5)
    return (epochs - epoch) / ((epochs - 5) * 5)


def _mult_adds_m(net: nn.Module, image_size: int, in_channels: int) -> Optional[float]:
    try:
        return float(count_mult_adds(net, image_size, in_channels)) / 1e6
    except Exception:  # profiling must never break training
        return None


class ClassifierModule(L.LightningModule):
    """Train/evaluate an evaluation network on an image classification data set.

    The architecture arguments (``genotype``, ``network``, ``C``, ``layers``, ``num_classes``,
    ``in_channels``, ``image_size``, ``auxiliary``) are the fields of an
    :class:`~relnas.nas.arch.ArchSpec`, made once into :attr:`arch` and stored flat in the
    hyper-parameters (genotype as a dict), so that checkpoints are self-describing; pass a spec
    with ``ClassifierModule(**arch.to_dict(), ...)``. ``relnas.train`` instantiates this class
    from the ``model`` config node, adding the spec it made from ``genotype`` and the data module.

    Args:
        genotype: the cell architecture (a :class:`Genotype`, a dict, a zoo name or a file path).
        network: ``"cifar"`` or ``"imagenet"``.
        C, layers: initial channels and number of cells.
        num_classes, in_channels, image_size: from the data module.
        auxiliary, auxiliary_weight: auxiliary head and its loss weight.
        drop_path_prob: final drop-path probability (ramped linearly from 0 over ``epochs``).
        label_smoothing: for the training loss (evaluation losses use plain cross-entropy).
        optimizer: ``params -> Optimizer`` (a Hydra ``_partial_`` config); default SGD(0.025, 0.9, 3e-4).
        scheduler: ``{name, warmup_epochs, eta_min, final_lr}``.
        epochs: length of the schedules (learning rate, drop path).
        channels_last: use the channels-last memory format for weights and inputs.
        net: an already built network (e.g. loaded from an official checkpoint); the architecture
            arguments must still describe it.
    """

    def __init__(
        self,
        genotype: Any = "RelativeNAS",
        network: str = "cifar",
        C: int = 36,
        layers: int = 20,
        num_classes: int = 10,
        in_channels: int = 3,
        image_size: int = 32,
        auxiliary: bool = True,
        auxiliary_weight: float = 0.4,
        drop_path_prob: float = 0.2,
        label_smoothing: float = 0.0,
        optimizer: Optional[Callable[..., torch.optim.Optimizer]] = None,
        scheduler: Optional[Mapping[str, Any]] = None,
        epochs: int = 600,
        channels_last: bool = True,
        net: Optional[nn.Module] = None,
    ) -> None:
        super().__init__()
        #: the architecture, parsed once
        self.arch = ArchSpec(network=network, genotype=genotype, C=C, layers=layers, num_classes=num_classes,
                             in_channels=in_channels, image_size=image_size, auxiliary=auxiliary)
        scheduler = dict(plain(scheduler) or {"name": "cosine"})  # plain containers: checkpoints load as data
        if scheduler.get("name", "cosine") not in SCHEDULERS:
            raise ConfigError(f"unknown scheduler.name {scheduler.get('name')!r}; choose {', '.join(SCHEDULERS)}")
        if not 0.0 <= float(drop_path_prob) < 1.0:
            raise ConfigError(f"model.drop_path_prob must be in [0, 1), got {drop_path_prob}")
        self.save_hyperparameters({
            **self.arch.to_dict(), "auxiliary_weight": float(auxiliary_weight),
            "drop_path_prob": float(drop_path_prob), "label_smoothing": float(label_smoothing),
            "scheduler": scheduler, "epochs": int(epochs), "channels_last": bool(channels_last),
        })
        self.optimizer_factory = optimizer
        if net is None:
            net = self.arch.build()
        self.net = net
        self.net.drop_path_prob = 0.0
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)

        k5 = min(5, int(num_classes))
        self.train_acc1 = MulticlassAccuracy(num_classes=num_classes, top_k=1, average="micro")
        self.val_loss = MeanMetric()
        self.val_acc1 = MulticlassAccuracy(num_classes=num_classes, top_k=1, average="micro")
        self.val_acc5 = MulticlassAccuracy(num_classes=num_classes, top_k=k5, average="micro")
        self.test_loss = MeanMetric()
        self.test_acc1 = MulticlassAccuracy(num_classes=num_classes, top_k=1, average="micro")
        self.test_acc5 = MulticlassAccuracy(num_classes=num_classes, top_k=k5, average="micro")
        #: (epoch, val acc1, val acc5) per validation epoch (saved in checkpoints)
        self.val_history: List[Dict[str, float]] = []
        self.profile: Dict[str, Optional[float]] = {}

    # ------------------------------------------------------------------ helpers
    @classmethod
    def from_hparams(cls, hparams: Mapping[str, Any], **overrides: Any) -> "ClassifierModule":
        """The module that the hyper-parameters of one of its checkpoints describe (keys the
        constructor does not take are ignored); ``overrides`` replace or add arguments."""
        known = set(inspect.signature(cls.__init__).parameters) - {"self"}
        return cls(**{k: v for k, v in {**hparams, **overrides}.items() if k in known})

    @property
    def genotype(self) -> Genotype:
        return self.arch.genotype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Main logits (the auxiliary logits are dropped)."""
        return self.net(x.contiguous(memory_format=self.memory_format))[0]

    def network_summary(self) -> Dict[str, Optional[float]]:
        return {"params_m": float(count_params(self.net, exclude_auxiliary=True)) / 1e6,
                "mult_adds_m": _mult_adds_m(self.net, self.arch.image_size, self.arch.in_channels)}

    # ------------------------------------------------------------------ training
    def on_fit_start(self) -> None:
        self.profile = self.network_summary()
        metrics = {f"model/{k}": float(v) for k, v in self.profile.items() if v is not None}
        for lg in self.loggers:
            lg.log_metrics(metrics, step=self.global_step)
            lg.log_hyperparams({k: v for k, v in self.profile.items()})

    def on_train_epoch_start(self) -> None:
        hp = self.hparams
        self.net.drop_path_prob = hp.drop_path_prob * self.current_epoch / max(1, hp.epochs)
        self.log("train/drop_path_prob", float(self.net.drop_path_prob), on_step=False, on_epoch=True)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y = batch
        logits, logits_aux = self.net(x.contiguous(memory_format=self.memory_format))
        ls = self.hparams.label_smoothing
        loss = F.cross_entropy(logits, y, label_smoothing=ls)
        if logits_aux is not None and self.hparams.auxiliary_weight:
            loss = loss + self.hparams.auxiliary_weight * F.cross_entropy(logits_aux, y, label_smoothing=ls)
        self.train_acc1(logits.detach(), y)
        self.log("train/loss", loss.detach(), on_step=True, on_epoch=True, prog_bar=True, batch_size=y.shape[0])
        self.log("train/acc1", self.train_acc1, on_step=False, on_epoch=True, batch_size=y.shape[0])
        return loss

    def _eval_step(self, batch, stage: str) -> None:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        getattr(self, f"{stage}_loss").update(loss.detach(), weight=y.shape[0])
        getattr(self, f"{stage}_acc1").update(logits, y)
        getattr(self, f"{stage}_acc5").update(logits, y)
        bs = y.shape[0]
        self.log(f"{stage}/loss", getattr(self, f"{stage}_loss"), on_step=False, on_epoch=True, batch_size=bs)
        self.log(f"{stage}/acc1", getattr(self, f"{stage}_acc1"), on_step=False, on_epoch=True,
                 prog_bar=True, batch_size=bs)
        self.log(f"{stage}/acc5", getattr(self, f"{stage}_acc5"), on_step=False, on_epoch=True, batch_size=bs)

    def validation_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        if self.trainer is not None and self.trainer.sanity_checking:
            return
        # compute() is synchronised across processes; called before Lightning resets the metrics
        acc1 = float(self.val_acc1.compute())
        acc5 = float(self.val_acc5.compute())
        self.val_history.append({"epoch": int(self.current_epoch), "acc1": acc1, "acc5": acc5})

    def test_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def best_val(self) -> Optional[Dict[str, float]]:
        """The validation epoch with the highest top-1 accuracy (its top-5 alongside); of equal
        top-1 accuracies the earliest, the epoch whose checkpoint the best-checkpoint callback
        (``ModelCheckpoint(monitor="val/acc1", mode="max")``, replaced only on a strict
        improvement) keeps, so that result.json's best epoch is the checkpoint it names."""
        if not self.val_history:
            return None
        return max(self.val_history, key=lambda h: h["acc1"])  # max() keeps the first of equal keys

    def on_save_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        checkpoint["val_history"] = list(self.val_history)

    def on_load_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        self.val_history = list(checkpoint.get("val_history", []))

    # ------------------------------------------------------------------ optimisation
    def lr_lambda_per_step(self, steps_per_epoch: int) -> Callable[[int], float]:
        """LambdaLR factor for ``linear_warmup``: step ``t`` (0-based)."""
        hp = self.hparams
        sch = hp.scheduler
        base_lr = self._base_lr
        warm = max(0, int(round(float(sch.get("warmup_epochs", 0)) * steps_per_epoch)))
        total = max(warm + 1, int(hp.epochs) * steps_per_epoch)
        final = float(sch.get("final_lr", 1e-5)) / base_lr if base_lr > 0 else 0.0

        def factor(t: int) -> float:
            if t < warm:
                return (t + 1) / warm
            frac = min(1.0, (t - warm) / max(1, total - warm))
            return final + (1.0 - final) * (1.0 - frac)

        return factor

    def configure_optimizers(self):
        factory = self.optimizer_factory
        if factory is None:
            def factory(params):
                return torch.optim.SGD(params, lr=0.025, momentum=0.9, weight_decay=3e-4)
        optimizer = factory(self.parameters())
        self._base_lr = float(optimizer.param_groups[0]["lr"])
        sch = self.hparams.scheduler
        name = sch.get("name", "cosine")
        epochs = int(self.hparams.epochs)
        if name == "constant":
            return optimizer
        if name == "cosine":
            scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
                optimizer, T_max=max(1, epochs), eta_min=float(sch.get("eta_min", 0.0)))
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}
        if name == "official_imagenet":
            warm = int(sch.get("warmup_epochs", 5))
            official_imagenet_factor(0, epochs, warm)  # fails early for too few epochs
            scheduler = torch.optim.lr_scheduler.LambdaLR(
                optimizer, lambda e: official_imagenet_factor(e, epochs, warm))
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}
        # linear_warmup, per step
        max_epochs = self.trainer.max_epochs if self.trainer is not None else None
        total_steps = self.trainer.estimated_stepping_batches if self.trainer is not None else None
        if max_epochs and max_epochs > 0 and total_steps and math.isfinite(total_steps):
            steps_per_epoch = max(1, int(total_steps) // max_epochs)
        else:
            steps_per_epoch = 1
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, self.lr_lambda_per_step(steps_per_epoch))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

