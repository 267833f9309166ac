"""CUDA-graph capture of a candidate's steps (relnas.search.step_graph, SearchModule(cuda_graphs=True)).

On a CPU the graph bookkeeping runs with ``backend="emulate"`` (capture records the step, replay
runs it on the static buffers): the graphed search must then compute exactly what the eager one
computes. The CUDA tests at the end run only where a GPU is visible (``pytest -m gpu``): they compare
graphed and eager steps under pinned numerics (deterministic cuDNN, benchmark off, no TF32), and
once under the default numerics with a tolerance measured from two eager runs that differ only in
cuDNN's algorithm choice.
"""
from __future__ import annotations

import contextlib
import csv

import pytest
import torch

from relnas.search.search_module import SearchModule
from relnas.search.step_graph import StepGraph
from helpers.search import members_one_after_the_other, tiny_search_cfg


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


def test_search_module_warns_that_cuda_graphs_do_nothing_on_a_cpu(caplog):
    from relnas.search.weight_set import WeightSet

    m = SearchModule(WeightSet(C=4, layers=3), cuda_graphs=True)
    with caplog.at_level("WARNING", logger="relnas.search.search_module"):
        m.on_fit_start()
    assert "no effect on cpu" in caplog.text
    assert m._graph_backend() is None  # eager steps


def _run(tmp_path, name, monkeypatch, graphs, backend=None, accelerator: str = "auto", extra=()):
    """A tiny search through run_search; returns (history rows, the SearchModule)."""
    import relnas.search.run as run_mod
    from helpers.search import RecordingSearchModule

    RecordingSearchModule.instances.clear()
    run_dir = tmp_path / name
    # 48 search-train images in batches 20, 20, 8 and 48 search-valid in 20, 20, 8: each candidate
    # warms up, captures, replays and runs the odd last batch eagerly, in training and validation;
    # generation 2 trains with drop path (ramped from 0)
    cfg = tiny_search_cfg(run_dir, ["data.batch_size=20", "data.eval_batch_size=20", "search.generations=2",
                                    f"trainer.accelerator={accelerator}", f"search.cuda_graphs={str(graphs).lower()}",
                                    "module._target_=helpers.search.RecordingSearchModule",
                                    f"+module.graph_backend={backend or 'null'}", *extra])
    run_mod.run_search(cfg, run_dir)
    with open(run_dir / "history.csv") as f:
        rows = list(csv.DictReader(f))
    return rows, RecordingSearchModule.instances[0]


def test_graphed_search_equals_eager_search(tmp_path, monkeypatch):
    eager_rows, eager_mod = _run(tmp_path, "eager", monkeypatch, graphs=False)
    graph_rows, graph_mod = _run(tmp_path, "graphs", monkeypatch, graphs=True, backend="emulate")
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


@contextlib.contextmanager
def numerics(deterministic: bool, benchmark: bool, tf32=None):
    """cuDNN algorithm choice and TF32 (None: left as it is) set for a block, restored afterwards."""
    b = torch.backends
    saved = (b.cudnn.deterministic, b.cudnn.benchmark, b.cudnn.allow_tf32, b.cuda.matmul.allow_tf32)
    b.cudnn.deterministic, b.cudnn.benchmark = deterministic, benchmark
    if tf32 is not None:
        b.cudnn.allow_tf32 = b.cuda.matmul.allow_tf32 = tf32
    try:
        yield
    finally:
        b.cudnn.deterministic, b.cudnn.benchmark, b.cudnn.allow_tf32, b.cuda.matmul.allow_tf32 = saved


def pinned_numerics():
    """One deterministic set of cuDNN algorithms, no TF32: graphed and eager steps then run the
    same kernels, so any difference would be the graph's."""
    return numerics(deterministic=True, benchmark=False, tf32=False)


