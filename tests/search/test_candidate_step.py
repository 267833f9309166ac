"""Both members of a pair at once (relnas.search.candidate_step, search.executor=concurrent_pair).

On a CPU the two members alternate batch by batch; the search must end exactly where the
sequential search ends (same losses, roles, population and weight set, bit for bit), which holds
only if no tensor is shared between the members and each keeps its own random streams.
"""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from relnas.search.search_module import SearchModule
from relnas.search import encoding
from relnas.search.candidate_step import PairTrainer
from relnas.search.weight_set import WeightSet
from helpers.search import members_one_after_the_other, tiny_search_cfg


def _search(tmp_path, name, monkeypatch, overrides, backend=None):
    import relnas.search.run as run_mod
    from helpers.search import RecordingSearchModule

    RecordingSearchModule.instances.clear()
    run_dir = tmp_path / name
    # 2 generations: the second trains with drop path (ramped from 0), so the members' random
    # streams matter; batches 20, 20, 8 exercise graph warm-up, capture, replay and the odd batch
    cfg = tiny_search_cfg(run_dir, ["search.generations=2", "data.batch_size=20", "data.eval_batch_size=20",
                                    "module._target_=helpers.search.RecordingSearchModule",
                                    f"+module.graph_backend={backend or 'null'}", *overrides])
    run_mod.run_search(cfg, run_dir)
    with open(run_dir / "history.csv") as f:
        rows = list(csv.DictReader(f))
    population = json.loads((run_dir / "population.json").read_text())
    return rows, population, RecordingSearchModule.instances[0]


def test_concurrent_pair_search_equals_sequential_search_bit_for_bit(tmp_path, monkeypatch):
    seq_rows, seq_pop, seq_mod = _search(tmp_path, "seq", monkeypatch, ["search.executor=sequential"])
    # concurrent members with the CUDA-graph bookkeeping emulated (warm-up, capture, replays per member)
    con_rows, con_pop, con_mod = _search(tmp_path, "con", monkeypatch,
                                         ["search.executor=concurrent_pair", "search.cuda_graphs=auto"],
                                         backend="emulate")
    assert len(con_rows) == 8 and con_mod._pair_trainer is not None
    # per member: train 1 warm-up + 1 capture/replay + 1 odd batch, validation the same
    assert con_mod.graph_stats == {"eager": 4 * 8, "captures": 2 * 8, "replays": 2 * 8}
    assert seq_mod.graph_stats == {"eager": 0, "captures": 0, "replays": 0}
    keys = ("generation", "individual", "pair", "role", "val_loss", "train_loss", "vector", "genotype")
    assert [{k: r[k] for k in keys} for r in con_rows] == [{k: r[k] for k in keys} for r in seq_rows]
    assert con_pop == seq_pop
    w_seq, w_con = seq_mod.weight_set.state_dict(), con_mod.weight_set.state_dict()
    assert w_seq.keys() == w_con.keys()
    for k in w_seq:
        assert torch.equal(w_seq[k], w_con[k]), k


def test_pair_trainer_leaves_omega_unchanged_and_trains_members_apart():
    torch.manual_seed(0)
    ws = WeightSet(C=4, layers=3, num_classes=10).to(memory_format=torch.channels_last)
    start = {k: v.clone() for k, v in ws.state_dict().items()}
    archs = [ws.compile(encoding.decode(v)) for v in encoding.sample(np.random.default_rng(5), 2)]
    trainer = PairTrainer(ws, channels_last=True)
    g = torch.Generator().manual_seed(1)
    batches = [[(torch.randn(6, 3, 16, 16, generator=g), torch.randint(0, 10, (6,), generator=g)) for _ in range(2)]
               for _ in range(2)]
    result = trainer.run(archs, [11, 12], lr=0.05, drop_prob=0.2, train_batches=batches, val_batches=batches)
    after = ws.state_dict()
    for k in start:
        assert torch.equal(after[k], start[k]), k
    # each member's trained tensors are exactly its own groups', and the shared stem moved in both,
    # differently (different batches, different architectures)
    for arch, trained in zip(archs, result.trained):
        assert set(trained) == set(ws.keys_of(arch.groups))
    stem = "stem.0.weight"
    a, b = result.trained[0][stem], result.trained[1][stem]
    assert not torch.equal(a, start[stem]) and not torch.equal(b, start[stem]) and not torch.equal(a, b)
    # the shadow holds its own tensors (no storage shared with the weight set)
    shadow = trainer.shadow()
    ws_ptrs = {t.data_ptr() for t in ws.tensors().values()}
    assert not ws_ptrs & {t.data_ptr() for t in shadow.tensors().values()}
    assert all(np.isfinite(result.train_losses)) and all(np.isfinite(result.val_losses))
    with pytest.raises(ValueError, match="exactly two"):
        trainer.run(archs[:1], [1], 0.1, 0.0, batches[:1], batches[:1])


