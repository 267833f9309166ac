"""Guards of a search run: numeric settings checked before work starts and the end-of-search
health check (a search whose candidates diverged fails instead of reporting an arbitrary cell).
What a resumed search may change is the spec's rule (:mod:`relnas.search.spec`)."""
from __future__ import annotations

import math
from typing import Any, Dict, Sequence

from omegaconf import DictConfig, OmegaConf

from relnas.errors import RelnasError
from relnas.utils.validate import check_float, check_int


class SearchFailed(RelnasError):
    """The search ran but produced no trustworthy result (its message is one line, read as
    ``error: the search failed: ...``)."""

    def __str__(self) -> str:
        return f"the search failed: {super().__str__()}"


def validate_search_numbers(cfg: DictConfig) -> None:
    """Sizes, learning rates and regularisation of a search config; raises ValueError (one line).
    Sections absent from ``cfg`` (a partial config in a test) are not checked."""
    s = cfg.search
    if "seed" in cfg:  # seeds numpy's SeedSequence and the data split: a non-negative integer
        check_int("seed", cfg.get("seed"), 0)
    if OmegaConf.select(cfg, "supernet") is not None:
        check_int("supernet.C", OmegaConf.select(cfg, "supernet.C"), 1)
        check_int("supernet.layers", OmegaConf.select(cfg, "supernet.layers"), 1)
    lr = check_float("search.lr", s.get("lr"), 0.0, low_open=True,
                     hint="the initial learning rate of each candidate's SGD, e.g. 0.1")
    check_float("search.lr_min", s.get("lr_min", 0.0), 0.0, lr, high_open=False,
                hint="the cosine schedule's final learning rate, between 0 and search.lr")
    check_float("search.momentum", s.get("momentum", 0.9), 0.0, 1.0)
    check_float("search.weight_decay", s.get("weight_decay", 0.0), 0.0)
    check_float("search.grad_clip", s.get("grad_clip", 5.0), 0.0, low_open=True)
    check_float("search.drop_path_prob", s.get("drop_path_prob", 0.0), 0.0, 1.0)
    check_float("search.max_diverged_share", s.get("max_diverged_share", 0.5), 0.0, 1.0, high_open=False)
    if OmegaConf.select(cfg, "data") is not None:
        check_int("data.batch_size", OmegaConf.select(cfg, "data.batch_size"), 1)
        check_int("data.eval_batch_size", OmegaConf.select(cfg, "data.eval_batch_size", default=1), 1)
    tp = float(s.train_portion)
    for key in ("search.subset", "data.subset"):
        n = check_int(key, OmegaConf.select(cfg, key), 2, optional=True)
        if n is not None and not 1 <= round(tp * n) <= n - 1:
            raise ValueError(f"{key}={n} leaves an empty search-train or search-validation split at "
                             f"search.train_portion={tp}; use a larger subset")


def check_health(history: Sequence[Dict[str, Any]], max_diverged_share: float, lr: float) -> None:
    """Raise :class:`SearchFailed` when the last generation has no finite candidate or when more
    than ``max_diverged_share`` of all estimations diverged."""
    if not history:
        return
    last = max(int(r["generation"]) for r in history)
    last_rows = [r for r in history if int(r["generation"]) == last]
    diverged = [r for r in history if not math.isfinite(float(r["val_loss"]))]
    hint = (f"lower search.lr (now {lr:g}) or search.grad_clip, or check the data; the per-candidate losses "
            f"are in history.csv (diverged = true)")
    if all(not math.isfinite(float(r["val_loss"])) for r in last_rows):
        raise SearchFailed(f"every candidate of the last generation ({last}) diverged (non-finite loss), so there "
                           f"is no architecture to report: {hint}")
    share = len(diverged) / len(history)
    if share > max_diverged_share:
        raise SearchFailed(f"{len(diverged)} of {len(history)} candidate estimations ({share:.0%}) diverged, more "
                           f"than search.max_diverged_share={max_diverged_share:g}: {hint}")