def _two_candidates_on_gpu(drop_prob: float, seeds=(None, None), capture: str = "lean"):
    """A runner of two candidates in a row on one weight set (train with a smaller last batch,
    then validation under inference_mode), eager or graphed; returns (weights, losses, stats)."""
    import numpy as np

    from relnas.search import encoding
    from relnas.search.weight_set import WeightSet

    torch.manual_seed(0)
    dev = torch.device("cuda")
    ws = WeightSet(C=8, layers=5).to(dev, memory_format=torch.channels_last)
    init = {k: v.clone() for k, v in ws.state_dict().items()}
    archs = [ws.compile(encoding.decode(v)) for v in encoding.sample(np.random.default_rng(3), 2)]
    sizes = [32, 32, 32, 32, 32, 12]
    xs = [torch.randn(n, 3, 32, 32, device=dev) for n in sizes]
    ys = [torch.randint(0, 10, (n,), device=dev) for n in sizes]

    def run(graphs: bool):
        ws.load_state_dict(init)
        torch.manual_seed(1)  # same drop-path stream in both runs (seed None: the global generator)
        m = SearchModule(ws, cuda_graphs=graphs, graph_backend="cuda" if graphs else None, graph_capture=capture).to(dev)
        m.manual_backward = lambda loss: loss.backward()  # no Trainer here
        losses, stats = [], []
        for arch, seed in zip(archs, seeds):
            m.begin_candidate(arch, lr=0.05, drop_prob=drop_prob, seed=seed)
            m.train()
            for i, (x, y) in enumerate(zip(xs, ys)):
                m.training_step((x, y), i)
            m.eval()
            with torch.inference_mode():
                for i, (x, y) in enumerate(zip(xs, ys)):
                    m.validation_step((x, y), i)
            losses.append(m.candidate_losses())
            stats.append({k: dict(g.stats) for k, g in m.member.graphs.items()})
        assert not m._graphs_broken
        return {k: v.clone() for k, v in ws.state_dict().items()}, losses, stats

    return run


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("drop_prob,seeds,capture", [(0.0, (None, None), "lean"), (0.2, (None, None), "lean"),
                                                     (0.2, (5, 6), "lean"), (0.2, (5, 6), "torch")])
def test_cuda_graph_candidates_match_eager_on_gpu(drop_prob, seeds, capture):
    """Real captures against eager steps, under pinned numerics. With drop path the replays draw
    from the same random stream as eager steps: the global generator (seeds None) or each
    candidate's own generator, registered with its graphs (seeds given). Both capture modes
    (search.graph_capture: lean, the default, and torch.cuda.graph)."""
    run = _two_candidates_on_gpu(drop_prob, seeds, capture)
    with pinned_numerics():
        w_e, loss_e, _ = run(False)
        w_g, loss_g, stats = run(True)
    per_kind = {"eager": 2, "captures": 1, "replays": 4}  # 1 warm-up, capture + 4 replays, 1 smaller batch
    assert stats == [{"train": per_kind, "val": per_kind}] * 2
    for (te, ve), (tg, vg) in zip(loss_e, loss_g):
        assert tg == pytest.approx(te, rel=1e-4) and vg == pytest.approx(ve, rel=1e-4)
    for k in w_e:
        if w_e[k].is_floating_point():
            torch.testing.assert_close(w_g[k], w_e[k], rtol=1e-3, atol=1e-4, msg=k)


