"""Baseline strategies (random search, regularized evolution): unit tests of the strategies and
tiny end-to-end searches on synthetic data (C=4, L=3, 16x16 images, 64 training images)."""
from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from relnas.search import encoding
from relnas.search.baselines import RandomSearch, RegularizedEvolution, mutate
from relnas.search.strategies import STRATEGIES, create_strategy


def _choices(vec):
    return np.clip(np.floor(vec).astype(int), 0, encoding.UPPER.astype(int) - 1)


def _flat_genotype(vec):
    g = encoding.decode(vec)
    return [x for pair in g.normal + g.reduce for x in pair]


def test_registered():
    assert {"relativenas", "random", "evolution"} <= set(STRATEGIES)
    assert isinstance(create_strategy("random", population_size=4, generations=2), RandomSearch)
    s = create_strategy("evolution", population_size=4, generations=2, budget=None, sample_size=3)
    assert isinstance(s, RegularizedEvolution) and s.sample_size == 3 and s.budget == 8


def test_budget_and_generations():
    s = RandomSearch(population_size=4, generations=50, budget=10)
    assert s.budget == 10 and s.generations == 3
    assert [s.estimations_before(g) for g in range(4)] == [0, 4, 8, 10]


@pytest.mark.parametrize("seed", range(20))
def test_mutation_changes_exactly_one_choice(seed):
    rng = np.random.default_rng(seed)
    parent = encoding.sample(rng)
    if seed % 4 == 0:
        parent = encoding.UPPER.copy()  # clipped to the upper bound: selects the last interval
    child, index = mutate(rng, parent)
    assert np.all(child >= encoding.LOWER) and np.all(child <= encoding.UPPER)
    diff = np.flatnonzero(_choices(child) != _choices(parent))
    assert diff.tolist() == [index]
    assert child[index] == math.floor(child[index]) + 0.5
    # the decoded genotype differs in exactly one (op or input) position
    a, b = _flat_genotype(parent), _flat_genotype(child)
    assert sum(x != y for x, y in zip(a, b)) == 1


def test_mutation_every_element_of_smallest_range():
    rng = np.random.default_rng(0)
    v = np.full(encoding.DIM, 0.3)
    for idx in range(encoding.DIM):
        child, i = mutate(rng, v, idx)
        assert i == idx and _choices(child)[idx] != 0 and child[idx] < encoding.UPPER[idx]


def test_random_samples_in_bounds():
    s = RandomSearch(population_size=6, budget=15)
    rng = np.random.default_rng(1)
    s.init(rng)
    ids = []
    for g in range(s.generations):
        jobs = s.ask(rng, g)
        for job in jobs:
            assert len(job.members) == 1
            v = job.vectors[0]
            assert np.all(v >= encoding.LOWER) and np.all(v < encoding.UPPER)
            r = s.tell(rng, job, [float(rng.random())])
            assert r.merge_priority == [0]
            ids.append(job.members[0])
        s.end_generation(rng, g)
    assert ids == list(range(15))
    assert s.tell(rng, jobs[0], [math.inf]).merge_priority == []  # a diverged candidate writes nothing back


def _drive(s, rng, loss_fn, generations=None):
    """Run a strategy without networks: losses from ``loss_fn(vector)``."""
    rows = []
    for g in range(s.generations if generations is None else generations):
        for job in s.ask(rng, g):
            vec = job.vectors[0]
            assert vec is not None
            r = s.tell(rng, job, [loss_fn(vec)])
            rows.append((g, job.members[0], r.roles[0], vec.copy()))
        s.end_generation(rng, g)
    return rows


def test_evolution_aging_removes_the_oldest():
    n = 5
    s = RegularizedEvolution(population_size=n, budget=17, sample_size=3)
    rng = np.random.default_rng(3)
    s.init(rng)
    order = []
    for g in range(s.generations):
        for job in s.ask(rng, g):
            before = list(s.ids)
            s.tell(rng, job, [float(np.sum(job.vectors[0]))])
            order.append(job.members[0])
            if len(order) <= n:
                assert s.ids == order  # initial population, nothing dies
            else:
                assert s.ids == before[1:] + [job.members[0]]  # the oldest removed, the child appended
                assert s.ids == order[-n:]
        s.end_generation(rng, g)
    assert s.estimated == 17 and order == list(range(17))


def test_evolution_children_are_one_mutation_of_the_tournament_winner():
    n = 6
    s = RegularizedEvolution(population_size=n, budget=30, sample_size=n)  # tournament = whole population
    rng = np.random.default_rng(4)
    seen = {}
    for g in range(s.generations):
        for job in s.ask(rng, g):
            vec = job.vectors[0]
            ident = job.members[0]
            if ident >= n:
                m = s.mutations[ident]
                # sample_size == population size: the parent is the population's best
                assert m["parent"] == s.ids[int(np.argmin(s.losses))]
                diff = np.flatnonzero(_choices(vec) != _choices(seen[m["parent"]]))
                assert diff.tolist() == [m["index"]]
            seen[ident] = vec.copy()
            s.tell(rng, job, [float(np.sum(_choices(vec)))])
        s.end_generation(rng, g)
    best_id, best_vec, best_loss = s.best()
    assert best_loss == min(float(np.sum(_choices(v))) for v in seen.values())
    assert np.array_equal(best_vec, seen[best_id])


