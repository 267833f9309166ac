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
included). Likewise an override of a key the config does not have (``search.strategy=evolution``,
``modle.C=3``; the config composed by Hydra's config loader) stops with one line ``error: unknown
key 'modle.C': the train config has no key 'modle' (+modle.C=3 adds it); did you mean model.C=3?``;
in a multirun only the overrides that do not sweep are checked (those that sweep are composed per
job, by Hydra). Whatever these checks cannot judge is left to Hydra.
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
from typing import Any, Callable, Iterator, List, NamedTuple, Optional, Sequence, Tuple, TypeVar

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


class CommandLine(NamedTuple):
    """A command line as Hydra reads it: its parsed flags (``ns``), its config loader, the parsed
    overrides and the config repository they are judged against."""

    ns: Any
    config_name: str
    config_dir: Path
    loader: Any
    overrides: List[Any]
    repo: Any


def read_command_line(args: Sequence[str], config_name: str, config_dir: Path = CONFIG_DIR) -> Optional[CommandLine]:
    """Hydra's reading of the command line ``args`` (Hydra's arguments, e.g. ``sys.argv[1:]``) with
    its config search path (plugins, ``--config-dir``, ``hydra.searchpath`` included), or None
    when the checks cannot judge it (``--config-path``, a bad flag or override syntax, a Hydra that
    works differently: Hydra reports)."""
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
    config_name = ns.config_name or config_name
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
            parsed, repo = loader._parse_overrides_and_create_caching_repo(config_name, list(ns.overrides))
        except Exception:  # noqa: BLE001 - bad override syntax, a bad hydra.searchpath...: Hydra says why
            return None
    return CommandLine(ns, config_name, config_dir, loader, parsed, repo)


def unknown_choice(line: CommandLine) -> Optional[str]:
    """The one-line message for the first unknown config-group choice of the command line, or None."""
    repo, config_dir = line.repo, line.config_dir
    for override, group, choice in group_choices(line.overrides):
        if not repo.group_exists(group) or isinstance(override.value(), dict):
            continue  # a config key (data.batch_size=3): unknown_key's
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


def unknown_key(line: CommandLine) -> Optional[str]:
    """The one-line message for an override of a config key that the composed config does not have
    (``search.strategy=evolution``, ``modle.C=3``), or None.

    The config is composed as Hydra will compose it (its config loader; a multirun as Hydra composes
    the sweep's own config, so the overrides that sweep are left to each job's composition, i.e. to
    Hydra). Only a failure of an override because a key is not in the config (omegaconf's
    ConfigAttributeError or ConfigKeyError, "not in struct" or "not in '<dataclass>'", as the cause
    of Hydra's ConfigCompositionException, for a key its node lacks) gives a message: it names the
    key, the node without it, the ``+key=value`` that adds it and what exists close to it (a key of
    that node, a config group of that name, or a close one that has the value as a choice).
    ``--help``, ``--hydra-help`` and ``--info`` are Hydra's."""
    import difflib

    from hydra.core.object_type import ObjectType
    from hydra.errors import ConfigCompositionException
    from hydra.types import RunMode
    from omegaconf import DictConfig
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError

    ns, repo = line.ns, line.repo
    if ns.help or ns.hydra_help or ns.info is not None:
        return None
    # the overrides of existing keys: not +/++/~, not a group choice, not a sweep (a multirun's jobs')
    plain = [o for o in line.overrides if not (o.is_add() or o.is_force_add() or o.is_delete() or o.is_sweep_override())
             and o.package is None and not repo.group_exists(o.key_or_group)]
    if not plain:
        return None  # nothing to judge: the config is not composed
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            line.loader.load_configuration(line.config_name, list(ns.overrides),
                                           RunMode.MULTIRUN if ns.multirun else RunMode.RUN)
        return None
    except ConfigCompositionException as e:
        cause = e.__cause__
    node = getattr(cause, "parent_node", None)
    missing = getattr(cause, "full_key", None)
    if not isinstance(cause, (ConfigAttributeError, ConfigKeyError)) or not isinstance(node, DictConfig) \
            or not isinstance(missing, str) or not missing:
        return None
    parent, _, name = missing.rpartition(".")
    if name in node.keys():
        return None  # the key is there: another failure (Hydra's)
    failed = [o for o in plain if o.key_or_group == missing or o.key_or_group.startswith(missing + ".")]
    if not failed or not isinstance(failed[0].input_line, str) or "=" not in failed[0].input_line:
        return None
    override = failed[0]
    key, value = override.key_or_group, override.input_line.split("=", 1)[1]
    rest = key[len(missing):]  # ".C" of modle.C: the part below the missing key

    def has(node: Any, dotted: str) -> bool:
        for part in filter(None, dotted.split(".")):
            if not isinstance(node, DictConfig) or part not in node.keys():
                return False
            node = node._get_node(part)  # not node[part]: that resolves interpolations
        return True

    def groups(prefix: str = "") -> Iterator[str]:
        for g in repo.get_group_options(prefix, results_filter=ObjectType.GROUP):
            full = f"{prefix}/{g}" if prefix else g
            yield full
            yield from groups(full)

    close = difflib.get_close_matches(name, [str(k) for k in node.keys()], n=3)
    hints = [f"{parent + '.' if parent else ''}{k}{rest}={value}" for k in close if has(node._get_node(k), rest)]
    names = sorted(set(groups()))
    exact = [g for g in names if g in (key.rsplit(".", 1)[-1], key.replace(".", "/"))]
    for g in exact:
        hints.append(f"{g}={value}" if repo.config_exists(f"{g}/{value}")
                     else f"{g}=<{'|'.join(repo.get_group_options(g))}>")
    hints += [f"{g}={value}" for g in difflib.get_close_matches(key.replace(".", "/"), names, n=3)
              if g not in exact and repo.config_exists(f"{g}/{value}")]
    where = f"{parent!r} has" if parent else f"the {line.config_name} config has"
    hints = list(dict.fromkeys(hints))  # a group whose package is a key of that name: once
    mean = f"; did you mean {' or '.join(hints)}?" if hints else ""
    return f"unknown key {key!r}: {where} no key {name!r} (+{override.input_line} adds it){mean}"


def command_line_error(args: Sequence[str], config_name: str, config_dir: Path = CONFIG_DIR) -> Optional[str]:
    """The one-line message for the first thing on the command line ``args`` that Hydra would refuse
    with a report of many lines: an unknown config-group choice (:func:`unknown_choice`), then an
    unknown config key (:func:`unknown_key`); None when there is none or the checks cannot judge."""
    line = read_command_line(args, config_name, config_dir)
    if line is None:
        return None
    return unknown_choice(line) or unknown_key(line)


def check_command_line(config_name: str, args: Optional[Sequence[str]] = None) -> None:
    """Exit with one line and :data:`EXIT_ERROR` when the command line picks an unknown
    config-group choice or overrides an unknown key (see :func:`command_line_error`); return otherwise."""
    try:
        message = command_line_error(sys.argv[1:] if args is None else args, config_name)
    except Exception as e:  # noqa: BLE001 - this check only improves a message: Hydra has the last word
        log.debug("command line not checked: %s", e, exc_info=e)
        return
    if message is not None:
        from relnas.errors import ConfigError

        fail(ConfigError(message))


def entry_point(config_name: str) -> Callable[[Callable[..., R]], Callable[..., R]]:
    """Decorator for a ``@hydra.main`` function of config ``config_name``: called from the command
    line (no arguments), it first checks the config-group choices and keys (:func:`check_command_line`); called
    with a config, it passes straight through as ``hydra.main`` does."""

    def decorate(main: Callable[..., R]) -> Callable[..., R]:
        @functools.wraps(main)
        def wrapper(*args: Any, **kwargs: Any) -> R:
            if not args and not kwargs:
                check_command_line(config_name)
            return main(*args, **kwargs)

        return wrapper

    return decorate
