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
import sys
from typing import Any, Dict

import hydra
from omegaconf import DictConfig

from relnas.nas.genotypes import GenotypeError, get_genotype
from relnas.nas.networks import NETWORKS, build_network
from relnas.nas.profile import network_summary


def inspect_architecture(cfg: DictConfig) -> Dict[str, Any]:
    """Build the network of ``cfg`` and return its summary (raises the relnas errors)."""
    kind = str(cfg.network)
    if kind not in NETWORKS:
        raise KeyError(f"unknown network {kind!r}; known: {', '.join(NETWORKS)}")
    genotype = get_genotype(str(cfg.genotype))
    net = build_network(kind, genotype, int(cfg.C), int(cfg.layers), int(cfg.num_classes),
                        auxiliary=bool(cfg.auxiliary), in_channels=int(cfg.in_channels))
    input_size = cfg.get("input_size")
    input_size = NETWORKS[kind].input_size if input_size in (None, "") else int(input_size)
    if input_size <= 0:
        raise ValueError(f"input_size must be positive, got {input_size}")
    try:
        summary = network_summary(net, input_size=input_size, in_channels=int(cfg.in_channels))
    except RuntimeError as e:  # e.g. too small an input for the network's pooling
        first = str(e).strip().splitlines()[0]
        raise ValueError(f"the {kind} network cannot run on {input_size}x{input_size} inputs: {first}") from None
    return {"genotype": genotype, "kind": kind, "summary": summary, "input_size": input_size}


def _print_table(cfg: DictConfig, info: Dict[str, Any]) -> None:
    s = info["summary"]
    rows = [
        ("genotype", str(info["genotype"])),
        ("genotype source", str(cfg.genotype)),
        ("network", info["kind"]),
        ("C", int(cfg.C)),
        ("layers", int(cfg.layers)),
        ("classes", int(cfg.num_classes)),
        ("input size", f"{int(cfg.in_channels)}x{info['input_size']}x{info['input_size']}"),
        ("params (M)", f"{s['params'] / 1e6:.3f}  (excluding auxiliary head)"),
        ("mult-adds (M)", f"{s['mult_adds'] / 1e6:.1f}"),
        ("cells", s["cells"]),
        ("reduction cells at", ", ".join(str(i) for i in s["reduction_positions"])),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")


@hydra.main(version_base="1.3", config_path="../configs", config_name="inspect")
def main(cfg: DictConfig) -> None:
    if cfg.get("task") is not None:  # a whole transfer-task network (relnas.transfer.inspect)
        _main_task(cfg)
        return
    try:
        info = inspect_architecture(cfg)
        _print_table(cfg, info)
        if cfg.draw:
            from hydra.core.hydra_config import HydraConfig

            from relnas.nas.draw import plot_genotype

            out_dir = HydraConfig.get().runtime.output_dir
            for path in plot_genotype(info["genotype"], out_dir):
                print(f"wrote {path}")
    except (KeyError, GenotypeError, FileNotFoundError, ValueError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        sys.exit(f"error: {msg}")
    s = info["summary"]
    result = {
        "params_m": s["params_m"],
        "mult_adds_m": s["mult_adds_m"],
        "genotype": info["genotype"].to_dict(),
        "network": info["kind"],
        "C": int(cfg.C),
        "layers": int(cfg.layers),
        "num_classes": int(cfg.num_classes),
        "input_size": info["input_size"],
    }
    print(json.dumps(result), flush=True)


def _main_task(cfg: DictConfig) -> None:
    from relnas.train import ConfigError
    from relnas.transfer.backbones import BackboneError
    from relnas.transfer.inspect import inspect_task, print_task_table

    try:
        info = inspect_task(cfg.task, cfg.get("backbone"), cfg.get("input_size"))
    except (ConfigError, BackboneError, KeyError, GenotypeError, FileNotFoundError, ValueError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        sys.exit(f"error: {msg}")
    print_task_table(info)
    print(json.dumps({k: info[k] for k in ("params_m", "flops_m", "task", "backbone", "num_classes", "input_size")}
                     | info["extra"]), flush=True)


if __name__ == "__main__":
    main()
