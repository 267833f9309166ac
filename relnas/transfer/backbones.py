"""Backbones for the transfer tasks: feature-map extractors with a timm-like ``feature_info``.

``build_backbone(name, weights=None, out_indices=None, frozen_bn=False)`` gives an ``nn.Module``
whose ``forward(x)`` returns an ordered dict ``{"stride8": map, "stride16": map, ...}`` (one entry
per selected tap, keyed by its output stride) and whose ``feature_info`` lists, per selected tap,
``num_chs``, ``reduction`` and ``module`` (like timm's ``features_only`` models). No classifier
and no auxiliary head.

* Cell networks (``RelativeNAS``, ``DARTS_V2``, ``NASNet``, ``AmoebaNet``, any zoo name, a genotype
  ``.json``/``.yaml`` file or a search run directory): the stem and cells of ``NetworkImageNet``
  (default C=46, L=14, the mobile setting). The taps are the last cell of each resolution stage:
  cells ``L//3 - 1``, ``2L//3 - 1`` and ``L - 1`` (0-based; the reduction cells are ``L//3`` and
  ``2L//3``), at strides 8, 16 and 32. Parameter names are those of ``NetworkImageNet``
  (``stem0.*``, ``stem1.*``, ``cells.<i>.*``), so ImageNet checkpoints load directly.
* torchvision mobile networks (:data:`TORCHVISION_BACKBONES`): the feature extractor of
  ``torchvision.models.feature_extraction.create_feature_extractor`` with taps at the last layer
  of each stride 4, 8, 16 and 32.

Weights (``weights=``):

* cell networks: a ``relnas.train`` ImageNet run directory (the checkpoint behind its reported
  test number, as ``relnas.evaluate`` picks it: by default ``checkpoints/last.ckpt``), a Lightning ``.ckpt`` of it, or a plain state dict in the official code's format
  (``.pt``/``.pth``, also wrapped in ``{"state_dict": ...}``, ``module.`` prefixes allowed);
* torchvision networks: a weights enum name (``DEFAULT``, ``IMAGENET1K_V1``, or
  ``MobileNet_V2_Weights.IMAGENET1K_V1``) whose file is in the torch hub cache (nothing is
  downloaded), or a state-dict file;
* ``None``: random initialisation, announced by a loud warning; ``backbone.pretrained`` is False and
  ``backbone.describe()["weights_warning"]`` says so (the entry point copies it into result.json).
"""
from __future__ import annotations

import logging
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from relnas.errors import ConfigError
from relnas.utils.registry import Registry

log = logging.getLogger(__name__)

RANDOM_INIT_WARNING = ("backbone {name} has NO pretrained weights (random initialisation): transfer results are "
                       "not comparable with the paper's; pass backbone.weights=<relnas.train ImageNet run | .ckpt | "
                       "official state dict .pt>{tv}")


class BackboneError(ConfigError):
    """A backbone that cannot be built or loaded as asked; the message is one line (a
    :class:`relnas.errors.ConfigError`, so every entry point reports it as ``error: ...``)."""


class FeatureInfo(list):
    """List of ``{"num_chs", "reduction", "module", "index"}`` dicts, one per returned feature map,
    with timm's accessors."""

    def channels(self) -> List[int]:
        return [int(f["num_chs"]) for f in self]

    def reduction(self) -> List[int]:
        return [int(f["reduction"]) for f in self]

    def module_name(self) -> List[str]:
        return [str(f["module"]) for f in self]

    def keys(self) -> List[str]:
        return [feature_key(f["reduction"]) for f in self]

    def at_stride(self, reduction: int) -> Dict[str, Any]:
        """The entry of stride ``reduction`` (``KeyError`` naming the available strides)."""
        for f in self:
            if int(f["reduction"]) == int(reduction):
                return f
        raise KeyError(f"no feature map of stride {reduction}; this backbone returns strides {self.reduction()}")


