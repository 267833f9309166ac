"""The ``task`` and ``backbone`` config groups are built by Hydra from their ``_target_``: each real
config, composed as the command line composes it, names a class or function that exists."""
from __future__ import annotations

import hydra
import pytest

from relnas.utils.compose import CONFIG_DIR, compose_config

# the options users choose (docs/transfer.md), listed by hand
TASKS = {"detection": "DetectionModule", "segmentation": "SegmentationModule", "keypoints": "KeypointModule"}
BACKBONES = {"RelativeNAS", "DARTS_V2", "NASNet", "AmoebaNet", "cell", "mobilenet_v2", "shufflenet_v2_x1_0",
             "mnasnet1_0"}


def test_the_groups_hold_the_documented_options():
    assert {p.stem for p in (CONFIG_DIR / "task").glob("*.yaml")} == set(TASKS)
    assert {p.stem for p in (CONFIG_DIR / "backbone").glob("*.yaml")} == BACKBONES


@pytest.mark.parametrize("name", sorted(TASKS))
def test_each_task_config_names_its_lightning_module(name):
    from relnas.transfer.tasks.base import TransferModule

    t = compose_config("transfer", [f"task={name}"]).task
    assert "_target_" in t, f"configs/task/{name}.yaml has no _target_"
    cls = hydra.utils.get_class(t._target_)  # fails when the class does not exist
    assert cls.__name__ == TASKS[name] and issubclass(cls, TransferModule)
    # result.json records the class's name for the task; the checkpoint callback monitors task.monitor
    assert (cls.task_name, cls.monitor, cls.monitor_mode) == (name, t.monitor, t.monitor_mode)


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_each_backbone_config_is_built_by_hydra(name):
    from relnas.transfer.backbones import Backbone

    chosen = ["backbone.name=RelativeNAS"] if name == "cell" else []
    b = compose_config("transfer", [f"backbone={name}", *chosen]).backbone
    assert "_target_" in b, f"configs/backbone/{name}.yaml has no _target_"
    small = {"C": 8, "layers": 5} if "C" in b else {}  # a cell network of NetworkImageNet's shape, smaller
    bb = hydra.utils.instantiate(b, **small)  # every key of the config is an argument of the builder it names
    assert isinstance(bb, Backbone) and bb.name == ("RelativeNAS" if name == "cell" else name)
    assert bb.pretrained is False and bb.feature_info.channels()


def test_a_config_without_target_or_naming_nothing_is_refused_in_one_line():
    from relnas.errors import ConfigError
    from relnas.transfer.__main__ import backbone_from_config, task_class

    with pytest.raises(ConfigError, match=r"^backbone: no _target_"):
        backbone_from_config({"name": "mobilenet_v2"})
    with pytest.raises(ConfigError, match=r"^backbone: _target_ 'relnas.transfer.backbones.nope' names nothing"):
        backbone_from_config({"_target_": "relnas.transfer.backbones.nope", "name": "mobilenet_v2"})
    with pytest.raises(ConfigError, match=r"^unknown task None \(task._target_\); known: .*DetectionModule"):
        task_class({"epochs": 1})
