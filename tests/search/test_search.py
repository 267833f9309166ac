"""The search end to end on synthetic data: Eq. 6 merge, outputs, resume, faults, bad input."""
from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from relnas.search import encoding
from relnas.search.engine import SearchEngine, SimulatedInterrupt
from relnas.search.lightning_adapter import SearchLightningAdapter
from relnas.search.run import ConfigError, run_search
from relnas.search.search_module import SearchModule
from relnas.search.state import PREV_FILE, STATE_FILE, load_state
from relnas.search.weight_set import WeightSet
from relnas.utils.io import load_torch_file
from helpers.search import tiny_search_cfg

REPO = Path(__file__).resolve().parents[2]


def _genotypes(seed, n):
    rng = np.random.default_rng(seed)
    return [encoding.decode(encoding.sample(rng)) for _ in range(n)]


# ---------------------------------------------------------------------------- weight set

def test_compile_uses_exactly_the_candidates_groups():
    ws = WeightSet(C=4, num_classes=10, layers=3)
    g = _genotypes(0, 1)[0]
    arch = ws.compile(g)
    for k, cell in enumerate(ws.cells):
        pairs = g.reduce if cell.reduction else g.normal
        for slot, (op, i) in enumerate(pairs):
            assert arch.cells[k].ops[slot] is cell.edges[f"{slot // 2 + 2}_{i}"][op]
    keys = set(ws.keys_of(arch.groups))
    assert {"stem.0.weight", "stem.1.running_mean", "classifier.weight"} <= keys
    # parameters of unused operations are not among the candidate's
    used = {id(p) for p in ws.parameters_of(arch)}
    unused = [n for n, p in ws.named_parameters() if id(p) not in used]
    assert unused and all(".edges." in n for n in unused)
    out = ws(torch.randn(2, 3, 16, 16), arch)
    assert out.shape == (2, 10)


def _walked(ws):
    out = dict(ws.named_parameters())
    out.update(ws.named_buffers())
    return out


def test_weight_set_tensor_index_follows_moves_and_assigned_loads():
    """tensors()/parameter_dict() skip the module walk; they must still return the live tensors
    after .to() (new buffer objects) and load_state_dict(assign=True) (new parameters too)."""
    ws = WeightSet(C=4, num_classes=10, layers=3)

    def same(a, b):
        return list(a) == list(b) and all(a[k] is b[k] for k in a)

    assert same(ws.tensors(), _walked(ws)) and same(ws.parameter_dict(), dict(ws.named_parameters()))
    ws = ws.to(torch.float64)
    assert same(ws.tensors(), _walked(ws)) and ws.tensors()["stem.1.running_mean"].dtype == torch.float64
    new = {k: torch.zeros_like(v) for k, v in ws.state_dict().items()}
    ws.load_state_dict(new, assign=True)
    assert same(ws.tensors(), _walked(ws)) and same(ws.parameter_dict(), dict(ws.named_parameters()))
    assert ws.tensors()["classifier.weight"] is ws.classifier.weight
    ws.classifier.weight.grad = torch.ones_like(ws.classifier.weight)
    ws.clear_grads()
    assert all(p.grad is None for p in ws.parameters())


def test_weight_set_module_walks_behave_as_nn_module():
    """WeightSet.named_modules/train walk a cached list; they must match nn.Module's walks."""
    import torch.nn as nn

    ws = WeightSet(C=4, num_classes=10, layers=3)

    def names(it):
        return [(n, id(m)) for n, m in it]

    assert names(ws.named_modules()) == names(nn.Module.named_modules(ws))
    assert names(ws.named_modules(prefix="w")) == names(nn.Module.named_modules(ws, prefix="w"))
    assert names(ws.named_modules(remove_duplicate=False)) == \
        names(nn.Module.named_modules(ws, remove_duplicate=False))
    seen = {ws.cells[1]}  # a module already in the memo: neither it nor its subtree is yielded
    assert names(ws.named_modules(memo=set(seen))) == names(nn.Module.named_modules(ws, memo=set(seen)))
    parent = SearchModule(ws)  # through a parent module, as Lightning walks it
    assert names(parent.named_modules()) == names(nn.Module.named_modules(parent)) and \
        len(list(parent.named_modules())) == len(list(nn.Module.named_modules(ws))) + 1
    assert dict(ws.named_parameters()).keys() == ws.parameter_dict().keys()
    for mode in (False, True, False):
        parent.train(mode)
        assert all(m.training is mode for m in ws.modules())
    with pytest.raises(ValueError, match="boolean"):
        ws.train("yes")