def feature_key(reduction: int) -> str:
    """The key of a feature map in a backbone's output dict: ``"stride<r>"``."""
    return f"stride{int(reduction)}"


class Backbone(nn.Module):
    """Common part of the backbones: ``feature_info``, weight source and a description."""

    name: str = ""
    kind: str = ""
    #: input heights and widths must be multiples of this (1: any size)
    size_multiple: int = 1

    def __init__(self) -> None:
        super().__init__()
        self.feature_info = FeatureInfo()
        self.all_taps: List[Dict[str, Any]] = []
        self.weights: Optional[str] = None
        self.pretrained = False
        self.frozen_bn = False
        self.out_indices: Tuple[int, ...] = ()

    def check_input_size(self, size: Sequence[int]) -> None:
        """Refuse (one line) an input ``(H, W)`` the backbone cannot take."""
        m = self.size_multiple
        if any(int(s) % m for s in size):
            raise BackboneError(f"input size {'x'.join(str(int(s)) for s in size)} does not fit backbone {self.name}: "
                                f"a {self.kind} backbone takes heights and widths that are multiples of {m}")

    def describe(self) -> Dict[str, Any]:
        d = {"name": self.name, "kind": self.kind, "weights": self.weights, "pretrained": self.pretrained,
             "out_indices": list(self.out_indices), "frozen_bn": self.frozen_bn,
             "feature_info": [dict(f) for f in self.feature_info]}
        if not self.pretrained:
            d["weights_warning"] = "random initialisation: no pretrained backbone weights were loaded"
        return d


def _select_taps(name: str, taps: Sequence[Dict[str, Any]], out_indices: Optional[Sequence[int]]) -> Tuple[int, ...]:
    n = len(taps)
    strides = ", ".join(str(t["reduction"]) for t in taps)
    if out_indices is None:
        return tuple(range(n))
    if isinstance(out_indices, int):
        out_indices = [out_indices]
    out = []
    for i in out_indices:
        if isinstance(i, bool) or not isinstance(i, int) or not -n <= i < n:
            raise BackboneError(f"out_indices {list(out_indices)} invalid for backbone {name}: it has {n} feature maps "
                                f"(indices 0..{n - 1} or -{n}..-1 for strides {strides})")
        out.append(i % n)
    if len(set(out)) != len(out) or not out:
        raise BackboneError(f"out_indices {list(out_indices)} for backbone {name} must be distinct and non-empty")
    return tuple(sorted(out))


# ---------------------------------------------------------------------- cell networks

def cell_taps(layers: int) -> List[int]:
    """0-based indices of the last cell of each resolution stage of ``NetworkImageNet``."""
    from relnas.nas.networks import reduction_layers

    r1, r2 = reduction_layers(layers)
    return [r1 - 1, r2 - 1, layers - 1]