def _rel_weights(a, b) -> float:
    keys = [k for k in a if a[k].is_floating_point()]
    num = sum(float((a[k].double() - b[k].double()).pow(2).sum()) for k in keys)
    den = sum(float(b[k].double().pow(2).sum()) for k in keys)
    return (num / den) ** 0.5


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_graph_under_default_numerics_within_the_eager_algorithm_spread():
    """Under the default numerics cuDNN may pick other algorithms for a graphed step than for an
    eager one. The tolerance is measured here: K times the largest spread between eager runs that
    differ only in cuDNN's algorithm choice (default heuristics, autotuned, deterministic), with a
    floor of a few fp32 roundings; a graph bug (a stale input, another random stream) moves the
    losses by orders of magnitude more."""
    K, FLOOR = 50.0, 1e-5
    run = _two_candidates_on_gpu(0.2, (5, 6))
    with numerics(deterministic=False, benchmark=False):
        w_a, loss_a, _ = run(False)
        w_g, loss_g, _ = run(True)
    eager = []
    for deterministic, benchmark in ((False, True), (True, False)):
        with numerics(deterministic=deterministic, benchmark=benchmark):
            eager.append(run(False)[:2])
    flat = lambda losses: [v for pair in losses for v in pair]  # noqa: E731
    spread_loss = max(abs(x - y) / abs(y) for _, losses in eager for x, y in zip(flat(losses), flat(loss_a)))
    spread_w = max(_rel_weights(w, w_a) for w, _ in eager)
    tol_loss, tol_w = K * max(spread_loss, FLOOR), K * max(spread_w, FLOOR)
    diff_loss = max(abs(x - y) / abs(y) for x, y in zip(flat(loss_g), flat(loss_a)))
    diff_w = _rel_weights(w_g, w_a)
    print(f"eager-vs-eager spread: losses {spread_loss:.3g} (rel), weights {spread_w:.3g} (rel L2); "
          f"graphed-vs-eager: {diff_loss:.3g}, {diff_w:.3g}; tolerances {tol_loss:.3g}, {tol_w:.3g}")
    assert diff_loss <= tol_loss and diff_w <= tol_w


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_concurrent_pair_matches_sequential_members_on_gpu():
    """Two members on two streams, each replaying its own graphs with its own drop-path generator,
    against the same members trained one after the other eagerly (pinned numerics)."""
    import numpy as np

    from relnas.search import encoding
    from relnas.search.candidate_step import PairTrainer
    from relnas.search.weight_set import WeightSet

    torch.manual_seed(0)
    dev = torch.device("cuda")
    ws = WeightSet(C=8, layers=5).to(dev, memory_format=torch.channels_last)
    archs = [ws.compile(encoding.decode(v)) for v in encoding.sample(np.random.default_rng(4), 2)]
    gen = torch.Generator(device=dev).manual_seed(2)
    data = [[(torch.randn(n, 3, 32, 32, device=dev, generator=gen), torch.randint(0, 10, (n,), device=dev, generator=gen))
             for n in (32, 32, 32, 32, 12)] for _ in range(2)]
    seeds, kw = [21, 22], dict(momentum=0.9, weight_decay=3e-4, grad_clip=5.0, channels_last=True)
    with pinned_numerics():
        expected = members_one_after_the_other(ws, archs, seeds, data, 0.2)
        pair = PairTrainer(ws, graph_backend="cuda", graph_warmup=1, **kw)
        result = pair.run(archs, seeds, 0.05, 0.2, data, data)
    assert not pair.graphs_broken and pair.graph_stats["captures"] == 4
    for i, (losses, trained) in enumerate(expected):
        assert result.train_losses[i] == pytest.approx(losses[0], rel=1e-4)
        assert result.val_losses[i] == pytest.approx(losses[1], rel=1e-4)
        for k in trained:
            if trained[k].is_floating_point():
                torch.testing.assert_close(result.trained[i][k], trained[k], rtol=1e-3, atol=1e-4, msg=k)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_graph_search_runs_end_to_end_on_gpu(tmp_path, monkeypatch):
    """The real entry point on a GPU with the defaults (graphs on), and with both members of each
    pair at once: every candidate captured (no fallback to eager), first-generation losses equal
    to an eager GPU search's up to floating-point order."""
    with pinned_numerics():
        eager_rows, _ = _run(tmp_path, "eager", monkeypatch, graphs=False, accelerator="gpu")
        graph_rows, mod = _run(tmp_path, "graphs", monkeypatch, graphs="auto", accelerator="gpu")
        pair_rows, pmod = _run(tmp_path, "pair", monkeypatch, graphs="auto", accelerator="gpu",
                               extra=["search.executor=concurrent_pair"])
    for m, rows in ((mod, graph_rows), (pmod, pair_rows)):
        assert not m._graphs_broken
        assert m.graph_stats["captures"] == 2 * len(rows)
        first = [r for r in rows if r["generation"] == "1"]
        for rg, re_ in zip(first, eager_rows):
            assert rg["genotype"] == re_["genotype"]
            assert float(rg["val_loss"]) == pytest.approx(float(re_["val_loss"]), rel=1e-3)


def test_generation_line_reports_the_graphs(tmp_path, monkeypatch, caplog):
    import logging

    with caplog.at_level(logging.INFO, logger="relnas.search.lightning_adapter"):
        _run(tmp_path, "graphs", monkeypatch, graphs=True, backend="emulate")
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("generation ")]
    assert len(lines) == 2
    # 4 candidates a generation, each: train and validation 1 warm-up, 1 capture, 1 replay, 1 odd batch
    for line in lines:
        assert "CUDA graphs: 8 captures (" in line and "8 replays, 16 eager steps" in line, line
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="relnas.search.lightning_adapter"):
        _run(tmp_path, "eager", monkeypatch, graphs=False)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("generation ")]
    assert len(lines) == 2 and not any("CUDA graphs" in line for line in lines)
