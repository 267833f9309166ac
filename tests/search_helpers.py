"""Shared helpers for the search tests: the real configs/search.yaml, composed and shrunk."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

from relnas.search.search_module import SearchModule

CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "configs")

TINY = [
    "data=synthetic", "data.num_train=96", "data.num_test=16", "data.image_size=16", "data.batch_size=24",
    "data.eval_batch_size=48", "data.cutout=4", "data.crop_padding=2",
    "supernet.C=4", "supernet.layers=3", "search.population_size=4", "search.generations=3",
    "search.progress=false", "search.plots=false", "trainer.accelerator=cpu", "logger=none",
]


def tiny_search_cfg(run_dir: Path, overrides: Sequence[str] = ()) -> DictConfig:
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="search", overrides=TINY + list(overrides), return_hydra_config=False)
    with open_dict(cfg):
        cfg.paths.output_dir = str(run_dir)
        cfg.paths.data_dir = str(run_dir / "data")
    return cfg


class RecordingSearchModule(SearchModule):
    """The real SearchModule that keeps every instance (``module._target_=search_helpers.RecordingSearchModule``)."""

    instances: list = []

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        RecordingSearchModule.instances.append(self)