def test_search_pair_leaves_exactly_the_eq6_values(tmp_path, monkeypatch):
    """One real pair through the search: the two members' starting and trained weights and their
    validation losses are recorded around the loop's hooks (not taken from the merge's arguments);
    afterwards every tensor of the weight set (BN buffers included) holds the lower-loss member's trained
    value if it uses it, else the other member's, else its old value -- in the saved checkpoint too."""
    seen = []
    real_start, real_end = SearchLightningAdapter.on_train_epoch_start, SearchLightningAdapter.on_train_epoch_end

    def start(self, trainer, pl_module):
        seen.append({"start": {k: v.clone() for k, v in pl_module.weight_set.state_dict().items()}})
        real_start(self, trainer, pl_module)

    def end(self, trainer, pl_module):
        ws = pl_module.weight_set
        seen[-1].update(trained={k: v.clone() for k, v in ws.state_dict().items()},
                        loss=pl_module.candidate_losses()[1], keys=set(ws.keys_of(pl_module.arch.groups)))
        real_end(self, trainer, pl_module)

    monkeypatch.setattr(SearchLightningAdapter, "on_train_epoch_start", start)
    monkeypatch.setattr(SearchLightningAdapter, "on_train_epoch_end", end)
    cfg = tiny_search_cfg(tmp_path, ["search.population_size=2", "search.generations=1", "search.drop_path_prob=0"])
    run_search(cfg, tmp_path)
    assert len(seen) == 2
    before = seen[0]["start"]
    fast, slow = sorted(seen, key=lambda c: c["loss"])
    assert fast["loss"] < slow["loss"]
    state, _ = load_state(tmp_path)
    after = state["weight_set"]
    assert any(k.endswith("num_batches_tracked") for k in fast["keys"])
    assert any(not torch.equal(fast["trained"][k], before[k]) for k in fast["keys"] if k.endswith("running_mean"))
    n_slow_only = 0
    for k in after:
        if k in fast["keys"]:
            assert torch.equal(after[k], fast["trained"][k].cpu()), k
        elif k in slow["keys"]:
            n_slow_only += 1
            assert torch.equal(after[k], slow["trained"][k].cpu()), k
        else:
            assert torch.equal(after[k], before[k].cpu()), k
    assert n_slow_only > 0
    # shared parts are used by both and trained differently; the fast learner's values win
    assert not torch.equal(fast["trained"]["stem.0.weight"], slow["trained"]["stem.0.weight"])


# ---------------------------------------------------------------------------- end to end

def test_search_end_to_end_outputs_and_slow_learners_move(tmp_path):
    cfg = tiny_search_cfg(tmp_path, ["search.plots=true"])
    result = run_search(cfg, tmp_path)
    for name in ("genotype.json", "population.json", "history.csv", "generations.csv", "result.json",
                 "val_loss_trajectories.png", "diversity.png", "pareto.png", "normal.png", "reduce.png", STATE_FILE):
        assert (tmp_path / name).is_file(), name
    rows = list(csv.DictReader(open(tmp_path / "history.csv")))
    assert len(rows) == 4 * 3
    # the headline of the run's result file: the found genotype's validation loss, the lowest of the
    # last generation's estimates (history.csv)
    written = json.loads((tmp_path / "result.json").read_text())
    assert (written["status"], written["kind"], written["headline"]["metric"]) == ("ok", "search", "val_loss")
    assert written["headline"]["value"] == pytest.approx(min(float(r["val_loss"]) for r in rows if int(r["generation"]) == 3))
    assert set(rows[0]) >= {"generation", "individual", "pair", "role", "val_loss", "train_loss", "lr", "vector",
                            "genotype"}
    for g in (1, 2, 3):
        roles = sorted(r["role"] for r in rows if int(r["generation"]) == g)
        assert roles == ["fast", "fast", "slow", "slow"]
        inds = sorted(int(r["individual"]) for r in rows if int(r["generation"]) == g)
        assert inds == [0, 1, 2, 3]
    lrs = [float(r["lr"]) for r in rows]
    assert lrs[0] == pytest.approx(0.1) and lrs[-1] < lrs[0]
    # slow learners moved toward their fast learners; fast learners stayed
    by = {(int(r["generation"]), int(r["individual"])): r for r in rows}
    moved = 0
    for g in (1, 2):
        for r in (r for r in rows if int(r["generation"]) == g):
            i = int(r["individual"])
            v_now = np.array(r["vector"].split(), float)
            v_next = np.array(by[(g + 1, i)]["vector"].split(), float)
            if r["role"] == "fast":
                np.testing.assert_allclose(v_next, v_now, atol=1e-6)
            else:
                partner = next(p for p in rows if int(p["generation"]) == g and p["pair"] == r["pair"]
                               and p["role"] == "fast")
                v_fast = np.array(partner["vector"].split(), float)
                if np.linalg.norm(v_next - v_fast) < np.linalg.norm(v_now - v_fast):
                    moved += 1
    assert moved >= 3  # first-generation moves are always toward; later ones carry momentum
    genotype = json.loads((tmp_path / "genotype.json").read_text())
    last = [r for r in rows if int(r["generation"]) == 3]
    best = min(last, key=lambda r: float(r["val_loss"]))
    assert encoding.decode(np.array(best["vector"].split(), float)).to_dict() == genotype
    assert result["val_loss"] == pytest.approx(float(best["val_loss"]))
    pop = json.loads((tmp_path / "population.json").read_text())
    assert len(pop) == 4 and pop[0]["genotype"] == genotype


