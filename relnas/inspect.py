"""Inspect an architecture: ``python -m relnas.inspect genotype=RelativeNAS network=cifar C=36 layers=20``.

Prints a small table and, as the last line, a JSON object with params_m, mult_adds_m, genotype,
network, C, layers, num_classes and input_size.

``python -m relnas.inspect task=detection|segmentation|keypoints backbone=NAME`` instead sizes the
whole transfer-task network at the paper's input size and class count (last line: params_m,
flops_m, task, backbone, num_classes, input_size); see :mod:`relnas.transfer.inspect`. ``draw=true`` also writes ``normal.png`` and
``reduce.png`` into the Hydra run directory.
"""
from __future__ import annotations

import json
from typing import Any, Dict

import hydra
from omegaconf import DictConfig

from relnas.errors import ConfigError
from relnas.nas.arch import ArchSpec
from relnas.nas.profile import network_summary
from relnas.utils.cli import command, entry_point


def arch_from_config(cfg: DictConfig) -> ArchSpec:
    """The architecture the inspect config describes (``input_size: null``: the network's own)."""
    input_size = cfg.get("input_size")
    if input_size not in (None, "") and int(input_size) <= 0:
        raise ConfigError(f"input_size must be positive, got {input_size}")
    return ArchSpec(network=str(cfg.network), genotype=cfg.genotype, C=cfg.C, layers=cfg.layers,
                    num_classes=cfg.num_classes, in_channels=cfg.in_channels, auxiliary=cfg.auxiliary,
                    image_size=None if input_size in (None, "") else int(input_size))


def inspect_architecture(cfg: DictConfig) -> Dict[str, Any]:
    """Build the network of ``cfg`` and return its summary (raises the relnas errors)."""
    arch = arch_from_config(cfg)
    net = arch.build()
    try:
        summary = network_summary(net, input_size=arch.image_size, in_channels=arch.in_channels)
    except RuntimeError as e:  # e.g. too small an input for the network's pooling
        first = str(e).strip().splitlines()[0]
        raise ConfigError(f"the {arch.network} network cannot run on {arch.image_size}x{arch.image_size} "
                          f"inputs: {first}") from None
    return {"arch": arch, "genotype": arch.genotype, "kind": arch.network, "summary": summary,
            "input_size": arch.image_size}


def _print_table(cfg: DictConfig, info: Dict[str, Any]) -> None:
    s, arch = info["summary"], info["arch"]
    rows = [
        ("genotype", str(arch.genotype)),
        ("genotype source", str(cfg.genotype)),
        ("search space", str(arch.genotype.space) if arch.genotype.space is not None else "not recorded"),
        ("network", arch.network),
        ("C", arch.C),
        ("layers", arch.layers),
        ("classes", arch.num_classes),
        ("input size", f"{arch.in_channels}x{arch.image_size}x{arch.image_size}"),
        ("params (M)", f"{s['params'] / 1e6:.3f}  (excluding auxiliary head)"),
        ("mult-adds (M)", f"{s['mult_adds'] / 1e6:.1f}"),
        ("cells", s["cells"]),
        ("reduction cells at", ", ".join(str(i) for i in s["reduction_positions"])),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")


@command
def inspect(cfg: DictConfig) -> Dict[str, Any]:
    """Print the table (and draw the cells with ``draw=true``); return the JSON summary line's object."""
    info = inspect_architecture(cfg)
    _print_table(cfg, info)
    if cfg.draw:
        from hydra.core.hydra_config import HydraConfig

        from relnas.nas.draw import plot_genotype

        out_dir = HydraConfig.get().runtime.output_dir
        for path in plot_genotype(info["genotype"], out_dir):
            print(f"wrote {path}")
    s, arch = info["summary"], info["arch"]
    return {
        "params_m": s["params_m"],
        "mult_adds_m": s["mult_adds_m"],
        "genotype": arch.genotype.to_dict(),
        "network": arch.network,
        "C": arch.C,
        "layers": arch.layers,
        "num_classes": arch.num_classes,
        "input_size": arch.image_size,
    }


@entry_point("inspect")  # unknown config-group choices: one line, exit 2
@hydra.main(version_base="1.3", config_path="../configs", config_name="inspect")
def main(cfg: DictConfig) -> None:
    if cfg.get("task") is not None:  # a whole transfer-task network (relnas.transfer.inspect)
        _main_task(cfg)
        return
    print(json.dumps(inspect(cfg)), flush=True)


@command
def _main_task(cfg: DictConfig) -> None:
    from relnas.transfer.inspect import inspect_task, print_task_table

    info = inspect_task(cfg.task, cfg.backbone, cfg.get("input_size"))
    print_task_table(info)
    theirs = info.get("authors_params")
    print(json.dumps({k: info[k] for k in ("params_m", "flops_m", "task", "backbone", "num_classes", "input_size")}
                     | ({"authors_params_m": round(theirs / 1e6, 4)} if theirs is not None else {})
                     | info["extra"]), flush=True)


if __name__ == "__main__":
    main()
