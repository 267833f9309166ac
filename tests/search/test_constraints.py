"""Size budgets inside the search: the feasibility-first rule on hand-made pairs, the counting of a
cell's size, the strategies under the rule, and budgeted searches end to end."""
from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch

from relnas import Genotype
from relnas.nas import profile
from relnas.nas.arch import ArchSpec
from relnas.nas.genotypes import RelativeNAS
from relnas.nas.spaces import SearchSpace
from relnas.search import encoding
from relnas.search.baselines import RandomSearch, RegularizedEvolution
from relnas.search.constraints import Cost, SizeConstraints
from relnas.search.guards import SearchFailed
from relnas.search.run import ConfigError, run_search
from relnas.search.slow_fast import fast_slow
from relnas.search.strategies import Job
from relnas.search.strategies import RelativeNAS as RelativeNASStrategy
from helpers.search import tiny_search_cfg

POOLS = SearchSpace(("max_pool_3x3", "sep_conv_5x5"), 2)  # a cheap and an expensive operation


def _cell(op: str) -> Genotype:
    pairs = [(op, 0), (op, 1), (op, 0), (op, 1)]
    return Genotype(pairs, (2, 3), pairs, (2, 3), space=POOLS)


# ---------------------------------------------------------------------- the rule on hand-made pairs

def test_a_feasible_member_beats_an_infeasible_one_whatever_the_losses():
    assert fast_slow(2.0, 1.0, 0.0, 0.1) == (0, 1)
    assert fast_slow(1.0, 2.0, 0.1, 0.0) == (1, 0)
    assert fast_slow(math.inf, 1.0, 0.0, 0.1) == (0, 1)  # feasible first, even when it diverged


def test_between_infeasible_members_the_smaller_violation_wins():
    assert fast_slow(1.0, 3.0, 0.5, 0.2) == (1, 0)
    assert fast_slow(3.0, 1.0, 0.2, 0.5) == (0, 1)


def test_between_feasible_members_the_lower_loss_wins():
    assert fast_slow(1.5, 1.2, 0.0, 0.0) == (1, 0)
    assert fast_slow(1.2, 1.5) == (0, 1)


def test_ties_go_to_the_first_member():
    assert fast_slow(1.0, 1.0, 0.0, 0.0) == (0, 1)
    assert fast_slow(1.0, 1.0, 0.3, 0.3) == (0, 1)
    assert fast_slow(2.0, 1.0, 0.3, 0.3) == (1, 0)  # equal violations: the loss decides


def test_the_violation_is_the_relative_excess_summed_over_the_set_limits():
    both = SizeConstraints(max_params_m=2.0, max_mult_adds_m=100.0)
    assert both.violation_of(Cost(2.0, 100.0)) == 0.0        # at the limit: feasible
    assert both.violation_of(Cost(3.0, 50.0)) == pytest.approx(0.5)
    assert both.violation_of(Cost(3.0, 150.0)) == pytest.approx(1.0)
    assert SizeConstraints(max_mult_adds_m=100.0).violation_of(Cost(99.0, 120.0)) == pytest.approx(0.2)
    assert not SizeConstraints().active and SizeConstraints().violation(RelativeNAS) == 0.0


@pytest.mark.parametrize("key, value", [("max_params_m", 0), ("max_params_m", -1.0), ("max_mult_adds_m", "big")])
def test_a_budget_that_is_not_a_positive_number_is_refused(key, value):
    with pytest.raises(ValueError, match=f"search.constraints.{key}"):
        SizeConstraints(**{key: value})


# ---------------------------------------------------------------------- counting

def test_the_cost_is_counted_on_the_evaluation_network(reference_dir):
    ref = torch.load(reference_dir / "relativenas_cifar_c8_l5.pt", map_location="cpu", weights_only=True)
    cost = SizeConstraints(C=8, layers=5).cost(RelativeNAS)
    assert round(cost.params_m * 1e6) == ref["config"]["params_excluding_auxiliary"]


def test_each_genotype_is_counted_once_and_a_layout_builds_one_network(monkeypatch):
    monkeypatch.setattr(profile, "_LAYOUTS", {})
    built, counted = [], []
    build, count = ArchSpec.build, profile.network_size
    monkeypatch.setattr(ArchSpec, "build", lambda self, *a, **k: built.append(1) or build(self, *a, **k))
    monkeypatch.setattr(profile, "network_size", lambda arch: counted.append(arch.genotype) or count(arch))
    c = SizeConstraints(max_params_m=1.0, C=4, layers=3)
    for _ in range(3):
        c.violation(_cell("max_pool_3x3"))
        c.violation(_cell("sep_conv_5x5"))
    assert counted == [_cell("max_pool_3x3"), _cell("sep_conv_5x5")]
    assert len(built) == 1  # the second cell's size comes from the first network's parts


# ---------------------------------------------------------------------- the strategies

def _budget_between_the_two_cells(**kwargs) -> SizeConstraints:
    probe = SizeConstraints(C=4, layers=3)
    cheap, dear = probe.cost(_cell("max_pool_3x3")).params_m, probe.cost(_cell("sep_conv_5x5")).params_m
    assert cheap < dear
    return SizeConstraints(max_params_m=(cheap + dear) / 2, C=4, layers=3, **kwargs)


