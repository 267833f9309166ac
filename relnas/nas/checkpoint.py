"""Load checkpoints of the official RelativeNAS/DARTS code into the evaluation networks.

The official code saves either a plain ``state_dict`` (CIFAR: ``torch.save(model.state_dict())``)
or a dict holding one (ImageNet: ``{"epoch", "state_dict", "optimizer", ...}``), often from a
``nn.DataParallel`` model whose keys start with ``module.``. :func:`load_reference_checkpoint`
accepts all of these and loads with ``strict=True`` semantics, but fails with one clear line that
names the first offending key and the setting that probably differs.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional, Union

import torch
import torch.nn as nn

from relnas.errors import CheckpointError, CheckpointNotFoundError
from relnas.nas.arch import build_network
from relnas.nas.genotypes import Genotype
from relnas.utils.io import load_torch_file

STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "net", "network")
_PREFIXES = ("module.", "_orig_mod.", "model.", "net.")


def _is_state_dict(obj: Any) -> bool:
    return (isinstance(obj, Mapping) and len(obj) > 0
            and all(isinstance(k, str) for k in obj) and all(isinstance(v, torch.Tensor) for v in obj.values()))


def _strip_prefix(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove a prefix shared by every key (``module.`` of DataParallel, ``_orig_mod.`` of compile)."""
    out = dict(sd)
    changed = True
    while changed:
        changed = False
        for p in _PREFIXES:
            if out and all(k.startswith(p) for k in out):
                out = {k[len(p):]: v for k, v in out.items()}
                changed = True
    return out


def extract_state_dict(obj: Any) -> dict[str, torch.Tensor]:
    """The model state dict inside a loaded checkpoint object, with ``module.`` prefixes stripped.

    ``obj`` is a plain state dict, or a dict holding one under ``state_dict``, ``model_state_dict``,
    ``model``, ``net`` or ``network`` (searched recursively), or an ``nn.Module``.
    """
    if isinstance(obj, nn.Module):
        return _strip_prefix(obj.state_dict())
    if _is_state_dict(obj):
        return _strip_prefix(obj)
    if isinstance(obj, Mapping):
        for key in STATE_DICT_KEYS:
            if key in obj:
                try:
                    return extract_state_dict(obj[key])
                except CheckpointError:
                    continue
        keys = ", ".join(repr(k) for k in list(obj)[:10])
        raise CheckpointError(f"checkpoint holds no state dict: expected a mapping of parameter names to tensors "
                              f"or one under {', '.join(STATE_DICT_KEYS)}; top-level keys: {keys}")
    raise CheckpointError(f"checkpoint holds no state dict (got a {type(obj).__name__})")


def infer_settings(state_dict: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """The network settings a state dict of an evaluation network implies (those it reveals).

    Keys: ``network`` (cifar/imagenet), ``C``, ``layers``, ``num_classes``, ``auxiliary``,
    ``in_channels``. Settings that cannot be read off are left out.
    """
    out: dict[str, Any] = {}
    if "stem.0.weight" in state_dict:
        w = state_dict["stem.0.weight"]
        out.update(network="cifar", C=int(w.shape[0]) // 3, in_channels=int(w.shape[1]))
    elif "stem0.0.weight" in state_dict:
        out.update(network="imagenet", in_channels=int(state_dict["stem0.0.weight"].shape[1]))
        if "stem0.3.weight" in state_dict:
            out["C"] = int(state_dict["stem0.3.weight"].shape[0])
    cells = {int(m.group(1)) for k in state_dict for m in [re.match(r"cells\.(\d+)\.", k)] if m}
    if cells:
        out["layers"] = max(cells) + 1
    if "classifier.weight" in state_dict:
        out["num_classes"] = int(state_dict["classifier.weight"].shape[0])
    out["auxiliary"] = any(k.startswith("auxiliary_head.") for k in state_dict)
    return out


def _hint(network: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> str:
    ckpt, own = infer_settings(state_dict), infer_settings(network.state_dict())
    diffs = [f"{k}={ckpt[k]!r} (network: {own[k]!r})" for k in
             ("network", "C", "layers", "num_classes", "auxiliary", "in_channels")
             if k in ckpt and k in own and ckpt[k] != own[k]]
    if diffs:
        return "the checkpoint was probably saved with " + ", ".join(diffs)
    return "network kind, C, layers, num_classes and auxiliary agree, so the genotype probably differs"


def check_state_dict(network: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> None:
    """Raise :class:`CheckpointError` naming the first mismatch between ``state_dict`` and ``network``."""
    own = network.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    if missing:
        k = missing[0]
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise CheckpointError(f"checkpoint is missing key {k!r}{more}; {_hint(network, state_dict)}")
    if unexpected:
        k = unexpected[0]
        more = f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""
        raise CheckpointError(f"checkpoint has unexpected key {k!r}{more}; {_hint(network, state_dict)}")
    for k, v in own.items():
        cv = state_dict[k]
        if tuple(cv.shape) != tuple(v.shape):
            raise CheckpointError(f"shape mismatch for {k!r}: checkpoint {tuple(cv.shape)}, network "
                                  f"{tuple(v.shape)}; {_hint(network, state_dict)}")


def load_reference_checkpoint(path: Union[str, Path], kind: str = "cifar",
                              genotype: Union[str, Genotype] = "RelativeNAS", C: int = 36, layers: int = 20,
                              num_classes: int = 10, auxiliary: bool = True, map_location: Any = "cpu",
                              network: Optional[nn.Module] = None, in_channels: int = 3) -> nn.Module:
    """Build an evaluation network (or use ``network``) and load an official checkpoint into it.

    ``path`` is a file saved by the official code (or this project): see :func:`extract_state_dict`
    for the accepted layouts. Loading is strict; a mismatch raises :class:`CheckpointError` (a
    ``ValueError``) with a one-line message naming the first offending key.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointNotFoundError(f"checkpoint file {str(path)!r} does not exist")
    obj = load_torch_file(path, "checkpoint", map_location=map_location)
    state_dict = extract_state_dict(obj)
    if network is None:
        network = build_network(kind, genotype, C, layers, num_classes, auxiliary=auxiliary, in_channels=in_channels)
    check_state_dict(network, state_dict)
    network.load_state_dict(state_dict, strict=True)
    return network
