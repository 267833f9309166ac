"""The authors' trained transfer models in relnas's task networks.

The RelativeNAS authors released their transfer models (EMI-Group/TransferLearning-Tasks:
``SSDLite/`` detection models, ``Simplebaseline/`` keypoint models ``model_best.pth.tar``,
``BiSeNet/`` segmentation models ``model_iterfinal.pth``) for cell backbones built as
``NetworkImageNet``. relnas's SSDLite, SimpleBaseline and BiSeNet have the same layers
(docs/transfer.md), so their state dicts convert by renaming:

- detection: ``base_net.*`` -> ``backbone.backbone.*``, ``extras.*`` -> ``backbone.extra.*``,
  ``classification_headers.*`` / ``regression_headers.*`` -> ``head.classification_head`` /
  ``head.regression_head`` ``.module_list.*`` (the default boxes are in the same order, and both
  code the box offsets with variances 0.1 / 0.2, i.e. weights 10, 10, 5, 5; their input
  normalisation is ``(x - 127) / 128``: ``image_mean`` 127/255 and ``image_std`` 128/255);
- keypoints: ``backbone.*`` stays, ``deconv_layers.*`` -> ``head.deconv.*``,
  ``final_layer.*`` -> ``head.final.*``;
- segmentation: ``cp.net.*`` -> ``backbone.*``, the context path (``cp.arm16``, ``cp.arm32``,
  ``cp.conv_head32``, ``cp.conv_head16``, ``cp.conv_avg``), spatial path (``sp.conv1`` ..
  ``sp.conv_out``), fusion (``ffm.*``) and heads (``conv_out`` -> ``head``, ``conv_out16`` ->
  ``aux_heads.0``, ``conv_out32`` -> ``aux_heads.1``) onto their relnas modules. Their
  Conv-BN-activation blocks use mapillary's in-place activated BatchNorm, which scales by
  ``|weight| + eps`` (``forward_kernel`` of ``inplace_abn_cuda.cu``); the conversion stores that
  scale as the BatchNorm weight, so relnas's ``nn.BatchNorm2d`` computes the same. Their
  activations are leaky ReLUs (slope 0.01) and their outputs are upsampled with
  ``align_corners=True``: build relnas's BiSeNet with ``activation="leaky_relu",
  align_corners=True`` to run their model as they did.

``convert_authors_state_dict(task, sd)`` returns the task network's state dict (keys of
``module.model``); ``python -m relnas.transfer ... init_weights=<their file>`` uses it when the file
is not a relnas checkpoint. Backbones other than cell networks are not converted.
"""
from __future__ import annotations

import re
from typing import Dict, List, Mapping, Optional, Tuple

import torch

from relnas.errors import ConfigError

ABN_EPS = 1e-5  # InPlaceABNSync's default eps in the authors' BiSeNet (modules/bn.py)

_KEYPOINTS: List[Tuple[str, str]] = [
    (r"^backbone\.", "backbone."),
    (r"^deconv_layers\.", "head.deconv."),
    (r"^final_layer\.", "head.final."),
]


def _cbr(theirs: str, ours: str) -> List[Tuple[str, str]]:
    """Their ConvBNReLU (``.conv``, ``.bn``) onto relnas's ``ConvBNReLU`` (``.0``, ``.1``)."""
    return [(rf"^{re.escape(theirs)}\.conv\.", f"{ours}.0."), (rf"^{re.escape(theirs)}\.bn\.", f"{ours}.1.")]


def _output(theirs: str, ours: str) -> List[Tuple[str, str]]:
    """Their BiSeNetOutput (``.conv`` ConvBNReLU, ``.conv_out``) onto a relnas ``SegmentationHead``."""
    return _cbr(f"{theirs}.conv", f"{ours}.0") + [(rf"^{re.escape(theirs)}\.conv_out\.", f"{ours}.1.")]


_SEGMENTATION: List[Tuple[str, str]] = [
    (r"^cp\.net\.", "backbone."),
    *[rule for arm in ("arm16", "arm32") for rule in (
        *_cbr(f"cp.{arm}.conv", f"context_path.{arm}.conv"),
        (rf"^cp\.{arm}\.conv_atten\.", f"context_path.{arm}.attention.1."),
        (rf"^cp\.{arm}\.bn_atten\.", f"context_path.{arm}.attention.2."))],
    *_cbr("cp.conv_head32", "context_path.head32"),
    *_cbr("cp.conv_head16", "context_path.head16"),
    *_cbr("cp.conv_avg", "context_path.global_context.1"),
    *[rule for i, name in enumerate(("conv1", "conv2", "conv3", "conv_out")) for rule in _cbr(f"sp.{name}", f"spatial_path.{i}")],
    *_cbr("ffm.convblk", "fusion.conv"),
    (r"^ffm\.conv1\.", "fusion.attention.1."),
    (r"^ffm\.conv2\.", "fusion.attention.3."),
    *_output("conv_out", "head"),
    *_output("conv_out16", "aux_heads.0"),
    *_output("conv_out32", "aux_heads.1"),
]
# their in-place activated BatchNorms (everything named .bn or bn_atten outside the backbone)
_ABN = re.compile(r"^(?!cp\.net\.).*(\.bn|\.bn_atten)\.weight$")

_DETECTION: List[Tuple[str, str]] = [
    (r"^base_net\.", "backbone.backbone."),
    (r"^extras\.", "backbone.extra."),
    (r"^classification_headers\.", "head.classification_head.module_list."),
    (r"^regression_headers\.", "head.regression_head.module_list."),
]

