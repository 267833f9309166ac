"""Instantiate lists of Lightning callbacks / loggers from Hydra config groups.

Follows the lightning-hydra-template convention: ``cfg.callbacks`` and ``cfg.logger`` are mappings
of ``name -> {_target_: ..., ...}``; entries that are ``null`` or have no ``_target_`` are skipped
(so ``callbacks.lr_monitor=null`` on the command line removes one).
"""
from __future__ import annotations

import logging
from typing import Any, List, Optional

import hydra
from omegaconf import DictConfig

log = logging.getLogger(__name__)


def _instantiate_group(cfg: Optional[DictConfig], what: str) -> List[Any]:
    out: List[Any] = []
    if not cfg:
        return out
    if not isinstance(cfg, DictConfig):
        raise TypeError(f"the {what} config must be a mapping of name -> {{_target_: ...}}, got {type(cfg).__name__}")
    for name, conf in cfg.items():
        if isinstance(conf, DictConfig) and "_target_" in conf:
            log.debug("instantiating %s %s <%s>", what, name, conf._target_)
            out.append(hydra.utils.instantiate(conf))
    return out


def instantiate_callbacks(callbacks_cfg: Optional[DictConfig]) -> list:
    """Lightning callbacks from ``cfg.callbacks``."""
    return _instantiate_group(callbacks_cfg, "callback")


def instantiate_loggers(logger_cfg: Optional[DictConfig]) -> list:
    """Lightning loggers from ``cfg.logger``. Switches Weights & Biases to offline mode first when
    no API key is configured (see :func:`relnas.utils.logging.configure_wandb_mode`)."""
    if logger_cfg and any(isinstance(c, DictConfig) and "Wandb" in str(c.get("_target_", ""))
                          for c in logger_cfg.values()):
        from relnas.utils.logging import configure_wandb_mode

        explicit = [c.get("offline") for c in logger_cfg.values()
                    if isinstance(c, DictConfig) and "Wandb" in str(c.get("_target_", ""))]
        configure_wandb_mode(offline=explicit[0] if explicit else None)
    return _instantiate_group(logger_cfg, "logger")
