"""The one wrapper of the command-line entry points (search, train, evaluate, inspect, transfer, export).

``command(fn)`` returns ``fn`` with the expected failures (:class:`relnas.errors.RelnasError`) turned
into one line ``error: <message>`` on stderr and exit status 2, without a traceback (the
traceback is logged at debug level: ``hydra.verbose=relnas`` shows it). Before ``fn`` runs, it
imports the Python modules that the config's ``imports`` lists (:func:`import_modules`), so that
what they register (an operation, ``relnas.nas.operations.OPS``) is known to everything the
entry point builds and checks. In a Hydra multirun a
failed job prints its line, records it in ``<job dir>/failure.json`` (``{"status": "failed",
"reason": <the line>}``, read by the sweep summary) and returns, so that the other jobs still run;
the sweep callback (:class:`relnas.sweep.SweepCallback`) exits with status 1 after its
summary. Any other exception is a bug and propagates unchanged.

``entry_point(config_name)`` goes on top of each ``@hydra.main``: before Hydra runs, a command-line
choice of a config group that has no such config (``strategy=foo``, ``+experiment=nope``,
``-m data=digits,nope``) stops with one line ``error: unknown strategy 'foo': choose one of ...``
and exit status 2 (Hydra would print a dozen lines and exit 1, in a multirun only after the jobs
before it ran). The groups and their choices are Hydra's own (its config search path, plugins
included); whatever this check cannot judge is left to Hydra.
"""
from __future__ import annotations

import functools
import importlib
import json
import logging
import os
import sys
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence, Tuple, TypeVar

from relnas.errors import RelnasError

R = TypeVar("R")

#: exit status of a run stopped by a known error (argparse and Hydra use 2 for usage errors too)
EXIT_ERROR = 2

log = logging.getLogger("relnas")

#: a failed job's record in its directory (:func:`fail` in a multirun; read by :func:`relnas.runs.failure`)
FAILURE_FILE = "failure.json"

#: the primary config directory of the entry points (their ``@hydra.main`` config_path)
CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"


def fail(error: BaseException) -> None:
    """Report ``error`` in one line on stderr and exit with :data:`EXIT_ERROR`."""
    log.debug("stopped by %s", type(error).__name__, exc_info=error)
    message = " ".join(str(error).split()) or type(error).__name__
    print(f"error: {message}", file=sys.stderr, flush=True)
    if in_multirun():
        record_failure(message)  # the sweep summary shows it
        return  # a job of a multirun: the other jobs still run; the sweep exits 1 after its summary
    sys.exit(EXIT_ERROR)


def command(fn: Callable[..., R]) -> Callable[..., R]:
    """Wrap an entry point's function ``fn(cfg) -> result`` for the command line (see the module doc)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs) -> R:
        clear_failure()  # a job directory run again: its earlier failure is not this run's
        try:
            if args:
                import_modules(args[0])
            return fn(*args, **kwargs)
        except RelnasError as e:
            fail(e)
            return None  # type: ignore[return-value]  # a failed job of a multirun

    return wrapper


def import_modules(cfg: Any) -> None:
    """Import the modules named by ``cfg.imports`` (configs/common/default.yaml: a list of module
    names, default empty), in order; nothing for a config without the key.

    They are found on ``sys.path`` as any import is: ``python -m`` puts the directory the command
    starts in first (Hydra keeps that working directory: ``hydra.job.chdir: false``), then
    ``PYTHONPATH``. The list comes only from the config the command line composes, never from a
    file a run reads (a genotype, a checkpoint): a received file is data, not code. A value that
    is not a list of names, or a module that cannot be imported, is a :class:`ConfigError` naming
    it and the reason (the traceback at debug level)."""
    from omegaconf import ListConfig

    from relnas.errors import ConfigError

    if not isinstance(cfg, Mapping) or "imports" not in cfg:
        return
    names = cfg["imports"]
    if not isinstance(names, (list, tuple, ListConfig)) or not all(isinstance(n, str) and n for n in names):
        raise ConfigError(f"imports must be a list of Python module names, e.g. imports=[my_ops], got {names!r}")
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as e:  # noqa: BLE001 - the user's module: any failure is the reason it cannot be used
            missing = isinstance(e, ModuleNotFoundError) and e.name is not None \
                and (name == e.name or name.startswith(e.name + "."))  # the module itself, not one it imports
            where = " (modules are found in the directory the command starts in and on PYTHONPATH)" if missing else ""
            raise ConfigError(f"imports: cannot import {name!r}: {type(e).__name__}: {e}{where}") from e


# ---------------------------------------------------------------------- the job of a multirun

def in_multirun() -> bool:
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    except Exception:  # noqa: BLE001
        return False


def _job_dir() -> Optional[Path]:
    try:
        from hydra.core.hydra_config import HydraConfig

        return Path(HydraConfig.get().runtime.output_dir)
    except Exception:  # noqa: BLE001 - not in a Hydra job
        return None


def record_failure(reason: str) -> None:
    """Write ``<job dir>/failure.json`` (status ``failed`` and the one-line ``reason``) for the sweep
    summary; nothing outside a Hydra job."""
    d = _job_dir()
    if d is None:
        return
    try:
        d.mkdir(parents=True, exist_ok=True)
        (d / FAILURE_FILE).write_text(json.dumps({"status": "failed", "reason": reason}, indent=2) + "\n")
    except OSError as e:
        log.warning("could not record the failure in %s: %s", d / FAILURE_FILE, e)


def clear_failure() -> None:
    """Remove the job directory's failure.json of an earlier run (a multirun job run again)."""
    d = _job_dir() if in_multirun() else None
    if d is not None:
        try:
            (d / FAILURE_FILE).unlink(missing_ok=True)
        except OSError:
            pass