def test_resume_after_interruption_is_bit_exact(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    ref = run_search(tiny_search_cfg(a), a)
    with pytest.raises(SimulatedInterrupt):
        run_search(tiny_search_cfg(b, ["search.interrupt_after=6"]), b)  # mid generation 2
    state, _ = load_state(b)
    assert state["generation"] == 1
    resumed = run_search(tiny_search_cfg(b, [f"resume={b}"]))
    sa, sb = load_state(a)[0], load_state(b)[0]
    np.testing.assert_array_equal(sa["strategy"]["alpha"], sb["strategy"]["alpha"])
    np.testing.assert_array_equal(sa["strategy"]["velocity"], sb["strategy"]["velocity"])
    for k in sa["weight_set"]:
        assert torch.equal(sa["weight_set"][k], sb["weight_set"][k]), k
    assert ref["genotype"] == resumed["genotype"]
    assert (a / "history.csv").read_text() == (b / "history.csv").read_text()


def test_where_the_data_sets_live_is_not_part_of_the_search(tmp_path):
    """A Fashion-MNIST search resumed from another working directory (another paths.root_dir, hence
    another default data directory) is the same search; a change of the images is not."""
    from dataclasses import replace

    from relnas.search.spec import search_spec
    from relnas.utils.compose import compose_config

    def spec(root, *over):
        return search_spec(compose_config("search", ["data=fashion_mnist", f"paths.root_dir={root}", *over],
                                          output_dir=tmp_path / "run"))

    saved, current = spec("/first/checkout"), spec("/second/checkout", "data.data_dir=/elsewhere")
    assert current.changes_from(saved.to_dict()) == ([], [])
    changed = replace(current, data=dict(current.data, image_size=32))
    assert changed.changes_from(saved.to_dict()) == (["data.image_size (28 -> 32)"], [])


def test_every_key_of_a_data_config_defines_the_search_or_says_where_and_how_the_data_is_loaded():
    """The search's spec lists the data keys that define the images, split, batches and
    augmentation; every other key of a data config only says where the data lives or how it is
    loaded. A data config key of neither kind fails here until it is placed."""
    from omegaconf import OmegaConf

    from relnas.search.spec import DATA_FIELDS
    from relnas.utils.compose import CONFIG_DIR

    loading = {"data_dir", "default_data_dir", "download", "on_device", "num_workers", "pin_memory",
               "persistent_workers", "search_system_dirs"}
    for path in sorted((Path(CONFIG_DIR) / "data").glob("*.yaml")):
        keys = set(OmegaConf.load(path))
        assert keys - set(DATA_FIELDS) <= loading, (path.name, sorted(keys - set(DATA_FIELDS) - loading))
    assert not loading & set(DATA_FIELDS)


def test_data_subset_is_a_key_of_every_tensor_data_config_and_part_of_the_search(tmp_path):
    """data.subset is a key of every tensor data config (no ++ needed); a resume that asks for a
    subset is another search."""
    from relnas.search.spec import search_spec
    from relnas.utils.compose import compose_config

    for data in ("cifar10", "cifar100", "digits", "fashion_mnist", "synthetic"):
        cfg = compose_config("train", [f"data={data}", "data.subset=500"], output_dir=tmp_path / data)
        assert cfg.data.subset == 500
    saved = search_spec(compose_config("search", ["data=synthetic"], output_dir=tmp_path / "s"))
    assert saved.data["subset"] is None
    subset = search_spec(compose_config("search", ["data=synthetic", "data.subset=64"], output_dir=tmp_path / "t"))
    assert subset.changes_from(saved.to_dict()) == (["data.subset (None -> 64)"], [])


def test_resume_with_changed_search_config_names_the_keys(tmp_path):
    run_search(tiny_search_cfg(tmp_path, ["search.generations=1", "search.population_size=2"]), tmp_path)
    cfg = tiny_search_cfg(tmp_path, ["search.generations=1", "search.population_size=2", "search.lr=0.5",
                                     "supernet.C=8", f"resume={tmp_path}", "logger=csv"])
    with pytest.raises(ConfigError) as e:
        run_search(cfg)
    assert "search.lr" in str(e.value) and "supernet.C" in str(e.value)
    assert "search.generations" not in str(e.value)


def test_a_checkpoint_of_another_format_version_is_refused_in_one_line(tmp_path):
    """A search checkpoint records its format version; one of another version, or one without a
    version, is refused in one line before any data is loaded."""
    from relnas.errors import CheckpointError
    from relnas.search.state import FORMAT_VERSION

    state = {"generation": 1, "weight_set": {}, "spec": {}, "rng": {}, "strategy": {}, "history": [],
             "summaries": []}
    for version, said in ((FORMAT_VERSION + 1, f"version {FORMAT_VERSION + 1},"), (None, "version (none),")):
        torch.save(state if version is None else dict(state, format_version=version), tmp_path / STATE_FILE)
        with pytest.raises(CheckpointError) as e:
            run_search(tiny_search_cfg(tmp_path, [f"resume={tmp_path}", "data.data_dir=/nonexistent"]))
        assert said in str(e.value) and str(e.value).endswith("start the search again")
        assert "\n" not in str(e.value)


def test_corrupt_checkpoint_falls_back_to_previous(tmp_path):
    run_search(tiny_search_cfg(tmp_path, ["search.generations=2", "search.population_size=2"]), tmp_path)
    assert (tmp_path / PREV_FILE).is_file()
    good_prev = load_torch_file(tmp_path / PREV_FILE)  # data only: tensors, numbers, strings, numpy arrays
    data = (tmp_path / STATE_FILE).read_bytes()
    (tmp_path / STATE_FILE).write_bytes(data[: len(data) // 3])  # truncated
    state, path = load_state(tmp_path)
    assert path.name == PREV_FILE and state["generation"] == good_prev["generation"] == 1
    (tmp_path / PREV_FILE).write_bytes(b"garbage")
    with pytest.raises(Exception, match="no readable search checkpoint"):
        load_state(tmp_path)


def test_diverging_candidate_loses_and_never_enters_the_weight_set(tmp_path, monkeypatch):
    poison = {"on": False}
    real_begin = SearchEngine.begin
    real_forward = WeightSet.forward

    def begin(self, unit, member):
        poison["on"] = self.jobs[unit.pos].members[member] == 0
        return real_begin(self, unit, member)

    def forward(self, *args, **kwargs):  # the training steps call the weight set directly
        out = real_forward(self, *args, **kwargs)
        return out * float("nan") if poison["on"] and self.training else out

    monkeypatch.setattr(SearchEngine, "begin", begin)
    monkeypatch.setattr(WeightSet, "forward", forward)
    run_search(tiny_search_cfg(tmp_path, ["search.generations=2"]), tmp_path)
    rows = list(csv.DictReader(open(tmp_path / "history.csv")))
    zero = [r for r in rows if r["individual"] == "0"]
    assert len(zero) == 2 and all(math.isinf(float(r["val_loss"])) and r["role"] == "slow" for r in zero)
    others = [r for r in rows if r["individual"] != "0"]
    assert all(math.isfinite(float(r["val_loss"])) for r in others)
    state, _ = load_state(tmp_path)
    assert all(torch.isfinite(v.float()).all() for v in state["weight_set"].values())


@pytest.mark.parametrize("override,message", [
    ("search.population_size=3", "population_size"),
    ("search.population_size=0", "population_size"),
    ("search.generations=0", "generations"),
    ("search.train_portion=1.5", "train_portion"),
    ("search.train_portion=0", "train_portion"),
    ("search.channels_last=maybe", "search.channels_last must be true, false or auto"),
    ("search.executor=sometimes", "unknown search.executor"),
    ("search.executor=member_parallel", "member_parallel needs one process per member"),
    ("strategy=evolution search.executor=per_generation", "evolution needs a sequential executor"),
    ("strategy=evolution strategy.sample_size=0", "sample_size must be a positive integer"),
    ("strategy=random search.population_size=0", "population_size must be a positive integer"),
    ("strategy.tie_rule=coin", "tie_rule"),
])
def test_bad_search_config_fails_before_work(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        run_search(tiny_search_cfg(tmp_path, override.split()), tmp_path)
    assert not (tmp_path / STATE_FILE).exists()


def _cli(args, tmp_path, timeout=300):
    env = dict(os.environ, WANDB_MODE="offline", PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "relnas.search", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_cli_errors_are_one_line(tmp_path):
    r = _cli(["search.population_size=5", f"hydra.run.dir={tmp_path}/r"], tmp_path)
    assert r.returncode != 0
    assert "error: strategy (relnas.search.strategies.RelativeNAS): population_size must be an even integer" in r.stderr
    assert "Traceback" not in r.stderr
    r = _cli(["data=imaginary", f"hydra.run.dir={tmp_path}/r2"], tmp_path)
    assert r.returncode != 0 and "imaginary" in r.stderr and "cifar10" in r.stderr
    r = _cli([f"hydra.run.dir={tmp_path}/r3", f"paths.data_dir={tmp_path}/nodata"], tmp_path)
    assert r.returncode != 0 and "error:" in r.stderr and "download" in r.stderr


@pytest.mark.slow
def test_cli_multirun_runs_each_setting_in_its_own_dir(tmp_path):
    from helpers.search import TINY

    args = ["-m", *[a for a in TINY if not a.startswith("search.population_size")],
            "search.population_size=2,4", "search.generations=1", f"hydra.sweep.dir={tmp_path}/sweep"]
    r = _cli(args, tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    for job, n in (("0", 2), ("1", 4)):
        d = tmp_path / "sweep" / job
        assert (d / "genotype.json").is_file()
        assert len(json.loads((d / "population.json").read_text())) == n
    assert "found genotype" in r.stdout


@pytest.mark.slow
def test_wandb_logger_offline(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no_netrc"))
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    cfg = tiny_search_cfg(tmp_path, ["logger=wandb", "search.generations=2", "search.population_size=2"])
    run_search(cfg, tmp_path)
    assert os.environ["WANDB_MODE"] == "offline"
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert runs, list(tmp_path.rglob("*"))[:20]
    files = list(runs[0].glob("*.wandb"))
    assert files and files[0].stat().st_size > 0

    # the records: every estimated candidate in one table, its loss against each size in a scatter chart
    from helpers.wandb_offline import summary

    run = summary(files[0])
    logged = {k: v for h in run["history"] for k, v in h.items()}

    def table(key):
        assert logged[f"{key}/_type"] == "table-file", key
        return json.loads((runs[0] / "files" / logged[f"{key}/path"]).read_text())

    rows = list(csv.DictReader(open(tmp_path / "history.csv")))
    result = json.loads((tmp_path / "result.json").read_text())
    candidates = table("search/candidates")
    assert candidates["columns"] == ["generation", "individual", "role", "val_loss", "params_m", "mult_adds_m",
                                     "front_params_m", "front_mult_adds_m", "chosen", "genotype"]
    assert len(candidates["data"]) == len(rows) == 4   # nothing diverged: every row is an estimated candidate
    for size in ("params_m", "mult_adds_m"):
        points = [(float(r[size]), float(r["val_loss"])) for r in rows]
        on_front = [not any(q[0] <= p[0] and q[1] <= p[1] and q != p for q in points) for p in points]
        assert any(on_front)
        for row, item, front in zip(rows, candidates["data"], on_front):
            got = dict(zip(candidates["columns"], item))
            assert [got[k] for k in ("generation", "individual", "role", "genotype")] == \
                [int(row["generation"]), int(row["individual"]), row["role"], row["genotype"]]
            assert [got[k] for k in ("val_loss", "params_m", "mult_adds_m")] == \
                [float(row[k]) for k in ("val_loss", "params_m", "mult_adds_m")]
            assert got[f"front_{size}"] is front
            # the chosen cell: the reported individual's estimate in the last generation
            assert got["chosen"] is (got["generation"] == 2 and got["individual"] == result["individual"])
    assert sum(item[candidates["columns"].index("chosen")] for item in candidates["data"]) == 1
    for size in ("params_m", "mult_adds_m"):
        chart = run["config"]["_wandb"]["visualize"][f"search/val_loss_vs_{size}"]["panel_config"]
        assert chart["panelDefId"] == "wandb/scatter/v0" and chart["fieldSettings"] == {"x": size, "y": "val_loss"}
        assert table(f"search/val_loss_vs_{size}_table") == candidates
    # each generation's genotype table gives the sizes too
    genotypes = table("search/genotypes")   # the last generation's
    assert genotypes["columns"][-3:] == ["params_m", "mult_adds_m", "genotype"]
    assert [[g[-3], g[-2], g[-1]] for g in genotypes["data"]] == \
        [[float(r["params_m"]), float(r["mult_adds_m"]), r["genotype"]] for r in rows if r["generation"] == "2"]


def test_csv_logger_gets_per_individual_losses(tmp_path):
    cfg = tiny_search_cfg(tmp_path, ["logger=csv", "search.generations=2", "search.population_size=2"])
    run_search(cfg, tmp_path)
    metrics = list(csv.DictReader(open(tmp_path / "csv" / "metrics.csv")))
    keys = set(metrics[0])
    assert {"val_loss/ind_000", "val_loss/ind_001", "search/best_loss", "search/mean_loss", "search/diversity",
            "search/lr"} <= keys
    assert len([m for m in metrics if m["search/best_loss"]]) == 2


def test_register_genotype_from_file(tmp_path):
    import relnas

    path = tmp_path / "cell.yaml"
    relnas.get_genotype("DARTS_V1").save(path)
    assert relnas.register_genotype("test_cell_from_file", path) == relnas.get_genotype("DARTS_V1")
    assert relnas.get_genotype("test_cell_from_file") == relnas.get_genotype("DARTS_V1")


def test_channels_last_auto_is_nhwc_on_a_cpu_and_nchw_on_cuda(tmp_path):
    from relnas.search.search_module import channels_last_for
    from helpers.search import RecordingSearchModule

    # the rule, written out: a bool is kept; auto is NHWC everywhere but on CUDA devices
    assert [channels_last_for(v, d) for v, d in [(True, "cuda"), (False, "cpu"), ("auto", "cpu"), ("auto", "cuda")]] \
        == [True, False, True, False]
    with pytest.raises(ValueError, match="channels_last must be"):
        channels_last_for("yes", "cpu")
    # a search with the default (auto) on this CPU trains in NHWC: inputs and the weight set's conv weights
    RecordingSearchModule.instances.clear()
    run_search(tiny_search_cfg(tmp_path, ["search.generations=1", "search.population_size=2",
                                          "module._target_=helpers.search.RecordingSearchModule"]), tmp_path)
    (module,) = RecordingSearchModule.instances
    conv = [p for p in module.weight_set.parameters() if p.dim() == 4]
    assert module.channels_last is True and conv and all(p.is_contiguous(memory_format=torch.channels_last) for p in conv)
    # on a CUDA device auto switches the module and the weight set to NCHW when the fit starts
    ws = WeightSet(C=4, layers=3).to(memory_format=torch.channels_last)
    m = SearchModule(ws, channels_last="auto")
    m._device = torch.device("cuda", 0)  # what Lightning sets when it moves the module to a GPU
    m.on_fit_start()
    conv = [p for p in ws.parameters() if p.dim() == 4]
    assert m.channels_last is False and all(p.is_contiguous() and not p.is_contiguous(memory_format=torch.channels_last)
                                            for p in conv if p.shape[1] > 1 and p.shape[-1] > 1)  # else both
