"""Model size of a whole transfer-task network before training (``python -m relnas.inspect task=...``).

Builds the task's network (backbone + head, as configured in ``configs/task/<task>.yaml``) for the
paper's class count and input size (the task class's ``paper_num_classes`` and
``paper_input_size``; ``input_size=`` overrides the size) and counts parameters and FLOPs
(multiply-adds) with :func:`relnas.transfer.tasks.base.model_cost`. The task module and the backbone
are built as ``python -m relnas.transfer`` builds them (the ``_target_`` of each config), so every
task with a ``configs/task/`` file is inspectable.
"""
from __future__ import annotations

import logging
from typing import Any, Dict, Mapping


def inspect_task(task_cfg: Mapping[str, Any], backbone_cfg: Mapping[str, Any],
                 input_size: Any = None, flops: bool = True) -> Dict[str, Any]:
    """Build the task network and return ``{task, backbone, num_classes, input_size, params_m,
    flops_m, note, extra}`` (``extra``: FLOPs at the task's ``extra_input_sizes``). With
    ``flops=False`` no forward pass is run and ``flops_m`` is ``None`` (parameters only)."""
    from relnas.transfer.__main__ import backbone_from_config, instantiate_task, task_class
    from relnas.transfer.authors import authors_params
    from relnas.transfer.tasks.base import _pair, model_cost

    cls = task_class(task_cfg)
    size = _pair(input_size) if input_size not in (None, "") else _pair(cls.paper_input_size)
    bb_log = logging.getLogger("relnas.transfer.backbones")
    level = bb_log.level
    bb_log.setLevel(logging.ERROR)  # sizes need no weights: no random-init warning here
    try:
        backbone = backbone_from_config(backbone_cfg)
    finally:
        bb_log.setLevel(level)
    n = int(cls.paper_num_classes)
    module = instantiate_task(task_cfg, backbone, n, input_size=size)
    described = backbone.describe()
    cost = model_cost(module, size, flops=flops)
    extra = {}
    for s in (getattr(cls, "extra_input_sizes", ()) or ()) if flops else ():
        if tuple(_pair(s)) != tuple(size):
            e = model_cost(module, s)
            extra[f"flops_m_{e['input_size'][0]}x{e['input_size'][1]}"] = e["flops_m"]
    return {"task": cls.task_name, "backbone": backbone.name, "backbone_kind": backbone.kind,
            "authors_params": authors_params(cls.task_name, described),
            "num_classes": n, "input_size": cost["input_size"], "params": cost["params"],
            "params_m": cost["params_m"], "flops_m": cost["flops_m"], "note": cls.paper_note, "extra": extra,
            "backbone_params_m": round(sum(p.numel() for p in backbone.parameters()) / 1e6, 4)}


def print_task_table(info: Mapping[str, Any]) -> None:
    rows = [("task", info["task"]), ("backbone", f"{info['backbone']} ({info['backbone_kind']})"),
            ("classes", info["num_classes"]), ("input size", f"3x{info['input_size'][0]}x{info['input_size'][1]}"),
            ("params (M)", f"{info['params_m']:.3f}  (whole task network at inference; backbone "
                           f"{info['backbone_params_m']:.3f})"),
            ("FLOPs (M)", f"{info['flops_m']:.1f}  (multiply-adds)")]
    theirs = info.get("authors_params")
    if theirs is not None:
        diff = int(info["params"]) - int(theirs)
        rows.append(("authors' model", f"{theirs / 1e6:.3f}  ({theirs:,} parameters: "
                                       + ("equal)" if diff == 0 else f"this network has {diff:+,})")))
    rows += [(k.replace("flops_m_", "FLOPs (M) at "), f"{v:.1f}") for k, v in info["extra"].items()]
    if info.get("note"):
        rows.append(("note", info["note"]))
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")


__all__ = ["inspect_task", "print_task_table"]
