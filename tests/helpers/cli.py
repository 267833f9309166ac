"""The environment of an entry point run as a subprocess by the tests."""
from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

#: variables of a launcher (torchrun, SLURM) that would make a child think it is one rank of many
LAUNCHER_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "SLURM_PROCID")


def cli_env(**extra: str) -> dict:
    """This process's environment for a child ``python -m relnas.<entry>``: the checkout on the
    path, W&B offline, one OpenMP thread (torchrun's default for its workers: the same kernels in
    every run), no launcher variables; ``extra`` added last."""
    env = dict(os.environ, WANDB_MODE="offline", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + os.environ["PYTHONPATH"] if os.environ.get("PYTHONPATH") else "")
    for k in LAUNCHER_VARS:
        env.pop(k, None)
    env.update(extra)
    return env
