"""The one wrapper of the command-line tasks (search, train, evaluate, inspect).

``task(fn)`` returns ``fn`` with the expected failures (:class:`relnas.errors.RelnasError`) turned
into one line ``error: <message>`` on stderr and exit status 2, without a traceback (the
traceback is logged at debug level: ``hydra.verbose=relnas`` shows it). In a Hydra multirun a
failed job prints its line and returns, so that the other jobs still run; the sweep callback
(:class:`relnas.utils.sweep.SweepCallback`) exits with status 1 after its summary. Any other exception is
a bug and propagates unchanged.
"""
from __future__ import annotations

import functools
import logging
import sys
from typing import Callable, TypeVar

from relnas.errors import RelnasError

R = TypeVar("R")

#: exit status of a run stopped by a known error (argparse and Hydra use 2 for usage errors too)
EXIT_ERROR = 2

log = logging.getLogger("relnas")


def fail(error: BaseException) -> None:
    """Report ``error`` in one line on stderr and exit with :data:`EXIT_ERROR`."""
    log.debug("stopped by %s", type(error).__name__, exc_info=error)
    message = " ".join(str(error).split()) or type(error).__name__
    print(f"error: {message}", file=sys.stderr, flush=True)
    from relnas.utils.sweep import in_multirun

    if in_multirun():
        return  # a job of a multirun: the other jobs still run; the sweep exits 1 after its summary
    sys.exit(EXIT_ERROR)


def task(fn: Callable[..., R]) -> Callable[..., R]:
    """Wrap a task function ``fn(cfg) -> result`` for the command line (see the module doc)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except RelnasError as e:
            fail(e)
            return None  # type: ignore[return-value]  # a failed job of a multirun

    return wrapper