def test_search_batches_are_the_lightning_batches_after_set_seed():
    """The concurrent path draws each member's batches with private generators; they must be the
    batches the sequential path gets from the loaders after set_seed(seed)."""
    from relnas.data import SyntheticDataModule

    dm = SyntheticDataModule(num_train=40, num_test=8, image_size=8, train_portion=0.5, batch_size=6,
                             eval_batch_size=8, crop_padding=2, flip=True, cutout=4)
    dm.setup()
    for train in (True, False):
        dm.set_seed(7)
        expected = [(dm.preprocess(x, train=train), y)
                    for x, y in (dm.train_dataloader() if train else dm.val_dataloader())]
        dm.set_seed(123)  # the module's own generators do not matter to search_batches
        got = list(dm.search_batches(7, train=train))
        assert len(got) == len(expected) == (4 if train else 3)
        for (xg, yg), (xe, ye) in zip(got, expected):
            assert torch.equal(xg, xe) and torch.equal(yg, ye)
    # with val_augment the validation batches continue the training's augmentation stream, as in
    # the Lightning loop (one generator, training first)
    dm_aug = SyntheticDataModule(num_train=40, num_test=8, image_size=8, train_portion=0.5, batch_size=6,
                                 eval_batch_size=8, crop_padding=2, flip=True, cutout=4, val_augment=True)
    dm_aug.setup()
    dm_aug.set_seed(7)
    expected = [(dm_aug.preprocess(x, train=True), y) for x, y in dm_aug.train_dataloader()]
    expected += [(dm_aug.preprocess(x, train=True), y) for x, y in dm_aug.val_dataloader()]
    train_it, val_it = dm_aug.search_epoch(7)
    got = list(train_it) + list(val_it)
    assert len(got) == len(expected) == 7
    for (xg, yg), (xe, ye) in zip(got, expected):
        assert torch.equal(xg, xe) and torch.equal(yg, ye)
    clean = [dm_aug.preprocess(x, train=False) for x, _ in dm_aug.val_dataloader()]
    assert not torch.equal(got[-1][0], clean[-1])  # the validation batches are augmented
    # interleaving two seeds' batches does not mix their streams
    a, b = dm.search_batches(1, True), dm.search_batches(2, True)
    mixed = [(next(a), next(b)) for _ in range(4)]
    alone = list(dm.search_batches(1, True))
    assert all(torch.equal(m[0][0], s[0]) for m, s in zip(mixed, alone))


@pytest.mark.parametrize("overrides,message", [
    (["search.executor=concurrent_pair", "strategy=random"], r"1 member\(s\) per job"),
    (["search.cuda_graphs=sometimes"], "cuda_graphs must be true, false or auto"),
    (["search.graph_capture=fast"], "graph_capture must be lean or torch, got 'fast'"),
])
def test_concurrent_pair_and_cuda_graphs_values_are_checked(tmp_path, overrides, message):
    from relnas.search.run import ConfigError, check_config

    with pytest.raises(ConfigError, match=message):
        check_config(tiny_search_cfg(tmp_path, overrides))


def test_concurrent_pair_in_several_processes_is_a_config_error(tmp_path, monkeypatch):
    from relnas.search.run import ConfigError, check_config

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(ConfigError, match="concurrent_pair trains both members of a pair in one process"):
        check_config(tiny_search_cfg(tmp_path, ["search.executor=concurrent_pair"]))