# ---------------------------------------------------------------------- config-group choices

def group_choices(overrides: Sequence[Any]) -> Iterator[Tuple[Any, str, str]]:
    """``(override, key, choice)`` for each plain choice that the parsed Hydra ``overrides`` give a
    key: ``key=choice``, ``+key=``, ``++key=``, ``key@pkg=``, ``~key=choice``, each name of a list
    (``key=[a,b]``) and of a comma sweep or ``choice(...)`` (``key=a,b``). Values that are not names
    (numbers, null, dicts, interpolations) and the other sweeps (``glob``, ``range``...) are
    skipped: Hydra judges them. Whether ``key`` is a config group is the caller's question."""
    from hydra.core.override_parser.types import ChoiceSweep

    def names(value: Any) -> Iterator[str]:
        if isinstance(value, str):
            if "${" not in value:
                yield value
        elif isinstance(value, list):
            for v in value:
                yield from names(v)

    for o in overrides:
        value = o.value()
        if o.is_sweep_override():
            if not isinstance(value, ChoiceSweep):
                continue
            value = list(value.list)
        for name in names(value):
            yield o, str(o.key_or_group), name


def unknown_choice(args: Sequence[str], config_name: str, config_dir: Path = CONFIG_DIR) -> Optional[str]:
    """The one-line message for the first unknown config-group choice on the command line ``args``
    (Hydra's arguments, e.g. ``sys.argv[1:]``), or None: all known, or nothing this check can judge
    (``--config-path``, a bad flag or override syntax, a Hydra that works differently: Hydra reports)."""
    import contextlib
    import io

    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra._internal.utils import create_config_search_path, get_args_parser

    try:
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            ns = get_args_parser().parse_args(list(args))
    except SystemExit:  # a bad flag (or --version): Hydra's argument parser answers
        return None
    if ns.config_path is not None or ns.shell_completion or ns.experimental_rerun is not None:
        return None
    if not config_dir.is_dir():
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Hydra warns about search path entries itself
        search_path = create_config_search_path(str(config_dir))
        if ns.config_dir is not None:  # as Hydra adds it
            from hydra.core.config_search_path import SearchPathQuery

            extra = os.path.abspath(ns.config_dir)
            if not os.path.isdir(extra):
                return None
            search_path.prepend(provider="command-line", path=f"file://{extra}",
                                anchor=SearchPathQuery(provider="schema"))
        loader = ConfigLoaderImpl(config_search_path=search_path)
        # the overrides parsed and hydra.searchpath (primary config or command line) applied, as Hydra does
        try:
            parsed, repo = loader._parse_overrides_and_create_caching_repo(ns.config_name or config_name,
                                                                           list(ns.overrides))
        except Exception:  # noqa: BLE001 - bad override syntax, a bad hydra.searchpath...: Hydra says why
            return None
    for override, group, choice in group_choices(parsed):
        if not repo.group_exists(group) or isinstance(override.value(), dict):
            continue  # a config key (data.batch_size=3): Hydra's
        if repo.config_exists(f"{group}/{choice}"):
            continue
        options = repo.get_group_options(group)
        where = config_dir / group
        hint = ""
        if where.is_dir():
            try:
                hint = f" ({where.relative_to(Path.cwd())}/)"
            except ValueError:
                hint = f" ({where}/)"
        return (f"unknown {group} {choice!r}: choose one of {', '.join(options) or '(none)'}{hint}")
    return None


def check_choices(config_name: str, args: Optional[Sequence[str]] = None) -> None:
    """Exit with one line and :data:`EXIT_ERROR` when the command line picks an unknown
    config-group choice (see :func:`unknown_choice`); return otherwise."""
    try:
        message = unknown_choice(sys.argv[1:] if args is None else args, config_name)
    except Exception as e:  # noqa: BLE001 - this check only improves a message: Hydra has the last word
        log.debug("config-group choices not checked: %s", e, exc_info=e)
        return
    if message is not None:
        from relnas.errors import ConfigError

        fail(ConfigError(message))


def entry_point(config_name: str) -> Callable[[Callable[..., R]], Callable[..., R]]:
    """Decorator for a ``@hydra.main`` function of config ``config_name``: called from the command
    line (no arguments), it first checks the config-group choices (:func:`check_choices`); called
    with a config, it passes straight through as ``hydra.main`` does."""

    def decorate(main: Callable[..., R]) -> Callable[..., R]:
        @functools.wraps(main)
        def wrapper(*args: Any, **kwargs: Any) -> R:
            if not args and not kwargs:
                check_choices(config_name)
            return main(*args, **kwargs)

        return wrapper

    return decorate
