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

from search_helpers import TINY, tiny_search_cfg

REPO = Path(__file__).resolve().parents[1]
# smaller than TINY: two candidates per generation on 48 images
MICRO = [a for a in TINY if not a.startswith(("data.num_train", "search.population_size", "search.generations"))] + \
    ["data.num_train=48", "search.population_size=2", "search.generations=1"]


def _cli(module, args, cwd, timeout=600, **env_extra):
    env = dict(os.environ, WANDB_MODE="offline", PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", **env_extra)
    env.pop("WANDB_API_KEY", None)
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def _wandb_run(job_dir: Path):
    from wandb_offline import summary

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
        assert float(row["wall_time_s"]) == pytest.approx(res["time_s"])
    assert (sweep / "sweep_summary.png").stat().st_size > 5000
