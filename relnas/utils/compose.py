"""The project's Hydra configs composed in Python, as the command line would compose them.

For scripts and tests that drive an entry point's function (``run_search``, ``train``,
``transfer``) on the real configuration with a few overrides, instead of building its pieces by
hand::

    cfg = compose_config("search", ["data=synthetic", "search.generations=1"], output_dir=tmp)
    run_search(cfg, tmp)
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Union

from omegaconf import DictConfig, open_dict

#: the repository's ``configs/`` folder (the entry points' ``config_path``)
CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"


def compose_config(name: str, overrides: Sequence[str] = (),
                   output_dir: Optional[Union[str, Path]] = None) -> DictConfig:
    """``configs/<name>.yaml`` composed with ``overrides`` (command-line syntax). With
    ``output_dir``, ``paths.output_dir`` is set to it and ``paths.data_dir`` to ``<output_dir>/data``
    (what Hydra's run directory gives a command-line run)."""
    from hydra import compose, initialize_config_dir

    if not (CONFIG_DIR / f"{name}.yaml").is_file():
        known = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
        raise FileNotFoundError(f"no config {name!r} in {CONFIG_DIR}; known: {known}")
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name=name, overrides=list(overrides))
    if output_dir is not None:
        with open_dict(cfg):
            cfg.paths.output_dir = str(output_dir)
            cfg.paths.data_dir = str(Path(output_dir) / "data")
    return cfg


__all__ = ["CONFIG_DIR", "compose_config"]
