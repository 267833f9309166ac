"""Search spaces: the encoding's shape per space, round trips, genotype files that record their space,
a custom operation, and a 3-operation 3-node space end to end (search, train, inspect, evaluate)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from omegaconf import OmegaConf

from helpers.cli import cli_env
from relnas import Genotype
from relnas.errors import ConfigError, GenotypeError
from relnas.nas.genotypes import DARTS_V2, RelativeNAS
from relnas.nas.operations import OPS
from relnas.nas.spaces import DARTS, SearchSpace
from relnas.search import encoding
from relnas.search.baselines import RegularizedEvolution, mutate
from relnas.search.engine import SearchEngine
from relnas.search.run import run_search
from relnas.search.strategies import RelativeNAS as RelativeNASStrategy
from relnas.search.weight_set import WeightSet
from helpers.search import tiny_search_cfg

ROOT = Path(__file__).resolve().parents[2]
COMPACT = SearchSpace(("sep_conv_3x3", "max_pool_3x3", "skip_connect"), 3)
PAPER_OPS = ["max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3",
             "dil_conv_5x5"]


# ---------------------------------------------------------------------- the spaces and their encodings

def test_the_default_space_is_the_papers_seven_operations_and_four_nodes():
    cfg = OmegaConf.load(ROOT / "configs" / "search_space" / "darts.yaml")
    assert list(cfg.ops) == PAPER_OPS and cfg.nodes == 4
    assert list(DARTS.ops) == PAPER_OPS and DARTS.nodes == 4 and DARTS.dim == 32


def test_every_shipped_space_builds_and_says_why_it_exists():
    for path in sorted((ROOT / "configs" / "search_space").glob("*.yaml")):
        assert path.read_text().startswith("#"), f"{path.name} has no comment saying what it is for"
        cfg = OmegaConf.load(path)
        space = SearchSpace(tuple(cfg.ops), cfg.nodes)
        assert space.dim == 8 * cfg.nodes
    names = {p.stem for p in (ROOT / "configs" / "search_space").glob("*.yaml")}
    assert "darts" in names and len(names) >= 2


def test_a_three_operation_three_node_space_has_24_numbers_with_bounds_derived_by_hand():
    # node j of a cell: [input in [0, j+2), op in [0, 3), input, op]; normal cell then reduction cell
    lower, upper = COMPACT.bounds()
    assert COMPACT.dim == 24
    assert upper.tolist() == [2, 3, 2, 3, 3, 3, 3, 3, 4, 3, 4, 3] * 2
    assert lower.tolist() == [0] * 24
    assert COMPACT.concat == (2, 3, 4)


def test_a_vector_of_the_compact_space_decodes_as_worked_out_by_hand():
    v = np.array([1.2, 0.1, 0.9, 2.7,  2.0, 1.5, 0.3, 0.0,  3.9, 2.99, 1.1, 1.0,
                  0.0, 3.0, 1.9, 2.2,  1.4, 0.5, 2.5, 1.5,  0.7, 0.2, 2.6, 2.4])
    g = encoding.decode(v, space=COMPACT)
    assert g.normal == (("sep_conv_3x3", 1), ("skip_connect", 0), ("max_pool_3x3", 2), ("sep_conv_3x3", 0),
                        ("skip_connect", 3), ("max_pool_3x3", 1))
    # 3.0 is the upper bound of an operation variable: the last operation
    assert g.reduce == (("skip_connect", 0), ("skip_connect", 1), ("sep_conv_3x3", 1), ("max_pool_3x3", 2),
                        ("sep_conv_3x3", 0), ("skip_connect", 2))
    assert g.normal_concat == g.reduce_concat == (2, 3, 4) and g.space == COMPACT


def test_a_vector_of_another_length_is_refused_naming_the_spaces_length():
    with pytest.raises(ValueError, match="24 elements"):
        encoding.decode(np.zeros(32), space=COMPACT)


def _random_genotype(rng, space):
    cells = []
    for _ in range(2):
        cells.append([(space.ops[rng.integers(len(space.ops))], int(rng.integers(j + 2)))
                      for j in range(space.nodes) for _ in range(2)])
    return Genotype(cells[0], space.concat, cells[1], space.concat)


@pytest.mark.parametrize("space", [COMPACT, SearchSpace(("max_pool_3x3", "avg_pool_3x3", "skip_connect",
                                                         "sep_conv_3x3", "dil_conv_3x3"), 4),
                                   SearchSpace(("sep_conv_7x7", "conv_7x1_1x7"), 2),
                                   SearchSpace(("skip_connect", "sep_conv_5x5", "avg_pool_3x3"), 6)])
def test_encode_decode_round_trips_in_other_spaces(space):
    rng = np.random.default_rng(3)
    for _ in range(20):
        g = _random_genotype(rng, space)
        v = encoding.encode(g, space)
        assert v.shape == (space.dim,)
        back = encoding.decode(v, space=space)
        assert back == g and back.space == space
        assert np.array_equal(encoding.encode(back), v)  # the genotype's own space by default
        for vec in encoding.sample(rng, 5, space=space):
            assert encoding.decode(encoding.encode(encoding.decode(vec, space=space)), space=space) == \
                encoding.decode(vec, space=space)


def test_the_default_spaces_encoding_of_the_zoo_cells_is_unchanged():
    # each pair (op, input) at the centre of its intervals: input + 0.5, index in the paper's list + 0.5
    assert encoding.encode(RelativeNAS).tolist() == [
        0.5, 3.5, 1.5, 6.5, 1.5, 3.5, 1.5, 3.5, 1.5, 3.5, 1.5, 4.5, 0.5, 2.5, 0.5, 3.5,
        1.5, 1.5, 1.5, 0.5, 1.5, 6.5, 1.5, 0.5, 3.5, 1.5, 1.5, 2.5, 3.5, 6.5, 1.5, 3.5]
    assert encoding.encode(DARTS_V2).tolist() == [
        0.5, 3.5, 1.5, 3.5, 0.5, 3.5, 1.5, 3.5, 1.5, 3.5, 0.5, 2.5, 0.5, 2.5, 2.5, 5.5,
        0.5, 0.5, 1.5, 0.5, 2.5, 2.5, 1.5, 0.5, 0.5, 0.5, 2.5, 2.5, 2.5, 2.5, 1.5, 0.5]


def test_a_genotype_outside_the_space_does_not_encode():
    with pytest.raises(GenotypeError, match="not in the search space"):
        encoding.encode(RelativeNAS, SearchSpace(("sep_conv_3x3", "skip_connect", "max_pool_3x3",
                                                  "avg_pool_3x3", "dil_conv_5x5"), 4))
    with pytest.raises(GenotypeError, match="3 nodes"):
        encoding.encode(RelativeNAS, COMPACT)


@pytest.mark.parametrize("ops, nodes, message", [
    (("sep_conv_3x3", "no_such_op"), 3, "unknown operation"),
    (("sep_conv_3x3",), 3, "at least two"),
    (("sep_conv_3x3", "sep_conv_3x3"), 3, "twice"),
    (("sep_conv_3x3", "skip_connect"), 0, "positive integer"),
    ("sep_conv_3x3", 3, "list of operation names"),
])
def test_a_bad_space_is_refused_in_one_line(ops, nodes, message):
    with pytest.raises(ValueError, match=message):
        SearchSpace(ops, nodes)


def test_mutation_redraws_one_choice_within_the_spaces_bounds():
    rng = np.random.default_rng(0)
    _, upper = COMPACT.bounds()
    for _ in range(50):
        parent = encoding.sample(rng, space=COMPACT)
        child, i = mutate(rng, parent, space=COMPACT)
        assert 0 <= i < 24 and np.flatnonzero(np.floor(child) != np.floor(parent)).tolist() == [i]
        assert 0 <= child[i] < upper[i]


# ---------------------------------------------------------------------- genotype files

def test_a_genotype_file_records_its_space_and_loads_it_back(tmp_path):
    g = encoding.decode(encoding.sample(np.random.default_rng(1), space=COMPACT), space=COMPACT)
    g.save(tmp_path / "genotype.json")
    data = json.loads((tmp_path / "genotype.json").read_text())
    assert data["search_space"] == {"ops": ["sep_conv_3x3", "max_pool_3x3", "skip_connect"], "nodes": 3}
    back = Genotype.load(tmp_path)
    assert back == g and back.space == COMPACT
    assert Genotype.from_yaml(g.to_yaml()).space == COMPACT


def test_a_genotype_file_without_a_space_loads_as_before():
    g = Genotype.from_dict(DARTS_V2.to_dict())
    assert g == DARTS_V2 and g.space is None and "search_space" not in g.to_dict()


def test_a_genotype_file_whose_cells_leave_its_recorded_space_is_refused():
    d = dict(DARTS_V2.to_dict(), search_space={"ops": ["sep_conv_3x3", "skip_connect", "max_pool_3x3"], "nodes": 4})
    with pytest.raises(GenotypeError, match="dil_conv_3x3"):
        Genotype.from_dict(d)
    d["search_space"] = {"ops": ["sep_conv_3x3"], "nodes": 4}
    with pytest.raises(GenotypeError, match="at least two"):
        Genotype.from_dict(d)


# ---------------------------------------------------------------------- the search's pieces

def test_the_weight_set_holds_exactly_the_spaces_operations_on_each_edge():
    ws = WeightSet(C=4, num_classes=10, layers=3, num_nodes=COMPACT.nodes, ops=COMPACT.ops)
    for cell in ws.cells:
        # edges of node j: inputs 0..j+1 -> 2 + 3 + 4 edges for 3 nodes
        assert sorted(cell.edges) == ["2_0", "2_1", "3_0", "3_1", "3_2", "4_0", "4_1", "4_2", "4_3"]
        assert all(list(ops) == list(COMPACT.ops) for ops in cell.edges.values())
    g = encoding.decode(encoding.sample(np.random.default_rng(2), space=COMPACT), space=COMPACT)
    assert ws(torch.randn(2, 3, 16, 16), ws.compile(g)).shape == (2, 10)


def test_a_weight_set_of_another_space_than_the_strategys_is_refused():
    ws = WeightSet(C=4, num_classes=10, layers=3)
    with pytest.raises(ValueError, match="search space"):
        SearchEngine(RelativeNASStrategy(population_size=2, generations=1, space=COMPACT), ws)


def test_strategies_propose_vectors_of_their_space():
    rng = np.random.default_rng(0)
    s = RelativeNASStrategy(population_size=4, generations=1, space=COMPACT)
    s.init(rng)
    assert s.alpha.shape == (4, 24) and np.all(s.alpha < COMPACT.bounds()[1])
    e = RegularizedEvolution(population_size=3, generations=2, space=COMPACT)
    jobs = e.ask(rng, 0)
    assert all(j.vectors[0].shape == (24,) for j in jobs)


def test_regularized_evolution_breeds_children_in_its_space():
    rng = np.random.default_rng(1)
    e = RegularizedEvolution(population_size=3, generations=3, sample_size=2, space=COMPACT)
    e.init(rng)
    seen = []
    for g in range(e.generations):
        for job in e.ask(rng, g):
            seen.append(job.vectors[0])
            e.tell(rng, job, [float(rng.random())])
        e.end_generation(rng, g)
    assert len(e.mutations) == 6 and all(v.shape == (24,) for v in seen)
    assert all(np.all(v < COMPACT.bounds()[1]) for v in seen)


def test_an_unknown_operation_in_the_config_fails_in_one_line(tmp_path):
    cfg = tiny_search_cfg(tmp_path, ["search_space.ops=[sep_conv_3x3,no_such_op]"])
    with pytest.raises(ConfigError, match="unknown operation.*'no_such_op'"):
        run_search(cfg, tmp_path)


# ---------------------------------------------------------------------- a custom operation

class _Conv1x1(nn.Module):
    def __init__(self, C: int, stride: int, affine: bool):
        super().__init__()
        self.op = nn.Sequential(nn.ReLU(), nn.Conv2d(C, C, 1, stride=stride, bias=False), nn.BatchNorm2d(C, affine=affine))

    def forward(self, x):
        return self.op(x)


@pytest.fixture
def conv_1x1():
    OPS.register("test_conv_1x1", _Conv1x1)
    yield "test_conv_1x1"
    OPS.unregister("test_conv_1x1")


@pytest.mark.slow
def test_a_custom_operation_registered_in_python_is_searched_and_built(tmp_path, conv_1x1):
    from relnas.nas.arch import ArchSpec

    cfg = tiny_search_cfg(tmp_path, [f"search_space.ops=[{conv_1x1},skip_connect]", "search_space.nodes=2",
                                     "search.generations=2"])
    result = run_search(cfg, tmp_path)
    g = Genotype.load(tmp_path)
    assert g == result["genotype"] and g.space == SearchSpace((conv_1x1, "skip_connect"), 2)
    assert len(g.normal) == 4 and set(op for op, _ in g.normal + g.reduce) <= {conv_1x1, "skip_connect"}
    net = ArchSpec(network="cifar", genotype=str(tmp_path), C=4, layers=3, num_classes=10).build()
    assert net(torch.randn(2, 3, 32, 32))[0].shape == (2, 10)
    used = {type(m) for m in net.modules()}
    assert (_Conv1x1 in used) == (conv_1x1 in [op for op, _ in g.normal + g.reduce])


# ---------------------------------------------------------------------- end to end

def _cli(module: str, run_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, f"hydra.run.dir={run_dir}", *overrides], cwd=ROOT,
                          env=cli_env(), capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_a_three_operation_three_node_space_end_to_end(tmp_path):
    search = tmp_path / "search"
    p = _cli("relnas.search", search, "data=synthetic", "data.num_train=96", "data.num_test=16",
             "data.image_size=16", "data.batch_size=24", "data.eval_batch_size=48", "supernet.C=4",
             "supernet.layers=3", "search.population_size=4", "search.generations=2", "search.progress=false",
             "trainer.accelerator=cpu", "logger=none",
             "search_space.ops=[sep_conv_3x3,max_pool_3x3,skip_connect]", "search_space.nodes=3")
    assert p.returncode == 0, p.stderr[-3000:]
    g = Genotype.load(search)
    assert g.space == COMPACT and len(g.normal) == len(g.reduce) == 6 and g.normal_concat == (2, 3, 4)
    assert (search / "normal.png").is_file() and (search / "reduce.png").is_file()
    population = json.loads((search / "population.json").read_text())
    assert all(len(p["vector"]) == 24 for p in population)
    ops = {op for item in population for op, _ in item["genotype"]["normal"] + item["genotype"]["reduce"]}
    assert ops <= set(COMPACT.ops)

    train = tmp_path / "train"
    p = _cli("relnas.train", train, f"genotype={search}", "data=synthetic", "data.num_train=64", "data.num_test=32",
             "data.image_size=32", "data.batch_size=32", "data.eval_batch_size=32", "model.C=4", "model.layers=3",
             "epochs=1", "logger=csv", "trainer.accelerator=cpu", "trainer.enable_model_summary=false",
             "callbacks.progress_bar.refresh_rate=0")
    assert p.returncode == 0, p.stderr[-3000:]
    ckpt = torch.load(train / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert Genotype.from_dict(ckpt["hyper_parameters"]["genotype"]) == g
    # the trained network's cells concatenate 3 nodes: 3 x C channels out of the first cell
    assert ckpt["state_dict"]["net.cells.1.preprocess1.op.1.weight"].shape[1] == 3 * 4

    p = _cli("relnas.inspect", tmp_path / "inspect", f"genotype={search}", "C=4", "layers=3")
    assert p.returncode == 0, p.stderr[-3000:]
    assert "3 nodes, ops sep_conv_3x3, max_pool_3x3, skip_connect" in p.stdout
    assert json.loads(p.stdout.strip().splitlines()[-1])["genotype"] == g.to_dict()

    p = _cli("relnas.evaluate", tmp_path / "eval", f"checkpoint={train}", "data=synthetic", "data.num_train=64",
             "data.num_test=32", "data.image_size=32", "trainer.accelerator=cpu")
    assert p.returncode == 0, p.stderr[-3000:]
    assert "test_top1_err=" in p.stdout


def test_a_transfer_backbone_is_built_from_a_genotype_file_of_another_space(tmp_path):
    import warnings

    from relnas.transfer.backbones import build_backbone

    g = encoding.decode(encoding.sample(np.random.default_rng(5), space=COMPACT), space=COMPACT)
    g.save(tmp_path / "genotype.json")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random initialisation is announced
        bb = build_backbone(str(tmp_path), C=4, layers=5).eval()
    feats = bb(torch.randn(1, 3, 64, 64))
    # the taps' channels: 3 concatenated nodes x the cell's C (4 at stride 8, doubled per reduction)
    assert [f.shape[1] for f in feats.values()][-2:] == [3 * 8, 3 * 16]
