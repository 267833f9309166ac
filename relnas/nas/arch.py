"""The architecture of an evaluation network as one frozen value: :class:`ArchSpec`.

Everything that fixes a network's weights and input shape (network kind, genotype, initial
channels, cells, classes, input channels, image size, auxiliary head) is parsed and validated
once, into an ``ArchSpec``, and passed whole: to build the network, to check that the data's
image size fits it, to compare a checkpoint with a configuration, and to describe a run in its
results. The genotype is resolved (zoo name, file, search run directory) once, when the spec is
made.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import torch
from torch import nn

from relnas.errors import ConfigError, GenotypeError, RegistryError
from relnas.nas.genotypes import Genotype, get_genotype
from relnas.nas.networks import NETWORKS

#: the fields that fix the shapes of a network's weights (the image size does not)
WEIGHT_FIELDS = ("network", "genotype", "C", "layers", "num_classes", "in_channels", "auxiliary")


def resolve_genotype(spec: Any) -> Genotype:
    """The genotype of ``spec`` (a Genotype, a dict, a zoo name, a JSON/YAML file or a search run
    directory); every failure is a one-line :class:`ConfigError` or :class:`GenotypeError`."""
    if spec is None or (isinstance(spec, str) and not spec.strip()):
        raise ConfigError("no genotype given: set genotype=<zoo name | genotype.json/.yaml | search run dir>")
    if not isinstance(spec, (str, Genotype, Mapping)):  # an OmegaConf node
        from omegaconf import OmegaConf

        spec = OmegaConf.to_container(spec, resolve=True) if OmegaConf.is_config(spec) else str(spec)
    try:
        return get_genotype(spec)
    except GenotypeError as e:
        if isinstance(e, FileNotFoundError):
            raise ConfigError(f"genotype: {e}") from None
        raise ConfigError(f"genotype {spec!r} is not a valid genotype: {e}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"genotype file {spec!r} cannot be read: {e}") from None


@dataclass(frozen=True)
class ArchSpec:
    """An evaluation network's architecture (see the module doc).

    ``genotype`` accepts anything :func:`resolve_genotype` does and is stored as a
    :class:`Genotype`; ``image_size=None`` means the network's own (32 cifar, 224 imagenet).
    Invalid values raise :class:`ConfigError` (a ``ValueError``); an unknown network kind raises
    :class:`RegistryError` (a ``KeyError``) naming the known ones.
    """

    network: str = "cifar"
    genotype: Union[Genotype, str, Mapping[str, Any]] = "RelativeNAS"
    C: int = 36
    layers: int = 20
    num_classes: int = 10
    in_channels: int = 3
    image_size: Optional[int] = None
    auxiliary: bool = False

    def __post_init__(self) -> None:
        network = str(self.network)
        cls = NETWORKS[network]
        for name in ("C", "layers", "num_classes", "in_channels"):
            value = getattr(self, name)
            if isinstance(value, bool) or int(value) != value or int(value) <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
            object.__setattr__(self, name, int(value))
        if network == "imagenet" and self.C % 2:
            raise ConfigError(f"the ImageNet stem needs an even C, got {self.C}")
        size = cls.input_size if self.image_size is None else int(self.image_size)
        if size <= 0:
            raise ConfigError(f"image_size must be positive, got {self.image_size}")
        object.__setattr__(self, "network", network)
        object.__setattr__(self, "image_size", size)
        object.__setattr__(self, "auxiliary", bool(self.auxiliary))
        object.__setattr__(self, "genotype", resolve_genotype(self.genotype))

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_config(cls, model: Mapping[str, Any], genotype: Any, data: Any) -> "ArchSpec":
        """From a ``model`` config node (network, C, layers, auxiliary), a genotype spec and a data
        module (or anything with ``num_classes``, ``in_channels`` and ``image_size``)."""
        if str(model.get("network")) not in NETWORKS:
            raise ConfigError(f"unknown model.network {model.get('network')!r}; choose {' or '.join(NETWORKS)}")
        try:
            return cls(network=model["network"], genotype=genotype, C=model["C"], layers=model["layers"],
                       num_classes=data.num_classes, in_channels=data.in_channels, image_size=data.image_size,
                       auxiliary=model.get("auxiliary", False))
        except ConfigError as e:
            if isinstance(e, RegistryError) or str(e).startswith(("genotype", "no genotype")):
                raise
            raise ConfigError(f"model: {e}") from None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ArchSpec":
        """From :meth:`to_dict` output, or any mapping holding those keys (e.g. the
        hyper-parameters of a training checkpoint); other keys are ignored."""
        names = {f.name for f in fields(cls)}
        missing = [k for k in WEIGHT_FIELDS if k not in d]
        if missing:
            raise ConfigError(f"an architecture needs {', '.join(missing)}")
        kwargs = {k: v for k, v in d.items() if k in names}
        if isinstance(kwargs["genotype"], Mapping):
            kwargs["genotype"] = dict(kwargs["genotype"])
        return cls(**kwargs)

    def to_dict(self) -> Dict[str, Any]:
        """Plain values (the genotype as its dict): for hyper-parameters and results files."""
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["genotype"] = self.genotype.to_dict()
        return d

    def replace(self, **changes: Any) -> "ArchSpec":
        return type(self)(**{**{f.name: getattr(self, f.name) for f in fields(self)}, **changes})

    # ------------------------------------------------------------------ use
    def build(self, drop_path_prob: float = 0.0) -> nn.Module:
        """The network (``NetworkCIFAR`` / ``NetworkImageNet``) with fresh weights."""
        if not 0.0 <= drop_path_prob < 1.0:
            raise ConfigError(f"drop_path_prob must be in [0, 1), got {drop_path_prob}")
        return NETWORKS[self.network](self.C, self.num_classes, self.layers, self.auxiliary, self.genotype,
                                      in_channels=self.in_channels, drop_path_prob=float(drop_path_prob))

    def check_input(self) -> None:
        """Run the network on a meta tensor (no memory, no compute) at :attr:`image_size` and turn
        a shape failure into one :class:`ConfigError` line saying which sizes work."""
        try:
            with torch.device("meta"):
                net = self.build().train()
                net(torch.empty(2, self.in_channels, self.image_size, self.image_size))
        except (RuntimeError, ValueError) as e:
            raise ConfigError(self._size_message(e)) from None

    def differences(self, other: "ArchSpec") -> Dict[str, Tuple[Any, Any]]:
        """``{field: (mine, other's)}`` for the :data:`WEIGHT_FIELDS` that differ."""
        return {k: (getattr(self, k), getattr(other, k)) for k in WEIGHT_FIELDS
                if getattr(self, k) != getattr(other, k)}

    def _size_message(self, err: Exception) -> str:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        s = self.image_size
        if self.network == "cifar" and self.auxiliary:
            return (f"NetworkCIFAR with the auxiliary head needs 32x32 input (the head expects an 8x8 feature "
                    f"map; 32, 36 or 40 work), but the data gives {s}x{s}: set data.image_size=32 (where the "
                    f"data set supports it) or model.auxiliary=false  [{first}]")
        if self.network == "cifar":
            return (f"NetworkCIFAR needs an image size divisible by 4 (two stride-2 reduction cells), but the "
                    f"data gives {s}x{s}: set data.image_size (e.g. 32)  [{first}]")
        if self.network == "imagenet":
            return (f"NetworkImageNet needs 224x224 input (32x downsampling to the 7x7 map of its 7x7 average "
                    f"pooling: image_size/32 == 7), but the data gives {s}x{s}: set data.image_size=224 or use "
                    f"model.network=cifar for small images  [{first}]")
        return f"network {self.network!r} cannot take {s}x{s} input: {first}"


def build_network(kind: str, genotype: Union[str, Genotype], C: int, layers: int, num_classes: int,
                  auxiliary: bool = False, drop_path_prob: float = 0.0, in_channels: int = 3) -> nn.Module:
    """Build an evaluation network. ``kind`` is ``"cifar"`` or ``"imagenet"``; ``genotype`` a
    :class:`Genotype`, a zoo name, or a path to a JSON/YAML genotype file or a search run dir.
    (A shorthand for ``ArchSpec(...).build(drop_path_prob)``.)"""
    return ArchSpec(network=kind, genotype=genotype, C=C, layers=layers, num_classes=num_classes,
                    in_channels=in_channels, auxiliary=auxiliary).build(drop_path_prob)
