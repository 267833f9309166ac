"""The search engine without a Trainer: a tiny weight set set to zero, a fake "training" that adds
a known integer to every tensor a candidate uses, losses chosen by hand. The expected weight set after
each pair is written out from Eq. 6's rule (fast learner's values, else the slow learner's, else
unchanged), and the order of ask / train / tell / merge / record is checked step by step."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from relnas.search.distributed import DistContext
from relnas.search.engine import SearchEngine, SearchSettings, SimulatedInterrupt
from relnas.search.executors import MemberParallel, PerGeneration, Sequential, Unit, create_executor, executor_name
from relnas.search.strategies import Job, RelativeNAS
from relnas.search.weight_set import WeightSet


class LoggedRelativeNAS(RelativeNAS):
    def __init__(self, log, **kw):
        super().__init__(**kw)
        self.log = log

    def ask(self, rng, generation):
        self.log.append(("ask", generation))
        return super().ask(rng, generation)

    def tell(self, rng, job, losses):
        self.log.append(("tell", job.index))
        return super().tell(rng, job, losses)

    def end_generation(self, rng, generation):
        self.log.append(("end", generation))


class LogRecorder:
    def __init__(self, log):
        self.log = log

    def on_generation_end(self, engine):
        self.log.append(("record", engine.generation))

    def on_search_end(self, engine):
        self.log.append(("search_end", engine.generation))


def _engine(executor, generations=1, seed=0):
    log = []
    ws = WeightSet(C=2, num_classes=3, layers=3)
    with torch.no_grad():
        for t in ws.tensors().values():
            t.zero_()
    strategy = LoggedRelativeNAS(log, population_size=4, generations=generations)
    engine = SearchEngine(strategy, ws, SearchSettings(seed=seed), executor, [LogRecorder(log)])
    return engine, log


def _drive(engine, log, seen=None, losses=lambda ident: float(ident)):
    """Run the search: candidate ``i`` adds ``i + 1`` to each tensor it uses; its loss is ``i``
    (the lower id is the fast learner). ``seen[(generation, i)]``: the weight set as the candidate found it."""
    while (unit := engine.next_unit()) is not None:
        for m in unit.members:
            cand = engine.begin(unit, m)
            ident = engine.jobs[unit.pos].members[m]
            log.append(("train", ident))
            tensors = engine.weight_set.tensors()
            if seen is not None:
                seen[(engine.generation, ident)] = {k: tensors[k].clone() for k in cand.before}
            with torch.no_grad():
                for k in cand.before:
                    tensors[k].add_(ident + 1)
            engine.finish(cand, 0.5, losses(ident))


def _keys(engine, ident):
    """The tensors individual ``ident`` uses (from its vector as asked)."""
    from relnas.search import encoding

    job = next(j for j in engine.strategy.log_jobs if ident in j.members)
    vec = job.vectors[job.members.index(ident)]
    ws = engine.weight_set
    return set(ws.keys_of(ws.compile(encoding.decode(vec)).groups))


def _capture_jobs(engine):
    real_ask = engine.strategy.ask

    def ask(rng, g):
        jobs = real_ask(rng, g)
        engine.strategy.log_jobs = [Job(j.index, list(j.members), [v.copy() for v in j.vectors]) for j in jobs]
        return jobs

    engine.strategy.ask = ask


def _expected_after(weights, fast, slow, d_fast, d_slow):
    """Eq. 6 by hand: a tensor the fast learner used holds its trained value; one only the slow
    learner used holds the slow learner's; every other keeps its value."""
    out = {}
    for k, v in weights.items():
        out[k] = v + d_fast if k in fast else v + d_slow if k in slow else v.clone()
    return out


def _one_generation_of_two_pairs(executor):
    """An engine driven through one generation of two pairs: the engine, its event log, the weight set
    each member found (``seen``) and the two pairs' members."""
    engine, log = _engine(executor)
    _capture_jobs(engine)
    seen = {}
    _drive(engine, log, seen)
    jobs = engine.strategy.log_jobs
    return engine, log, seen, tuple(jobs[0].members), tuple(jobs[1].members)


def test_sequential_order_and_merged_omega_by_hand():
    engine, log, seen, (a, b), (c, d) = _one_generation_of_two_pairs(Sequential())
    # the order: ask, both members of pair 1, tell (and merge), pair 2, tell, end, record
    assert log == [("ask", 0), ("train", a), ("train", b), ("tell", 0), ("train", c), ("train", d), ("tell", 1),
                   ("end", 0), ("record", 1)]
    zero = {k: torch.zeros_like(v) for k, v in engine.weight_set.tensors().items()}
    # pair 1: both members found the weight set at zero (the second after the first was restored)
    for ident in (a, b):
        assert all(torch.equal(v, zero[k]) for k, v in seen[(0, ident)].items())
    f1, s1 = min(a, b), max(a, b)
    after1 = _expected_after(zero, _keys(engine, f1), _keys(engine, s1), f1 + 1, s1 + 1)
    # pair 2 inherited the weight set as pair 1's merge left it
    for ident in (c, d):
        assert all(torch.equal(v, after1[k]) for k, v in seen[(0, ident)].items())
    f2, s2 = min(c, d), max(c, d)
    after2 = _expected_after(after1, _keys(engine, f2), _keys(engine, s2), f2 + 1, s2 + 1)
    weights = engine.weight_set.tensors()
    for k in weights:
        assert torch.equal(weights[k], after2[k]), k
    assert any(bool((v != 0).any()) for v in weights.values())
    assert [r["role"] for r in engine.history] == ["fast" if r["individual"] in (f1, f2) else "slow"
                                                   for r in engine.history]
    assert engine.done and engine.next_unit() is None


