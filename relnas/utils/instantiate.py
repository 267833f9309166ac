"""Instantiate lists of Lightning callbacks / loggers from Hydra config groups.

Follows the lightning-hydra-template convention: ``cfg.callbacks`` and ``cfg.logger`` are mappings
of ``name -> {_target_: ..., ...}``; entries that are ``null`` or have no ``_target_`` are skipped
(so ``callbacks.lr_monitor=null`` on the command line removes one).
"""
from __future__ import annotations

import inspect
import logging
import os
from typing import Any, Callable, List, Mapping, Optional

import hydra
from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf

from relnas.errors import ConfigError, RelnasError

log = logging.getLogger(__name__)


def plain(node: Any) -> Any:
    """``node`` with every OmegaConf config in it (also inside plain mappings, such as a
    checkpoint's hyper-parameters) as resolved Python containers; anything else unchanged."""
    if OmegaConf.is_config(node):
        return OmegaConf.to_container(node, resolve=True)
    if isinstance(node, Mapping):
        return {k: plain(v) for k, v in node.items()}
    return node


def instantiate(node: Any, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate``, except that a :class:`RelnasError` raised by the object's
    constructor (an argument it refuses) comes out as itself, not wrapped by Hydra."""
    try:
        return hydra.utils.instantiate(node, **kwargs)
    except InstantiationException as e:
        cause = e.__cause__
        if isinstance(cause, RelnasError):
            raise cause from None
        raise


def located(node: Any, what: str) -> Any:
    """The class or function ``node._target_`` names, found as :func:`hydra.utils.instantiate` finds
    it, without building anything; a one-line :class:`ConfigError` naming ``what`` when the node has
    no ``_target_`` or it names nothing importable."""
    from hydra._internal.utils import _locate  # what instantiate and hydra.utils.get_object use (no log line)

    target = node.get("_target_") if isinstance(node, (Mapping, DictConfig)) else None
    if not target:
        raise ConfigError(f"{what}: no _target_ (the class or function that builds it; see configs/{what}/)")
    try:
        return _locate(str(target))
    except ImportError:
        raise ConfigError(f"{what}: _target_ {str(target)!r} names nothing importable") from None


def refuse_unknown_keys(build: Callable[..., Any], node: Mapping[str, Any], what: str) -> None:
    """A one-line :class:`ConfigError` listing the keys of ``node`` that ``build`` takes no argument
    for (Hydra's own ``_target_``, ``_partial_``, ... aside); nothing when it takes ``**kwargs``."""
    params = inspect.signature(build).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return
    known = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    unknown = sorted(str(k) for k in node if not str(k).startswith("_") and k not in known)
    if unknown:
        raise ConfigError(f"unknown {what} keys {unknown}; known: {sorted(known)}")


def configured(what: str, build: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``build(*args, **kwargs)`` (a constructor, a builder or ``hydra.utils.instantiate``) with the
    ValueError/TypeError of its own argument checks turned into a one-line :class:`ConfigError`
    that names ``what``. Through Hydra (``InstantiationException``) the constructor's error is the
    cause; called directly, a :class:`RelnasError` passes unchanged."""
    try:
        return build(*args, **kwargs)
    except InstantiationException as e:
        cause = e.__cause__ if e.__cause__ is not None else e
        if isinstance(cause, (ValueError, TypeError)):
            raise ConfigError(f"{what}: {' '.join(str(cause).split())}") from None
        raise
    except RelnasError:
        raise
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{what}: {' '.join(str(e).split())}") from None


def is_rank_zero() -> bool:
    return all(os.environ.get(v, "0") == "0" for v in ("RANK", "LOCAL_RANK", "NODE_RANK"))


def instantiate_datamodule(cfg_data: Optional[DictConfig], prepare: bool = True, stage: str = "fit"):
    """The data module of ``cfg.data``, prepared (rank zero) and set up for ``stage``, so that a
    missing data set fails here, with its one-line :class:`DatasetNotFoundError`."""
    if cfg_data is None or "_target_" not in cfg_data:
        raise ConfigError("no data set configured: choose one with data=<name> (see configs/data/)")
    what = f"data ({cfg_data.get('_target_')})"
    dm = configured(what, instantiate, cfg_data)  # e.g. data.batch_size=0: one line
    if prepare:
        if is_rank_zero():
            dm.prepare_data()
        configured(what, dm.setup, stage)  # e.g. data.val_size larger than the training set
    return dm


def _instantiate_group(cfg: Optional[DictConfig], what: str) -> List[Any]:
    out: List[Any] = []
    if not cfg:
        return out
    if not isinstance(cfg, DictConfig):
        raise TypeError(f"the {what} config must be a mapping of name -> {{_target_: ...}}, got {type(cfg).__name__}")
    for name, conf in cfg.items():
        if isinstance(conf, DictConfig) and "_target_" in conf:
            log.debug("instantiating %s %s <%s>", what, name, conf._target_)
            out.append(instantiate(conf))
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