@pytest.mark.parametrize("cls", [RandomSearch, RegularizedEvolution])
def test_state_dict_round_trip_is_exact(cls):
    def loss(v):
        return float(np.sum(np.sin(v)))

    a = cls(population_size=4, budget=14)
    rng = np.random.default_rng(7)
    a.init(rng)
    _drive(a, rng, loss, generations=2)
    state = a.state_dict()
    rng_state = rng.bit_generator.state
    b = cls(population_size=4, budget=14)
    b.load_state_dict(state)
    rng_b = np.random.default_rng(0)
    rng_b.bit_generator.state = rng_state
    ra = [(g, i, r, v.tolist()) for g, i, r, v in _drive_from(a, rng, loss, 2)]
    rb = [(g, i, r, v.tolist()) for g, i, r, v in _drive_from(b, rng_b, loss, 2)]
    assert ra == rb
    assert a.best()[0] == b.best()[0] and a.best()[2] == b.best()[2]
    assert a.population().keys() == b.population().keys()


def _drive_from(s, rng, loss_fn, start):
    rows = []
    for g in range(start, s.generations):
        for job in s.ask(rng, g):
            r = s.tell(rng, job, [loss_fn(job.vectors[0])])
            rows.append((g, job.members[0], r.roles[0], job.vectors[0].copy()))
        s.end_generation(rng, g)
    return rows


# ---------------------------------------------------------------------- end to end

def _cfg(run_dir, strategy, budget, *extra):
    from helpers.search import tiny_search_cfg

    return tiny_search_cfg(run_dir, [f"strategy={strategy}", "search.population_size=4", "search.generations=3",
                                     f"search.budget={budget}", "search.channels_last=false", "seed=0",
                                     "data.num_train=64", "data.batch_size=32", "data.eval_batch_size=64",
                                     "data.cutout=0", *extra])


@pytest.mark.parametrize("strategy,extra", [("random", []), ("evolution", ["strategy.sample_size=2"])])
def test_search_end_to_end(tmp_path, strategy, extra):
    from relnas.search.run import run_search

    run_dir = tmp_path / strategy
    out = run_search(_cfg(run_dir, strategy, 7, *extra), run_dir)  # 7: not a multiple of 4
    assert (run_dir / "genotype.json").is_file() and (run_dir / "history.csv").is_file()
    with open(run_dir / "history.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 7
    assert [int(r["individual"]) for r in rows] == list(range(7))
    assert [int(r["generation"]) for r in rows] == [1, 1, 1, 1, 2, 2, 2]
    result = json.loads((run_dir / "result.json").read_text())
    assert result["strategy"] == strategy and result["estimations"] == 7
    losses = [float(r["val_loss"]) for r in rows]
    assert out["val_loss"] == pytest.approx(min(losses))
    assert int(result["individual"]) == int(np.argmin(losses))
    if strategy == "evolution":
        assert [r["role"] for r in rows] == ["random"] * 4 + ["child"] * 3


def test_search_resume_matches_uninterrupted(tmp_path):
    """Interrupt an evolution search after its first generation, resume it, compare with a
    straight run: identical history."""
    from relnas.search.engine import SimulatedInterrupt
    from relnas.search.run import run_search

    straight = tmp_path / "straight"
    run_search(_cfg(straight, "evolution", 10, "strategy.sample_size=2"), straight)
    broken = tmp_path / "broken"
    with pytest.raises(SimulatedInterrupt):
        run_search(_cfg(broken, "evolution", 10, "strategy.sample_size=2", "search.interrupt_after=6"), broken)
    run_search(_cfg(broken, "evolution", 10, "strategy.sample_size=2", f"resume={broken}"), broken)
    a = (straight / "history.csv").read_text()
    b = (broken / "history.csv").read_text()
    assert a == b
    assert json.loads((straight / "result.json").read_text()) == json.loads((broken / "result.json").read_text())


def test_odd_population_runs_for_the_baselines(tmp_path):
    """The baselines do not pair: an odd population is theirs to accept; RelativeNAS refuses it
    in one line."""
    from relnas.search.run import ConfigError, run_search
    from helpers.search import tiny_search_cfg

    run_dir = tmp_path / "random5"
    run_search(tiny_search_cfg(run_dir, ["strategy=random", "search.population_size=5",
                                         "search.generations=1"]), run_dir)
    with open(run_dir / "history.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["individual"]) for r in rows] == [0, 1, 2, 3, 4] and {r["role"] for r in rows} == {"random"}
    assert json.loads((run_dir / "result.json").read_text())["strategy"] == "random"
    with pytest.raises(ConfigError, match="population_size must be an even integer"):
        run_search(tiny_search_cfg(tmp_path / "rn5", ["search.population_size=5"]), tmp_path / "rn5")


def test_the_strategy_group_builds_the_strategy_with_its_overrides(tmp_path):
    from relnas.search.run import build_strategy, resolve_config
    from helpers.search import tiny_search_cfg

    new = build_strategy(resolve_config(tiny_search_cfg(tmp_path, ["strategy=evolution", "strategy.sample_size=3"])))
    default = build_strategy(resolve_config(tiny_search_cfg(tmp_path, ["strategy=evolution"])))
    assert isinstance(new, RegularizedEvolution) and isinstance(default, RegularizedEvolution)
    assert (new.sample_size, default.sample_size) == (3, 5)  # configs/strategy/evolution.yaml: sample_size 5
    assert (new.population_size, new.budget) == (4, 12)  # search.population_size x search.generations (TINY)
