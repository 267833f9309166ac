"""The registry idiom, the error hierarchy and the command-line wrapper of the entry points."""
from __future__ import annotations

import pytest

from relnas.errors import ConfigError, RegistryError, RelnasError
from relnas.utils.registry import Registry
from relnas.utils.cli import command


def test_registry_decorator_lookup_and_errors():
    reg = Registry("widget")

    @reg.register("a")
    def make_a():
        return "A"

    assert make_a() == "A" and reg["a"] is make_a  # the decorator returns the definition unchanged
    reg.register("b", len)
    assert list(reg) == ["a", "b"] and "b" in reg and "c" not in reg and len(reg) == 2
    with pytest.raises(RegistryError) as e:
        reg["c"]
    assert str(e.value) == "unknown widget 'c'; known widgets: a, b"
    assert isinstance(e.value, KeyError) and isinstance(e.value, ConfigError)
    with pytest.raises(RegistryError, match="'a' is already registered"):
        reg.register("a", len)
    reg.register("a", make_a)  # the same object again is fine
    reg.register("a", len, overwrite=True)
    assert reg["a"] is len


def test_the_package_registries_name_the_known_entries():
    from relnas.nas.genotypes import GENOTYPES
    from relnas.nas.networks import NETWORKS
    from relnas.nas.operations import OPS, SEARCH_OPS
    from relnas.search.strategies import STRATEGIES

    assert set(SEARCH_OPS) < set(OPS) and set(OPS) - set(SEARCH_OPS) == {"sep_conv_7x7", "conv_7x1_1x7"}
    assert list(NETWORKS) == ["cifar", "imagenet"]
    assert {"RelativeNAS", "DARTS", "NASNet"} <= set(GENOTYPES)
    assert set(STRATEGIES) == {"relativenas", "random", "evolution"}
    with pytest.raises(RegistryError, match=r"unknown operation 'conv_9x9'; known operations: max_pool_3x3, "):
        OPS["conv_9x9"]


def test_the_command_wrapper_turns_a_known_error_into_one_line_and_exit_2(capsys):
    @command
    def fails(cfg):
        raise ConfigError(f"bad value {cfg}\n  (second line)")

    with pytest.raises(SystemExit) as e:
        fails(7)
    assert e.value.code == 2
    assert capsys.readouterr().err == "error: bad value 7 (second line)\n"

    @command
    def bug(cfg):
        raise ZeroDivisionError("a bug keeps its traceback")

    with pytest.raises(ZeroDivisionError):
        bug(0)
    assert command(lambda cfg: cfg + 1)(1) == 2
    assert issubclass(RegistryError, RelnasError)
