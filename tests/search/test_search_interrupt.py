"""A search stopped by a signal (SIGTERM from a scheduler or `timeout`, Ctrl-C) must not look like a
success: non-zero exit status, and one line that says how to continue it."""
from __future__ import annotations

import logging
import os
import signal

import pytest

from relnas.search.engine import SearchEngine
from relnas.search.run import run_search
from relnas.search.state import load_state
from helpers.search import tiny_search_cfg


def test_sigterm_mid_search_exits_non_zero_and_names_the_resume_command(tmp_path, monkeypatch, caplog):
    real_end = SearchEngine._end_generation

    def end_generation(self):
        real_end(self)
        if self.generation == 1:  # the first generation is saved; the signal arrives in the second
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(SearchEngine, "_end_generation", end_generation)
    cfg = tiny_search_cfg(tmp_path, ["search.population_size=2", "search.generations=3"])
    with caplog.at_level(logging.INFO), pytest.raises(SystemExit) as e:
        run_search(cfg, tmp_path)
    # Lightning's SIGTERMException is a SystemExit without a code, i.e. status 0: a stopped search
    # would read as a finished one to a shell script or a scheduler
    assert e.value.code not in (None, 0)
    assert e.value.code == 128 + signal.SIGTERM
    state, _ = load_state(tmp_path)
    assert state["generation"] == 1
    assert not (tmp_path / "genotype.json").exists()
    lines = [r.getMessage() for r in caplog.records if f"resume={tmp_path}" in r.getMessage()]
    assert len(lines) == 1 and "SIGTERM" in lines[0] and "1 of 3" in lines[0], lines


def test_resume_with_another_precision_or_module_setting_is_refused(tmp_path):
    """trainer.precision and the module's optimizer keys change what every later candidate computes;
    a resume that changes them is a different search (README: it fails and names the keys)."""
    from relnas.errors import ConfigError

    base = ["search.population_size=2", "search.generations=1"]
    run_search(tiny_search_cfg(tmp_path, base), tmp_path)
    for change, key in (("trainer.precision=bf16-mixed", "trainer.precision"),
                        ("module.momentum=0.5", "module.momentum"),
                        ("module.grad_clip=1.0", "module.grad_clip")):
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            run_search(tiny_search_cfg(tmp_path, base + [change, f"resume={tmp_path}"]))
    # the run-time keys of the module stay free, as their search.* sources are
    run_search(tiny_search_cfg(tmp_path, base + ["search.channels_last=false", f"resume={tmp_path}"]))


def test_resume_refusal_says_what_to_do(tmp_path):
    """The refusal names the differing keys, where the first run's overrides are, and for a baseline
    asked for more generations, that only a RelativeNAS search can be extended."""
    from relnas.errors import ConfigError

    base = ["strategy=random", "search.population_size=2", "search.generations=1"]
    run_search(tiny_search_cfg(tmp_path, base), tmp_path)
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "overrides.yaml").write_text("- strategy=random\n")  # as Hydra leaves it
    with pytest.raises(ConfigError) as e:
        run_search(tiny_search_cfg(tmp_path, base[:-1] + ["search.generations=2", f"resume={tmp_path}"]))
    message = str(e.value)
    assert "search.generations (1 -> 2)" in message
    assert str(tmp_path / ".hydra" / "overrides.yaml") in message
    assert "only a relativenas search" in message.lower()


def test_a_finished_search_can_be_judged_again_with_another_max_diverged_share(tmp_path):
    """search.max_diverged_share only decides whether the finished search is accepted (nothing it
    computes): a search refused for its diverged share can be accepted on resume with a looser
    share, instead of being refused as a changed configuration and run again from scratch."""
    base = ["search.population_size=2", "search.generations=1"]
    first = run_search(tiny_search_cfg(tmp_path, base), tmp_path)
    again = run_search(tiny_search_cfg(tmp_path, base + ["search.max_diverged_share=0.9", f"resume={tmp_path}"]))
    assert again["genotype"] == first["genotype"] and again["val_loss"] == first["val_loss"]


def test_sigterm_during_the_last_generation_end_is_not_a_silent_success(tmp_path, monkeypatch, caplog):
    """A signal that lands while the last generation is recorded: every generation is saved, the
    outputs (genotype.json) are not written yet; the exit is not 0 and says that a resume writes them."""
    real_end = SearchEngine._end_generation

    def end_generation(self):
        real_end(self)
        if self.done:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(SearchEngine, "_end_generation", end_generation)
    base = ["search.population_size=2", "search.generations=1"]
    with caplog.at_level(logging.INFO), pytest.raises(SystemExit) as e:
        run_search(tiny_search_cfg(tmp_path, base), tmp_path)
    assert e.value.code == 128 + signal.SIGTERM
    assert not (tmp_path / "genotype.json").exists()
    lines = [r.getMessage() for r in caplog.records if f"resume={tmp_path}" in r.getMessage()]
    assert len(lines) == 1 and "SIGTERM" in lines[0] and "after its last generation" in lines[0], lines
    monkeypatch.setattr(SearchEngine, "_end_generation", real_end)
    run_search(tiny_search_cfg(tmp_path, base + [f"resume={tmp_path}"]))
    assert (tmp_path / "genotype.json").is_file()
