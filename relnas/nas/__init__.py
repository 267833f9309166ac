"""The architecture side: operations, genotypes, evaluation networks and their :class:`ArchSpec`."""
from relnas.nas.arch import ArchSpec, build_network

__all__ = ["ArchSpec", "build_network"]
