"""Recorders: what a search leaves behind, notified by the :class:`~relnas.search.engine.SearchEngine`
at every generation's end (``on_generation_end``) and once at the end (``on_search_end``).

* :class:`CheckpointRecorder`: ``search_state.pt`` (the engine's ``state_dict`` and the search's
  spec, compared on resume), atomically (:mod:`relnas.search.state`);
* :class:`LoggerRecorder`: the Lightning loggers (CSV, TensorBoard, W&B): per-generation metrics,
  every individual's validation loss, the genotype table; at the end (also of a failed search) the
  W&B line series, the table of every estimated candidate and its loss-against-size scatter charts;
* :class:`OutputRecorder`: the files of the run directory (:mod:`relnas.search.outputs`):
  ``history.csv``, ``generations.csv``, ``population.json`` after every generation, and at the
  end ``genotype.json``, ``result.json`` and the plots.

In a search of several processes only the first one records (the others get no recorders).
"""
from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from relnas import runs
from relnas.search import encoding
from relnas.search.engine import SearchEngine
from relnas.search.outputs import (CANDIDATE_FIELDS, HISTORY_FIELDS, SIZES, estimated_candidates,
                                   mark_diverged, markdown_table, plot_generation_stats, plot_pareto,
                                   plot_trajectories, write_csv, write_population)
from relnas.search.state import save_state

GENERATION_FIELDS = ["generation", "best_loss", "mean_loss", "diversity", "lr", "drop_path_prob", "diverged", "time_s"]
#: the columns of the per-generation genotype table (W&B and TensorBoard)
GENOTYPE_COLUMNS = ["generation", "individual", "pair", "role", "val_loss", *SIZES, "genotype"]


def chosen_row(engine: SearchEngine) -> Optional[int]:
    """The index in ``engine.history`` of the estimate of the cell the strategy reports
    (``strategy.best()``): its individual's most recent row with its genotype (None: no such row)."""
    best_id, best_vec, _ = engine.strategy.best()
    genotype = str(encoding.decode(best_vec, space=engine.strategy.space))
    for k in range(len(engine.history) - 1, -1, -1):
        row = engine.history[k]
        if int(row["individual"]) == best_id and str(row["genotype"]) == genotype:
            return k
    return None


class CheckpointRecorder:
    """``search_state.pt`` after every generation: ``engine.state_dict()`` plus ``spec`` (what
    defines the search, :meth:`relnas.search.spec.SearchSpec.to_dict`)."""

    def __init__(self, run_dir: Path, spec: Dict[str, Any], logger_ids: Optional[Dict[str, str]] = None):
        self.run_dir, self.spec = Path(run_dir), dict(spec)
        self.logger_ids = dict(logger_ids or {})  # e.g. the W&B run id, which a resume continues

    def on_generation_end(self, engine: SearchEngine) -> None:
        state = engine.state_dict()
        state["spec"] = self.spec
        state["logger_ids"] = self.logger_ids
        save_state(self.run_dir, state)

    def on_search_end(self, engine: SearchEngine) -> None:
        pass


class LoggerRecorder:
    """Per-generation metrics to Lightning loggers (``step`` = generation)."""

    def __init__(self, loggers: Sequence[Any]):
        self.loggers = list(loggers)

    def on_generation_end(self, engine: SearchEngine) -> None:
        summary = engine.summaries[-1]
        g = summary["generation"]
        rows = [r for r in engine.history if r["generation"] == g]
        metrics = {f"search/{k}": float(v) for k, v in summary.items() if k not in ("generation",)}
        for r in rows:
            metrics[f"val_loss/ind_{int(r['individual']):03d}"] = \
                float(r["val_loss"]) if math.isfinite(r["val_loss"]) else float("nan")
        metrics["search/generation"] = g
        table = [[r[c] for c in GENOTYPE_COLUMNS] for r in rows]
        for lg in self.loggers:
            lg.log_metrics(metrics, step=g)
            if hasattr(lg, "log_text") and type(lg).__name__ == "WandbLogger":
                lg.log_text(key="search/genotypes", columns=GENOTYPE_COLUMNS, data=table)
            elif type(lg).__name__ == "TensorBoardLogger":
                md = markdown_table(GENOTYPE_COLUMNS, table)
                lg.experiment.add_text("search/genotypes", md, global_step=g)
            lg.save()

    def on_search_end(self, engine: SearchEngine) -> None:
        self._wandb_summary(engine, chosen_row(engine))

    def on_search_failed(self, engine: SearchEngine, reason: str) -> None:
        """The same charts and table, no cell chosen."""
        self._wandb_summary(engine, None)

    def _wandb_summary(self, engine: SearchEngine, chosen: Optional[int]) -> None:
        """To W&B: every individual's loss per generation (``search/val_loss_trajectories``), the
        table of every estimated candidate (``search/candidates``,
        :func:`~relnas.search.outputs.estimated_candidates`) and a scatter chart of its validation
        loss against each size (``search/val_loss_vs_params_m``, ``search/val_loss_vs_mult_adds_m``)."""
        history = engine.history
        for lg in self.loggers:
            if type(lg).__name__ == "WandbLogger":
                import wandb

                by_ind: Dict[int, Dict[int, float]] = {}
                for r in history:
                    by_ind.setdefault(int(r["individual"]), {})[int(r["generation"])] = float(r["val_loss"])
                gens = sorted({int(r["generation"]) for r in history})
                ys = [[by_ind[i].get(g, float("nan")) for g in gens] for i in sorted(by_ind)]
                candidates = wandb.Table(columns=CANDIDATE_FIELDS, data=[
                    [r[c] for c in CANDIDATE_FIELDS] for r in estimated_candidates(history, chosen)])
                lg.experiment.log({
                    "search/val_loss_trajectories": wandb.plot.line_series(
                        xs=gens, ys=ys, keys=[f"ind_{i:03d}" for i in sorted(by_ind)],
                        title="validation loss per individual", xname="generation"),
                    "search/candidates": candidates,
                    **{f"search/val_loss_vs_{key}": wandb.plot.scatter(
                        candidates, key, "val_loss", title=f"validation loss against {label}")
                       for key, label in SIZES.items()}})
        # the loggers are finished by the search driver (relnas.utils.loggers.close_loggers)