class CellBackbone(Backbone):
    """Stem and cells of ``NetworkImageNet(C, layers, genotype)`` returning the stage-end maps."""

    kind = "cell"
    size_multiple = 32  # the stride-16 and stride-32 reduction cells halve maps of even size only

    def __init__(self, genotype: Any, C: int = 46, layers: int = 14, in_channels: int = 3,
                 out_indices: Optional[Sequence[int]] = None, name: str = "cell", drop_path_prob: float = 0.0):
        super().__init__()
        from relnas.nas.genotypes import get_genotype
        from relnas.nas.networks import NetworkImageNet

        if int(layers) < 3:
            raise BackboneError(f"a cell backbone needs layers >= 3 (three resolution stages), got {layers}")
        if int(C) <= 0 or int(C) % 2:
            raise BackboneError(f"a cell backbone needs a positive even C (ImageNet stem), got {C}")
        self.name = str(name)
        self.genotype = get_genotype(genotype)
        self.C, self.layers = int(C), int(layers)
        net = NetworkImageNet(self.C, 1, self.layers, False, self.genotype, in_channels=int(in_channels))
        tap_cells = cell_taps(self.layers)
        self.all_taps = []
        for i, r in zip(tap_cells, (8, 16, 32)):
            cell = net.cells[i]
            ch = cell.multiplier * cell.preprocess1.op[1].out_channels
            self.all_taps.append({"num_chs": int(ch), "reduction": r, "module": f"cells.{i}", "index": len(self.all_taps)})
        self.out_indices = _select_taps(self.name, self.all_taps, out_indices)
        self.feature_info = FeatureInfo(self.all_taps[i] for i in self.out_indices)
        self._tap_keys = {tap_cells[i]: feature_key(self.all_taps[i]["reduction"]) for i in self.out_indices}
        last = max(self._tap_keys)
        self.stem0 = net.stem0
        self.stem1 = net.stem1
        self.cells = nn.ModuleList(list(net.cells)[: last + 1])
        self.drop_path_prob = float(drop_path_prob)

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        out: "OrderedDict[str, torch.Tensor]" = OrderedDict()
        s0 = self.stem0(x)
        s1 = self.stem1(s0)
        for i, cell in enumerate(self.cells):
            s0, s1 = s1, cell(s0, s1, self.drop_path_prob)
            if i in self._tap_keys:
                out[self._tap_keys[i]] = s1
        return out

    def describe(self) -> Dict[str, Any]:
        return {**super().describe(), "genotype": self.genotype.to_dict(), "C": self.C, "layers": self.layers}


def _find_run_checkpoint(p: Path) -> Path:
    """The checkpoint of a weights directory: for a ``relnas.train`` run, the one behind its
    reported test number (:func:`relnas.runs.reported_checkpoint`, so never an epoch picked on the
    ImageNet val split unless the run asked for it); else its ``last.ckpt``
    (:func:`relnas.runs.resume_checkpoint`) or a single ``.pt``/``.pth`` file."""
    from relnas import runs

    found = runs.reported_checkpoint(p) or runs.resume_checkpoint(p)
    if found is not None:
        return found
    pts = sorted([*p.glob("*.pt"), *p.glob("*.pth"), *p.glob("*.pth.tar")])
    if len(pts) == 1:
        return pts[0]
    raise BackboneError(f"backbone weights: directory {str(p)!r} holds no checkpoints/*.ckpt "
                        f"or single .pt/.pth file (expected a relnas.train ImageNet run directory)")


def _read_weights_file(path: Path) -> Any:
    from relnas.errors import CheckpointError
    from relnas.utils.io import load_checkpoint_dict

    try:
        return load_checkpoint_dict(path)
    except CheckpointError as e:
        raise BackboneError(f"backbone weights: {e}") from None


def load_cell_weights(backbone: CellBackbone, weights: Union[str, os.PathLike]) -> str:
    """Load ImageNet weights into a cell backbone; return the file used. Classifier, auxiliary head
    and cells after the last tap are ignored; every backbone tensor must be present with its shape."""
    from relnas.nas.checkpoint import CheckpointError, extract_state_dict, infer_settings
    from relnas.nas.genotypes import get_genotype

    p = Path(weights).expanduser()
    if p.is_dir():
        p = _find_run_checkpoint(p)
    if not p.is_file():
        raise BackboneError(f"backbone weights {str(weights)!r} not found (expected a relnas.train ImageNet run directory, "
                            f"its .ckpt, or an official state-dict .pt)")
    obj = _read_weights_file(p)
    hp = obj.get("hyper_parameters") if isinstance(obj, Mapping) else None
    if hp:
        if hp.get("network") not in (None, "imagenet"):
            raise BackboneError(f"backbone weights {str(p)!r} come from a {hp.get('network')!r} network; the transfer "
                                f"backbones are ImageNet networks (train with relnas.train +experiment=imagenet)")
        if hp.get("genotype") is not None:
            try:
                theirs = get_genotype(dict(hp["genotype"]))
            except Exception:
                theirs = None
            if theirs is not None and theirs != backbone.genotype:
                raise BackboneError(f"backbone weights {str(p)!r} were trained with genotype {theirs} but the backbone "
                                    f"{backbone.name} is {backbone.genotype}: set backbone.name to the run's genotype")
    try:
        sd = extract_state_dict(obj)
    except CheckpointError as e:
        raise BackboneError(f"backbone weights {str(p)!r}: {e}") from None
    theirs = infer_settings(sd)
    diffs = [f"{k}={theirs[k]} (backbone: {v})" for k, v in (("network", "imagenet"), ("C", backbone.C))
             if k in theirs and theirs[k] != v]
    if "layers" in theirs and theirs["layers"] != backbone.layers:
        diffs.append(f"layers={theirs['layers']} (backbone: {backbone.layers})")
    if diffs:
        raise BackboneError(f"backbone weights {str(p)!r} do not fit backbone {backbone.name}: the checkpoint has "
                            f"{', '.join(diffs)}; set backbone.C / backbone.layers to match")
    _load_subset(backbone, sd, p)
    return str(p)


