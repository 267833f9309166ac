"""relnas: RelativeNAS (slow-fast learning neural architecture search) on Lightning and Hydra."""
from relnas.errors import ConfigError, GenotypeError, RelnasError
from relnas.nas.arch import ArchSpec, build_network
from relnas.nas.checkpoint import load_reference_checkpoint
from relnas.nas.genotypes import Genotype, get_genotype, list_genotypes, register_genotype
from relnas.nas.networks import NetworkCIFAR, NetworkImageNet
from relnas.nas.operations import OPS, SEARCH_OPS
from relnas.search.encoding import decode, encode

__version__ = "0.1.0"


def build_backbone(name, weights=None, out_indices=None, frozen_bn=False, **kwargs):
    """Feature-map backbone for detection/segmentation/keypoints; see
    :func:`relnas.transfer.backbones.build_backbone` (imported lazily: it needs torchvision)."""
    from relnas.transfer.backbones import build_backbone as _build

    return _build(name, weights=weights, out_indices=out_indices, frozen_bn=frozen_bn, **kwargs)


__all__ = [
    "Genotype", "GenotypeError", "get_genotype", "list_genotypes", "register_genotype",
    "NetworkCIFAR", "NetworkImageNet", "build_network", "OPS", "SEARCH_OPS", "decode", "encode",
    "load_reference_checkpoint", "ArchSpec", "RelnasError", "ConfigError", "build_backbone",
]
