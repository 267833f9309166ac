"""``imports=[<module>]``: every entry point imports the user's own modules before it builds anything,
so an operation registered there is searched and its cells are trained from the command line. The
list comes only from the command line: a run's files never make a later run import anything."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.cli import cli_env
from relnas.errors import GenotypeError
from relnas.nas.genotypes import Genotype
from relnas.nas.operations import OPS
from relnas.nas.spaces import SearchSpace
from relnas.utils.cli import command
from relnas.utils.compose import compose_config

ROOT = Path(__file__).resolve().parents[2]
OP = "user_conv_1x1"
MODULE_TEXT = f'''
import torch.nn as nn

from relnas.nas.operations import OPS


@OPS.register("{OP}")
def user_conv_1x1(C, stride, affine):
    return nn.Sequential(nn.ReLU(), nn.Conv2d(C, C, 1, stride=stride, bias=False), nn.BatchNorm2d(C, affine=affine))
'''
TINY_SEARCH = [
    "data=synthetic", "data.num_train=96", "data.num_test=16", "data.image_size=16", "data.batch_size=24",
    "data.eval_batch_size=48", "supernet.C=4", "supernet.layers=3", "search.population_size=4",
    "search.generations=2", "search.progress=false", "search.plots=false", "trainer.accelerator=cpu", "logger=none",
]
TINY_TRAIN = [
    "data=synthetic", "data.num_train=64", "data.num_test=32", "data.image_size=16", "data.batch_size=32",
    "data.eval_batch_size=32", "model.C=4", "model.layers=3", "model.auxiliary=false", "epochs=1", "logger=none",
    "trainer.accelerator=cpu", "trainer.enable_model_summary=false", "callbacks.progress_bar.refresh_rate=0",
]


def _module(folder: Path, name: str = "my_ops") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.py").write_text(MODULE_TEXT)
    return folder


def _cli(module: str, run_dir: Path, *overrides: str, cwd: Path = ROOT, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, f"hydra.run.dir={run_dir}", *overrides], cwd=cwd,
                          env=cli_env(**env), capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_an_operation_of_the_users_module_is_searched_and_its_cell_trained_from_the_command_line(tmp_path):
    mods = _module(tmp_path / "mods")
    search = tmp_path / "search"
    # the module on PYTHONPATH
    p = _cli("relnas.search", search, *TINY_SEARCH, "imports=[my_ops]", f"search_space.ops=[{OP},skip_connect]",
             "search_space.nodes=2", PYTHONPATH=f"{mods}:{ROOT}")
    assert p.returncode == 0, p.stderr[-3000:]
    text = (search / "genotype.json").read_text()
    genotype = json.loads(text)
    assert genotype["search_space"] == {"ops": [OP, "skip_connect"], "nodes": 2}
    assert OP in [op for op, _ in genotype["normal"] + genotype["reduce"]]
    assert "my_ops" not in text  # the cell names its operations, never a module to import

    # the module in the directory the command starts in
    p = _cli("relnas.train", tmp_path / "train", f"genotype={search}", *TINY_TRAIN, "imports=[my_ops]", cwd=mods)
    assert p.returncode == 0, p.stderr[-3000:]
    result = json.loads((tmp_path / "train" / "result.json").read_text())
    assert result["status"] == "ok" and result["genotype"]["normal"] == genotype["normal"]

    p = _cli("relnas.train", tmp_path / "forgot", f"genotype={search}", *TINY_TRAIN, cwd=mods)
    assert p.returncode == 2
    [line] = p.stderr.strip().splitlines()
    assert line.startswith("error: ") and f"unknown operation '{OP}'" in line and "imports=[<module>]" in line
    assert not (tmp_path / "forgot" / "checkpoints").exists()


@pytest.mark.slow
@pytest.mark.parametrize("entry", ["search", "train", "evaluate", "inspect", "export", "transfer"])
def test_every_entry_point_stops_in_one_line_on_a_module_it_cannot_import(tmp_path, entry):
    p = _cli(f"relnas.{entry}", tmp_path / "run", "imports=[json,no_such_module_of_mine]")
    assert p.returncode == 2
    assert p.stderr.strip().splitlines() == [
        "error: imports: cannot import 'no_such_module_of_mine': ModuleNotFoundError: No module named "
        "'no_such_module_of_mine' (modules are found in the directory the command starts in and on PYTHONPATH)"]


def _stopped(capsys, cfg) -> str:
    with pytest.raises(SystemExit) as e:
        command(lambda cfg: pytest.fail("the entry point ran"))(cfg)
    assert e.value.code == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    return line


def test_the_modules_are_imported_before_the_entry_point_runs(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(_module(tmp_path, "my_ops_in_process")))
    monkeypatch.delitem(sys.modules, "my_ops_in_process", raising=False)
    try:
        seen = command(lambda cfg: OP in OPS)(compose_config("inspect", ["imports=[my_ops_in_process]"]))
    finally:
        OPS.unregister(OP)
        sys.modules.pop("my_ops_in_process", None)
    assert seen is True
    assert command(lambda cfg: OP in OPS)(compose_config("inspect")) is False  # the default imports nothing


@pytest.mark.parametrize("value", ["my_ops", "null", "[1]", "['']"])
def test_an_imports_value_that_is_not_a_list_of_module_names_is_one_line(capsys, value):
    line = _stopped(capsys, compose_config("train", [f"imports={value}"]))
    assert line.startswith("error: imports must be a list of Python module names, e.g. imports=[my_ops], got ")


def test_a_module_that_fails_on_import_is_named_with_its_reason(tmp_path, monkeypatch, capsys):
    (tmp_path / "broken_ops.py").write_text("raise RuntimeError('the reason')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    line = _stopped(capsys, compose_config("search", ["imports=[broken_ops]"]))
    sys.modules.pop("broken_ops", None)
    assert line == "error: imports: cannot import 'broken_ops': RuntimeError: the reason"


HINT = ("an operation of your own is known once its module is imported: imports=[<module>] on the command line "
        "(docs/search_spaces.md#register-an-operation)")


def test_an_unknown_operation_of_a_space_or_a_cell_points_at_imports():
    with pytest.raises(ValueError) as e:
        SearchSpace(("sep_conv_3x3", "mine_a", "mine_b"), 2)
    assert str(e.value).startswith("search_space.ops: unknown operations 'mine_a', 'mine_b'; known operations: "
                                   "max_pool_3x3, avg_pool_3x3, ")
    assert str(e.value).endswith(f"; {HINT}")
    cell = [["skip_connect", 0], ["mine_a", 1]]
    with pytest.raises(GenotypeError) as e:
        Genotype.from_dict({"normal": cell, "reduce": cell})
    assert str(e.value).startswith("normal[1]: unknown operation 'mine_a'; known operations: max_pool_3x3, ")
    assert str(e.value).endswith(f"; {HINT}")