def _load_subset(module: nn.Module, sd: Mapping[str, torch.Tensor], path: Path) -> None:
    own = module.state_dict()
    missing = [k for k in own if k not in sd]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise BackboneError(f"backbone weights {str(path)!r} lack {missing[0]!r}{more}: not a checkpoint of this "
                            f"architecture (genotype, C or layers differ?)")
    for k, v in own.items():
        if tuple(sd[k].shape) != tuple(v.shape):
            raise BackboneError(f"backbone weights {str(path)!r}: shape of {k!r} is {tuple(sd[k].shape)}, the backbone "
                                f"needs {tuple(v.shape)} (genotype, C or layers differ?)")
    subset = OrderedDict((k, sd[k]) for k in own)
    # the modules' state-dict versions (torchvision's MNASNet reads its own): the file's, else the built module's
    meta = getattr(sd, "_metadata", None) or getattr(own, "_metadata", None)
    if meta is not None:
        subset._metadata = meta  # type: ignore[attr-defined]
    module.load_state_dict(subset, strict=True)
    ignored = len([k for k in sd if k not in own])
    log.info("loaded %d backbone tensors from %s (%d others ignored: classifier, auxiliary head, unused cells)",
             len(own), path, ignored)


# ---------------------------------------------------------------------- torchvision networks

#: torchvision builder, weights enum and taps (module, stride, channels) of the mobile backbones
TORCHVISION_BACKBONES: Registry[Dict[str, Any]] = Registry("torchvision backbone")
TORCHVISION_BACKBONES.register("mobilenet_v2", {
    "enum": "MobileNet_V2_Weights",
    "taps": [("features.3", 4, 24), ("features.6", 8, 32), ("features.13", 16, 96), ("features.18", 32, 1280)]})
TORCHVISION_BACKBONES.register("shufflenet_v2_x1_0", {
    "enum": "ShuffleNet_V2_X1_0_Weights",
    "taps": [("maxpool", 4, 24), ("stage2", 8, 116), ("stage3", 16, 232), ("conv5", 32, 1024)]})
TORCHVISION_BACKBONES.register("mnasnet1_0", {
    "enum": "MNASNet1_0_Weights",
    "taps": [("layers.8", 4, 24), ("layers.9", 8, 40), ("layers.11", 16, 96), ("layers.16", 32, 1280)]})


def _torchvision_enum(name: str, spec: str):
    import torchvision.models as tvm

    enum_cls = getattr(tvm, TORCHVISION_BACKBONES[name]["enum"])
    key = spec.split(".", 1)[1] if spec.startswith(enum_cls.__name__ + ".") else spec
    try:
        return enum_cls[key]
    except KeyError:
        known = ", ".join(["DEFAULT", *[w.name for w in enum_cls]])
        raise BackboneError(f"unknown torchvision weights {spec!r} for {name}; known: {known}") from None


