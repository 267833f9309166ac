"""Atomic search checkpoints: ``search_state.pt`` in the run directory, the previous one kept as
``search_state.prev.pt`` until the new one is complete. A corrupt or truncated newest file falls
back to the previous complete one with a warning; the next save then replaces the corrupt file
and keeps the good previous one (a file that is not a complete checkpoint is never rotated into
``search_state.prev.pt``). The files hold tensors, numbers, strings, containers and numpy arrays
and are read without running code (:func:`relnas.utils.io.load_torch_file`); a file that names
anything else is refused, not skipped.

A checkpoint records the version of its format (``format_version``); a checkpoint of another
version, or without one, is refused in one line."""
from __future__ import annotations

import logging
import os
import zipfile
from pathlib import Path
from typing import Any, Dict, Tuple

import torch

from relnas.errors import CheckpointError, CheckpointNotFoundError, UnsafeFileError
from relnas.runs import SEARCH_STATE_FILE
from relnas.utils.io import load_torch_file

log = logging.getLogger(__name__)

STATE_FILE = SEARCH_STATE_FILE
PREV_FILE = "search_state.prev.pt"
#: the version of the search checkpoint's contents: the engine's state (its history rows with each
#: candidate's size), the search's spec (:class:`relnas.search.spec.SearchSpec`) and the loggers' run ids
FORMAT_VERSION = 4


def save_state(run_dir: Path, state: Dict[str, Any]) -> Path:
    """Write ``state`` (with this relnas's ``format_version``) atomically to ``run_dir``."""
    run_dir = Path(run_dir)
    state = {**state, "format_version": FORMAT_VERSION}
    path, prev, tmp = run_dir / STATE_FILE, run_dir / PREV_FILE, run_dir / (STATE_FILE + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    if path.exists() and _complete(path):
        os.replace(path, prev)  # the previous complete checkpoint stays until the new one is in place
    os.replace(tmp, path)
    return path


def _complete(path: Path) -> bool:
    """Whether ``path`` is a whole ``torch.save`` archive (a zip whose central directory is
    present and readable): a truncated or overwritten file is not."""
    try:
        with zipfile.ZipFile(path) as z:
            return bool(z.namelist())
    except (zipfile.BadZipFile, OSError, ValueError):
        return False


def _load(path: Path) -> Dict[str, Any]:
    state = load_torch_file(path, "search checkpoint")
    if not isinstance(state, dict) or "generation" not in state or "weight_set" not in state:
        raise CheckpointError(f"{path} is not a relnas search checkpoint")
    return state


def load_state(run_dir: Path) -> Tuple[Dict[str, Any], Path]:
    """The newest complete checkpoint of ``run_dir`` and its path; a checkpoint of another format
    version is refused (:class:`CheckpointError`)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointNotFoundError(f"resume: {run_dir} is not a directory (pass the search run directory)")
    errors = []
    for name in (STATE_FILE, PREV_FILE):
        path = run_dir / name
        if not path.exists():
            continue
        try:
            state = _load(path)
        except UnsafeFileError:  # not a damaged file: one that must not be read, whatever the other holds
            raise
        except Exception as e:  # noqa: BLE001 - any unreadable file falls back to the previous one
            errors.append(f"{path.name}: {type(e).__name__}: {e}")
            log.warning("checkpoint %s is unreadable (%s); trying the previous one", path, e)
            continue
        version = state.get("format_version")
        if version != FORMAT_VERSION:
            raise CheckpointError(f"resume: {path} is a search checkpoint of format version "
                                  f"{'(none)' if version is None else version}, this relnas reads version "
                                  f"{FORMAT_VERSION}; start the search again")
        return state, path
    if errors:
        raise CheckpointError(f"no readable search checkpoint in {run_dir} ({'; '.join(errors)})")
    raise CheckpointNotFoundError(f"resume: no {STATE_FILE} in {run_dir}; a checkpoint is written after each generation")