def test_per_generation_every_pair_inherits_the_generation_start_weight_set():
    engine, log, seen, (a, b), (c, d) = _one_generation_of_two_pairs(PerGeneration())
    assert log == [("ask", 0), ("train", a), ("train", b), ("train", c), ("train", d), ("tell", 0), ("tell", 1),
                   ("end", 0), ("record", 1)]
    zero = {k: torch.zeros_like(v) for k, v in engine.weight_set.tensors().items()}
    for ident in (a, b, c, d):
        assert all(torch.equal(v, zero[k]) for k, v in seen[(0, ident)].items())
    f1, s1, f2, s2 = min(a, b), max(a, b), min(c, d), max(c, d)
    # the merges run in pair order at the generation's end: pair 2 (trained from zero, so its
    # values are 0 + its delta) wins where it wrote; elsewhere pair 1's merge stands
    after1 = _expected_after(zero, _keys(engine, f1), _keys(engine, s1), f1 + 1, s1 + 1)
    expected = _expected_after(zero, _keys(engine, f2), _keys(engine, s2), f2 + 1, s2 + 1)
    pair2 = _keys(engine, f2) | _keys(engine, s2)
    weights = engine.weight_set.tensors()
    for k in weights:
        assert torch.equal(weights[k], expected[k] if k in pair2 else after1[k]), k


def test_a_diverged_member_loses_and_writes_nothing():
    engine, log = _engine(Sequential())
    _capture_jobs(engine)

    def losses(ident):
        return float("nan") if ident == 0 else float(ident)

    _drive(engine, log, losses=losses)
    row = next(r for r in engine.history if r["individual"] == 0)
    assert row["role"] == "slow" and row["val_loss"] == float("inf")
    job = next(j for j in engine.strategy.log_jobs if 0 in j.members)
    partner = job.members[1 - job.members.index(0)]
    weights = engine.weight_set.tensors()
    keys0, keysp = _keys(engine, 0), _keys(engine, partner)
    other = next(j for j in engine.strategy.log_jobs if 0 not in j.members)
    keys_other = set().union(*(_keys(engine, i) for i in other.members))
    for k in keys0 - keysp - keys_other:
        assert torch.equal(weights[k], torch.zeros_like(weights[k])), k  # the diverged member's own tensors: untouched
    assert any(k not in keysp and k not in keys_other for k in keys0)


def test_state_dict_round_trip_continues_identically():
    full, log_full = _engine(Sequential(), generations=3, seed=5)
    _drive(full, log_full)
    first, log_first = _engine(Sequential(), generations=3, seed=5)
    states = []

    class Checkpoint:  # what the checkpoint recorder does: the state at a generation's end
        def on_generation_end(self, engine):
            states.append(engine.state_dict())

        def on_search_end(self, engine):
            pass

    first.recorders.append(Checkpoint())
    first.settings.interrupt_after = 4  # stop after generation 1
    with pytest.raises(SimulatedInterrupt):
        _drive(first, log_first)
    state = states[0]
    assert state["generation"] == 1
    second, log_second = _engine(Sequential(), generations=3, seed=99)  # another seed: all comes from the state
    second.load_state_dict(state)
    _drive(second, log_second)
    assert second.history == full.history
    assert [dict(s, time_s=0) for s in second.summaries] == [dict(s, time_s=0) for s in full.summaries]
    assert second.rng.bit_generator.state == full.rng.bit_generator.state
    np.testing.assert_array_equal(second.strategy.alpha, full.strategy.alpha)
    a, b = full.weight_set.tensors(), second.weight_set.tensors()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_interrupt_after_counts_estimations():
    engine, log = _engine(Sequential(), generations=2)
    engine.settings.interrupt_after = 6
    with pytest.raises(SimulatedInterrupt):
        _drive(engine, log)
    assert engine.generation == 1 and len(engine.history) == 4


def test_executors_divide_the_work():
    jobs = [Job(i, [2 * i, 2 * i + 1], [None, None]) for i in range(5)]
    assert Sequential().work(jobs) == [Unit(p, (m,)) for p in range(5) for m in (0, 1)]
    assert PerGeneration(DistContext(rank=1, world_size=3)).work(jobs) == [Unit(1, (0,)), Unit(1, (1,)),
                                                                           Unit(4, (0,)), Unit(4, (1,))]
    assert MemberParallel(DistContext(rank=1, world_size=2)).work(jobs) == [Unit(p, (1,)) for p in range(5)]


def test_executor_names_and_checks():
    pair = RelativeNAS(population_size=4, generations=1)
    one, two, three = (DistContext(rank=0, world_size=n) for n in (1, 2, 3))
    assert isinstance(create_executor("auto", pair, one), Sequential)
    assert isinstance(create_executor("auto", pair, two), MemberParallel)
    with pytest.raises(ValueError, match="per_generation"):
        create_executor("auto", pair, three)
    with pytest.raises(ValueError, match="one process"):
        create_executor("sequential", pair, two)
    assert executor_name(None) == "auto" and executor_name("per_generation") == "per_generation"
    with pytest.raises(ValueError, match="unknown search.executor 'sometimes'"):
        executor_name("sometimes")
