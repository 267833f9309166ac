"""``python -m relnas.search``: run a RelativeNAS search (see configs/search.yaml)."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import hydra
from omegaconf import DictConfig

log = logging.getLogger("relnas.search")


@hydra.main(version_base="1.3", config_path="../../configs", config_name="search")
def main(cfg: DictConfig) -> float:
    from hydra.core.hydra_config import HydraConfig

    from relnas.data import DatasetNotFoundError
    from relnas.nas.genotypes import GenotypeError
    from relnas.search.guards import SearchFailed
    from relnas.search.run import ConfigError, run_search
    from relnas.search.state import CheckpointError
    from relnas.utils.console import setup_console
    from relnas.utils.sweep import fail_job

    setup_console(drop_messages=("`Trainer.fit` stopped",))  # the search's epochs are candidates, not a budget
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        result = run_search(cfg, run_dir)
    except (ConfigError, DatasetNotFoundError, CheckpointError, GenotypeError, FileNotFoundError) as e:
        fail_job(f"error: {e}")  # exits, except in a multirun (the sweep exits 1 at its end)
        return float("nan")
    except SearchFailed as e:
        fail_job(f"error: the search failed: {e}")
        return float("nan")
    genotype = result["genotype"]
    if int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0"))) != 0:
        return float(result["val_loss"])  # one process reports (multi-process search)
    print(f"found genotype (individual {result['individual']}, val loss {result['val_loss']:.4f}): {genotype}")
    print(f"run directory: {result.get('run_dir', run_dir)}")
    return float(result["val_loss"])


if __name__ == "__main__":
    main()
