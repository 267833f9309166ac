"""Several processes for one search: the pairs of a generation in parallel
(search.executor=per_generation), or the two members of each pair (member_parallel, 2 processes).

The end-to-end test launches the real command line (``torchrun ... -m relnas.search``) with two
CPU processes (gloo) and checks that it ends with exactly the population, genotype and weight set
of the same search in one process.
"""
from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from relnas.search import distributed as search_dist
from relnas.utils.io import load_torch_file
from relnas.search.run import ConfigError, check_config
from helpers.search import tiny_search_cfg
from helpers.cli import cli_env

REPO_ROOT = Path(__file__).resolve().parents[2]

TINY = ["data=synthetic", "data.num_train=128", "data.num_test=32", "data.image_size=16", "data.batch_size=32",
        "data.eval_batch_size=64", "data.cutout=4", "data.crop_padding=2", "supernet.C=4", "supernet.layers=3",
        "search.population_size=4", "search.generations=2", "search.plots=false", "search.progress=false",
        "trainer=cpu", "logger=none"]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]




def _search(run_dir: Path, overrides: list, nproc: int = 1) -> subprocess.Popen:
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
               "--master_addr=127.0.0.1", f"--master_port={_free_port()}", "-m", "relnas.search"]
    else:
        cmd = [sys.executable, "-m", "relnas.search"]
    cmd += TINY + overrides + [f"hydra.run.dir={run_dir}"]
    log = open(run_dir.parent / f"{run_dir.name}.log", "w")
    return subprocess.Popen(cmd, cwd=REPO_ROOT, env=cli_env(), stdout=log, stderr=subprocess.STDOUT)


def _wait(proc: subprocess.Popen, run_dir: Path) -> None:
    rc = proc.wait(timeout=900)
    assert rc == 0, (run_dir.parent / f"{run_dir.name}.log").read_text()[-4000:]


def _outputs(run_dir: Path) -> dict:
    state = load_torch_file(run_dir / "search_state.pt")  # data only: tensors, numbers, strings, numpy arrays
    return {"population": json.loads((run_dir / "population.json").read_text()),
            "genotype": json.loads((run_dir / "genotype.json").read_text()),
            "weight_set": state["weight_set"], "rng": state["rng"], "history": state["history"]}


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path):
    runs = {"multi": (["search.executor=per_generation"], 2),
            "single": (["search.executor=per_generation"], 1),
            "sequential": ([], 1),
            "members": ([], 2)}  # executor auto in 2 processes: member_parallel
    procs = {name: _search(tmp_path / name, ov, n) for name, (ov, n) in runs.items()}
    for name, proc in procs.items():
        _wait(proc, tmp_path / name)
    multi, single, seq, members = (_outputs(tmp_path / n) for n in ("multi", "single", "sequential", "members"))

    # bit for bit: population vectors (JSON floats round-trip exactly), genotype, random state, the weight set
    assert multi["population"] == single["population"]
    assert multi["genotype"] == single["genotype"]
    assert multi["rng"] == single["rng"]
    assert multi["weight_set"].keys() == single["weight_set"].keys()
    for k, v in single["weight_set"].items():
        assert torch.equal(multi["weight_set"][k], v), k
    assert [(r["individual"], r["role"], r["val_loss"]) for r in multi["history"]] == \
           [(r["individual"], r["role"], r["val_loss"]) for r in single["history"]]
    # only rank 0 wrote: one hydra log, one result
    assert json.loads((tmp_path / "multi" / "result.json").read_text())["estimations"] == 8

    # the default (sequential: pair p inherits the weight set updated by pairs 1..p-1) is another search
    assert seq["population"] != single["population"]
    assert seq["history"][0]["val_loss"] == single["history"][0]["val_loss"]  # the first pair: same weight set

    # member-parallel keeps the paper's order: bit for bit the one-process sequential search
    assert members["population"] == seq["population"] and members["genotype"] == seq["genotype"]
    assert members["rng"] == seq["rng"]
    for k, v in seq["weight_set"].items():
        assert torch.equal(members["weight_set"][k], v), k
    assert [(r["individual"], r["role"], r["val_loss"], r["train_loss"]) for r in members["history"]] == \
           [(r["individual"], r["role"], r["val_loss"], r["train_loss"]) for r in seq["history"]]
    assert json.loads((tmp_path / "members" / "result.json").read_text())["estimations"] == 8


