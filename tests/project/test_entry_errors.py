"""Boundary errors of the command-line entry points: one line ``error: ...`` and exit status 2.

Unknown config-group choices (``strategy=foo``, ``+experiment=nope``, ``-m data=digits,nope``) and
overrides of keys the config lacks (``search.strategy=evolution``, ``modle.C=3``) are refused before
Hydra runs, by every entry point; what Hydra accepts (its own groups, plugins, config keys, keys
added with ``+``/``++``) still passes.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs"


def _cli(module, args, cwd, timeout=300):
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", HYDRA_FULL_ERROR="0")
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def _options(group):
    """The choices of a group of configs/, from the files (independent of the code under test)."""
    return ", ".join(sorted(p.stem for p in (CONFIGS / group).glob("*.yaml")))


def _parse(*args):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from relnas.utils.cli import group_choices

    return [(key, choice) for _, key, choice in group_choices(OverridesParser.create().parse_overrides(list(args)))]


# ---------------------------------------------------------------------- parsing (no config repository)

def test_group_choices_reads_every_override_syntax():
    assert _parse("strategy=foo", "+experiment=nope", "++data=x", "data@pkg=y", "hydra/launcher=slurm") == [
        ("strategy", "foo"), ("experiment", "nope"), ("data", "x"), ("data", "y"), ("hydra/launcher", "slurm")]
    assert _parse("data=digits,nope", "strategy=choice(random,bad)", "logger=[csv,wandb]") == [
        ("data", "digits"), ("data", "nope"), ("strategy", "random"), ("strategy", "bad"), ("logger", "csv"),
        ("logger", "wandb")]
    assert _parse("~logger", "~data=cifar10") == [("data", "cifar10")]  # a bare deletion names no choice
    # not names: numbers, null, interpolations, sweep functions other than choice
    assert _parse("data.batch_size=3", "data=null", "data=${oc.env:X}", "data=glob(*)", "seed=range(1,3)") == []


# ---------------------------------------------------------------------- against a config repository

@pytest.fixture()
def confdir(tmp_path):
    d = tmp_path / "conf"
    for group, names in {"db": ["mysql", "sqlite"], "db/extra": ["one"], "exp": ["small"]}.items():
        (d / group).mkdir(parents=True)
        for n in names:
            (d / group / f"{n}.yaml").write_text("x: 1\n")
    (d / "main.yaml").write_text("defaults:\n  - db: mysql\n  - _self_\nn: 1\n")
    return d


def test_unknown_choice_names_the_group_and_its_choices(confdir, monkeypatch):
    from relnas.utils.cli import command_line_error

    monkeypatch.chdir(confdir.parent)
    expected = "unknown db 'oracle': choose one of mysql, sqlite (conf/db/)"
    for args in (["db=oracle"], ["+db=oracle"], ["++db=oracle"], ["db@other=oracle"], ["~db=oracle"],
                 ["-m", "db=sqlite,oracle"], ["-m", "db=choice(oracle)"], ["n=2", "db=[mysql,oracle]"]):
        assert command_line_error(args, "main", confdir) == expected, args
    assert command_line_error(["+exp=big"], "main", confdir) == "unknown exp 'big': choose one of small (conf/exp/)"
    # Hydra's own groups are checked against Hydra's choices (no folder of ours: no hint)
    msg = command_line_error(["hydra/sweeper=nope"], "main", confdir)
    assert msg is not None and msg.startswith("unknown hydra/sweeper 'nope': choose one of ") and "basic" in msg


def test_what_hydra_accepts_passes(confdir):
    from relnas.utils.cli import command_line_error

    for args in (["db=sqlite"], ["+exp=small"], ["db/extra=one"], ["~db"], ["db=extra/one"], ["n=3"], ["db.x=2"],
                 ["-m", "db=mysql,sqlite", "n=1,2"], ["-m", "db=glob(*)"], ["hydra/launcher=basic"],
                 ["hydra/job_logging=disabled"], ["+nosuchkey=3"], ["db=sqlite.yaml"],
                 ["--config-path", "/elsewhere", "db=oracle"],  # another primary config: Hydra judges
                 ["--bogus-flag"], ["db=[unclosed"]):  # not parsable: Hydra says why
        assert command_line_error(args, "main", confdir) is None, args


def test_plugin_groups_pass():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    from relnas.utils.cli import command_line_error

    for choice in ("slurm", "submitit_slurm", "submitit_local", "basic"):
        assert command_line_error([f"hydra/launcher={choice}"], "search") is None


# ---------------------------------------------------------------------- unknown keys

def test_an_unknown_key_names_the_key_how_to_add_it_and_what_exists_close_to_it(confdir):
    from relnas.utils.cli import command_line_error

    for args, expected in [
        (["db.y=2"], "unknown key 'db.y': 'db' has no key 'y' (+db.y=2 adds it)"),
        (["nn=2"], "unknown key 'nn': the main config has no key 'nn' (+nn=2 adds it); did you mean n=2?"),
        (["dbb.x=2"], "unknown key 'dbb.x': the main config has no key 'dbb' (+dbb.x=2 adds it); did you mean db.x=2?"),
        (["dbb.y=2"], "unknown key 'dbb.y': the main config has no key 'dbb' (+dbb.y=2 adds it)"),  # no db.y
        # a key named like a config group: the group's choice (when it is one) or its choices
        (["other.db=sqlite"], "unknown key 'other.db': the main config has no key 'other' (+other.db=sqlite adds it);"
                              " did you mean db=sqlite?"),
        (["other.db=oracle"], "unknown key 'other.db': the main config has no key 'other' (+other.db=oracle adds it);"
                              " did you mean db=<mysql|sqlite>?"),
        (["ex=small"], "unknown key 'ex': the main config has no key 'ex' (+ex=small adds it); did you mean exp=small?"),
        (["hydra.job.chdirr=true"], "unknown key 'hydra.job.chdirr': 'hydra.job' has no key 'chdirr'"
                                    " (+hydra.job.chdirr=true adds it); did you mean hydra.job.chdir=true?"),
        # the first refused key; the one added before it exists
        (["n=2", "+m=1", "db.y=1", "nn=3"], "unknown key 'db.y': 'db' has no key 'y' (+db.y=1 adds it)"),
        (["+q.rate=1", "q.rat=2"], "unknown key 'q.rat': 'q' has no key 'rat' (+q.rat=2 adds it); did you mean q.rate=2?"),
        # a multirun: the overrides that do not sweep
        (["-m", "n=1,2", "nn=2"], "unknown key 'nn': the main config has no key 'nn' (+nn=2 adds it); did you mean n=2?"),
    ]:
        assert command_line_error(args, "main", confdir) == expected, args


def test_adding_and_overriding_existing_keys_pass(confdir):
    from relnas.utils.cli import command_line_error

    for args in (["+nn=2"], ["++nn=2"], ["++n=2"], ["+db.y=2", "db.y=3"], ["n=2", "db.x=3"], ["db={x: 5}"],
                 ["hydra.job.chdir=true", "hydra.run.dir=/tmp/x"], ["--cfg", "job", "n=3"], ["~n"],
                 ["-m", "nn=1,2"],  # a sweep over a key: each job's composition (Hydra's)
                 ["-m", "n=1,2", "db=mysql,sqlite"]):
        assert command_line_error(args, "main", confdir) is None, args


def test_what_the_key_check_cannot_judge_is_left_to_hydra(confdir, monkeypatch):
    from relnas.utils import cli

    for args in (["~nn"], ["+n=2"],  # another refusal of an override: Hydra's words
                 ["nn=1,2"],  # a sweep without -m
                 ["--help", "nn=2"], ["--info", "nn=2"], ["--config-path", "/elsewhere", "nn=2"],
                 ["nn=[unclosed"], ["nn@pkg=2"]):
        assert cli.command_line_error(args, "main", confdir) is None, args

    def broken(*args, **kwargs):
        raise RuntimeError("a Hydra that works differently")

    monkeypatch.setattr(cli, "command_line_error", broken)
    assert cli.check_command_line("main", ["nn=2"]) is None  # the check failed: Hydra runs and reports


def test_the_check_runs_only_for_the_command_line(monkeypatch):
    from relnas.utils import cli

    seen = []
    monkeypatch.setattr(cli, "check_command_line", lambda name, args=None: seen.append(name))
    main = cli.entry_point("search")(lambda cfg=None: cfg)
    assert main({"given": 1}) == {"given": 1} and seen == []  # a config passed in Python
    assert main() is None and seen == ["search"]


def test_a_removed_key_and_a_typo_of_the_real_configs_name_what_exists():
    from relnas.utils.cli import command_line_error

    assert command_line_error(["search.strategy=evolution"], "search") == (
        "unknown key 'search.strategy': 'search' has no key 'strategy' (+search.strategy=evolution adds it);"
        " did you mean strategy=evolution?")
    assert command_line_error(["search.popsize=4"], "search") == (
        "unknown key 'search.popsize': 'search' has no key 'popsize' (+search.popsize=4 adds it);"
        " did you mean search.population_size=4?")
    assert command_line_error(["strategy=evolution", "search.population_size=4", "+search.note=x"], "search") is None


# ---------------------------------------------------------------------- the real entry points

@pytest.mark.parametrize("module,args,group,choice", [
    ("relnas.search", ["strategy=foo"], "strategy", "foo"),
    ("relnas.search", ["-m", "data=digits,nope"], "data", "nope"),
    ("relnas.train", ["data=nope"], "data", "nope"),
    ("relnas.transfer", ["+experiment=nope"], "experiment", "nope"),
    ("relnas.evaluate", ["trainer=nope"], "trainer", "nope"),
    ("relnas.inspect", ["backbone=nope"], "backbone", "nope"),
])
def test_an_unknown_choice_is_one_line_and_exit_2(tmp_path, module, args, group, choice):
    sweep = tmp_path / "sweep"
    r = _cli(module, [*args, f"hydra.run.dir={tmp_path}/run", f"hydra.sweep.dir={sweep}"], REPO)
    assert r.returncode == 2, r.stderr[-2000:]
    assert r.stderr.strip().splitlines() == [
        f"error: unknown {group} '{choice}': choose one of {_options(group)} (configs/{group}/)"]
    assert not sweep.exists() and not (tmp_path / "run").exists()  # refused before any job started


def test_an_unknown_key_is_one_line_and_exit_2(tmp_path):
    r = _cli("relnas.train", ["modle.C=3", f"hydra.run.dir={tmp_path}/run"], tmp_path)
    assert r.returncode == 2, r.stderr[-2000:]
    assert r.stderr.strip().splitlines() == [
        "error: unknown key 'modle.C': the train config has no key 'modle' (+modle.C=3 adds it); did you mean model.C=3?"]
    assert not (tmp_path / "run").exists()


def test_hydra_and_plugin_choices_still_run(tmp_path):
    r = _cli("relnas.search", ["hydra/launcher=slurm", "data.batch_size=3", "--cfg", "hydra"], tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "submitit" in r.stdout


# ---------------------------------------------------------------------- a failed job of a multirun

@pytest.mark.parametrize("module,args,key", [
    ("relnas.search", ["search.population_size=3,5", "data=synthetic", "data.num_train=64", "supernet.C=4",
                       "supernet.layers=3"], "search.population_size"),
    ("relnas.train", ["genotype=nope1,nope2"], "genotype"),
    ("relnas.evaluate", ["checkpoint=/nonexistent/a.ckpt,/nonexistent/b.ckpt"], "checkpoint"),
    ("relnas.transfer", ["task=detection", "seed=1,2"], "seed"),
])
def test_a_failed_job_of_a_multirun_is_failed_with_its_reason_in_the_summary(tmp_path, module, args, key):
    import csv

    sweep = tmp_path / "sweep"
    r = _cli(module, ["-m", *args, "trainer.accelerator=cpu", "logger=none", f"paths.data_dir={tmp_path}/nodata",
                      f"hydra.sweep.dir={sweep}"], tmp_path)
    assert r.returncode == 1, r.stderr[-2000:]
    errors = [line[len("error: "):] for line in r.stderr.splitlines() if line.startswith("error: ")]
    assert "Traceback" not in r.stderr and len(errors) == 3, r.stderr[-2000:]  # one per job, then the sweep's
    assert errors[2] == "2 of 2 jobs failed or left no result (jobs 0, 1; see sweep_summary.csv)"
    rows = list(csv.DictReader(open(sweep / "sweep_summary.csv")))
    values = [a.split("=", 1)[1].split(",") for a in args if a.startswith(f"{key}=")][0]
    assert [(row[key], row["status"], row["reason"]) for row in rows] == [
        (values[0], "failed", errors[0]), (values[1], "failed", errors[1])]
    for job, reason in enumerate(errors[:2]):
        import json

        assert json.loads((sweep / str(job) / "failure.json").read_text()) == {"status": "failed", "reason": reason}


# ---------------------------------------------------------------------- Fashion-MNIST's data directory

SYSTEM_FMNIST = Path("/usr/share/datasets/fashion-mnist")


def _fmnist_cfg(tmp_path, *overrides):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose(config_name="search", overrides=["data=fashion_mnist", f"paths.root_dir={tmp_path}",
                                                       *overrides])
    return cfg.data


def test_a_chosen_fashion_mnist_dir_that_does_not_exist_fails_in_one_line(tmp_path):
    missing = tmp_path / "nonexistent"
    r = _cli("relnas.search", ["data=fashion_mnist", f"data.data_dir={missing}", "search.population_size=2",
                               "search.generations=1", "search.subset=64", "supernet.C=4", "supernet.layers=3",
                               "search.plots=false", "search.progress=false", "trainer.accelerator=cpu",
                               "logger=none", f"hydra.run.dir={tmp_path}/run"], tmp_path)
    assert r.returncode == 2, r.stderr[-2000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert str(missing) in lines[0] and "does not exist" in lines[0]
    assert f"{missing}/FashionMNIST/raw" in lines[0] and "train-images-idx3-ubyte" in lines[0]
    assert not (tmp_path / "run" / "genotype.json").exists()


def test_the_same_through_the_config_and_the_default_dir_keeps_the_system_copy(tmp_path, caplog):
    from hydra.utils import instantiate

    from relnas.errors import DatasetNotFoundError

    for override in (f"data.data_dir={tmp_path}/nope", f"paths.data_dir={tmp_path}/nope"):
        dm = instantiate(_fmnist_cfg(tmp_path, override, "data.subset=64"))
        with pytest.raises(DatasetNotFoundError, match=f"{tmp_path}/nope does not exist"):
            dm.setup()
    if not SYSTEM_FMNIST.is_dir():
        pytest.skip("no system copy of Fashion-MNIST")
    # the default data directory (<root_dir>/data, absent here): the system copy stands in, as documented
    dm = instantiate(_fmnist_cfg(tmp_path, "data.subset=64"))
    with caplog.at_level("INFO", logger="relnas.data.base"):
        dm.setup()
    assert dm.source == f"{SYSTEM_FMNIST} (the system copy)"
    assert not [r for r in caplog.records if r.levelname == "WARNING"]
    # a chosen directory that exists but lacks the files: the system copy, with a warning naming both
    (tmp_path / "other").mkdir()
    caplog.clear()
    dm = instantiate(_fmnist_cfg(tmp_path, f"data.data_dir={tmp_path}/other", "data.subset=64"))
    with caplog.at_level("INFO", logger="relnas.data.base"):
        dm.setup()
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and str(tmp_path / "other") in warnings[0] and str(SYSTEM_FMNIST) in warnings[0]