RULES: Dict[str, List[Tuple[str, str]]] = {"detection": _DETECTION, "keypoints": _KEYPOINTS,
                                           "segmentation": _SEGMENTATION}
# a key prefix only the authors' model of each task has
_MARKERS = {"detection": "classification_headers.", "keypoints": "final_layer.", "segmentation": "ffm."}


def _strip(sd: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Unwrap ``{"state_dict": ...}`` and the ``module.`` prefix DataParallel/DDP adds."""
    if "state_dict" in sd and isinstance(sd["state_dict"], Mapping):
        sd = sd["state_dict"]
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in sd.items()}


def looks_like_authors(task: str, sd: Mapping[str, object]) -> bool:
    """Whether ``sd`` (a loaded file) is one of the authors' ``task`` models."""
    if task not in RULES or not isinstance(sd, Mapping):
        return False
    return any(k.startswith(_MARKERS[task]) for k in _strip(sd))  # type: ignore[arg-type]


def convert_authors_state_dict(task: str, sd: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """The authors' ``task`` model state dict as relnas's task-network state dict (see the module
    docstring); a key no rule maps is an error naming it."""
    if task not in RULES:
        raise ConfigError(f"the authors' {task} models are not convertible; known: {', '.join(sorted(RULES))}")
    rules = [(re.compile(p), r) for p, r in RULES[task]]
    out: Dict[str, torch.Tensor] = {}
    for key, value in _strip(sd).items():
        for pattern, repl in rules:
            if pattern.search(key):
                new = pattern.sub(repl, key, count=1)
                break
        else:
            raise ConfigError(f"the authors' {task} checkpoint has {key!r}, which relnas's network has no place for "
                              f"(only cell-network backbones are converted)")
        if task == "segmentation" and _ABN.match(key):
            value = value.abs() + ABN_EPS  # in-place ABN scales by |weight| + eps
        out[new] = value
    return out


def load_authors_weights(model: torch.nn.Module, task: str, sd: Mapping[str, torch.Tensor], what: str) -> None:
    """Convert and load the authors' ``task`` model into relnas's task network ``model``: every
    tensor of ``model`` must come from the file with its shape (BatchNorm batch counters, which
    their in-place ABN lacks, start at 0)."""
    theirs = convert_authors_state_dict(task, sd)
    own = model.state_dict()
    for k, v in own.items():
        if k not in theirs:
            if k.endswith("num_batches_tracked"):
                theirs[k] = torch.zeros_like(v)
                continue
            raise ConfigError(f"{what}: the authors' {task} checkpoint lacks {k!r} (another backbone, size or class count?)")
        if tuple(theirs[k].shape) != tuple(v.shape):
            raise ConfigError(f"{what}: the authors' {task} checkpoint has {k!r} of shape {tuple(theirs[k].shape)}, the "
                              f"network needs {tuple(v.shape)} (another backbone, size or class count?)")
    unused = [k for k in theirs if k not in own]
    if unused:
        raise ConfigError(f"{what}: the authors' {task} checkpoint has {len(unused)} tensors the network lacks, e.g. "
                          f"{unused[0]!r} (auxiliary heads off, or another backbone?)")
    model.load_state_dict({k: theirs[k].to(v.dtype) for k, v in own.items()}, strict=True)


#: parameters of the authors' own task models, by (task, backbone, C, layers) (C and layers None for
#: the torchvision backbones): their transfer code rebuilt and counted on 2026-11-28 (docs/transfer.md);
#: segmentation without BiSeNet's two training-only auxiliary heads, as relnas.inspect counts it
AUTHORS_PARAMS: Dict[Tuple[str, str, Optional[int], Optional[int]], int] = {
    ("detection", "RelativeNAS", 46, 14): 5_069_824,
    ("detection", "DARTS_V2", 48, 14): 4_728_654,
    ("detection", "mobilenet_v2", None, None): 3_304_708,
    ("detection", "mnasnet1_0", None, None): 4_183_148,
    ("detection", "shufflenet_v2_x1_0", None, None): 2_169_025,
    ("segmentation", "RelativeNAS", 46, 14): 6_794_501,
    ("segmentation", "DARTS_V2", 48, 14): 6_490_616,
    ("segmentation", "mobilenet_v2", None, None): 5_088_320,
    ("segmentation", "mnasnet1_0", None, None): 5_966_760,
    ("segmentation", "shufflenet_v2_x1_0", None, None): 3_947_044,
    ("keypoints", "RelativeNAS", 46, 14): 9_430_742,
    ("keypoints", "DARTS_V2", 48, 14): 9_198_537,
    ("keypoints", "mobilenet_v2", None, None): 9_569_809,
    ("keypoints", "mnasnet1_0", None, None): 10_448_249,
    ("keypoints", "shufflenet_v2_x1_0", None, None): 7_550_965,
}


def authors_params(task: str, backbone: Mapping[str, object]) -> Optional[int]:
    """The authors' parameter count for ``task`` on the backbone ``describe()``-d as ``backbone``
    (name, and C / layers for cell networks), or None where they built no such model."""
    key = (task, str(backbone.get("name")), backbone.get("C"), backbone.get("layers"))
    return AUTHORS_PARAMS.get(key)  # type: ignore[arg-type]


__all__: List[str] = ["AUTHORS_PARAMS", "authors_params", "convert_authors_state_dict", "load_authors_weights",
                      "looks_like_authors", "RULES"]