def test_single_process_context():
    ctx = search_dist.DistContext()
    assert ctx.is_main and not ctx.distributed and ctx.all_gather_object({"a": 1}) == [{"a": 1}]
    assert all(ctx.owns(j) for j in range(5))
    ranks = [search_dist.DistContext(rank=r, world_size=3) for r in range(3)]
    assert [[j for j in range(7) if c.owns(j)] for c in ranks] == [[0, 3, 6], [1, 4], [2, 5]]


def _cfg(*overrides):
    return tiny_search_cfg(Path("unused"), ["trainer.accelerator=cpu", *overrides])


def test_several_processes_need_per_generation_or_two_members(monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(ConfigError, match="per_generation"):
        check_config(_cfg())
    check_config(_cfg("search.executor=per_generation"))
    monkeypatch.setenv("WORLD_SIZE", "2")
    check_config(_cfg())  # auto in 2 processes: member_parallel, the two members of each pair at once
    check_config(_cfg("search.executor=member_parallel"))
    with pytest.raises(ConfigError, match="two members of each pair"):
        check_config(_cfg("strategy=random"))
    with pytest.raises(ConfigError, match="one process"):
        check_config(_cfg("search.executor=sequential"))


@pytest.mark.parametrize("trainer", [{"strategy": "ddp"}, {"devices": 4}, {"num_nodes": 2}])
def test_search_rejects_ddp_trainer(trainer):
    cfg = _cfg(*[f"{'+' if k == 'strategy' else ''}trainer.{k}={v}" for k, v in trainer.items()])
    with pytest.raises(ConfigError, match="torchrun"):
        check_config(cfg)


def test_ddp_trainer_config_is_rejected_by_the_search():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO_ROOT / "configs"), version_base="1.3"):
        cfg = compose("search", overrides=["trainer=ddp"])
    with pytest.raises(ConfigError, match="one device"):
        check_config(cfg)


def test_per_generation_resume_is_bit_exact(tmp_path):
    """tell() and the merges wait for the generation's end: an interruption mid-generation loses
    nothing that the checkpoint of the previous generation does not restore."""
    import numpy as np

    from relnas.search.engine import SimulatedInterrupt
    from relnas.search.run import run_search
    from relnas.search.state import load_state

    a, b = tmp_path / "a", tmp_path / "b"
    pergen = ["search.executor=per_generation"]
    ref = run_search(tiny_search_cfg(a, pergen), a)
    with pytest.raises(SimulatedInterrupt):
        run_search(tiny_search_cfg(b, pergen + ["search.interrupt_after=6"]), b)  # mid generation 2
    assert load_state(b)[0]["generation"] == 1
    resumed = run_search(tiny_search_cfg(b, pergen + [f"resume={b}"]))
    sa, sb = load_state(a)[0], load_state(b)[0]
    np.testing.assert_array_equal(sa["strategy"]["alpha"], sb["strategy"]["alpha"])
    for k in sa["weight_set"]:
        assert torch.equal(sa["weight_set"][k], sb["weight_set"][k]), k
    assert ref["genotype"] == resumed["genotype"]
    assert (a / "history.csv").read_text() == (b / "history.csv").read_text()


class _FakeGather(search_dist.DistContext):
    """Rank ``rank`` of 2 whose all_gather returns this process's object plus ``others``."""

    def __init__(self, rank, others):
        super().__init__(rank=rank, world_size=2)
        self.others = others

    def all_gather_object(self, obj):
        return sorted([obj] + self.others, key=lambda t: t[0])


def _job():
    from relnas.search.strategies import Job

    return Job(index=0, members=[0, 1], vectors=[None, None])


def test_member_parallel_exchange_orders_members_and_keeps_own_tensors():
    from relnas.search.engine import MemberResult
    from relnas.search.executors import MemberParallel

    other = {"w": torch.ones(2)}
    own = MemberResult(1.5, 1.7, {"w": torch.zeros(2)})
    out = MemberParallel(_FakeGather(rank=1, others=[(0, 0.5, 0.7, other)])).exchange_job(_job(), {1: own})
    assert sorted(out) == [0, 1] and out[1] is own
    assert (out[0].val_loss, out[0].train_loss) == (0.5, 0.7) and torch.equal(out[0].trained["w"], other["w"])


def test_member_parallel_exchange_fails_loudly_when_a_member_is_missing():
    from relnas.search.engine import MemberResult
    from relnas.search.executors import MemberParallel

    ex = MemberParallel(_FakeGather(rank=0, others=[(0, 0.5, 0.7, None)]))  # both processes trained member 0
    with pytest.raises(RuntimeError, match="one process per member"):
        ex.exchange_job(_job(), {0: MemberResult(1.5, 1.7, None)})
