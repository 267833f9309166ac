"""The transfer tasks, registered by name in :data:`TASKS` (a :class:`relnas.utils.registry.Registry`).

Each class is a :class:`relnas.transfer.tasks.base.TransferModule` subclass registered beside its
definition (``@TASKS.register("detection")``); see that module's docstring for what a task
provides. ``configs/task/<name>.yaml`` names the class in its ``_target_`` and Hydra builds it
(``python -m relnas.transfer task=<name>``, ``python -m relnas.inspect task=<name>``); the registry
maps the name a run records (``result.json``'s ``task``, the class's ``task_name``) back to the
class. A new task needs its module, its import below and ``configs/task/<name>.yaml``.
"""
from __future__ import annotations

from typing import List, Type

from relnas.transfer.tasks.base import TASKS
from relnas.transfer.tasks import detection, segmentation, keypoints  # noqa: F401,I001  (they register themselves)


def list_tasks() -> List[str]:
    return list(TASKS)


def get_task(name: str) -> Type:
    """The task class registered as ``name`` (a one-line :class:`relnas.errors.RegistryError`, a
    ``ConfigError`` and ``KeyError``, listing the known names)."""
    return TASKS[str(name)]


__all__ = ["TASKS", "list_tasks", "get_task"]
