"""CUDA-graph capture of a candidate's steps (relnas.models.step_graph, SearchModule(cuda_graphs=True)).

On a CPU the graph bookkeeping runs with ``backend="emulate"`` (capture records the step, replay
runs it on the static buffers): the graphed search must then compute exactly what the eager one
computes. The CUDA test at the end runs only where a GPU is visible (``pytest -m gpu``).
"""
from __future__ import annotations

import csv
import functools

import pytest
import torch

from relnas.models.search_module import SearchModule
from relnas.models.step_graph import StepGraph
from search_helpers import tiny_search_cfg


class _Acc:
    """A step that writes in place (as a graphed step must) and logs what ran."""

    def __init__(self):
        self.total = torch.zeros(())
        self.calls = []

    def step(self, x):
        self.calls.append("step")
        self.total += x.sum()

    def eager(self, x):
        self.calls.append("eager")
        self.total += x.sum()


def test_step_graph_warms_up_captures_once_and_replays_with_fresh_inputs():
    acc = _Acc()
    g = StepGraph(acc.step, eager_step=acc.eager, warmup=2, backend="emulate")
    batches = [torch.full((4, 3), float(i)) for i in range(1, 6)] + [torch.full((2, 3), 10.0)]
    for b in batches:
        g(b)
    # 2 warm-up calls eager; the 3rd captures (runs nothing) then replays; the odd-shaped last batch is eager
    assert g.stats == {"eager": 3, "captures": 1, "replays": 3}
    assert acc.calls == ["eager", "eager", "step", "step", "step", "eager"]
    assert acc.total.item() == sum(b.sum().item() for b in batches)  # replays read each new batch
    g.release()
    assert not g.captured


def test_step_graph_never_captures_a_shape_other_than_the_first():
    acc = _Acc()
    g = StepGraph(acc.step, eager_step=acc.eager, warmup=1, backend="emulate")
    for n in (4, 2, 2, 2):
        g(torch.ones(n, 3))
    assert g.stats == {"eager": 4, "captures": 0, "replays": 0}


@pytest.mark.parametrize("kwargs,message", [({"warmup": 0}, "warmup"), ({"backend": "tpu"}, "backend")])
def test_step_graph_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        StepGraph(lambda x: None, **kwargs)


def test_search_module_rejects_unknown_graph_backend():
    from relnas.search.weight_set import WeightSet

    with pytest.raises(ValueError, match="graph_backend"):
        SearchModule(WeightSet(C=4, layers=3), cuda_graphs=True, graph_backend="xla")


def _run(tmp_path, name, monkeypatch, graphed: bool):
    import relnas.search.run as run_mod

    modules = []

    def factory(*args, **kwargs):
        modules.append(SearchModule(*args, **kwargs, graph_backend="emulate" if graphed else None))
        return modules[-1]

    monkeypatch.setattr(run_mod, "SearchModule", factory)
    run_dir = tmp_path / name
    # 48 search-train images in batches 20, 20, 8 and 48 search-valid in 20, 20, 8: each candidate
    # warms up, captures, replays and runs the odd last batch eagerly, in training and validation
    cfg = tiny_search_cfg(run_dir, ["data.batch_size=20", "data.eval_batch_size=20", "search.generations=2",
                                    "trainer.accelerator=auto", f"search.cuda_graphs={str(graphed).lower()}"])
    out = run_mod.run_search(cfg, run_dir)
    with open(run_dir / "history.csv") as f:
        rows = list(csv.DictReader(f))
    return out, rows, modules[0]


def test_graphed_search_equals_eager_search(tmp_path, monkeypatch):
    _, eager_rows, eager_mod = _run(tmp_path, "eager", monkeypatch, graphed=False)
    _, graph_rows, graph_mod = _run(tmp_path, "graphs", monkeypatch, graphed=True)
    assert eager_mod.graph_stats == {"eager": 0, "captures": 0, "replays": 0}
    n = len(graph_rows)
    assert n == 8
    # per candidate: train 1 warm-up + 1 replay + 1 odd batch, validation the same
    assert graph_mod.graph_stats == {"eager": 4 * n, "captures": 2 * n, "replays": 2 * n}
    keys = ("val_loss", "train_loss", "role", "vector", "genotype")
    assert [{k: r[k] for k in keys} for r in graph_rows] == [{k: r[k] for k in keys} for r in eager_rows]
    ws_e, ws_g = eager_mod.weight_set.state_dict(), graph_mod.weight_set.state_dict()
    assert ws_e.keys() == ws_g.keys()
    for k in ws_e:
        assert torch.equal(ws_e[k], ws_g[k]), k


def test_cuda_graphs_on_a_cpu_trainer_is_a_config_error(tmp_path):
    from relnas.search.run import ConfigError, check_config

    cfg = tiny_search_cfg(tmp_path, ["search.cuda_graphs=true"])
    with pytest.raises(ConfigError, match="cuda_graphs=true needs a GPU"):
        check_config(cfg)
    cfg = tiny_search_cfg(tmp_path, ["search.cuda_graphs=true", "trainer.accelerator=auto", "search.graph_warmup=0"])
    with pytest.raises(ConfigError, match="graph_warmup"):
        check_config(cfg)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_graph_training_matches_eager_on_gpu():
    """Real capture: a candidate trained with replayed graphs ends where eager training ends."""
    import numpy as np

    from relnas.search import encoding
    from relnas.search.weight_set import WeightSet

    torch.manual_seed(0)
    dev = torch.device("cuda")
    ws0 = WeightSet(C=8, layers=5).to(dev, memory_format=torch.channels_last)
    init = {k: v.clone() for k, v in ws0.state_dict().items()}
    arch_vec = encoding.sample(np.random.default_rng(3))
    x = torch.randn(6, 32, 3, 32, 32, device=dev)
    y = torch.randint(0, 10, (6, 32), device=dev)

    def train(graphs: bool):
        ws0.load_state_dict(init)
        m = SearchModule(ws0, cuda_graphs=graphs, graph_backend="cuda" if graphs else None).to(dev)
        m.begin_candidate(ws0.compile(encoding.decode(arch_vec)), lr=0.05, drop_prob=0.0)
        m.train()
        # SearchModule.training_step calls manual_backward only on eager steps; give it a stub trainer
        m.manual_backward = lambda loss: loss.backward()
        for i in range(6):
            m.training_step((x[i], y[i]), i)
        torch.cuda.synchronize()
        stats = dict(m._graphs["train"].stats) if graphs else None
        return {k: v.clone() for k, v in ws0.state_dict().items()}, m._train_sum.item(), stats

    w_e, loss_e, _ = train(False)
    w_g, loss_g, stats = train(True)
    assert stats == {"eager": 1, "captures": 1, "replays": 5}
    assert loss_g == pytest.approx(loss_e, rel=1e-4)
    for k in w_e:
        if w_e[k].is_floating_point():
            torch.testing.assert_close(w_g[k], w_e[k], rtol=1e-3, atol=1e-4, msg=k)
