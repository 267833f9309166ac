"""Run directories: what a run of ``python -m relnas.<search | train | evaluate | transfer | export>`` leaves,
and the rules that pick a file from one. Every other module asks here.

A run directory holds

* ``result.json`` (:data:`RESULT_FILE`), written by every entry point when it ends, in one shape:
  ``status`` (``ok``, or ``failed`` with a one-line ``reason``), ``kind`` (:data:`KINDS`),
  ``headline`` (``{"metric": <name>, "value": <number or null>}``: search, the found genotype's
  validation loss ``val_loss``; training, the best validation top-1 error ``best_val_top1_err``;
  evaluation, the test top-1 error ``test_top1_err``; transfer, the task's monitored metric, e.g.
  ``map``, ``miou``, ``AP``; export, the parity check's largest absolute difference
  ``max_abs_diff``), then the entry point's details (:func:`write_result`);
* ``failure.json``: a job of a multirun stopped by a one-line error (written by
  :func:`relnas.utils.cli.fail`; read by :func:`failure`);
* search: ``genotype.json`` (the cell found), ``search_state.pt`` (its checkpoint, what
  ``resume=<dir>`` continues), ``run.json`` (this part's wall time: not in result.json, which a
  resumed search reproduces);
* training and transfer: ``checkpoints/last.ckpt`` (what ``resume=<dir>`` continues,
  :func:`resume_checkpoint`) and ``checkpoints/best*.ckpt`` (the best on validation);
* ``.hydra/config.yaml``: the run's config.

Which weights a training reports on the test split is its ``test_checkpoint`` rule
(configs/train.yaml; :func:`resolve_test_rule`), recorded in result.json as ``test_selection``;
:func:`reported_checkpoint` finds the checkpoint behind that number again (evaluation, transfer
backbones). The rules:

* ``final``: the weights after the last epoch. No choice is made with any held-out data.
* ``best_val``: the checkpoint with the best validation top-1, where validation is a split held
  out from the *training* set (``data.val_size > 0``); the test split is looked at once.
* ``best_test_epoch``: the checkpoint with the best top-1 on the *test* split (validation = test
  split, ``data.val_size=0``), i.e. the epoch is chosen on the test set. This is how the authors'
  code reports its numbers; it is optimistic and kept only for comparison with published tables.
* ``auto`` (default): ``best_val`` when a validation split is held out, else ``final``. The default
  never selects on the test set.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Union

from relnas.utils.cli import FAILURE_FILE
from relnas.utils.validate import finite_or_none

PathLike = Union[str, Path]

RESULT_FILE = "result.json"
GENOTYPE_FILE = "genotype.json"
SEARCH_STATE_FILE = "search_state.pt"
RUN_INFO_FILE = "run.json"
CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"
BEST_CHECKPOINTS = "best*.ckpt"

#: what ``kind`` a result file says its run was (the entry point's ``task_name``)
KINDS = ("search", "train", "evaluate", "transfer", "export")

__all__ = ["RESULT_FILE", "FAILURE_FILE", "GENOTYPE_FILE", "SEARCH_STATE_FILE", "RUN_INFO_FILE", "KINDS",
           "write_result", "read_result", "failure", "outcome", "kind", "genotype_file", "no_genotype_reason",
           "resume_checkpoint", "reported_checkpoint", "RULES", "resolve_test_rule", "tested_checkpoint",
           "test_record", "validation_split"]


# ---------------------------------------------------------------------- the result file

def write_result(run_dir: PathLike, kind: str, metric: str, value: Optional[float], details: Mapping[str, Any],
                 status: str = "ok") -> Path:
    """Write ``<run_dir>/result.json``: ``status``, ``kind``, ``headline`` (``metric`` and its
    ``value``), then ``details`` (indented; values JSON cannot hold written as strings)."""
    if kind not in KINDS:
        raise ValueError(f"unknown run kind {kind!r}; one of {', '.join(KINDS)}")
    from relnas.utils.io import write_json

    path = Path(run_dir) / RESULT_FILE
    write_json(path, {"status": status, "kind": kind, "headline": {"metric": metric, "value": value}, **details})
    return path


def read_result(run_dir: PathLike) -> Optional[Dict[str, Any]]:
    """The run's result record, or None when it wrote none; ``ValueError``/``OSError`` when the
    file cannot be read as a JSON object."""
    path = Path(run_dir) / RESULT_FILE
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    if not isinstance(record, dict):
        raise ValueError(f"{path} does not hold a JSON object")
    return record


def _result_or_none(run_dir: Path) -> Optional[Dict[str, Any]]:
    try:
        return read_result(run_dir)
    except (OSError, ValueError):
        return None


def _one_line(text: Any) -> str:
    return " ".join(str(text).split())


def failure(run_dir: PathLike) -> Optional[str]:
    """The one-line reason a job of a multirun stopped with (its ``failure.json``), or None."""
    path = Path(run_dir) / FAILURE_FILE
    if not path.is_file():
        return None
    try:
        return _one_line(json.loads(path.read_text()).get("reason") or "")
    except (OSError, ValueError, AttributeError) as e:
        return f"unreadable {FAILURE_FILE} ({e})"


def outcome(run_dir: PathLike) -> Dict[str, Any]:
    """How a run ended, from its files: ``status`` (``ok``; ``failed`` with its one-line
    ``reason``, from its failure.json or a failed result; ``missing`` when it wrote no result: it
    crashed or still runs; ``unreadable (...)``), ``kind``, the headline ``metric`` and ``value``,
    ``test_top1_err`` (training) and ``wall_time_s``."""
    run_dir = Path(run_dir)
    rec: Dict[str, Any] = {"status": "missing", "reason": None, "kind": None, "metric": None, "value": None,
                           "test_top1_err": None, "wall_time_s": None}
    try:
        result = read_result(run_dir)
        if result is not None:
            headline = result.get("headline") or {}
            wall = result.get("wall_time_s")
            info = run_dir / RUN_INFO_FILE
            if wall is None and info.is_file():  # a search's time is its run.json's
                wall = json.loads(info.read_text()).get("time_s")
            rec.update(status=str(result.get("status") or "ok"), kind=result.get("kind"),
                       metric=headline.get("metric"), value=finite_or_none(headline.get("value")),
                       test_top1_err=finite_or_none(result.get("test_top1_err")), wall_time_s=finite_or_none(wall))
            if result.get("reason"):
                rec["reason"] = _one_line(result["reason"])
    except (OSError, ValueError, AttributeError) as e:
        rec["status"] = f"unreadable ({e})"
    reason = failure(run_dir)
    if reason is not None:  # written by this run of the job (the task wrapper removes an older one)
        rec.update(status="failed", reason=reason)
    return rec


def kind(run_dir: PathLike) -> Optional[str]:
    """What kind of run ``run_dir`` holds (:data:`KINDS`): its result's ``kind``; before it ended,
    its config's ``task_name`` (or ``search`` beside a search checkpoint); None for a directory
    that is no run of ours."""
    run_dir = Path(run_dir)
    result = _result_or_none(run_dir)
    if result is not None and result.get("kind") in KINDS:
        return result["kind"]
    if (run_dir / SEARCH_STATE_FILE).is_file():
        return "search"
    config = run_dir / ".hydra" / "config.yaml"
    if config.is_file():
        from omegaconf import OmegaConf

        try:
            name = OmegaConf.select(OmegaConf.load(config), "task_name", default=None)
        except Exception:  # noqa: BLE001 - an unreadable config says nothing
            name = None
        if name in KINDS:
            return str(name)
    return None


# ---------------------------------------------------------------------- a search's genotype

def genotype_file(run_dir: PathLike) -> Path:
    """Where a search run directory holds the genotype it found."""
    return Path(run_dir) / GENOTYPE_FILE


def no_genotype_reason(key: str, run_dir: PathLike) -> str:
    """Why the directory ``run_dir`` (given as ``key``) offers no genotype, in one line: a failed
    search says so in its result file."""
    run_dir = Path(run_dir)
    result = _result_or_none(run_dir)
    if result is not None and result.get("status") == "failed":
        reason = _one_line(result.get("reason") or "no reason recorded")
        return f"the search in {key!r} failed and found no genotype ({RESULT_FILE}: {reason})"
    if (run_dir / SEARCH_STATE_FILE).is_file():
        return f"{key!r} is a search run directory without a {GENOTYPE_FILE} yet (unfinished? resume=<it> continues it)"
    what = kind(run_dir)
    if what not in (None, "search"):
        return f"{key!r} is a {what} run directory, not a search run directory (no {GENOTYPE_FILE})"
    return f"{key!r} is a directory without a {GENOTYPE_FILE} (is it a search run directory?)"


# ---------------------------------------------------------------------- checkpoints

def resume_checkpoint(run_dir: PathLike) -> Optional[Path]:
    """The checkpoint that ``resume=<run_dir>`` continues from (``checkpoints/last.ckpt``, or a
    ``last.ckpt`` in the directory itself), or None."""
    run_dir = Path(run_dir)
    for cand in (run_dir / CHECKPOINT_DIR / LAST_CHECKPOINT, run_dir / LAST_CHECKPOINT):
        if cand.is_file():
            return cand
    return None


def _configured_test_rule(run_dir: Path) -> str:
    """The ``test_checkpoint`` rule of a training run from its ``.hydra/config.yaml`` (``final``
    when it cannot be read: the choice that looks at no held-out data)."""
    from omegaconf import OmegaConf

    try:
        cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
        val_size = int(OmegaConf.select(cfg, "data.val_size", default=0) or 0)
        return resolve_test_rule(OmegaConf.select(cfg, "test_checkpoint", default="auto"), val_size)
    except Exception:  # noqa: BLE001 - no or an unreadable config, an unknown rule
        return "final"


def reported_checkpoint(run_dir: PathLike) -> Optional[Path]:
    """The checkpoint behind a training run's reported test number: the one its result's
    ``test_selection`` names (``checkpoints/last.ckpt`` for the final weights); without that
    record (an interrupted run), the one its ``test_checkpoint`` rule would have chosen
    (``checkpoints/best*.ckpt`` for ``best_val`` / ``best_test_epoch``, else
    ``checkpoints/last.ckpt``: never the best-on-validation checkpoint when validation was the
    test split unless the run asked for it). None when the directory holds no checkpoint."""
    run_dir = Path(run_dir)
    ck = run_dir / CHECKPOINT_DIR
    last = ck / LAST_CHECKPOINT
    result = _result_or_none(run_dir)
    if result is not None:
        selection = result.get("test_selection") or {}
        chosen = selection.get("checkpoint")
        if chosen and Path(str(chosen)).is_file():
            return Path(str(chosen))
        if selection.get("rule") == "final" and last.is_file():
            return last
    best = sorted(ck.glob(BEST_CHECKPOINTS)) if ck.is_dir() else []
    if best and (_configured_test_rule(run_dir) != "final" or not last.is_file()):
        return best[-1]
    if last.is_file():
        return last
    return None


# ---------------------------------------------------------------------- the test_checkpoint rule

RULES = ("auto", "final", "best_val", "best_test_epoch")

#: ``{metric}``: what the checkpoints are ranked by (classification: top-1; transfer: the task's monitor)
DESCRIPTIONS = {
    "final": "weights after the final epoch (no selection)",
    "best_val": "checkpoint with the best {metric} on the validation split held out from the training set",
    "best_test_epoch": "checkpoint of the epoch with the best {metric} ON THE TEST SPLIT ({protocol}selected on the "
                       "test set, optimistic; only for comparison with published tables)",
}


def resolve_test_rule(rule: Optional[str], val_size: int) -> str:
    """The concrete rule for ``rule`` given the held-out validation size; ValueError (one line)
    for a rule that contradicts the data split."""
    rule = str(rule or "auto")
    if rule not in RULES:
        raise ValueError(f"unknown test_checkpoint={rule!r}; choose one of {', '.join(RULES)}")
    if rule == "auto":
        return "best_val" if val_size > 0 else "final"
    if rule == "best_val" and val_size <= 0:
        raise ValueError("test_checkpoint=best_val needs a validation split held out from the training set: set "
                         "data.val_size (e.g. 5000), or use test_checkpoint=final")
    if rule == "best_test_epoch" and val_size > 0:
        raise ValueError("test_checkpoint=best_test_epoch selects the epoch on the test split, but data.val_size>0 "
                         "validates on held-out training images: set data.val_size=0 or use test_checkpoint=best_val")
    return rule


def tested_checkpoint(rule: str, best: Optional[str]) -> Optional[str]:
    """The checkpoint file a concrete ``rule`` tests, given the best checkpoint the run kept
    (None: the final weights in memory)."""
    return best if rule in ("best_val", "best_test_epoch") else None


def validation_split(val_size: int) -> str:
    return f"{val_size} images held out from the training set" if val_size > 0 else \
        "the test split (no images held out; validation metrics are test-set numbers)"


def test_record(rule: str, checkpoint: Optional[str], val_size: int, epochs_run: int, metric: str = "top-1",
                protocol: str = "the authors' protocol: ") -> Dict[str, Any]:
    """The ``test_selection`` entry of a result: the rule behind the headline test numbers.
    ``metric`` names what checkpoints are ranked by; ``protocol`` prefixes the note on test-set
    selection (the classification recipes' authors report that way)."""
    return {"rule": rule, "description": DESCRIPTIONS[rule].format(metric=metric, protocol=protocol),
            "checkpoint": checkpoint or f"final weights (epoch "
            f"{epochs_run})", "validation_split": validation_split(val_size),
            "selected_on_test_set": rule == "best_test_epoch"}