class OutputRecorder:
    """The run directory's files (see the module docstring)."""

    def __init__(self, run_dir: Path, plots: bool = True, extra: Optional[Dict[str, Any]] = None):
        self.run_dir, self.plots = Path(run_dir), bool(plots)
        self.extra = dict(extra or {})  # more keys of result.json (data_source)

    def _tables(self, engine: SearchEngine) -> None:
        write_csv(self.run_dir / "history.csv", mark_diverged(engine.history), HISTORY_FIELDS)
        write_csv(self.run_dir / "generations.csv", engine.summaries, GENERATION_FIELDS)
        # each individual's most recent estimate (RelativeNAS: the last generation; baselines: its only one)
        last = {int(r["individual"]): r for r in engine.history}
        losses = {i: float(r["val_loss"]) for i, r in last.items()}
        write_population(self.run_dir / "population.json", engine.strategy.population(), losses,
                         engine.strategy.constraints.cost, last, engine.strategy.space)

    def _pareto(self, engine: SearchEngine, chosen: Optional[int]) -> None:
        constraints = engine.strategy.constraints
        plot_pareto(self.run_dir / "pareto.png", engine.history, constraints.evaluation_network(),
                    {key: getattr(constraints, f"max_{key}") for key in SIZES}, chosen)

    def on_generation_end(self, engine: SearchEngine) -> None:
        self._tables(engine)

    def on_search_failed(self, engine: SearchEngine, reason: str) -> None:
        """A search whose candidates diverged: the tables, a result.json that says why, no
        genotype.json (nothing a training could pick up)."""
        self._tables(engine)
        runs.genotype_file(self.run_dir).unlink(missing_ok=True)
        runs.write_result(self.run_dir, "search", "val_loss", None, {
            "reason": reason, "strategy": engine.strategy.name,
            "generations": engine.strategy.generations, "estimations": len(engine.history), **self.extra,
        }, status="failed")
        if self.plots:
            plot_trajectories(self.run_dir / "val_loss_trajectories.png", engine.history)
            plot_generation_stats(self.run_dir / "diversity.png", engine.summaries)
            self._pareto(engine, None)

    def on_search_end(self, engine: SearchEngine) -> None:
        self._tables(engine)
        strat = engine.strategy
        best_id, best_vec, best_loss = strat.best()
        genotype = encoding.decode(best_vec, space=strat.space)
        genotype.save(runs.genotype_file(self.run_dir))
        val_loss = best_loss if math.isfinite(best_loss) else None
        runs.write_result(self.run_dir, "search", "val_loss", val_loss, {
            "genotype": genotype.to_dict(), "genotype_str": str(genotype), "individual": best_id,
            "val_loss": val_loss, **asdict(strat.constraints.cost(genotype)),
            "evaluation_network": strat.constraints.evaluation_network(), "vector": [float(v) for v in best_vec],
            "strategy": strat.name, "generations": strat.generations, "estimations": len(engine.history),
            **self.extra,
        })
        if self.plots:
            from relnas.nas.draw import plot_genotype

            plot_trajectories(self.run_dir / "val_loss_trajectories.png", engine.history)
            plot_generation_stats(self.run_dir / "diversity.png", engine.summaries)
            self._pareto(engine, chosen_row(engine))
            plot_genotype(genotype, self.run_dir)


def recorders_for(run_dir: Path, spec: Dict[str, Any], loggers: Sequence[Any], plots: bool,
                  logger_ids: Optional[Dict[str, str]] = None, extra: Optional[Dict[str, Any]] = None) -> List[Any]:
    """The recorders of a search's first process, in notification order (log, checkpoint, files)."""
    return [LoggerRecorder(loggers), CheckpointRecorder(run_dir, spec, logger_ids),
            OutputRecorder(run_dir, plots, extra)]
