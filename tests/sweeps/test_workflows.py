"""User workflows end to end: a Hydra multirun into W&B (one run per job, named and grouped by
the sweep) with a sweep summary, resume into the same W&B run and log folders, extending a
finished search, failing searches, and the console."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.search import TINY, tiny_search_cfg

REPO = Path(__file__).resolve().parents[2]
# smaller than TINY: two candidates per generation on 48 images
MICRO = [a for a in TINY if not a.startswith(("data.num_train", "search.population_size", "search.generations"))] + \
    ["data.num_train=48", "search.population_size=2", "search.generations=1"]


def _cli(module, args, cwd, timeout=600, **env_extra):
    env = dict(os.environ, WANDB_MODE="offline", PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", **env_extra)
    env.pop("WANDB_API_KEY", None)
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def _wandb_run(job_dir: Path):
    from helpers.wandb_offline import summary

    files = sorted(job_dir.glob("wandb/offline-run-*/*.wandb"))
    return [summary(f) for f in files]


def test_multirun_gives_one_wandb_run_per_job_and_a_sweep_summary(tmp_path):
    pytest.importorskip("wandb")
    sweep = tmp_path / "sweep"
    args = ["-m", *[a for a in MICRO if not a.startswith("logger=")], "logger=[csv,wandb,tensorboard]",
            "search.lr=0.1,0.05", f"hydra.sweep.dir={sweep}"]
    r = _cli("relnas.search", args, tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "There is a wandb run already in progress" not in r.stdout + r.stderr
    runs = {}
    for job, lr in (("0", 0.1), ("1", 0.05)):
        found = _wandb_run(sweep / job)
        assert len(found) == 1, (job, found)  # exactly one run, in the job's own folder
        run = found[0]
        assert run["name"] == f"search.lr={lr}"
        assert run["group"] == "search:sweep"
        assert {"search", "strategy:relativenas", "data:synthetic"} <= set(run["tags"])
        assert run["config"]["search"]["lr"] == lr  # its own job's config
        gens = [h["search/generation"] for h in run["history"] if "search/generation" in h]
        assert gens == [1]  # only its own job's rows (one generation)
        best = [h["search/best_loss"] for h in run["history"] if "search/best_loss" in h]
        own = [float(x["best_loss"]) for x in csv.DictReader(open(sweep / job / "generations.csv"))]
        assert best == pytest.approx(own)
        runs[job] = run
        # TensorBoard: a folder named after the job
        assert (sweep / job / "tensorboard" / f"search.lr={lr}").is_dir()
    assert runs["0"]["id"] != runs["1"]["id"]
    rows = list(csv.DictReader(open(sweep / "sweep_summary.csv")))
    assert [(r["job"], r["search.lr"], r["status"]) for r in rows] == [("0", "0.1", "ok"), ("1", "0.05", "ok")]
    for row, job in zip(rows, ("0", "1")):
        res = json.loads((sweep / job / "result.json").read_text())
        assert float(row["val_loss"]) == pytest.approx(res["val_loss"])
        run = json.loads((sweep / job / "run.json").read_text())
        assert float(row["wall_time_s"]) == pytest.approx(run["time_s"])
        assert run["run"]["name"] == f"search.lr={row['search.lr']}" and run["run"]["group"] == "search:sweep"
    assert (sweep / "sweep_summary.png").stat().st_size > 5000


# ---------------------------------------------------------------------- resume as one run

def test_resume_continues_the_wandb_run_and_the_log_folders(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    from relnas.search.engine import SimulatedInterrupt
    from relnas.search.run import run_search
    from helpers.wandb_offline import summary

    monkeypatch.setenv("WANDB_MODE", "offline")
    run_dir, later = tmp_path / "run", tmp_path / "later"  # `later`: the new Hydra folder of the resume
    over = ["logger=[csv,wandb]", "search.generations=2", "search.population_size=2", "data.num_train=48"]
    with pytest.raises(SimulatedInterrupt):
        run_search(tiny_search_cfg(run_dir, over + ["search.interrupt_after=3"]), run_dir)  # in generation 2
    run_search(tiny_search_cfg(later, over + [f"resume={run_dir}"]))
    files = sorted(run_dir.glob("wandb/offline-run-*/*.wandb"))
    assert len(files) == 2 and not (later / "wandb").exists() and not (later / "csv").exists()
    first, second = summary(files[0]), summary(files[1])
    assert first["id"] == second["id"]  # the same W&B run, continued
    gens = lambda run: [h["search/generation"] for h in run["history"] if "search/generation" in h]  # noqa: E731
    assert gens(first) == [1] and gens(second) == [2]
    metrics = list(csv.DictReader(open(run_dir / "csv" / "metrics.csv")))  # one CSV file, both parts
    assert [int(float(m["search/generation"])) for m in metrics if m.get("search/generation")] == [1, 2]
    result = json.loads((run_dir / "result.json").read_text())
    assert result["status"] == "ok" and result["data_source"].startswith("generated in memory (synthetic")


def test_a_finished_search_can_be_extended(tmp_path):
    from relnas.search.run import run_search
    from relnas.search.state import load_state

    over = ["search.population_size=2", "data.num_train=48"]
    run_search(tiny_search_cfg(tmp_path, over + ["search.generations=1"]), tmp_path)
    one = list(csv.DictReader(open(tmp_path / "history.csv")))
    assert {r["generation"] for r in one} == {"1"}
    again = run_search(tiny_search_cfg(tmp_path / "x", over + ["search.generations=1", f"resume={tmp_path}"]))
    assert Path(again["run_dir"]) == tmp_path  # a finished search names its own folder
    run_search(tiny_search_cfg(tmp_path / "y", over + ["search.generations=2", f"resume={tmp_path}"]))
    two = list(csv.DictReader(open(tmp_path / "history.csv")))
    assert two[:len(one)] == one  # generation 1 as it was
    assert [r["generation"] for r in two[len(one):]] == ["2", "2"]
    assert load_state(tmp_path)[0]["generation"] == 2
    assert json.loads((tmp_path / "result.json").read_text())["generations"] == 2


def test_fallback_keeps_the_good_previous_checkpoint(tmp_path):
    from relnas.search.state import PREV_FILE, STATE_FILE, load_state, save_state

    def state(g):
        return {"generation": g, "weight_set": {}}

    save_state(tmp_path, state(1))
    save_state(tmp_path, state(2))
    (tmp_path / STATE_FILE).write_bytes((tmp_path / STATE_FILE).read_bytes()[:40])  # truncated newest
    loaded, path = load_state(tmp_path)
    assert path.name == PREV_FILE and loaded["generation"] == 1
    save_state(tmp_path, state(2))  # the resumed search saves again
    assert load_state(tmp_path)[0]["generation"] == 2
    (tmp_path / STATE_FILE).write_bytes(b"garbage")
    assert load_state(tmp_path)[0]["generation"] == 1  # the good one was kept, not the corrupt one


# ---------------------------------------------------------------------- failures that fail

@pytest.mark.parametrize("override,message", [
    ("supernet.C=0", "supernet.C must be a positive integer, got 0"),
    ("supernet.layers=-2", "supernet.layers"),
    ("search.lr=-1", "search.lr must be a number in (0, inf)"),
    ("search.lr_min=0.5", "search.lr_min"),
    ("search.weight_decay=-0.1", "search.weight_decay"),
    ("data.batch_size=0", "data.batch_size"),
    ("search.subset=1", "search.subset"),
    ("search.max_diverged_share=2", "search.max_diverged_share"),
])
def test_bad_numbers_fail_before_work(tmp_path, override, message):
    from relnas.search.run import ConfigError, run_search

    with pytest.raises(ConfigError) as e:
        run_search(tiny_search_cfg(tmp_path, [override]), tmp_path)
    assert message in str(e.value) and "\n" not in str(e.value)
    assert not any(tmp_path.iterdir())  # nothing written: no work started


def test_a_diverged_search_exits_non_zero_with_one_line(tmp_path):
    r = _cli("relnas.search", [*MICRO, "search.lr=1e6", "search.plots=true", f"hydra.run.dir={tmp_path}/r"], tmp_path)
    assert r.returncode == 2
    err = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "diverged" in err[0] and "search.lr" in err[0], r.stderr[-2000:]
    assert "Traceback" not in r.stderr and "found genotype" not in r.stdout
    run = tmp_path / "r"
    assert not (run / "genotype.json").exists()  # nothing a training could pick up
    result = json.loads((run / "result.json").read_text())
    assert result["status"] == "failed" and "diverged" in result["reason"]
    rows = list(csv.DictReader(open(run / "history.csv")))
    assert rows and all(r["diverged"] == "True" for r in rows)
    assert all(p["diverged"] for p in json.loads((run / "population.json").read_text()))


def test_health_rule():
    from relnas.search.guards import SearchFailed, check_health

    inf = float("inf")
    rows = lambda *gl: [{"generation": g, "val_loss": v} for g, v in gl]  # noqa: E731
    check_health(rows((1, inf), (1, 2.0), (2, 1.0), (2, 1.5)), 0.5, 0.1)  # 1 of 4 diverged
    with pytest.raises(SearchFailed, match="last generation"):
        check_health(rows((1, 1.0), (1, 2.0), (2, inf), (2, inf)), 0.9, 0.1)  # none finite at the end
    with pytest.raises(SearchFailed, match="3 of 4"):
        check_health(rows((1, inf), (1, inf), (2, inf), (2, 1.0)), 0.5, 0.1)  # 75% > 50%


def test_subset_larger_than_the_data_is_logged(caplog):
    from relnas.data import SyntheticDataModule

    with caplog.at_level("WARNING", logger="relnas.data.base"):
        dm = SyntheticDataModule(num_train=20, num_test=4, image_size=8, subset=50)
        dm.setup()
    assert len(dm.train_data[0]) == 20
    assert "subset=50 is not smaller than the training set (20 images)" in caplog.text


def test_fashion_mnist_source_names_the_system_copy(tmp_path, caplog):
    from relnas.data.datasets import FASHION_MNIST_SYSTEM_DIRS, FashionMNISTDataModule

    if not Path(FASHION_MNIST_SYSTEM_DIRS[0]).is_dir():
        pytest.skip("no system copy of Fashion-MNIST")
    with caplog.at_level("INFO", logger="relnas.data.base"):
        dm = FashionMNISTDataModule(data_dir=str(tmp_path / "empty"), subset=100)
        dm.setup()
    assert dm.source == f"{FASHION_MNIST_SYSTEM_DIRS[0]} (the system copy)"
    assert f"from {dm.source}" in caplog.text


# ---------------------------------------------------------------------- genotypes by name, figures

def test_a_genotype_by_name_from_the_genotypes_folder_on_the_command_line(tmp_path):
    import relnas

    (tmp_path / "genotypes").mkdir()
    relnas.get_genotype("DARTS_V1").save(tmp_path / "genotypes" / "my_cell.json")
    r = _cli("relnas.inspect", ["genotype=my_cell", "C=8", "layers=5", f"hydra.run.dir={tmp_path}/r"], tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    info = json.loads(r.stdout.strip().splitlines()[-1])
    assert relnas.Genotype.from_dict(info["genotype"]) == relnas.get_genotype("DARTS_V1")
    # and registering is an in-process matter: a new process does not know the name
    relnas.register_genotype("only_here", relnas.get_genotype("DARTS_V2"))
    assert relnas.get_genotype("only_here") == relnas.get_genotype("DARTS_V2")
    r = _cli("relnas.inspect", ["genotype=only_here", f"hydra.run.dir={tmp_path}/r2"], tmp_path)
    assert r.returncode != 0 and "genotypes/only_here.json" in r.stderr


def test_cell_diagrams_in_vector_formats(tmp_path):
    from relnas.nas.draw import plot_genotype

    paths = plot_genotype("RelativeNAS", tmp_path)
    assert [p.name for p in paths] == ["normal.png", "reduce.png"]
    for cell in ("normal", "reduce"):
        assert (tmp_path / f"{cell}.pdf").read_bytes()[:5] == b"%PDF-"
        assert b"<svg" in (tmp_path / f"{cell}.svg").read_bytes()[:2000]


def test_trajectory_ranks_and_markdown_escape():
    from relnas.search.outputs import final_ranks, markdown_table

    inf = float("inf")
    hist = [{"generation": 1, "individual": 0, "val_loss": 1.0}, {"generation": 1, "individual": 1, "val_loss": 2.0},
            {"generation": 2, "individual": 0, "val_loss": 3.0}, {"generation": 2, "individual": 1, "val_loss": 0.5},
            {"generation": 2, "individual": 2, "val_loss": inf}]
    assert final_ranks(hist) == {1: 0, 0: 1, 2: 2}  # by the latest loss; diverged last
    table = markdown_table(["g", "genotype"], [[1, "a(0) | b(1)"]]).splitlines()
    assert table[2] == "| 1 | a(0) \\| b(1) |"
    assert all(line.replace("\\|", "").count("|") == 3 for line in table)  # every row keeps 2 columns


@pytest.mark.slow
def test_a_failing_job_does_not_stop_the_sweep_but_fails_it(tmp_path):
    sweep = tmp_path / "sweep"
    args = ["-m", *[a for a in MICRO if not a.startswith("supernet.C")], "supernet.C=0,4", f"hydra.sweep.dir={sweep}"]
    r = _cli("relnas.search", args, tmp_path)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: supernet.C must be a positive integer, got 0",
                      "error: 1 of 2 jobs failed or left no result (jobs 0; see sweep_summary.csv)"], r.stderr[-2000:]
    rows = list(csv.DictReader(open(sweep / "sweep_summary.csv")))
    assert [(row["supernet.C"], row["status"], row["reason"]) for row in rows] == [
        ("0", "failed", "supernet.C must be a positive integer, got 0"), ("4", "ok", "")]
    assert (sweep / "1" / "genotype.json").is_file()  # the job after the failed one ran


# ---------------------------------------------------------------------- console

def test_console_each_line_once_without_adverts_and_above_the_bar(capsys):
    import logging

    from tqdm import tqdm

    from relnas.utils.console import TqdmHandler, setup_console

    root, light = logging.getLogger(), logging.getLogger("lightning.pytorch")
    saved = (list(root.handlers), root.level, list(light.handlers), light.propagate, list(light.filters))
    try:
        for h in list(root.handlers):
            root.removeHandler(h)
        root.addHandler(logging.StreamHandler(sys.stdout))  # what Hydra installs
        root.setLevel(logging.INFO)
        light.addHandler(logging.StreamHandler(sys.stdout))  # what Lightning adds when imported first
        light.propagate = True
        setup_console()
        assert [type(h) for h in root.handlers] == [TqdmHandler] and not light.handlers
        rz = logging.getLogger("lightning.pytorch.utilities.rank_zero")
        rz.info("GPU available: True (cuda), used: True")
        rz.info("💡 Tip: For seamless cloud logging ... try installing [litlogger](https://pypi.org/project/litlogger/)")
        with tqdm(total=3, file=sys.stdout, ascii=True) as bar:
            logging.getLogger("relnas.search.lightning_adapter").info("generation 1/2: best 2.3")
            bar.update(1)
        out = capsys.readouterr().out
        assert out.count("GPU available: True (cuda), used: True") == 1
        assert "litlogger" not in out
        assert "\ngeneration 1/2: best 2.3\n" in out.replace("\r", "\n")  # on its own line, not glued to the bar
    finally:
        for h in list(root.handlers):
            root.removeHandler(h)
        for h in saved[0]:
            root.addHandler(h)
        root.setLevel(saved[1])
        light.handlers[:] = saved[2]
        light.propagate = saved[3]
        light.filters[:] = saved[4]


def test_sweep_summary_says_which_jobs_failed_and_why(tmp_path):
    from relnas.sweep import summarize_sweep, write_summary

    jobs = {
        "0": {"result.json": {"status": "ok", "kind": "train",
                              "headline": {"metric": "best_val_top1_err", "value": 12.5},
                              "best_val_top1_err": 12.5, "test_top1_err": 13.0, "wall_time_s": 5.0}},
        "1": {"failure.json": {"status": "failed", "reason": "data.batch_size must be positive, got 0"}},
        "2": {"result.json": {"status": "failed", "kind": "search", "headline": {"metric": "val_loss", "value": None},
                              "reason": "every candidate of the last\ngeneration diverged"}},
        "3": {},  # crashed or still running: nothing written
    }
    for job, files in jobs.items():
        d = tmp_path / job
        (d / ".hydra").mkdir(parents=True)
        (d / ".hydra" / "overrides.yaml").write_text(f"- data.batch_size={job}\n")
        for name, content in files.items():
            (d / name).write_text(json.dumps(content))
    rows = summarize_sweep(tmp_path, ["data.batch_size"])
    write_summary(tmp_path, rows, ["data.batch_size"])
    csv_rows = list(csv.DictReader(open(tmp_path / "sweep_summary.csv")))
    assert [(r["data.batch_size"], r["status"], r["reason"]) for r in csv_rows] == [
        ("0", "ok", ""), ("1", "failed", "data.batch_size must be positive, got 0"),
        ("2", "failed", "every candidate of the last generation diverged"), ("3", "missing", "")]


def test_sweep_summary_of_transfer_jobs_has_their_headline_metric(tmp_path):
    from relnas.sweep import summarize_sweep, write_summary

    for job, (head, m) in enumerate((("authors", 0.31), ("torchvision", 0.27))):
        d = tmp_path / str(job)
        (d / ".hydra").mkdir(parents=True)
        (d / ".hydra" / "overrides.yaml").write_text(f"- task=detection\n- task.model.head={head}\n")
        (d / "result.json").write_text(json.dumps({"status": "ok", "kind": "transfer",
                                                   "headline": {"metric": "map", "value": m}, "task": "detection",
                                                   "metrics": {"map": m, "map_definition": "VOC07"},
                                                   "wall_time_s": 10.0 + job}))
    rows = summarize_sweep(tmp_path, ["task.model.head"])
    write_summary(tmp_path, rows, ["task.model.head"])
    csv_rows = list(csv.DictReader(open(tmp_path / "sweep_summary.csv")))
    # the summary's metric column is the headline of each run's result file (detection: map)
    assert [(r["task.model.head"], r["status"], r["map"], r["wall_time_s"]) for r in csv_rows] == [
        ("authors", "ok", "0.31", "10.0"), ("torchvision", "ok", "0.27", "11.0")]
    assert "test_top1_err" not in csv_rows[0]  # a classification column would stay empty
