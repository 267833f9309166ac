"""relnas.runs: what a run directory holds, read from files written by hand here."""
from __future__ import annotations

import json

import pytest

from relnas import runs


def _write(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))


def test_the_kind_of_a_run_comes_from_its_result_else_from_its_config_or_search_checkpoint(tmp_path):
    _write(tmp_path / "done" / "result.json", {"status": "ok", "kind": "evaluate",
                                               "headline": {"metric": "test_top1_err", "value": 3.0}})
    _write(tmp_path / "training" / ".hydra" / "config.yaml", "task_name: train\nseed: 0\n")
    (tmp_path / "searching").mkdir()
    (tmp_path / "searching" / "search_state.pt").write_bytes(b"")
    (tmp_path / "empty").mkdir()
    _write(tmp_path / "inspected" / ".hydra" / "config.yaml", "task_name: inspect\n")  # writes no run of a kind
    assert [runs.kind(tmp_path / d) for d in ("done", "training", "searching", "empty", "inspected")] == [
        "evaluate", "train", "search", None, None]


def test_the_outcome_of_a_run_is_its_headline_or_its_failure(tmp_path):
    runs.write_result(tmp_path / "ok", "search", "val_loss", 2.5, {"strategy": "relativenas"})
    _write(tmp_path / "ok" / "run.json", {"time_s": 12.0})  # a search's wall time
    _write(tmp_path / "failed" / "failure.json", {"status": "failed", "reason": "data.batch_size must be\npositive"})
    _write(tmp_path / "broken" / "result.json", "{not json")
    (tmp_path / "crashed").mkdir()
    got = {d: runs.outcome(tmp_path / d) for d in ("ok", "failed", "broken", "crashed")}
    assert got["ok"] == {"status": "ok", "reason": None, "kind": "search", "metric": "val_loss", "value": 2.5,
                         "test_top1_err": None, "wall_time_s": 12.0}
    assert (got["failed"]["status"], got["failed"]["reason"]) == ("failed", "data.batch_size must be positive")
    assert got["broken"]["status"].startswith("unreadable")
    assert got["crashed"]["status"] == "missing"
    assert json.loads((tmp_path / "ok" / "result.json").read_text()) == {
        "status": "ok", "kind": "search", "headline": {"metric": "val_loss", "value": 2.5}, "strategy": "relativenas"}


def test_a_result_of_an_unknown_kind_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown run kind 'sweep'"):
        runs.write_result(tmp_path, "sweep", "x", 1.0, {})


def test_a_genotype_asked_from_a_training_run_directory_says_what_the_directory_is(tmp_path):
    from relnas.errors import GenotypeNotFoundError
    from relnas.nas.genotypes import get_genotype

    runs.write_result(tmp_path, "train", "best_val_top1_err", 4.0, {})
    with pytest.raises(GenotypeNotFoundError, match=r"is a train run directory, not a search run directory"):
        get_genotype(str(tmp_path))


def test_resume_takes_the_last_checkpoint(tmp_path):
    assert runs.resume_checkpoint(tmp_path) is None
    (tmp_path / "last.ckpt").write_bytes(b"")
    assert runs.resume_checkpoint(tmp_path) == tmp_path / "last.ckpt"
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"")
    assert runs.resume_checkpoint(tmp_path) == tmp_path / "checkpoints" / "last.ckpt"
