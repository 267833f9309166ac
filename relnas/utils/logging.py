"""Logging setup helpers."""
from __future__ import annotations

import logging
import netrc
import os
from pathlib import Path
from typing import Optional

log = logging.getLogger(__name__)


def _netrc_has_wandb() -> bool:
    path = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    if not path.is_file():
        return False
    try:
        return netrc.netrc(str(path)).authenticators("api.wandb.ai") is not None
    except (netrc.NetrcParseError, OSError):
        return "api.wandb.ai" in path.read_text(errors="ignore")


def configure_wandb_mode(offline: Optional[bool] = None) -> str:
    """Choose the Weights & Biases mode and return it (``"online"``, ``"offline"`` or whatever
    ``WANDB_MODE`` already says).

    An explicit choice wins: ``offline=True/False`` (the logger config's ``offline``) or a
    ``WANDB_MODE`` environment variable. Otherwise the run goes online only when an API key is
    configured (``WANDB_API_KEY`` or an ``api.wandb.ai`` entry in ``~/.netrc``, which is what
    ``wandb login`` writes) and offline (sync later with ``wandb sync``) when none is.
    """
    if offline is not None:
        mode = "offline" if offline else "online"
        os.environ["WANDB_MODE"] = mode
        return mode
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if os.environ.get("WANDB_API_KEY") or _netrc_has_wandb():
        return "online"
    os.environ["WANDB_MODE"] = "offline"
    log.info("no Weights & Biases API key found: logging offline (sync later with `wandb sync`)")
    return "offline"
