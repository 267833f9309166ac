"""What population.json says about each individual must be true of the genotype it lists."""
from __future__ import annotations

import csv
import json

import numpy as np

from relnas.search import encoding
from relnas.search.run import run_search
from helpers.search import tiny_search_cfg


def test_population_json_does_not_pair_a_moved_slow_learner_with_its_old_loss(tmp_path):
    """After the last generation's slow-fast update a slow learner's vector has moved: its listed
    genotype was never estimated, and the loss of the genotype that was (history.csv) must not be
    presented as its loss."""
    run_search(tiny_search_cfg(tmp_path, ["search.generations=1"]), tmp_path)
    with open(tmp_path / "history.csv") as f:
        rows = {int(r["individual"]): r for r in csv.DictReader(f)}   # one generation: one row each
    population = json.loads((tmp_path / "population.json").read_text())
    assert sorted(p["individual"] for p in population) == [0, 1, 2, 3]
    changed = 0
    for p in population:
        row = rows[p["individual"]]
        listed = str(encoding.decode(np.array(p["vector"])))
        assert p["role"] == row["role"]
        assert p["val_loss"] == float(row["val_loss"])
        if listed == row["genotype"]:        # the loss is that of the listed genotype
            assert p["estimated"] is True and "estimated_genotype" not in p
        else:                                # a slow learner the update moved to a new genotype
            changed += 1
            assert row["role"] == "slow"
            assert p["estimated"] is False and p["estimated_genotype"] == row["genotype"]
    assert changed >= 1  # the case this test is about occurs in this run (the first update moves far)