def torchvision_weights_path(enum_value) -> Path:
    """Where the torch hub cache keeps the file of a torchvision weights enum value."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(enum_value.url)


class TorchvisionBackbone(Backbone):
    """A torchvision mobile network cut at its stride taps by ``create_feature_extractor``."""

    kind = "torchvision"

    def __init__(self, name: str, weights: Optional[str] = None, out_indices: Optional[Sequence[int]] = None):
        super().__init__()
        import torchvision.models as tvm
        from torchvision.models.feature_extraction import create_feature_extractor

        self.name = name
        spec = TORCHVISION_BACKBONES[name]
        self.all_taps = [{"num_chs": c, "reduction": r, "module": m, "index": i}
                         for i, (m, r, c) in enumerate(spec["taps"])]
        self.out_indices = _select_taps(name, self.all_taps, out_indices)
        self.feature_info = FeatureInfo(self.all_taps[i] for i in self.out_indices)
        enum_value, state_file = None, None
        if weights is not None:
            w = str(weights)
            if Path(w).expanduser().is_file() or "/" in w or w.endswith((".pt", ".pth")):
                state_file = Path(w).expanduser()
                if not state_file.is_file():
                    raise BackboneError(f"backbone weights file {w!r} does not exist")
            else:
                enum_value = _torchvision_enum(name, w)
                cached = torchvision_weights_path(enum_value)
                if not cached.is_file():
                    raise BackboneError(f"torchvision weights {enum_value} are not cached (expected {cached}; nothing "
                                        f"is downloaded): copy the file there or set TORCH_HOME, or pass a state-dict file")
        model = getattr(tvm, name)()
        if enum_value is not None:  # read as data: torchvision's own reader unpickles the cached file in full
            cached = torchvision_weights_path(enum_value)
            try:
                model.load_state_dict(_read_weights_file(cached), strict=True)
            except (RuntimeError, TypeError) as e:
                raise BackboneError(f"torchvision weights {str(cached)!r} do not fit {name}: "
                                    f"{' '.join(str(e).split())[:300]}") from None
        if state_file is not None:
            from relnas.nas.checkpoint import CheckpointError, extract_state_dict

            try:
                sd = extract_state_dict(_read_weights_file(state_file))
            except CheckpointError as e:
                raise BackboneError(f"backbone weights {str(state_file)!r}: {e}") from None
            keep = {k for k in model.state_dict() if not k.startswith(("classifier.", "fc."))}
            _load_subset(_Subset(model, keep), sd, state_file)
        nodes = {self.all_taps[i]["module"]: feature_key(self.all_taps[i]["reduction"]) for i in self.out_indices}
        self.body = create_feature_extractor(model, return_nodes=nodes)
        if enum_value is not None:
            self.weights, self.pretrained = f"{type(enum_value).__name__}.{enum_value.name}", True
        elif state_file is not None:
            self.weights, self.pretrained = str(state_file), True

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        out = self.body(x)
        return OrderedDict((k, out[k]) for k in self.feature_info.keys())


class _Subset(nn.Module):
    """View of ``model`` whose state dict is the keys in ``keep`` (for partial strict loading)."""

    def __init__(self, model: nn.Module, keep: set):
        super().__init__()
        self._model = [model]
        self._keep = keep

    def state_dict(self, *args, **kwargs):  # type: ignore[override]
        full = self._model[0].state_dict()
        out = OrderedDict((k, v) for k, v in full.items() if k in self._keep)
        out._metadata = getattr(full, "_metadata", None)  # type: ignore[attr-defined]
        return out

    def load_state_dict(self, sd, strict: bool = True, assign: bool = False):  # type: ignore[override]
        return self._model[0].load_state_dict(sd, strict=False)


# ---------------------------------------------------------------------- frozen BN and the registry

def freeze_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every ``BatchNorm2d`` by torchvision's ``FrozenBatchNorm2d`` with the same statistics
    and affine parameters (in place; returns ``module``)."""
    from torchvision.ops.misc import FrozenBatchNorm2d

    for name, child in list(module.named_children()):
        if isinstance(child, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
            with torch.no_grad():
                if child.affine:
                    frozen.weight.copy_(child.weight)
                    frozen.bias.copy_(child.bias)
                if child.track_running_stats and child.running_mean is not None:
                    frozen.running_mean.copy_(child.running_mean)
                    frozen.running_var.copy_(child.running_var)
            setattr(module, name, frozen)
        else:
            freeze_batchnorm(child)
    return module


def list_backbones() -> List[str]:
    """Known backbone names: the genotype zoo (cell networks) and the torchvision mobile networks."""
    from relnas.nas.genotypes import list_genotypes

    return [*list_genotypes(), *TORCHVISION_BACKBONES]


def check_backbone_name(name: str):
    """The genotype of a cell backbone name, ``None`` for a torchvision one; a one-line
    :class:`BackboneError` listing the known names otherwise (cheap: nothing is built)."""
    from relnas.nas.genotypes import GenotypeError, get_genotype

    name = str(name)
    if name in TORCHVISION_BACKBONES:
        return None
    try:
        return get_genotype(name)
    except KeyError:
        raise BackboneError(f"unknown backbone {name!r}; known: {', '.join(list_backbones())}, or a genotype "
                            f".json/.yaml file or search run directory") from None
    except FileNotFoundError as e:
        raise BackboneError(f"backbone {name!r}: {e}") from None
    except (GenotypeError, OSError, UnicodeDecodeError) as e:
        raise BackboneError(f"backbone {name!r} is not a valid genotype: {e}") from None


def build_backbone(name: str, weights: Optional[Union[str, os.PathLike]] = None,
                   out_indices: Optional[Sequence[int]] = None, frozen_bn: bool = False, C: int = 46,
                   layers: int = 14, in_channels: int = 3) -> Backbone:
    """Build a feature-map backbone (see the module docstring).

    Args:
        name: a genotype zoo name (``RelativeNAS``, ``DARTS_V2``, ``NASNet``, ``AmoebaNet``, ...), a
            genotype ``.json``/``.yaml`` file or search run directory, or one of
            :data:`TORCHVISION_BACKBONES`.
        weights: see the module docstring; ``None`` = random init with a loud warning.
        out_indices: which taps to return (indices into all taps, negative allowed); ``None`` = all.
        frozen_bn: replace BatchNorm by ``FrozenBatchNorm2d`` (statistics and affine fixed).
        C, layers, in_channels: cell networks only (``NetworkImageNet`` settings).
    """
    if name is None or not str(name).strip():
        raise BackboneError(f"no backbone name given; known: {', '.join(list_backbones())}, or a genotype file / "
                            f"search run directory")
    name = str(name)
    genotype = check_backbone_name(name)
    if genotype is None:
        bb: Backbone = TorchvisionBackbone(name, weights=None if weights is None else str(weights),
                                           out_indices=out_indices)
    else:
        bb = CellBackbone(genotype, C=C, layers=layers, in_channels=in_channels, out_indices=out_indices, name=name)
        if weights is not None:
            bb.weights = load_cell_weights(bb, weights)
            bb.pretrained = True
    if not bb.pretrained:
        tv = (" or a cached torchvision weights name (e.g. DEFAULT)" if name in TORCHVISION_BACKBONES else "")
        log.warning("!" * 20 + " " + RANDOM_INIT_WARNING.format(name=name, tv=tv) + " " + "!" * 20)
    if frozen_bn:
        freeze_batchnorm(bb)
        bb.frozen_bn = True
    return bb


__all__ = ["Backbone", "BackboneError", "CellBackbone", "FeatureInfo", "TorchvisionBackbone", "TORCHVISION_BACKBONES",
           "build_backbone", "cell_taps", "check_backbone_name", "feature_key", "freeze_batchnorm", "list_backbones", "load_cell_weights"]
