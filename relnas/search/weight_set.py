"""The weight set (docs/method.md §4): every operation on every edge of every cell, plus shared parts.

``WeightSet`` is a single module that holds every weight once. A candidate never gets its own copy of the
network: ``WeightSet.forward(x, arch)`` runs the sub-network that ``arch`` (a compiled genotype)
selects, training the shared tensors in place. The bookkeeping of the one-epoch estimation is done
on *groups* of tensors: each group is one module (an operation on an edge, a cell's
preprocessing, the stem, the classifier) with its parameters AND buffers (BatchNorm running
statistics travel with their operation).

The merge of Eq. 6 is a plain function over tensor dictionaries (:func:`merge_eq6`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from relnas.nas.genotypes import Genotype
from relnas.nas.networks import reduction_layers
from relnas.nas.operations import SEARCH_OPS, FactorizedReduce, Identity, ReLUConvBN, create_op, drop_path

SHARED_GROUPS = ("stem", "classifier")


class SuperCell(nn.Module):
    """A cell position with every operation on every edge ``i -> j`` (``edges['{j}_{i}'][op]``)."""

    def __init__(self, C_prev_prev: int, C_prev: int, C: int, reduction: bool, reduction_prev: bool,
                 num_nodes: int = 4, ops: Sequence[str] = SEARCH_OPS):
        super().__init__()
        self.reduction = reduction
        self.num_nodes = num_nodes
        self.preprocess0 = FactorizedReduce(C_prev_prev, C) if reduction_prev else ReLUConvBN(C_prev_prev, C, 1, 1, 0)
        self.preprocess1 = ReLUConvBN(C_prev, C, 1, 1, 0)
        self.edges = nn.ModuleDict()
        for j in range(num_nodes):
            for i in range(j + 2):
                stride = 2 if reduction and i < 2 else 1
                self.edges[f"{j + 2}_{i}"] = nn.ModuleDict({op: create_op(op, C, stride, True) for op in ops})
        self.multiplier = num_nodes


@dataclass(frozen=True)
class CompiledCell:
    ops: Tuple[nn.Module, ...]       # two per intermediate node
    inputs: Tuple[int, ...]
    droppable: Tuple[bool, ...]      # False for identities (never dropped)
    concat: Tuple[int, ...]


@dataclass(frozen=True)
class Arch:
    """A genotype compiled against a weight set: module references per cell, and the used groups."""

    genotype: Genotype
    cells: Tuple[CompiledCell, ...]
    groups: Tuple[str, ...]


class WeightSet(nn.Module):
    """The weight set for the search network (NetworkCIFAR layout, no auxiliary head)."""

    def __init__(self, C: int = 16, num_classes: int = 10, layers: int = 8, in_channels: int = 3,
                 num_nodes: int = 4, stem_multiplier: int = 3, ops: Sequence[str] = SEARCH_OPS):
        super().__init__()
        self.C, self.layers, self.num_nodes, self.ops = C, layers, num_nodes, tuple(ops)
        C_curr = stem_multiplier * C
        self.stem = nn.Sequential(nn.Conv2d(in_channels, C_curr, 3, padding=1, bias=False), nn.BatchNorm2d(C_curr))
        C_prev_prev, C_prev, C_curr = C_curr, C_curr, C
        self.cells = nn.ModuleList()
        reduction_prev = False
        reductions = reduction_layers(layers)
        for k in range(layers):
            reduction = k in reductions
            if reduction:
                C_curr *= 2
            cell = SuperCell(C_prev_prev, C_prev, C_curr, reduction, reduction_prev, num_nodes, ops)
            self.cells.append(cell)
            reduction_prev = reduction
            C_prev_prev, C_prev = C_prev, cell.multiplier * C_curr
        self.classifier = nn.Linear(C_prev, num_classes)
        self._build_groups()

    # ------------------------------------------------------------------ tensor groups
    def _build_groups(self) -> None:
        groups: Dict[str, List[str]] = {}
        # where each tensor lives: (key, the owning module's _parameters/_buffers dict, name). The
        # dicts outlive .to()/load_state_dict(assign=True), which put new tensors into them, so a
        # lookup through them is always current -- and it avoids walking ~4000 modules (a 24 ms
        # named_parameters/named_buffers walk at C=16, L=8) several times per candidate.
        self._param_slots: List[Tuple[str, Dict[str, torch.Tensor], str]] = []
        self._buffer_slots: List[Tuple[str, Dict[str, torch.Tensor], str]] = []
        for name, module in self.named_modules():
            own = [(n, module._parameters, self._param_slots) for n, t in module._parameters.items() if t is not None]
            own += [(n, module._buffers, self._buffer_slots) for n, t in module._buffers.items() if t is not None]
            if not own:
                continue
            group = self._group_of(name)
            for n, where, slots in own:
                key = f"{name}.{n}" if name else n
                groups.setdefault(group, []).append(key)
                slots.append((key, where, n))
        self._group_keys = {g: tuple(keys) for g, keys in groups.items()}

    # ------------------------------------------------------------------ fast module walks
    # The weight set holds ~4,000 modules (every operation on every edge; C=16, L=8) and its structure is
    # fixed after construction. Lightning walks every module several times per Lightning epoch,
    # i.e. per candidate: train()/eval(), and its capture/restore of every module's mode around
    # validation -- about 80 ms per candidate through nn.Module's recursive walks. These two
    # overrides walk a list made once instead and behave exactly as nn.Module's (tested).
    def _module_index(self) -> List[Tuple[str, nn.Module, int]]:
        """Pre-order ``(relative name, module, index after its subtree)``, made on first use."""
        index = self.__dict__.get("_module_index_cache")
        if index is None:
            index = []

            def visit(name: str, module: nn.Module) -> None:
                at = len(index)
                index.append(None)
                for child_name, child in module._modules.items():
                    if child is not None:
                        visit(f"{name}.{child_name}" if name else child_name, child)
                index[at] = (name, module, len(index))

            visit("", self)
            self.__dict__["_module_index_cache"] = index
        return index

    def named_modules(self, memo=None, prefix: str = "", remove_duplicate: bool = True):
        if memo is None:
            memo = set()
        index = self._module_index()
        i = 0
        while i < len(index):
            name, module, end = index[i]
            if module in memo:  # nn.Module: a module already seen yields nothing, nor does its subtree
                i = end
                continue
            if remove_duplicate:
                memo.add(module)
            yield (f"{prefix}.{name}" if prefix and name else name or prefix), module
            i += 1

    def train(self, mode: bool = True):
        if not isinstance(mode, bool):
            raise ValueError("training mode is expected to be boolean")
        for _, module, _ in self._module_index():
            if module is self or type(module).train is nn.Module.train:
                object.__setattr__(module, "training", mode)
            else:  # a module with its own train(): let it do what it does
                module.train(mode)
        return self

    @staticmethod
    def _group_of(module_name: str) -> str:
        parts = module_name.split(".")
        if parts[0] in SHARED_GROUPS:
            return parts[0]
        # cells.K.preprocessX...  or  cells.K.edges.J_I.OP...
        if parts[2] == "edges":
            return ".".join(parts[:5])
        return ".".join(parts[:3])

    @property
    def groups(self) -> Tuple[str, ...]:
        return tuple(self._group_keys)

    def group_keys(self, group: str) -> Tuple[str, ...]:
        """State-dict keys (parameters and buffers) of one group; empty for parameter-free ops."""
        return self._group_keys.get(group, ())

    def tensors(self) -> Dict[str, torch.Tensor]:
        """Every parameter and buffer of the weight set by state-dict key (live tensors, not copies); the
        same as ``{**dict(named_parameters()), **dict(named_buffers())}``, without the module walk."""
        out = {key: where[n] for key, where, n in self._param_slots}
        out.update((key, where[n]) for key, where, n in self._buffer_slots)
        return out

    def parameter_dict(self) -> Dict[str, nn.Parameter]:
        """``dict(named_parameters())`` without the module walk."""
        return {key: where[n] for key, where, n in self._param_slots}

    def clear_grads(self) -> None:
        """``p.grad = None`` for every parameter of the weight set."""
        for _, where, n in self._param_slots:
            where[n].grad = None

    def keys_of(self, groups: Iterable[str]) -> List[str]:
        return [k for g in groups for k in self.group_keys(g)]

    # ------------------------------------------------------------------ candidates
    def compile(self, genotype: Genotype) -> Arch:
        """Resolve ``genotype`` to module references (no allocation, no copies)."""
        cells, used = [], ["stem"]
        for k, cell in enumerate(self.cells):
            pairs = genotype.reduce if cell.reduction else genotype.normal
            concat = genotype.reduce_concat if cell.reduction else genotype.normal_concat
            if len(pairs) != 2 * self.num_nodes:
                raise ValueError(f"genotype has {len(pairs) // 2} nodes per cell, the weight set {self.num_nodes}")
            mods, inputs, droppable = [], [], []
            for slot, (op, i) in enumerate(pairs):
                j = slot // 2 + 2
                if op not in self.ops:
                    raise ValueError(f"operation {op!r} is not in the weight set's search space {self.ops}")
                m = cell.edges[f"{j}_{i}"][op]
                mods.append(m)
                inputs.append(i)
                droppable.append(not isinstance(m, Identity))
                used.append(f"cells.{k}.edges.{j}_{i}.{op}")
            used += [f"cells.{k}.preprocess0", f"cells.{k}.preprocess1"]
            cells.append(CompiledCell(tuple(mods), tuple(inputs), tuple(droppable), tuple(concat)))
        used.append("classifier")
        groups = tuple(dict.fromkeys(g for g in used if g in self._group_keys))  # ordered, unique, non-empty
        return Arch(genotype, tuple(cells), groups)

    def forward(self, x: torch.Tensor, arch: Arch, drop_prob: float = 0.0,
                generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Run the sub-network ``arch`` selects; ``generator``: drop path's random stream (default:
        the global one), so that candidates trained at the same time keep their own streams."""
        s0 = s1 = self.stem(x)
        use_drop = self.training and drop_prob > 0.0
        for cell, c in zip(self.cells, arch.cells):
            states = [cell.preprocess0(s0), cell.preprocess1(s1)]
            for n in range(len(c.ops) // 2):
                hs = []
                for slot in (2 * n, 2 * n + 1):
                    h = c.ops[slot](states[c.inputs[slot]])
                    if use_drop and c.droppable[slot]:
                        h = drop_path(h, drop_prob, generator)
                    hs.append(h)
                states.append(hs[0] + hs[1])
            s0, s1 = s1, torch.cat([states[i] for i in c.concat], dim=1)
        out = F.adaptive_avg_pool2d(s1, 1).flatten(1)
        return self.classifier(out)

    def parameters_of(self, arch: Arch) -> List[nn.Parameter]:
        """The trainable tensors the candidate uses (each once, even if an op is used twice)."""
        params = self.parameter_dict()
        return [params[k] for k in self.keys_of(arch.groups) if k in params]


# ---------------------------------------------------------------------- pure tensor-dict maths

def snapshot(tensors: Mapping[str, torch.Tensor], keys: Iterable[str]) -> Dict[str, torch.Tensor]:
    """Detached copies of the named tensors (only those; never the whole weight set)."""
    with torch.no_grad():
        return {k: tensors[k].detach().clone() for k in keys}


def restore(tensors: Mapping[str, torch.Tensor], values: Mapping[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for k, v in values.items():
            tensors[k].copy_(v)


def merge_eq6(weights: Mapping[str, torch.Tensor], fast_trained: Optional[Mapping[str, torch.Tensor]],
              slow_trained: Optional[Mapping[str, torch.Tensor]]) -> None:
    """Eq. 6 in place: ``W <- w'_fast U (w'_slow minus w'_fast) U (W minus both)`` for the weight set ``W``.

    ``fast_trained``/``slow_trained`` map state-dict keys to the trained values of each learner;
    ``None`` for a learner whose training diverged (its weights never enter the weight set).
    """
    with torch.no_grad():
        fast_trained = fast_trained or {}
        for k, v in (slow_trained or {}).items():
            if k not in fast_trained:
                weights[k].copy_(v)
        for k, v in fast_trained.items():
            weights[k].copy_(v)


# ---------------------------------------------------------------------- the authors' key names

def official_key(key: str, ops: Sequence[str] = SEARCH_OPS) -> str:
    """The official search network's name for a :class:`WeightSet` state-dict key.

    The official ``model_search.NetworkCIFAR`` keeps every operation of a cell in one flat list
    ``cells.{k}._ops``: the operation ``op`` on edge ``i -> j`` (node ``j >= 2``, input ``i``)
    is entry ``(offset_j + i) * len(ops) + ops.index(op)``, where ``offset_j`` counts the edges of
    the nodes before ``j`` (2 + 3 + ...). Every other key (stem, preprocessing, classifier) is
    the same in both networks.
    """
    parts = key.split(".")
    if len(parts) > 4 and parts[0] == "cells" and parts[2] == "edges":
        j, i = (int(n) for n in parts[3].split("_"))
        offset = sum(n + 2 for n in range(j - 2))
        index = (offset + i) * len(ops) + list(ops).index(parts[4])
        return ".".join(["cells", parts[1], "_ops", str(index)] + parts[5:])
    return key


def from_official_state_dict(weight_set: WeightSet, state_dict: Mapping[str, torch.Tensor]
                             ) -> Dict[str, torch.Tensor]:
    """A state dict of the authors' search network (``model_search.NetworkCIFAR``, every
    operation on every edge) renamed to ``weight_set``'s keys, ready for
    ``weight_set.load_state_dict(...)``. Raises ``ValueError`` naming the keys that do not match
    (a network of another C, number of layers, classes or operation list)."""
    own = weight_set.state_dict()
    names = {official_key(k, weight_set.ops): k for k in own}
    missing = sorted(set(names) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(names))
    shapes = sorted(t for t, o in names.items() if t in state_dict and tuple(state_dict[t].shape) != tuple(own[o].shape))
    if missing or unexpected or shapes:
        raise ValueError(f"the official state dict does not fit this weight set (C={weight_set.C}, "
                         f"layers={weight_set.layers}): {len(missing)} keys missing (e.g. {missing[:3]}), "
                         f"{len(unexpected)} unexpected (e.g. {unexpected[:3]}), {len(shapes)} of another shape "
                         f"(e.g. {shapes[:3]}); build the WeightSet with the official network's C, layers and "
                         f"number of classes")
    return {ours: state_dict[theirs] for theirs, ours in names.items()}


def to_official_state_dict(weight_set: WeightSet) -> Dict[str, torch.Tensor]:
    """``weight_set.state_dict()`` under the authors' key names (the inverse of
    :func:`from_official_state_dict`)."""
    return {official_key(k, weight_set.ops): v for k, v in weight_set.state_dict().items()}


def load_official_state_dict(weight_set: WeightSet, state_dict: Mapping[str, torch.Tensor]) -> WeightSet:
    """Load an official search-network state dict into ``weight_set`` (strict); returns it."""
    weight_set.load_state_dict(from_official_state_dict(weight_set, state_dict), strict=True)
    return weight_set
