"""The SLURM launcher config (configs/hydra/launcher/slurm.yaml) composes with the submitit plugin.

No SLURM here: the test checks the composed config, not a submission."""
from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="pip install -e '.[slurm]'")

from hydra import compose, initialize_config_dir  # noqa: E402

CONFIGS = str(Path(__file__).resolve().parents[2] / "configs")
KEYS = ("partition", "gpus_per_node", "tasks_per_node", "cpus_per_task", "mem_gb", "timeout_min", "nodes",
        "additional_parameters")


def _compose(overrides):
    with initialize_config_dir(config_dir=CONFIGS, version_base="1.3"):
        return compose("search", overrides=overrides, return_hydra_config=True)


def test_slurm_launcher_composes():
    cfg = _compose(["hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.gpus_per_node=4",
                    "hydra.launcher.tasks_per_node=4"])
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    for key in KEYS:
        assert key in launcher, key
    assert launcher.partition == "gpu" and launcher.gpus_per_node == 4 and launcher.tasks_per_node == 4
    assert launcher.nodes == 1 and launcher.timeout_min > 0 and launcher.mem_gb > 0
    assert dict(launcher.additional_parameters) == {}
    assert launcher.submitit_folder.endswith("/.submitit/%j")  # submitit's logs beside the sweep's runs


def test_slurm_sweep_experiment():
    cfg = _compose(["+experiment=slurm_sweep", "hydra.launcher.partition=gpu"])
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher")
    assert cfg.hydra.launcher.partition == "gpu"
    assert cfg.hydra.sweeper.params["search.population_size"] == "10,20,40"
    assert cfg.trainer.accelerator == "gpu"
    assert cfg.search.executor == "auto"  # one process per search: the paper's order


def test_search_default_launcher_is_unchanged():
    cfg = _compose([])
    assert cfg.hydra.launcher._target_.endswith("BasicLauncher")
