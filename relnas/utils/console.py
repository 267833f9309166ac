"""Console setup of the command-line entry points: each log line once, above the progress bar,
without library chatter the user cannot act on.

``setup_console()`` is called at the start of every entry point (search, train, evaluate), after
Hydra has configured logging:

* Lightning's loggers (``lightning.pytorch``, ``lightning.fabric``) print through their own stream
  handler *and* propagate to Hydra's root handlers, so every INFO line appeared twice: their own
  handlers are removed and the lines go through the root handlers only.
* The root logger's console handlers write with ``tqdm.write`` (:class:`TqdmHandler`), so a log line
  printed while a progress bar is shown lands above the bar instead of being glued onto it.
* Lightning's litlogger advert and the "GPU/TPU available" lines of a CPU run are dropped
  (:class:`DropMessages`); warnings that only concern the library's internals are ignored
  (:data:`IGNORED_WARNINGS`).
"""
from __future__ import annotations

import logging
import sys
import warnings
from typing import Iterable, Sequence

# (message regex, category) of warnings a user of relnas cannot act on
IGNORED_WARNINGS: Sequence[tuple] = (
    (r".*LeafSpec.*", Warning),                                   # torch.utils._pytree deprecation inside Lightning
    (r".*configure_optimizers.*", Warning),                       # the search's optimizers are per candidate
    (r".*smaller than the logging interval.*", Warning),          # log_every_n_steps vs short epochs
    (r".*does not have many workers.*", Warning),                 # in-memory tensor loaders need no workers
    (r".*The anonymous setting has no effect.*", Warning),        # W&B deprecation triggered by Lightning
    (r".*Experiment logs directory .* exists and is not empty.*", Warning),  # resumed runs append on purpose
    (r".*Checkpoint directory .* exists and is not empty.*", Warning),
    (r".*pkg_resources is deprecated.*", Warning),
    (r".*`isinstance\(treespec, LeafSpec\)` is deprecated.*", Warning),
    (r".*Found .* module\(s\) in eval mode at the start of training.*", Warning),
)

# log messages (substrings) dropped from the console: adverts and lines without information
DROPPED_MESSAGES: Sequence[str] = (
    "litlogger",                      # Lightning's "Tip: ... try installing litlogger" advert
    "TPU available: False",
    "HPU available: False",
    "GPU available: False",
    "You are using a CUDA device",    # tensor-core hint: the trainer config sets the precision
)


class DropMessages(logging.Filter):
    """Drop records whose message contains one of ``substrings``."""

    def __init__(self, substrings: Iterable[str] = DROPPED_MESSAGES):
        super().__init__()
        self.substrings = tuple(substrings)

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            msg = record.getMessage()
        except Exception:  # noqa: BLE001 - a broken record is not ours to judge
            return True
        return not any(s in msg for s in self.substrings)


class TqdmHandler(logging.StreamHandler):
    """A console handler that writes through ``tqdm.write``: lines appear above an active
    progress bar (and plainly when there is none)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=self.stream)
            self.flush()
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


def ignore_library_warnings() -> None:
    for message, category in IGNORED_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)


def _is_console(h: logging.Handler) -> bool:
    return type(h) is logging.StreamHandler and getattr(h, "stream", None) in (sys.stdout, sys.stderr)


def setup_console(drop_messages: Iterable[str] = ()) -> None:
    """Make the console quiet and consistent (see the module doc); ``drop_messages``: more message
    substrings to drop for this app. Idempotent."""
    ignore_library_warnings()
    root = logging.getLogger()
    drop = DropMessages(tuple(DROPPED_MESSAGES) + tuple(drop_messages))
    for name in ("lightning.pytorch", "lightning.fabric", "lightning", "pytorch_lightning"):
        lg = logging.getLogger(name)
        for h in list(lg.handlers):
            lg.removeHandler(h)
        lg.propagate = True
        if not any(isinstance(f, DropMessages) for f in lg.filters):
            lg.addFilter(drop)
    # the rank-zero logger is where Lightning's adverts come from; filters on a logger do not see
    # records of its children, so filter the handlers too
    for i, h in enumerate(list(root.handlers)):
        if _is_console(h):
            t = TqdmHandler(h.stream)
            t.setLevel(h.level)
            t.setFormatter(h.formatter)
            for f in h.filters:
                t.addFilter(f)
            root.removeHandler(h)
            root.addHandler(t)
            h = t
        if not any(isinstance(f, DropMessages) for f in h.filters):
            h.addFilter(drop)
