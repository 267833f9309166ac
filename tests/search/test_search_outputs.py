"""What the search's files say about each candidate must be true of the genotype they list: its
loss (population.json), its size on the evaluation network (history.csv, population.json,
result.json); the Pareto front of loss and size on hand-made points."""
from __future__ import annotations

import csv
import json
import math
import re
from types import SimpleNamespace

import numpy as np
import pytest

from relnas import Genotype
from relnas.nas.arch import ArchSpec
from relnas.nas.profile import count_mult_adds, count_params
from relnas.search import encoding
from relnas.search.outputs import pareto_front
from relnas.search.recorders import LoggerRecorder
from relnas.search.run import run_search
from helpers.search import tiny_search_cfg

#: the evaluation network the sizes are counted on in the search below (small: quick to count here)
EVALUATION = ["search.constraints.C=8", "search.constraints.layers=5"]


@pytest.fixture(scope="module")
def one_generation(tmp_path_factory):
    """One generation of the tiny search with its plots, sizes counted at C=8, L=5 (no limit)."""
    run_dir = tmp_path_factory.mktemp("one_generation")
    run_search(tiny_search_cfg(run_dir, ["search.generations=1", "search.plots=true", *EVALUATION]), run_dir)
    return run_dir


def _genotype_of(text: str) -> Genotype:
    """The genotype of its printed form ``normal: op(i) op(j) | ... ; concat [2, 3] || reduce: ...``."""
    cells = {}
    for part in text.split(" || "):
        kind, body = part.split(": ", 1)
        nodes, concat = body.split(" ; concat ")
        cells[kind] = ([(op, int(i)) for op, i in re.findall(r"(\w+)\((\d+)\)", nodes)], json.loads(concat))
    return Genotype(cells["normal"][0], cells["normal"][1], cells["reduce"][0], cells["reduce"][1])


def _sizes(genotype: Genotype) -> tuple:
    """(millions of parameters, millions of multiply-adds) of the C=8, 5-layer CIFAR network at 32x32."""
    net = ArchSpec(network="cifar", genotype=genotype, C=8, layers=5).build()
    return count_params(net) / 1e6, count_mult_adds(net, 32) / 1e6


def test_population_json_does_not_pair_a_moved_slow_learner_with_its_old_loss(one_generation):
    """After the last generation's slow-fast update a slow learner's vector has moved: its listed
    genotype was never estimated, and the loss of the genotype that was (history.csv) must not be
    presented as its loss."""
    with open(one_generation / "history.csv") as f:
        rows = {int(r["individual"]): r for r in csv.DictReader(f)}   # one generation: one row each
    population = json.loads((one_generation / "population.json").read_text())
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


def test_history_csv_gives_each_candidates_size_on_the_evaluation_network(one_generation):
    with open(one_generation / "history.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4
    for row in rows:
        params_m, mult_adds_m = _sizes(_genotype_of(row["genotype"]))
        assert float(row["params_m"]) == pytest.approx(params_m, abs=1e-9)
        assert float(row["mult_adds_m"]) == pytest.approx(mult_adds_m, abs=1e-9)


def test_population_json_gives_the_size_of_the_genotype_it_lists(one_generation):
    population = json.loads((one_generation / "population.json").read_text())
    for item in population:   # a moved slow learner too: the listed genotype's size, not the estimated one's
        params_m, mult_adds_m = _sizes(Genotype.from_dict(item["genotype"]))
        assert item["params_m"] == pytest.approx(params_m, abs=1e-9)
        assert item["mult_adds_m"] == pytest.approx(mult_adds_m, abs=1e-9)


def test_result_json_gives_the_chosen_cells_size_and_the_network_it_is_counted_on(one_generation):
    result = json.loads((one_generation / "result.json").read_text())
    params_m, mult_adds_m = _sizes(Genotype.load(one_generation))
    assert result["params_m"] == pytest.approx(params_m, abs=1e-9)
    assert result["mult_adds_m"] == pytest.approx(mult_adds_m, abs=1e-9)
    assert result["evaluation_network"] == {"network": "cifar", "C": 8, "layers": 5, "image_size": 32}


def test_a_search_draws_its_pareto_plot(one_generation):
    assert (one_generation / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_per_generation_genotype_table_gives_each_candidates_size():
    class TensorBoardLogger:  # the recorder tells the loggers apart by their class name
        def __init__(self):
            self.experiment, self.texts = self, []

        def log_metrics(self, metrics, step):
            pass

        def add_text(self, tag, text, global_step):
            self.texts.append((tag, text, global_step))

        def save(self):
            pass

    row = {"generation": 1, "individual": 0, "pair": 1, "role": "fast", "val_loss": 1.5, "diverged": False,
           "params_m": 0.25, "mult_adds_m": 30.5, "train_loss": 1.7, "lr": 0.1, "drop_path_prob": 0.0,
           "vector": "0.5", "genotype": "a cell"}
    logger = TensorBoardLogger()
    LoggerRecorder([logger]).on_generation_end(SimpleNamespace(history=[row], summaries=[{"generation": 1}]))
    (tag, text, step), = logger.texts
    header, _, first = ([c.strip() for c in line.strip("| ").split(" | ")] for line in text.splitlines())
    assert (tag, step) == ("search/genotypes", 1)
    assert dict(zip(header, first)) == {"generation": "1", "individual": "0", "pair": "1", "role": "fast",
                                        "val_loss": "1.5", "params_m": "0.25", "mult_adds_m": "30.5",
                                        "genotype": "a cell"}


# ---------------------------------------------------------------------- the Pareto front

def test_the_front_is_the_points_no_other_is_smaller_and_better_than_in_the_order_of_size():
    #          0         1         2         3         4
    points = [(1, 5.0), (2, 3.0), (3, 4.0), (4, 1.0), (2.5, 6.0)]
    # 2 is dominated by 1 (smaller, better), 4 by 1 and 2; 3 is the best, 0 the smallest
    assert pareto_front(*zip(*points)) == [0, 1, 3]
    assert pareto_front([], []) == []
    assert pareto_front([7.0], [2.0]) == [0]


def test_of_equal_sizes_only_the_lowest_loss_and_of_equal_losses_only_the_smallest_size_is_on_the_front():
    assert pareto_front([1, 1], [2.0, 1.0]) == [1]
    assert pareto_front([2, 1], [1.0, 1.0]) == [1]
    assert pareto_front([1, 2, 2], [3.0, 1.0, 2.0]) == [0, 1]


def test_copies_of_a_front_point_are_all_on_the_front_and_copies_of_a_dominated_point_all_off_it():
    assert pareto_front([2, 1, 1, 3], [0.5, 1.0, 1.0, 0.1]) == [1, 2, 0, 3]
    assert pareto_front([1, 2, 2], [1.0, 2.0, 2.0]) == [0]
    assert pareto_front([1, 1, 1], [1.0, 1.0, 1.0]) == [0, 1, 2]


def test_a_diverged_point_is_never_on_the_front_and_dominates_nothing():
    assert pareto_front([1, 2, 3], [math.inf, 2.0, math.nan]) == [1]
    assert pareto_front([math.nan, 2], [0.1, 2.0]) == [1]
    with pytest.raises(ValueError, match="2 sizes but 1 losses"):
        pareto_front([1, 2], [1.0])