def test_relativenas_makes_the_feasible_member_the_fast_learner_and_reports_it():
    c = _budget_between_the_two_cells()
    s = RelativeNASStrategy(population_size=2, generations=1, space=POOLS, constraints=c)
    s.init(np.random.default_rng(0))
    cheap, dear = encoding.encode(_cell("max_pool_3x3")), encoding.encode(_cell("sep_conv_5x5"))
    s.alpha = np.stack([dear, cheap])
    told = s.tell(np.random.default_rng(0), Job(0, [0, 1], [dear.copy(), cheap.copy()]), [0.5, 2.0])
    assert told.roles == ["slow", "fast"] and told.merge_priority == [0, 1]  # the fast learner's weights win
    best_id, best_vec, best_loss = s.best()
    assert best_id == 1 and np.array_equal(best_vec, cheap) and best_loss == 2.0


def test_random_search_reports_the_best_feasible_cell():
    c = _budget_between_the_two_cells()
    s = RandomSearch(population_size=2, generations=1, space=POOLS, constraints=c)
    cheap, dear = encoding.encode(_cell("max_pool_3x3")), encoding.encode(_cell("sep_conv_5x5"))
    s.tell(None, Job(0, [0], [dear]), [0.5])
    s.tell(None, Job(1, [1], [cheap]), [2.0])
    assert s.best()[0] == 1


def test_evolution_tournaments_are_won_by_the_feasible_cell():
    c = _budget_between_the_two_cells()
    e = RegularizedEvolution(population_size=2, generations=2, sample_size=2, space=POOLS, constraints=c)
    cheap, dear = encoding.encode(_cell("max_pool_3x3")), encoding.encode(_cell("sep_conv_5x5"))
    e.ids, e.vectors, e.losses = [0, 1], [dear, cheap], [0.5, 2.0]
    e.next_id = 2
    e._propose(np.random.default_rng(0))
    assert e.mutations[2]["parent"] == 1


# ---------------------------------------------------------------------- budgeted searches

BUDGET_KEYS = ["search_space=compact", "search.constraints.C=4", "search.constraints.layers=3"]
COMPACT = SearchSpace(("sep_conv_3x3", "max_pool_3x3", "skip_connect"), 3)


def _params_m(genotype: Genotype) -> float:
    """Parameters (millions, no auxiliary head) of the C=4, 3-layer CIFAR network, counted here."""
    net = ArchSpec(network="cifar", genotype=genotype, C=4, layers=3).build()
    return sum(p.numel() for n, p in net.named_parameters() if not n.startswith("auxiliary")) / 1e6


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["relativenas", "random"])
def test_a_budgeted_searchs_cell_is_within_the_budget(tmp_path, strategy):
    # the same search without a budget: its cell, and the cheapest cell of its first generation
    # (the first generation is the same with a budget: the rule draws no random numbers)
    free = run_search(tiny_search_cfg(tmp_path / "free", BUDGET_KEYS + [f"strategy={strategy}"]), tmp_path / "free")
    with open(tmp_path / "free" / "history.csv") as f:
        first = [np.array(r["vector"].split(), float) for r in csv.DictReader(f) if r["generation"] == "1"]
    cheapest = min(_params_m(encoding.decode(v, space=COMPACT)) for v in first)
    unbudgeted = _params_m(free["genotype"])
    assert cheapest < unbudgeted  # else this seed cannot show the budget at work
    budget = (cheapest + unbudgeted) / 2

    run_dir = tmp_path / "budgeted"
    cfg = tiny_search_cfg(run_dir, BUDGET_KEYS + [f"search.constraints.max_params_m={budget}", f"strategy={strategy}"])
    result = run_search(cfg, run_dir)
    g = Genotype.load(run_dir)
    assert g == result["genotype"] and _params_m(g) <= budget


@pytest.mark.slow
def test_a_search_that_finds_no_feasible_cell_fails_saying_how_close_it_came(tmp_path):
    cfg = tiny_search_cfg(tmp_path, BUDGET_KEYS + ["search.constraints.max_params_m=0.0001", "search.generations=1",
                                                   "search.plots=true"])
    with pytest.raises(SearchFailed, match=r"no estimated cell is within search.constraints; the closest has "
                                           r"0\.\d+M params \(budget 0.0001M\)") as e:
        run_search(cfg, tmp_path)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "genotype.json").exists()
    # the records show how far the candidates were from the budget
    assert (tmp_path / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with open(tmp_path / "history.csv") as f:
        assert min(float(r["params_m"]) for r in csv.DictReader(f)) > 0.0001


def test_a_bad_budget_in_the_config_fails_in_one_line(tmp_path):
    cfg = tiny_search_cfg(tmp_path, ["search.constraints.max_params_m=-3"])
    with pytest.raises(ConfigError, match="search.constraints.max_params_m must be a positive number"):
        run_search(cfg, tmp_path)
