"""Hydra callback of every relnas app (configs/hydra/default.yaml): each job leaves no W&B run
open, and a multirun ends with a sweep summary.

``<sweep dir>/sweep_summary.csv`` has one row per job: its number, folder, swept values, status
(``ok``; ``failed``, with the job's one-line error in ``reason``, from its ``failure.json`` or a failed
``result.json``; ``missing`` when the job left no result), its headline metric (the ``headline`` of
its ``result.json``, :mod:`relnas.runs`: search, the found genotype's validation loss; training, the
best validation top-1 error; evaluation, the test top-1 error; transfer, the task's metric on its
evaluation split, e.g. ``map``, ``miou``, ``AP``; export, the parity check's largest difference),
test error (training), and wall time.
``sweep_summary.png`` plots the validation metric and the wall time of each job against the swept
values (against the job number when more than one key is swept or the values are not numbers).
"""
from __future__ import annotations

import csv
import logging
import sys
from pathlib import Path
from typing import Any, Dict, List, Sequence

from omegaconf import DictConfig, OmegaConf

from relnas import runs
from relnas.utils.validate import finite_or_none

log = logging.getLogger(__name__)

try:
    from hydra.experimental.callback import Callback
except ImportError:  # pragma: no cover - hydra < 1.1
    Callback = object  # type: ignore[assignment,misc]

SUMMARY_CSV = "sweep_summary.csv"
SUMMARY_PNG = "sweep_summary.png"


def job_record(job_dir: Path) -> Dict[str, Any]:
    """What one job of a sweep produced (:func:`relnas.runs.outcome`), as the summary's columns."""
    out = runs.outcome(job_dir)
    return {"status": out["status"], "reason": out["reason"], "val_metric": out["value"],
            "val_metric_name": out["metric"], "test_top1_err": out["test_top1_err"], "wall_time_s": out["wall_time_s"]}


def _job_overrides(job_dir: Path) -> List[str]:
    path = job_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return []
    return [str(o) for o in OmegaConf.load(path)]


def summarize_sweep(sweep_dir: Path, swept: Sequence[str]) -> List[Dict[str, Any]]:
    """One row per job folder (``<sweep_dir>/<n>``) with its swept values and results."""
    from relnas.utils.loggers import _job_overrides as parse_overrides

    rows = []
    jobs = sorted((d for d in Path(sweep_dir).iterdir() if d.is_dir() and d.name.isdigit()), key=lambda d: int(d.name))
    for d in jobs:
        over = parse_overrides(_job_overrides(d))
        row: Dict[str, Any] = {"job": int(d.name), "dir": str(d)}
        row.update({k: over.get(k) for k in swept})
        row.update(job_record(d))
        rows.append(row)
    return rows


def write_summary(sweep_dir: Path, rows: List[Dict[str, Any]], swept: Sequence[str]) -> List[Path]:
    sweep_dir = Path(sweep_dir)
    metric = next((r["val_metric_name"] for r in rows if r.get("val_metric_name")), "val_metric")
    # training jobs have a test top-1 error; search and transfer jobs none (the column would stay empty)
    classification = any(r.get("test_top1_err") is not None or r.get("val_metric_name") == "best_val_top1_err"
                         for r in rows)
    test_col = classification and metric != "test_top1_err"  # evaluation jobs: it is the headline column already
    fields = ["job", *swept, "status", "reason", metric, *(["test_top1_err"] if test_col else []), "wall_time_s", "dir"]
    out = []
    with open(sweep_dir / SUMMARY_CSV, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({**r, metric: r.get("val_metric")})
    out.append(sweep_dir / SUMMARY_CSV)
    if rows:
        out.append(plot_summary(sweep_dir / SUMMARY_PNG, rows, swept, metric))
    return out


def plot_summary(path: Path, rows: List[Dict[str, Any]], swept: Sequence[str], metric: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    numeric = len(swept) == 1 and all(finite_or_none(r.get(swept[0])) is not None for r in rows)
    if numeric:
        xs = [float(r[swept[0]]) for r in rows]
        xlabel = swept[0]
    else:
        xs = [r["job"] for r in rows]
        xlabel = "job"
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    names = {"val_loss": "validation loss of the found cell", "best_val_top1_err": "best validation top-1 error (%)",
             "test_top1_err": "test top-1 error (%)"}
    for ax, key, label in ((axes[0], "val_metric", names.get(metric, metric.replace("_", " "))),
                           (axes[1], "wall_time_s", "wall time (s)")):
        pts = sorted((x, r[key]) for x, r in zip(xs, rows) if r.get(key) is not None)
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color="tab:blue")
        failed = [x for x, r in zip(xs, rows) if r.get(key) is None]
        if failed:  # jobs without a number: marked on the axis
            ax.plot(failed, [ax.get_ylim()[0]] * len(failed), "x", color="tab:red", label="no result")
            ax.legend(fontsize=8)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        if not numeric:
            ax.set_xticks(xs)
            ax.set_xticklabels([",".join(f"{k}={r.get(k)}" for k in swept) or str(r["job"]) for r in rows],
                               rotation=30, ha="right", fontsize=7)
        elif all(float(x).is_integer() for x in xs):
            from matplotlib.ticker import MaxNLocator

            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(f"sweep {Path(path).parent}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)
    return Path(path)


class SweepCallback(Callback):
    """Hydra callback: finish a job's W&B run at the job's end; summarise a multirun at its end
    (and exit with status 1 when a job failed or left no result)."""

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        from relnas.utils.loggers import finish_wandb

        status = getattr(job_return, "status", None)
        failed = status is not None and getattr(status, "name", "") == "FAILED"
        finish_wandb(exit_code=1 if failed else 0)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from relnas.utils.loggers import sweep_keys

        rows: List[Dict[str, Any]] = []
        try:
            sweep_dir = Path(str(config.hydra.sweep.dir))
            if not sweep_dir.is_dir():
                return
            swept = sweep_keys(list(config.hydra.overrides.task))
            rows = summarize_sweep(sweep_dir, swept)
            paths = write_summary(sweep_dir, rows, swept)
            print(f"sweep summary: {paths[0]}" + (f" and {paths[1].name}" if len(paths) > 1 else ""), flush=True)
        except Exception as e:  # noqa: BLE001 - a summary must not turn a finished sweep into a failure
            log.warning("could not write the sweep summary: %s", e)
        bad = [r for r in rows if r.get("status") != "ok"]
        if bad:
            sys.exit(f"error: {len(bad)} of {len(rows)} jobs failed or left no result (jobs "
                     f"{', '.join(str(r['job']) for r in bad)}; see {SUMMARY_CSV})")
