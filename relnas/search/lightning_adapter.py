"""The Lightning adapter of a search: one Lightning epoch is one *unit* of the
:class:`~relnas.search.engine.SearchEngine` (one candidate's one-epoch estimation: train on
search-train, validate on search-valid), and the engine decides everything else. This adapter (a
Lightning callback) only forwards Lightning's hooks to the engine and its executor, stops the
Trainer when the search is done, and shows the progress bar and the per-generation line."""
from __future__ import annotations

import logging
from typing import List

import lightning as L

from relnas.search.engine import Candidate, SearchEngine

log = logging.getLogger(__name__)


class SearchLightningAdapter(L.Callback):
    """Drives a :class:`~relnas.search.engine.SearchEngine` from a Trainer's hooks (see the module doc)."""

    def __init__(self, engine: SearchEngine, progress: bool = True, announce: bool = True):
        """``progress``: a tqdm bar over the estimations; ``announce``: print a line per
        generation (both only where ``announce``: the first process of a search)."""
        self.engine = engine
        self.progress, self.announce = progress and announce, announce
        self._cands: List[Candidate] = []
        self._bar = None
        self._seen = 0
        self._module = None       # the LightningModule (graph statistics for the generation line)
        self._graphs_before: dict = {}
        engine.recorders.insert(0, self)  # the generation's line comes before the other records

    # a few read-only views for drivers
    @property
    def done(self) -> bool:
        return self.engine.done

    @property
    def history(self):
        return self.engine.history

    def remaining_estimations(self) -> int:
        return self.engine.remaining_estimations()

    # ------------------------------------------------------------------ Lightning hooks
    def on_fit_start(self, trainer: L.Trainer, pl_module) -> None:
        self._module = pl_module
        self._graphs_before = self._graph_report()
        e = self.engine
        if self.progress:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=e.strategy.budget, initial=e.estimations_before(e.generation),
                             desc="search", unit="cand", dynamic_ncols=True, leave=True)
        self._seen = e.estimations_seen
        e.settle()  # a process may own no unit of the first generation(s): it still joins their exchanges
        self._tick(trainer)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module) -> None:
        unit = self.engine.next_unit()
        if unit is None:  # Lightning started one epoch too many; nothing is trained in it
            trainer.should_stop = True
            raise RuntimeError("the search has no candidate left to train")
        self._cands = [self.engine.begin(unit, m) for m in unit.members]
        self.engine.executor.begin_unit(pl_module, trainer.datamodule, self._cands)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module) -> None:
        # Lightning 2 runs the epoch-end validation before this hook
        losses = self.engine.executor.unit_losses(pl_module, self._cands)
        trained = self.engine.executor.unit_trained(pl_module, self._cands)
        cands, self._cands = self._cands, []
        try:
            for cand, (train_loss, val_loss), tensors in zip(cands, losses, trained):
                self.engine.finish(cand, train_loss, val_loss, trained=tensors)
        finally:
            self._tick(trainer)

    def on_fit_end(self, trainer: L.Trainer, pl_module) -> None:
        self._close()

    def on_exception(self, trainer: L.Trainer, pl_module, exception: BaseException) -> None:
        self._close()

    # ------------------------------------------------------------------ recorder (console)
    def on_generation_end(self, engine: SearchEngine) -> None:
        s = engine.summaries[-1]
        msg = (f"generation {s['generation']}/{engine.strategy.generations}: best {s['best_loss']:.4f} "
               f"mean {s['mean_loss']:.4f} diversity {s['diversity']:.3f} lr {s['lr']:.4g} ({s['time_s']:.1f}s)")
        now = self._graph_report()
        d = {k: now[k] - self._graphs_before.get(k, 0) for k in now}
        self._graphs_before = now
        if d.get("captures", 0) or d.get("replays", 0):
            msg += (f"; CUDA graphs: {d['captures']:.0f} captures ({d['capture_s']:.1f}s), {d['replays']:.0f} replays, "
                    f"{d['eager']:.0f} eager steps")
        if self.announce:
            if log.hasHandlers():
                log.info(msg)  # the entry points' console handler writes it above the progress bar
            else:  # called from Python without logging set up
                (self._bar.write if self._bar is not None else print)(msg)

    def on_search_end(self, engine: SearchEngine) -> None:
        pass

    # ------------------------------------------------------------------ helpers
    def _graph_report(self) -> dict:
        report = getattr(self._module, "graph_report", None)
        return dict(report()) if callable(report) else {}

    def _tick(self, trainer: L.Trainer) -> None:
        e = self.engine
        if e.done:
            trainer.should_stop = True
        if self._bar is not None:
            rows = e.generation_rows() or [r for r in e.history if r["generation"] == e.generation]
            if rows:
                best = min(r["val_loss"] for r in rows)
                self._bar.set_postfix_str(f"gen {min(e.generation + 1, e.strategy.generations)}/"
                                          f"{e.strategy.generations} best {best:.4f}")
            self._bar.update(e.estimations_seen - self._seen)
        self._seen = e.estimations_seen

    def _close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
