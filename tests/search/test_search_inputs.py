"""Bad values at the search's boundary that are not the search's own keys (the seed, the data set's
constructor arguments): one-line ConfigError before any work, as for the search.* keys."""
from __future__ import annotations

import pytest

from relnas.errors import ConfigError
from relnas.search.run import run_search
from relnas.search.state import STATE_FILE
from helpers.search import tiny_search_cfg


@pytest.mark.parametrize("override,message", [
    ("seed=-1", r"seed must be an integer >= 0, got -1"),           # numpy's SeedSequence refused it (traceback)
    ("seed=abc", r"seed must be an integer >= 0, got 'abc'"),       # int('abc') in the data module (Hydra's error)
    ("data.cutout=-3", r"^data \(relnas.data.SyntheticDataModule\): .*cutout must be >= 0"),
    ("data.num_train=0", r"^data \(relnas.data.SyntheticDataModule\): .*num_train"),
])
def test_bad_seed_and_data_arguments_fail_in_one_line_before_work(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message) as e:
        run_search(tiny_search_cfg(tmp_path, [override]), tmp_path)
    assert "\n" not in str(e.value)
    assert not (tmp_path / STATE_FILE).exists()


def test_relativenas_budget_not_a_multiple_of_the_population_is_reported(tmp_path, caplog):
    """search.budget=10 with 4 individuals: RelativeNAS can only run whole generations, 2 x 4 = 8
    estimations, while a baseline given the same key runs 10; the comparison "at the same budget"
    is then unequal, so the run says what it does (the number of estimations is unchanged)."""
    from relnas.search.run import check_config

    with caplog.at_level("WARNING"):
        check_config(tiny_search_cfg(tmp_path, ["search.budget=10"]))
    lines = [r.getMessage() for r in caplog.records if "search.budget=10" in r.getMessage()]
    assert len(lines) == 1 and "8 estimations" in lines[0] and "2 generations" in lines[0], lines
    caplog.clear()
    with caplog.at_level("WARNING"):
        check_config(tiny_search_cfg(tmp_path, ["search.budget=12"]))        # 3 whole generations
        check_config(tiny_search_cfg(tmp_path, ["search.budget=10", "strategy=random"]))  # runs 10
    assert not [r for r in caplog.records if "search.budget" in r.getMessage()]
