"""``python -m relnas.search``: run a RelativeNAS search (see configs/search.yaml)."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import hydra
from omegaconf import DictConfig

from relnas.utils.cli import command, entry_point

log = logging.getLogger("relnas.search")


@command
def search(cfg: DictConfig) -> float:
    from hydra.core.hydra_config import HydraConfig

    from relnas.search.run import run_search
    from relnas.utils.console import setup_console

    setup_console(drop_messages=("`Trainer.fit` stopped",))  # the search's epochs are candidates, not a budget
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    result = run_search(cfg, run_dir)
    genotype = result["genotype"]
    if int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0"))) != 0:
        return float(result["val_loss"])  # one process reports (multi-process search)
    print(f"found genotype (individual {result['individual']}, val loss {result['val_loss']:.4f}): {genotype}")
    print(f"run directory: {result.get('run_dir', run_dir)}")
    return float(result["val_loss"])


@entry_point("search")  # unknown config-group choices: one line, exit 2
@hydra.main(version_base="1.3", config_path="../../configs", config_name="search")
def main(cfg: DictConfig) -> float:
    return search(cfg)


if __name__ == "__main__":
    main()
