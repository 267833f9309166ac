"""Registry of the transfer tasks: ``name -> "module:Class"`` (imported on first use).

Each class is a :class:`relnas.transfer.tasks.base.TransferModule` subclass; see that module's
docstring for what a task provides. ``python -m relnas.transfer task=<name>`` and
``python -m relnas.inspect task=<name>`` find tasks here, so a new task only needs its module,
a line below and ``configs/task/<name>.yaml``.
"""
from __future__ import annotations

import importlib
from typing import Dict, List, Type

TASKS: Dict[str, str] = {
    "detection": "relnas.transfer.tasks.detection:DetectionModule",
    "segmentation": "relnas.transfer.tasks.segmentation:SegmentationModule",
    "keypoints": "relnas.transfer.tasks.keypoints:KeypointModule",
}


def list_tasks() -> List[str]:
    return list(TASKS)


def get_task(name: str) -> Type:
    """The task class registered as ``name`` (one-line ``KeyError`` listing the known names)."""
    try:
        target = TASKS[str(name)]
    except KeyError:
        raise KeyError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}") from None
    module_name, cls_name = target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name == module_name:
            raise KeyError(f"task {name!r} is registered but its module {module_name} is not installed") from None
        raise
    return getattr(module, cls_name)


__all__ = ["TASKS", "list_tasks", "get_task"]
