"""Files the tasks read and write: results JSON, Lightning checkpoints, and the readers of files
that may come from elsewhere (checkpoints, search states, pickled data batches).

A file relnas reads may have been received from someone else, so reading it must not run code:
torch files load with ``torch.load(weights_only=True)`` (:func:`load_torch_file`) and pickled data
with a restricted unpickler (:func:`load_data_pickle`). Both build only tensors, numbers, strings,
containers and numpy arrays; a file that names any other function or class is refused in one line
(:class:`~relnas.errors.UnsafeFileError`) before anything in it runs. Everything relnas writes
consists of these types.
"""
from __future__ import annotations

import _codecs
import json
import pickle
import re
from pathlib import Path
from collections.abc import Mapping
from typing import Any, Dict, Union

import numpy as np
import torch

from relnas.errors import CheckpointError, UnsafeFileError


def write_json(path: Path, obj: Any) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, default=str) + "\n")


def append_markdown(path: Path, title: str, text: str) -> Path:
    """Append ``text`` to the Markdown record ``path`` (parents made), starting a new file with the
    heading ``# title``; returns the path. The experiments' results files grow this way, one
    dated section per run."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists()
    with open(path, "a") as f:
        if new:
            f.write(f"# {title}\n\n")
        f.write(text if text.endswith("\n") else text + "\n")
    return path


def _numpy_array_globals() -> Dict[str, Any]:
    """The functions and classes a pickled numpy array names, by their full names: the array
    rebuilder under numpy 1's and numpy 2's module names (a file keeps the name of the numpy that
    wrote it), ``numpy.ndarray`` and ``numpy.dtype``, and what pickle protocol 2 (``torch.save``'s)
    writes an array's raw data with in Python 3: ``_codecs.encode`` (a latin-1 string to bytes) and
    ``builtins.bytes`` (empty data). They only build arrays and bytes: an object array's items are
    unpickled under the same restrictions."""
    reconstruct = np.zeros(0).__reduce__()[0]  # the function numpy pickles arrays with
    return {"numpy.core.multiarray._reconstruct": reconstruct, "numpy._core.multiarray._reconstruct": reconstruct,
            "numpy.ndarray": np.ndarray, "numpy.dtype": np.dtype, "_codecs.encode": _codecs.encode,
            "builtins.bytes": bytes}


#: the globals (besides torch's own tensor types) a file relnas reads may name
NUMPY_ARRAY_GLOBALS: Dict[str, Any] = _numpy_array_globals()

#: the dtypes of numpy arrays in torch files (no object arrays): ``torch.load`` sets the state
#: only of instances of allow-listed classes, and a numpy dtype is an instance of its own class
_NUMPY_DTYPE_CLASSES = [type(np.dtype(t)) for t in ("bool", "int8", "int16", "int32", "int64", "uint8", "uint16",
                                                    "uint32", "uint64", "float16", "float32", "float64")]

_TORCH_NOTICES = ("Weights only load failed", "Please file an issue", "Check the documentation")


def _refusal(what: str, path: Path, error: Exception) -> CheckpointError:
    """The one-line error for a torch file that ``weights_only`` loading rejected."""
    text = str(error)
    named = re.search(r"GLOBAL ([\w.]+)|but got <class '([\w.]+)'>", text)  # a function, or a class to set up
    if named:
        return UnsafeFileError(f"refusing {what} {str(path)!r}: it names {named.group(1) or named.group(2)}, and relnas "
                               f"loads only tensors, numbers, strings, containers and numpy arrays from a file")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith(_TORCH_NOTICES)]
    reason = " ".join(lines[0].split()) if lines else type(error).__name__
    if reason.startswith("Unsupported operand"):  # a pickle that torch.save did not write
        reason = f"not a file written by torch.save ({reason})"
    return CheckpointError(f"cannot read {what} {str(path)!r}: {reason}")


def load_torch_file(path: Union[str, Path], what: str = "checkpoint", map_location: Any = "cpu") -> Any:
    """What ``torch.save`` wrote to ``path``, read with ``torch.load(weights_only=True)``: tensors,
    numbers, strings, containers and numpy arrays (:data:`NUMPY_ARRAY_GLOBALS`), and no code run.
    A file that names anything else is refused (:class:`UnsafeFileError`); one that is not a whole
    torch file gives a one-line :class:`CheckpointError`; both name ``what`` and the file."""
    path = Path(path)
    allowed = [*((obj, name) for name, obj in NUMPY_ARRAY_GLOBALS.items()), *_NUMPY_DTYPE_CLASSES]
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise _refusal(what, path, e) from None
    except OSError as e:
        raise CheckpointError(f"cannot read {what} {str(path)!r}: {e.strerror or e}") from None
    except Exception as e:  # truncated or not a torch file: one line, not the reader's traceback
        first = " ".join(str(e).split(". ")[0].split()) if str(e).strip() else \
            f"{type(e).__name__} (truncated or empty)"
        raise CheckpointError(f"cannot read {what} {str(path)!r}: {first}") from None


def load_checkpoint_dict(path: Path) -> Dict[str, Any]:
    """A Lightning checkpoint (or another torch file of weights: a mapping) read by
    :func:`load_torch_file`."""
    obj = load_torch_file(path, "checkpoint")
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"checkpoint {str(path)!r} holds a {type(obj).__name__}, not a mapping of weights")
    return obj


class _DataUnpickler(pickle.Unpickler):
    """An unpickler that builds plain containers, strings, numbers and numpy arrays only."""

    def find_class(self, module: str, name: str) -> Any:
        module = "builtins" if module == "__builtin__" else module  # Python 2's name, in protocol 2
        found = NUMPY_ARRAY_GLOBALS.get(f"{module}.{name}")
        if found is None:
            raise pickle.UnpicklingError(f"refusing {module}.{name}: a data file may hold only containers, strings, "
                                         f"numbers and numpy arrays")
        return found


def load_data_pickle(path: Union[str, Path], encoding: str = "latin1") -> Any:
    """A pickled data file (CIFAR's python batches) read by a restricted unpickler that admits only
    containers, strings, numbers and numpy arrays: a file that names any other function or class
    raises ``pickle.UnpicklingError`` naming it, before anything runs. ``encoding`` decodes
    Python 2 strings (``latin1`` keeps the bytes of an array's data)."""
    with open(path, "rb") as fh:
        return _DataUnpickler(fh, encoding=encoding).load()
