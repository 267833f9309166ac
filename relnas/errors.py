"""The errors relnas raises for problems the user can fix.

Every one of them carries a one-line message that says what is wrong and what to do. The
command-line entry points (:mod:`relnas.utils.cli`) print such a message as ``error: ...`` and
exit with status 2; any other exception is a bug and keeps its traceback.
"""
from __future__ import annotations


class RelnasError(Exception):
    """Base class: an expected failure, reported in one line."""


class ConfigError(RelnasError, ValueError):
    """A configuration value that cannot work, found before any work starts."""


class RegistryError(ConfigError, KeyError):
    """A name that is not in a registry (operation, network, genotype, strategy...), or a second
    registration under a taken name.

    A ``KeyError`` too, so ``mapping[name]`` style callers keep working; its ``str`` is the plain
    message (``KeyError`` would quote it).
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class GenotypeError(RelnasError, ValueError):
    """A genotype that does not describe a valid cell (or does not parse)."""


class GenotypeNotFoundError(GenotypeError, FileNotFoundError):
    """A genotype file or search run directory that does not exist."""


class CheckpointError(RelnasError, ValueError):
    """A checkpoint that cannot be read, or does not match what it is loaded into."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """A checkpoint path that does not exist."""


class UnsafeFileError(CheckpointError):
    """A file whose loading would call code: its pickle names a function or class outside the
    data types relnas loads (see :func:`relnas.utils.io.load_torch_file`). Refused before anything
    in it runs."""


class ExportError(RelnasError):
    """An exported network that does not compute what the PyTorch network computes (parity check),
    or that cannot be exported."""


class DataError(RelnasError):
    """A data set that cannot be loaded as configured."""


class DatasetNotFoundError(DataError, FileNotFoundError):
    """A data set that is not on disk (and downloading was not requested); the message says where
    we looked and how to get the data."""


__all__ = ["RelnasError", "ConfigError", "RegistryError", "GenotypeError", "GenotypeNotFoundError", "CheckpointError",
           "CheckpointNotFoundError", "UnsafeFileError", "ExportError", "DataError", "DatasetNotFoundError"]
