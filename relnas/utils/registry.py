"""One registry idiom for everything chosen by name in code (operations, networks, genotypes, search
strategies, executors, transfer tasks, torchvision backbones): a :class:`Registry` filled by a
``register`` decorator placed beside each definition, read like a mapping, and failing loudly
with the known names. (What a config group chooses, such as the data set, is built by Hydra
from the group's ``_target_``; Hydra lists the known options when a group's option is unknown.)

Example::

    NETWORKS = Registry("network")

    @NETWORKS.register("cifar")
    class NetworkCIFAR(nn.Module): ...

    NETWORKS["cifar"]      # -> NetworkCIFAR
    NETWORKS["mnist"]      # RegistryError: unknown network 'mnist'; known networks: cifar, imagenet
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Callable, Dict, Generic, Iterable, Iterator, Optional, TypeVar, overload

from relnas.errors import RegistryError

T = TypeVar("T")


class Registry(Mapping, Generic[T]):
    """Named entries of one kind. ``kind`` names them in error messages (``"operation"``);
    ``hint`` ends the message for an unknown name (how to make a name known)."""

    def __init__(self, kind: str, plural: Optional[str] = None, hint: str = "") -> None:
        self.kind = kind
        self.plural = plural or f"{kind}s"
        self.hint = hint
        self._entries: Dict[str, T] = {}

    @overload
    def register(self, name: str) -> Callable[[T], T]: ...

    @overload
    def register(self, name: str, obj: T, *, overwrite: bool = False) -> T: ...

    def register(self, name: str, obj=None, *, overwrite: bool = False):
        """``@registry.register("name")`` above a definition, or ``registry.register("name", obj)``.

        Registering a different object under a taken name fails unless ``overwrite=True``
        (registering the same object again is a no-op)."""
        def add(value: T) -> T:
            if not isinstance(name, str) or not name:
                raise RegistryError(f"a {self.kind} name must be a non-empty string, got {name!r}")
            if name in self._entries and self._entries[name] is not value and not overwrite \
                    and self._entries[name] != value:
                raise RegistryError(f"{self.kind} {name!r} is already registered; pass overwrite=True to replace it")
            self._entries[name] = value
            return value

        return add if obj is None else add(obj)

    def unregister(self, name: str) -> None:
        """Remove ``name`` (no error when absent)."""
        self._entries.pop(name, None)

    def names(self) -> list[str]:
        """The registered names, in registration order."""
        return list(self._entries)

    def unknown(self, names: Iterable[object]) -> str:
        """The one message for ``names`` that are not registered: them, the known names, the hint."""
        names = list(names)
        message = (f"unknown {self.kind if len(names) == 1 else self.plural} {', '.join(map(repr, names))}; "
                   f"known {self.plural}: {', '.join(self._entries)}")
        return f"{message}; {self.hint}" if self.hint else message

    def __getitem__(self, name: str) -> T:
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise RegistryError(self.unknown([name])) from None

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self._entries)})"