def test_search_executor_concurrent_pair_selects_the_pair_executor(tmp_path):
    from relnas.search.executors import ConcurrentPair
    from relnas.search.run import build_executor, build_strategy, resolve_config
    from relnas.search.distributed import DistContext

    cfg = resolve_config(tiny_search_cfg(tmp_path, ["search.executor=concurrent_pair"]))
    assert type(build_executor(cfg, build_strategy(cfg), DistContext())) is ConcurrentPair
    cfg = resolve_config(tiny_search_cfg(tmp_path))
    assert build_executor(cfg, build_strategy(cfg), DistContext()).name == "sequential"


def test_cuda_graphs_default_is_auto_and_eager_on_a_cpu(tmp_path):
    """The default (auto) switches graphs on only on a CUDA device: on a CPU the steps are eager
    and no warning is given (true on a CPU warns; true with accelerator=cpu is a config error)."""
    from relnas.search.run import check_config

    cfg = tiny_search_cfg(tmp_path)
    assert cfg.search.cuda_graphs == "auto" and cfg.search.executor == "auto"
    check_config(cfg)
    m = SearchModule(WeightSet(C=4, layers=3))
    assert m.cuda_graphs == "auto" and m._graph_backend() is None


@pytest.mark.parametrize("capture", [None, "torch"])
def test_graph_capture_mode_reaches_every_step_graph(tmp_path, capture):
    """search.graph_capture (default lean) travels from the config to the module and to the
    StepGraphs of the sequential path and of both pair members (emulated graphs on the CPU)."""
    import hydra

    from relnas.search.candidate_step import PairTrainer

    cfg = tiny_search_cfg(tmp_path, [f"search.graph_capture={capture}"] if capture else [])
    expected = capture or "lean"
    ws = WeightSet(C=4, layers=3, num_classes=10)
    m = hydra.utils.instantiate(cfg.module, weight_set=ws, graph_backend="emulate")
    assert m.graph_capture == expected
    arch = ws.compile(encoding.decode(encoding.sample(np.random.default_rng(0), 1)[0]))
    m.manual_backward = lambda loss: loss.backward()  # no Trainer here
    m.begin_candidate(arch, lr=0.05, drop_prob=0.0, seed=1)
    x, y = torch.randn(4, 3, 8, 8), torch.randint(0, 10, (4,))
    for _ in range(2):
        m.training_step((x, y), 0)
    assert m.member.graphs["train"].capture == expected and m.member.graphs["train"].captured
    assert m.pair_trainer().graph_capture == expected
    with pytest.raises(ValueError, match="graph_capture must be one of lean, torch"):
        SearchModule(ws, graph_capture="eager")
    assert PairTrainer(ws).graph_capture == "lean"


def test_pair_trainer_equals_the_members_one_after_the_other_with_drop_path():
    """Interleaved batch by batch (and with emulated graphs), each member still draws its own
    drop-path masks: the pair equals the two members trained one after the other, bit for bit."""
    torch.manual_seed(0)
    ws = WeightSet(C=4, layers=3, num_classes=10).to(memory_format=torch.channels_last)
    archs = [ws.compile(encoding.decode(v)) for v in encoding.sample(np.random.default_rng(9), 2)]
    g = torch.Generator().manual_seed(3)
    data = [[(torch.randn(n, 3, 16, 16, generator=g), torch.randint(0, 10, (n,), generator=g)) for n in (6, 6, 6, 4)]
            for _ in range(2)]
    seeds = [31, 32]
    expected = members_one_after_the_other(ws, archs, seeds, data, 0.3)
    result = PairTrainer(ws, channels_last=True, graph_backend="emulate").run(archs, seeds, 0.05, 0.3, data, data)
    for i, (losses, trained) in enumerate(expected):
        assert [result.train_losses[i], result.val_losses[i]] == losses[:2]
        assert trained.keys() == result.trained[i].keys()
        for k in trained:
            assert torch.equal(result.trained[i][k], trained[k]), k
