"""Which weights a training run reports on the test split (``test_checkpoint`` in configs/train.yaml).

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

from typing import Any, Dict, Optional

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


def validation_split(val_size: int) -> str:
    return f"{val_size} images held out from the training set" if val_size > 0 else \
        "the test split (no images held out; validation metrics are test-set numbers)"


def test_record(rule: str, checkpoint: Optional[str], val_size: int, epochs_run: int, metric: str = "top-1",
                protocol: str = "the authors' protocol: ") -> Dict[str, Any]:
    """The ``test_selection`` entry of results.json: the rule behind the headline test numbers.
    ``metric`` names what checkpoints are ranked by; ``protocol`` prefixes the note on test-set
    selection (the classification recipes' authors report that way)."""
    return {"rule": rule, "description": DESCRIPTIONS[rule].format(metric=metric, protocol=protocol),
            "checkpoint": checkpoint or f"final weights (epoch "
            f"{epochs_run})", "validation_split": validation_split(val_size),
            "selected_on_test_set": rule == "best_test_epoch"}
