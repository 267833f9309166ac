"""The interface every transfer task implements, and what the tasks share.

A task is one module under ``relnas/transfer/tasks/`` whose class is registered beside its
definition with ``@TASKS.register("<name>")`` (:data:`TASKS`, the project's one
:class:`relnas.utils.registry.Registry` idiom), imported by ``relnas/transfer/tasks/__init__.py``
and named by the ``_target_`` of ``configs/task/<name>.yaml``. The class is a subclass of
:class:`TransferModule` (a LightningModule) and provides:

Class attributes
    ``task_name``            the registry name (``"detection"``, ``"segmentation"``, ``"keypoints"``).
    ``paper_input_size``     ``(H, W)`` at which the paper reports the model size (VOC 320x320, ...).
    ``paper_num_classes``    class / keypoint count of the paper's data set (21, 19, 17).
    ``paper_note``           optional one-line remark printed by ``relnas.inspect`` (e.g. full-frame size).
    ``monitor``              the validation metric that picks the best checkpoint (e.g. ``"val/map"``).
    ``monitor_mode``         ``"max"`` or ``"min"``.

Class method
    ``build_model(backbone, num_classes, **model_cfg) -> nn.Module``: the whole task network
    (backbone + head) from a :class:`relnas.transfer.backbones.Backbone` (use its ``feature_info``
    to find the maps of the strides the head needs; fail with one line when they are missing).
    ``model_cfg`` is the ``task.model`` config node (head settings).

Instance methods (``self.model`` is the network of ``build_model``)
    ``inference_parameters() -> int`` (optional): the parameter count to report when the network
        holds training-only parts (auxiliary heads); default: all parameters of ``self.model``.
    ``profile_forward(x)``: the network's core computation on a ``(1, 3, H, W)`` tensor (no
        pre/post-processing, e.g. no NMS); used for the FLOP count. Default: ``self.model(x)``.
    ``training_step`` / ``validation_step`` / ``test_step`` (Lightning), with the metrics
        updated in the steps and computed in ``on_validation_epoch_end`` / ``on_test_epoch_end``
        (log ``val/<metric>`` and ``test/<metric>``; the monitored one must be logged every
        validation epoch).
    ``final_metrics() -> dict``: the numbers for ``result.json`` after ``trainer.test``:
        ``{"metrics": {...}, "per_class": {name: value}}`` (call :meth:`remember_metrics` from
        ``on_test_epoch_end`` and the default implementation returns what it stored).
    ``draw_predictions(batch, max_images) -> uint8 tensor (3, H, W)``: predictions next to ground
        truth for the first validation images, as one picture; build it with
        :func:`prediction_grid` (pairs of panels: prediction, ground truth). The entry point calls
        it on the module on the CPU in eval mode with ``relnas.transfer.__main__.first_images``:
        ``(images, targets)`` stacked into tensors when the loader gives same-shape tensors,
        otherwise lists (a dict of batched targets is split into one dict per sample).

The shared constructor (``TransferModule.__init__``) takes the built network, the class names,
the optimizer factory (Hydra ``_partial_`` config), the scheduler settings and the number of
epochs (Hydra builds the class that ``task._target_`` names with the keys of ``task.module`` and
these as keyword arguments: :func:`relnas.transfer.__main__.instantiate_task`), and :meth:`TransferModule.configure_optimizers` builds the optimizer and the schedule
(:data:`SCHEDULERS`), so tasks only write their steps, metrics and drawing. Extra task
arguments go in ``**task_kwargs`` (kept in ``self.task_kwargs`` and the hyper-parameters).

The data module of a task is a ``LightningDataModule`` built by Hydra from ``task.data``; it must
expose ``num_classes`` (int), ``class_names`` (list of str) and ``val_dataloader()``, and raise
:class:`relnas.data.DatasetNotFoundError` (one line naming the expected layout) from ``setup``
when its files are missing.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, ClassVar, Dict, Mapping, Optional, Sequence, Tuple

import lightning as L
import torch
from torch import nn

from relnas.utils.instantiate import plain
from relnas.utils.registry import Registry

#: the transfer tasks by ``task_name`` (what ``result.json`` records as ``task``)
TASKS: Registry[type] = Registry("task")

#: learning-rate schedules of ``task.scheduler.name``
SCHEDULERS = ("cosine", "poly", "multistep", "constant")

#: modules whose parameters ``norm_bias_decay=False`` exempts from weight decay
NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


class TransferModule(L.LightningModule):
    """Base LightningModule of the transfer tasks (see the module docstring for the contract).

    Args:
        model: the task network (from :meth:`build_model`).
        num_classes: classes (or keypoints) of the data set.
        class_names: their names (for per-class results and pictures).
        optimizer: ``params -> Optimizer`` (Hydra ``_partial_`` config); default SGD(0.01, 0.9, 5e-4).
        scheduler: ``{name: cosine|poly|multistep|constant, interval: epoch|step, warmup_steps,
            warmup_ratio, power, milestones, gamma, eta_min}``:

            - ``cosine``: cosine from the base lr to ``eta_min`` over the run;
            - ``poly``: ``(1 - t/T) ** power`` (BiSeNet), after a linear warm-up of
              ``warmup_steps`` from ``warmup_ratio * lr``;
            - ``multistep``: x ``gamma`` at each of ``milestones`` (epochs or steps per ``interval``);
            - ``constant``.

            ``interval: step`` steps every optimizer step with T = total steps; ``epoch`` once per
            epoch with T = ``epochs``.
        epochs: schedule length in epochs (``interval: epoch``); with ``interval: step`` the length
            is ``max_steps`` of the trainer or ``epochs x steps per epoch``.
        input_size: ``(H, W)`` of the training/eval inputs (for FLOPs in the logs).
        backbone_info: what ``result.json`` says about the backbone (name, weights, ...).
        head_lr_mult: learning-rate multiplier of the task's head modules (:attr:`head_modules`;
            e.g. 10 for BiSeNet's fusion module and output heads, as the authors train it).
        norm_bias_decay: ``False`` takes weight decay off normalisation parameters and biases.
    """

    #: modules (names in the LightningModule) whose learning rate ``head_lr_mult`` multiplies
    head_modules: ClassVar[Tuple[str, ...]] = ("model.head",)

    task_name: ClassVar[str] = ""
    paper_input_size: ClassVar[Tuple[int, int]] = (224, 224)
    paper_num_classes: ClassVar[int] = 0
    paper_note: ClassVar[str] = ""
    monitor: ClassVar[str] = "val/loss"
    monitor_mode: ClassVar[str] = "min"

    def __init__(self, model: nn.Module, num_classes: int, class_names: Optional[Sequence[str]] = None,
                 optimizer: Optional[Callable[..., torch.optim.Optimizer]] = None,
                 scheduler: Optional[Mapping[str, Any]] = None, epochs: int = 1,
                 input_size: Sequence[int] = (224, 224), backbone_info: Optional[Mapping[str, Any]] = None,
                 head_lr_mult: float = 1.0, norm_bias_decay: bool = True, **task_kwargs: Any) -> None:
        super().__init__()
        if not float(head_lr_mult) > 0:
            raise ValueError(f"head_lr_mult must be positive, got {head_lr_mult}")
        scheduler = dict(plain(scheduler) or {"name": "constant"})  # plain containers: checkpoints load as data
        if scheduler.get("name", "constant") not in SCHEDULERS:
            raise ValueError(f"unknown scheduler {scheduler.get('name')!r}; known: {', '.join(SCHEDULERS)}")
        names = [str(n) for n in class_names] if class_names is not None else [str(i) for i in range(num_classes)]
        self.save_hyperparameters({
            "task": self.task_name, "num_classes": int(num_classes), "class_names": names,
            "scheduler": scheduler, "epochs": int(epochs), "input_size": [int(s) for s in _pair(input_size)],
            "backbone": dict(plain(backbone_info) or {}), "head_lr_mult": float(head_lr_mult),
            "norm_bias_decay": bool(norm_bias_decay), **plain(dict(task_kwargs)),
        })
        self.model = model
        self.num_classes = int(num_classes)
        self.class_names = names
        self.optimizer_factory = optimizer
        self.task_kwargs = dict(task_kwargs)
        self._final: Dict[str, Any] = {}

    # ------------------------------------------------------------------ the task contract
    @classmethod
    def build_model(cls, backbone: nn.Module, num_classes: int, **model_cfg: Any) -> nn.Module:
        raise NotImplementedError(f"{cls.__name__} must implement build_model(backbone, num_classes, **cfg)")

    def profile_forward(self, x: torch.Tensor) -> Any:
        return self.model(x)

    def draw_predictions(self, batch: Any, max_images: int = 4) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement draw_predictions(batch, max_images)")

    def remember_metrics(self, metrics: Mapping[str, Any], per_class: Optional[Mapping[str, Any]] = None) -> None:
        """Keep the final numbers for :meth:`final_metrics` (call it from ``on_test_epoch_end``)."""
        self._final = {"metrics": {k: _plain(v) for k, v in metrics.items()},
                       "per_class": {k: _plain(v) for k, v in (per_class or {}).items()}}

    def final_metrics(self) -> Dict[str, Any]:
        return dict(self._final) if self._final else {"metrics": {}, "per_class": {}}

    # ------------------------------------------------------------------ optimisation
    def _schedule_length(self, interval: str) -> int:
        if interval == "epoch":
            return max(1, int(self.hparams.epochs))
        trainer = self._trainer
        if trainer is not None:
            total = trainer.estimated_stepping_batches
            if total and math.isfinite(total):
                return max(1, int(total))
        return max(1, int(self.hparams.epochs))

    def lr_factor(self, total: int) -> Callable[[int], float]:
        """``LambdaLR`` factor of the configured schedule for a run of ``total`` steps/epochs."""
        return schedule_factor(self.hparams.scheduler, total)

    def configure_optimizers(self):
        factory = self.optimizer_factory
        if factory is None:
            def factory(params):
                return torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=5e-4)
        optimizer = factory(self.param_groups())
        for group in optimizer.param_groups:  # the head's multiplier, before the schedule records initial_lr
            group["lr"] = group["lr"] * group.get("lr_mult", 1.0)
        sch = self.hparams.scheduler
        name = sch.get("name", "constant")
        if name == "constant":
            return optimizer
        interval = str(sch.get("interval", "epoch"))
        if interval not in ("epoch", "step"):
            raise ValueError(f"scheduler.interval must be epoch or step, got {interval!r}")
        total = self._schedule_length(interval)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, self.lr_factor(total))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": interval}}

    def param_groups(self) -> list:
        """The trainable parameters in up to four groups: (head or not) x (decayed or not), with
        ``lr_mult`` (``head_lr_mult`` for :attr:`head_modules`) and, where ``norm_bias_decay`` is
        off, ``weight_decay`` 0 for normalisation parameters and biases. Empty groups are left out."""
        head_mult = float(self.hparams.get("head_lr_mult", 1.0))
        decay_all = bool(self.hparams.get("norm_bias_decay", True))
        norm_params = {id(p) for m in self.modules() if isinstance(m, NORM_LAYERS) for p in m.parameters(recurse=False)}
        groups: Dict[Tuple[bool, bool], list] = {}
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            head = any(name == h or name.startswith(h + ".") for h in self.head_modules)
            no_decay = not decay_all and (id(p) in norm_params or name.endswith(".bias"))
            groups.setdefault((head, no_decay), []).append(p)
        out = []
        for (head, no_decay), params in sorted(groups.items()):
            g: Dict[str, Any] = {"params": params, "lr_mult": head_mult if head else 1.0}
            if no_decay:
                g["weight_decay"] = 0.0
            out.append(g)
        return out


def schedule_factor(sch: Mapping[str, Any], total: int) -> Callable[[int], float]:
    """The learning-rate multiplier at step/epoch ``t`` (0-based) of a schedule of length ``total``.

    ``cosine``: ``eta_min_ratio + (1 - eta_min_ratio) * (1 + cos(pi t / total)) / 2`` (``eta_min``
    is given as a ratio of the base lr: ``eta_min_ratio``, default 0); ``poly``: a warm-up over
    ``warmup_steps`` (W) from ``warmup_ratio`` (r) to 1, linear (``warmup_mode: linear``,
    ``r + (1 - r) t / W``) or exponential (``exp``, ``r ** (1 - t / W)``, the authors' BiSeNet),
    then ``(1 - t / total) ** power``, or with ``poly_offset: true`` (theirs)
    ``(1 - (t - W) / (total - W)) ** power``; ``multistep``: ``gamma ** (number of milestones <= t)``;
    ``constant``: 1.
    """
    name = sch.get("name", "constant")
    total = max(1, int(total))
    if name == "cosine":
        floor = float(sch.get("eta_min_ratio", 0.0))
        return lambda t: floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * min(t, total) / total))
    if name == "poly":
        power = float(sch.get("power", 0.9))
        warm = int(sch.get("warmup_steps", 0))
        ratio = float(sch.get("warmup_ratio", 0.1))
        mode = str(sch.get("warmup_mode", "linear"))
        offset = bool(sch.get("poly_offset", False))
        if mode not in ("linear", "exp"):
            raise ValueError(f"unknown warmup_mode {mode!r}; known: linear, exp")
        if mode == "exp" and not ratio > 0:
            raise ValueError(f"warmup_mode exp needs warmup_ratio > 0, got {ratio}")

        def poly(t: int) -> float:
            if t < warm:
                return ratio + (1.0 - ratio) * t / warm if mode == "linear" else ratio ** (1.0 - t / warm)
            if offset:
                return max(0.0, 1.0 - (min(t, total) - warm) / max(1, total - warm)) ** power
            return max(0.0, 1.0 - min(t, total) / total) ** power

        return poly
    if name == "multistep":
        milestones = sorted(int(m) for m in sch.get("milestones", []))
        gamma = float(sch.get("gamma", 0.1))
        return lambda t: gamma ** sum(1 for m in milestones if t >= m)
    if name == "constant":
        return lambda t: 1.0
    raise ValueError(f"unknown scheduler {name!r}; known: {', '.join(SCHEDULERS)}")


# ---------------------------------------------------------------------- size and cost

def count_parameters(model: nn.Module) -> int:
    """All parameters of the task network (trainable or not; buffers excluded)."""
    return sum(p.numel() for p in model.parameters())


def count_flops(forward: Callable[[torch.Tensor], Any], input_size: Sequence[int], in_channels: int = 3,
                device: Any = "cpu", dtype: torch.dtype = torch.float32) -> int:
    """Multiply-adds of ``forward`` on one ``in_channels x H x W`` zero image (FLOPs / 2 as counted
    by :class:`torch.utils.flop_counter.FlopCounterMode`: convolutions, matmuls; not BN, ReLU,
    pooling). This is the "FLOPs"/"MAdds" convention of the mobile-network papers."""
    from torch.utils.flop_counter import FlopCounterMode

    h, w = _pair(input_size)
    x = torch.zeros(1, in_channels, h, w, device=device, dtype=dtype)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        forward(x)
    return int(counter.get_total_flops()) // 2


def model_cost(module: "TransferModule", input_size: Optional[Sequence[int]] = None,
               flops: bool = True) -> Dict[str, Any]:
    """``{params, params_m, flops, flops_m, input_size}`` of a task module's network at
    ``input_size`` (default: the paper's), in eval mode; ``flops=False`` skips the forward pass
    (``flops`` and ``flops_m`` are then ``None``)."""
    size = _pair(input_size if input_size is not None else module.paper_input_size)
    params = int(module.inference_parameters()) if hasattr(module, "inference_parameters") else \
        count_parameters(module.model)
    if not flops:
        return {"params": params, "params_m": round(params / 1e6, 4), "flops": None, "flops_m": None,
                "input_size": list(size)}
    was = module.training
    module.eval()
    try:
        try:
            p = next(module.model.parameters())
            device, dtype = p.device, p.dtype
        except StopIteration:
            device, dtype = torch.device("cpu"), torch.float32
        n_flops = count_flops(module.profile_forward, size, device=device, dtype=dtype)
    finally:
        module.train(was)
    return {"params": params, "params_m": round(params / 1e6, 4), "flops": n_flops,
            "flops_m": round(n_flops / 1e6, 2), "input_size": list(size)}


# ---------------------------------------------------------------------- pictures and results

def prediction_grid(panels: Sequence[torch.Tensor], ncol: int = 2, padding: int = 4,
                    size: Optional[Tuple[int, int]] = None, titles: Optional[Sequence[str]] = None) -> torch.Tensor:
    """One uint8 ``(3, H, W)`` picture of ``panels`` (uint8 ``(3, h, w)`` or ``(1, h, w)`` images,
    e.g. prediction, ground truth, prediction, ground truth, ...), ``ncol`` per row. With ``size``
    every panel is resized to it; otherwise panels of different sizes are placed top-left on a white
    canvas of the largest height and width (no distortion). ``titles`` (one per panel) are written
    in the top-left corner."""
    import torch.nn.functional as F
    from torchvision.utils import make_grid

    if not panels:
        raise ValueError("prediction_grid needs at least one panel")
    if size is None:
        h = max(int(p.shape[-2]) for p in panels)
        w = max(int(p.shape[-1]) for p in panels)
    else:
        h, w = _pair(size)
    out = []
    for i, p in enumerate(panels):
        if p.dtype != torch.uint8 or p.dim() != 3 or p.shape[0] not in (1, 3):
            raise ValueError(f"panel {i}: expected a uint8 (3, H, W) image, got {p.dtype} {tuple(p.shape)}")
        p = p.detach().cpu()
        if p.shape[0] == 1:
            p = p.expand(3, -1, -1)
        if size is not None and tuple(p.shape[-2:]) != (h, w):
            p = F.interpolate(p[None].float(), size=(h, w), mode="nearest")[0].round().clamp(0, 255).to(torch.uint8)
        if tuple(p.shape[-2:]) != (h, w):
            canvas = torch.full((3, h, w), 255, dtype=torch.uint8)
            canvas[:, : p.shape[-2], : p.shape[-1]] = p
            p = canvas
        if titles is not None and i < len(titles) and titles[i]:
            p = _caption(p, titles[i])
        out.append(p)
    return make_grid(torch.stack(out), nrow=ncol, padding=padding, pad_value=255)


def _caption(img: torch.Tensor, text: str) -> torch.Tensor:
    try:
        from PIL import Image, ImageDraw
    except ImportError:  # pragma: no cover
        return img
    pil = Image.fromarray(img.permute(1, 2, 0).contiguous().numpy())
    draw = ImageDraw.Draw(pil)
    tw = min(int(img.shape[-1]) - 1, 6 * len(text) + 4)
    draw.rectangle([0, 0, tw, 12], fill=(0, 0, 0))
    draw.text((2, 0), text, fill=(255, 255, 255))
    import numpy as np

    return torch.from_numpy(np.array(pil)).permute(2, 0, 1).contiguous()


def upscale_for_display(image: torch.Tensor, min_side: int = 256) -> Tuple[torch.Tensor, int]:
    """Nearest-neighbour upscale of a uint8 ``(C, H, W)`` image by the integer factor that brings
    its longer side to at least ``min_side`` (1 for large images); returns ``(image, factor)`` so
    that coordinates drawn on it can be scaled alike."""
    import torch.nn.functional as F

    f = max(1, -(-int(min_side) // max(int(image.shape[-2]), int(image.shape[-1]))))
    if f == 1:
        return image, 1
    return F.interpolate(image[None].float(), scale_factor=f, mode="nearest")[0].to(torch.uint8), f


def denormalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Float normalised ``(N, 3, H, W)`` images back to uint8."""
    m = torch.as_tensor(mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    return (images * s + m).mul(255).round().clamp(0, 255).to(torch.uint8).cpu()


def save_png(image: torch.Tensor, path: str | Path) -> Path:
    """Write a uint8 ``(3, H, W)`` image as PNG."""
    from torchvision.io import write_png

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_png(image.detach().cpu().contiguous(), str(path))
    return path


# ---------------------------------------------------------------------- helpers

def _pair(size: Any) -> Tuple[int, int]:
    if isinstance(size, (int, float)):
        return int(size), int(size)
    size = list(size)
    if len(size) == 1:
        return int(size[0]), int(size[0])
    if len(size) != 2:
        raise ValueError(f"an input size is an int or (H, W), got {size!r}")
    return int(size[0]), int(size[1])


def _plain(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        return v.item() if v.numel() == 1 else v.tolist()
    return v


__all__ = ["TransferModule", "SCHEDULERS", "schedule_factor", "count_parameters", "count_flops", "model_cost",
           "prediction_grid", "upscale_for_display", "denormalize", "save_png"]
