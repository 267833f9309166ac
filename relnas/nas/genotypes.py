"""Genotypes: the decoded architecture of a cell pair, plus the architecture zoo (docs/method.md §1).

A :class:`Genotype` is immutable and validated on construction. ``normal``/``reduce`` are tuples
of ``(operation, input_node)`` pairs, two per intermediate node; node 0 and 1 are the cell inputs
and intermediate node ``j`` (0-based) is node ``j + 2``, which may take inputs from ``[0, j + 2)``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, Mapping, Optional, Sequence, Tuple, Union

from relnas import runs
from relnas.errors import GenotypeError, GenotypeNotFoundError, RegistryError
from relnas.nas.operations import OPS
from relnas.nas.spaces import SearchSpace
from relnas.utils.registry import Registry

Pair = Tuple[str, int]


def _check_cell(kind: str, pairs: Sequence[Pair], concat: Sequence[int]) -> None:
    if len(pairs) == 0 or len(pairs) % 2:
        raise GenotypeError(f"{kind}: a cell needs an even, non-zero number of (op, input) pairs "
                            f"(two per intermediate node), got {len(pairs)}")
    for k, (op, node) in enumerate(pairs):
        if op not in OPS:
            raise GenotypeError(f"{kind}[{k}]: {OPS.unknown([op])}")
        j = k // 2
        if not 0 <= node < j + 2:
            raise GenotypeError(f"{kind}[{k}] ({op!r}, {node}): intermediate node {j + 2} can only take "
                                f"inputs from nodes 0..{j + 1}")
    n_nodes = len(pairs) // 2 + 2
    if len(concat) == 0:
        raise GenotypeError(f"{kind}_concat is empty")
    for c in concat:
        if not 0 <= c < n_nodes:
            raise GenotypeError(f"{kind}_concat: node {c} out of range 0..{n_nodes - 1}")


def _as_pairs(value: Iterable[Any], kind: str) -> Tuple[Pair, ...]:
    out = []
    for k, item in enumerate(value):
        try:
            op, node = item
        except (TypeError, ValueError):
            raise GenotypeError(f"{kind}[{k}]: expected an (operation, input node) pair, got {item!r}") from None
        if isinstance(node, bool) or not isinstance(node, int) and not (isinstance(node, float) and node.is_integer()):
            raise GenotypeError(f"{kind}[{k}]: input node must be an integer, got {node!r}")
        out.append((str(op), int(node)))
    return tuple(out)


@dataclass(frozen=True)
class Genotype:
    """A cell pair. ``space``: the search space it was found in (a search's genotype records it;
    ``None`` for one written by hand), checked against the cells. The network is the cells alone:
    two genotypes with the same cells are equal whatever their spaces."""

    normal: Tuple[Pair, ...]
    normal_concat: Tuple[int, ...]
    reduce: Tuple[Pair, ...]
    reduce_concat: Tuple[int, ...]
    space: Optional[SearchSpace] = field(default=None, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "normal", _as_pairs(self.normal, "normal"))
        object.__setattr__(self, "reduce", _as_pairs(self.reduce, "reduce"))
        object.__setattr__(self, "normal_concat", tuple(int(c) for c in self.normal_concat))
        object.__setattr__(self, "reduce_concat", tuple(int(c) for c in self.reduce_concat))
        _check_cell("normal", self.normal, self.normal_concat)
        _check_cell("reduce", self.reduce, self.reduce_concat)
        if self.space is not None:
            self.space.check_cell("normal", self.normal, self.normal_concat)
            self.space.check_cell("reduce", self.reduce, self.reduce_concat)

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> Dict[str, Any]:
        d: Dict[str, Any] = {
            "normal": [[op, node] for op, node in self.normal],
            "normal_concat": list(self.normal_concat),
            "reduce": [[op, node] for op, node in self.reduce],
            "reduce_concat": list(self.reduce_concat),
        }
        if self.space is not None:
            d["search_space"] = self.space.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Genotype":
        missing = [k for k in ("normal", "reduce") if k not in d]
        if missing:
            raise GenotypeError(f"genotype is missing key(s) {missing}; expected normal, normal_concat, "
                                f"reduce, reduce_concat")
        normal, reduce = list(d["normal"]), list(d["reduce"])
        space = d.get("search_space")
        if space is not None and not isinstance(space, Mapping):
            raise GenotypeError(f"search_space must be a mapping {{ops: [...], nodes: N}}, got {space!r}")
        return cls(
            normal=normal,
            normal_concat=d.get("normal_concat", range(2, len(normal) // 2 + 2)),
            reduce=reduce,
            reduce_concat=d.get("reduce_concat", range(2, len(reduce) // 2 + 2)),
            space=None if space is None else SearchSpace.from_dict(space),
        )

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_json(cls, text: str) -> "Genotype":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise GenotypeError(f"genotype JSON does not parse: {e}") from None
        if not isinstance(data, Mapping):
            raise GenotypeError("genotype JSON must be an object with normal/reduce keys")
        return cls.from_dict(data)

    def to_yaml(self) -> str:
        from omegaconf import OmegaConf

        return OmegaConf.to_yaml(OmegaConf.create(self.to_dict()))

    @classmethod
    def from_yaml(cls, text: str) -> "Genotype":
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise GenotypeError(f"genotype YAML does not parse: {e}") from None
        if not isinstance(data, Mapping):
            raise GenotypeError("genotype YAML must be a mapping with normal/reduce keys")
        return cls.from_dict(data)

    def save(self, path: Union[str, Path]) -> Path:
        path = Path(path)
        text = self.to_yaml() if path.suffix in (".yaml", ".yml") else self.to_json(indent=2) + "\n"
        path.write_text(text)
        return path

    @classmethod
    def load(cls, path: Union[str, Path]) -> "Genotype":
        path = Path(path)
        if path.is_dir():
            path = runs.genotype_file(path)
        if not path.is_file():
            raise GenotypeNotFoundError(f"genotype file {str(path)!r} does not exist")
        text = path.read_text()
        if path.suffix in (".yaml", ".yml"):
            return cls.from_yaml(text)
        try:
            return cls.from_json(text)
        except GenotypeError as e:
            raise GenotypeError(f"{path}: {e}") from None

    # ------------------------------------------------------------------ display
    @staticmethod
    def _cell_str(pairs: Sequence[Pair], concat: Sequence[int]) -> str:
        nodes = [" ".join(f"{op}({node})" for op, node in pairs[i:i + 2]) for i in range(0, len(pairs), 2)]
        return " | ".join(nodes) + f" ; concat {list(concat)}"

    def __str__(self) -> str:
        return (f"normal: {self._cell_str(self.normal, self.normal_concat)} || "
                f"reduce: {self._cell_str(self.reduce, self.reduce_concat)}")


# ---------------------------------------------------------------------- the zoo

def _g(normal, normal_concat, reduce, reduce_concat) -> Genotype:
    return Genotype(normal, normal_concat, reduce, reduce_concat)


RelativeNAS = _g(
    [("sep_conv_3x3", 0), ("dil_conv_5x5", 1), ("sep_conv_3x3", 1), ("sep_conv_3x3", 1),
     ("sep_conv_3x3", 1), ("sep_conv_5x5", 1), ("skip_connect", 0), ("sep_conv_3x3", 0)], [2, 3, 4, 5],
    [("avg_pool_3x3", 1), ("max_pool_3x3", 1), ("dil_conv_5x5", 1), ("max_pool_3x3", 1),
     ("avg_pool_3x3", 3), ("skip_connect", 1), ("dil_conv_5x5", 3), ("sep_conv_3x3", 1)], [2, 3, 4, 5],
)
DARTS_V2 = _g(
    [("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("sep_conv_3x3", 1),
     ("sep_conv_3x3", 1), ("skip_connect", 0), ("skip_connect", 0), ("dil_conv_3x3", 2)], [2, 3, 4, 5],
    [("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 1),
     ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("max_pool_3x3", 1)], [2, 3, 4, 5],
)
DARTS_V1 = _g(
    [("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("skip_connect", 0), ("sep_conv_3x3", 1),
     ("skip_connect", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("skip_connect", 2)], [2, 3, 4, 5],
    [("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 0),
     ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("avg_pool_3x3", 0)], [2, 3, 4, 5],
)
NASNet = _g(
    [("sep_conv_5x5", 1), ("sep_conv_3x3", 0), ("sep_conv_5x5", 0), ("sep_conv_3x3", 0),
     ("avg_pool_3x3", 1), ("skip_connect", 0), ("avg_pool_3x3", 0), ("avg_pool_3x3", 0),
     ("sep_conv_3x3", 1), ("skip_connect", 1)], [2, 3, 4, 5, 6],
    [("sep_conv_5x5", 1), ("sep_conv_7x7", 0), ("max_pool_3x3", 1), ("sep_conv_7x7", 0),
     ("avg_pool_3x3", 1), ("sep_conv_5x5", 0), ("skip_connect", 3), ("avg_pool_3x3", 2),
     ("sep_conv_3x3", 2), ("max_pool_3x3", 1)], [4, 5, 6],
)
AmoebaNet = _g(
    [("avg_pool_3x3", 0), ("max_pool_3x3", 1), ("sep_conv_3x3", 0), ("sep_conv_5x5", 2),
     ("sep_conv_3x3", 0), ("avg_pool_3x3", 3), ("sep_conv_3x3", 1), ("skip_connect", 1),
     ("skip_connect", 0), ("avg_pool_3x3", 1)], [4, 5, 6],
    [("avg_pool_3x3", 0), ("sep_conv_3x3", 1), ("max_pool_3x3", 0), ("sep_conv_7x7", 2),
     ("sep_conv_7x7", 0), ("avg_pool_3x3", 1), ("max_pool_3x3", 0), ("max_pool_3x3", 1),
     ("conv_7x1_1x7", 0), ("sep_conv_3x3", 5)], [3, 4, 6],
)

#: the architecture zoo: every name accepted where a genotype is expected
GENOTYPES: Registry[Genotype] = Registry("genotype")


def register_genotype(name: str, genotype: Union[Genotype, Mapping[str, Any], str, Path],
                      overwrite: bool = False) -> Genotype:
    """Add ``genotype`` (a Genotype, a dict, or a JSON/YAML file path) to the zoo under ``name``.

    The registry lives in this Python process: the name works for :func:`get_genotype` and for
    the apps when they are called from the same process (``relnas.train.train(cfg)``,
    ``run_search``), not for a later ``python -m relnas.train genotype=<name>``. To use a name
    from the command line, save the genotype as ``genotypes/<name>.json`` (or ``.yaml``) in the
    working directory, or in a folder listed in the ``RELNAS_GENOTYPE_PATH`` environment variable
    (see :func:`genotype_dirs`); ``get_genotype`` looks there after the registry."""
    if isinstance(genotype, (str, Path)):
        genotype = Genotype.load(genotype)
    elif not isinstance(genotype, Genotype):
        genotype = Genotype.from_dict(genotype)
    return GENOTYPES.register(name, genotype, overwrite=overwrite)


for _name, _geno in [("RelativeNAS", RelativeNAS), ("DARTS_V1", DARTS_V1), ("DARTS_V2", DARTS_V2),
                     ("NASNet", NASNet), ("AmoebaNet", AmoebaNet)]:
    register_genotype(_name, _geno)
register_genotype("DARTS", DARTS_V2)  # the name the DARTS code uses for its second-order result


GENOTYPE_PATH_ENV = "RELNAS_GENOTYPE_PATH"


def genotype_dirs() -> list[Path]:
    """Folders searched for ``<name>.json|.yaml|.yml`` when a genotype name is not registered:
    those in ``$RELNAS_GENOTYPE_PATH`` (``os.pathsep``-separated), then ``./genotypes``."""
    import os

    dirs = [Path(d).expanduser() for d in os.environ.get(GENOTYPE_PATH_ENV, "").split(os.pathsep) if d]
    return dirs + [Path("genotypes")]


def _find_named_file(name: str) -> Path | None:
    if not name or any(c in name for c in "/\\") or name.startswith("."):
        return None
    for d in genotype_dirs():
        for ext in (".json", ".yaml", ".yml"):
            if (d / f"{name}{ext}").is_file():
                return d / f"{name}{ext}"
    return None


def list_genotypes() -> list[str]:
    """Registered names and the names of the files in :func:`genotype_dirs`."""
    names = set(GENOTYPES)
    for d in genotype_dirs():
        if d.is_dir():
            names.update(p.stem for p in d.iterdir() if p.suffix in (".json", ".yaml", ".yml"))
    return sorted(names)


def get_genotype(name: Union[str, Path, Genotype, Mapping[str, Any]]) -> Genotype:
    """A genotype from the zoo by name, from a JSON/YAML file path or a search run directory.

    A :class:`Genotype` or a dict passes through (validated). Unknown names raise
    :class:`relnas.errors.RegistryError` (a ``KeyError``) listing the known ones.
    """
    if isinstance(name, Genotype):
        return name
    if isinstance(name, Mapping):
        return Genotype.from_dict(name)
    key = str(name)
    if key in GENOTYPES:
        return GENOTYPES[key]
    named = _find_named_file(key)
    if named is not None:
        return Genotype.load(named)
    path = Path(key).expanduser()
    if path.suffix in (".json", ".yaml", ".yml") or path.is_dir() or path.is_file():
        if path.is_dir() and not runs.genotype_file(path).is_file():
            raise GenotypeNotFoundError(runs.no_genotype_reason(key, path))
        return Genotype.load(path)
    raise RegistryError(f"unknown genotype {key!r}; known genotypes: {', '.join(list_genotypes())} "
                        f"(or pass a path to a .json/.yaml genotype file or a search run directory, or save it as "
                        f"genotypes/{key}.json in the working directory)")
