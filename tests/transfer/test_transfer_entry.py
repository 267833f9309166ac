"""``python -m relnas.transfer`` and ``python -m relnas.inspect task=...``: configs, errors, a run end to end."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from helpers.voc import make_fake_voc
from helpers.cli import cli_env

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = str(ROOT / "configs")




def _compose(*overrides: str):
    with initialize_config_dir(config_dir=CONFIGS, version_base="1.3"):
        return compose(config_name="transfer", overrides=list(overrides))


def test_voc_ssdlite_experiment_is_the_recipe():
    cfg = _compose("+experiment=voc_ssdlite", "backbone=RelativeNAS")
    t = cfg.task
    assert t._target_ == "relnas.transfer.tasks.detection.DetectionModule" and t.epochs == 200 and cfg.trainer.max_epochs == 200
    assert (t.optimizer._target_, t.optimizer.lr, t.optimizer.momentum, t.optimizer.weight_decay) == \
        ("torch.optim.SGD", 0.01, 0.9, 5e-4)
    assert t.scheduler.name == "cosine" and t.data.batch_size == 32 and t.model.input_size == 320
    assert list(t.model.extra_channels) == [512, 256, 256, 64] and list(t.model.aspect_ratios) == [2, 3]
    assert list(t.data.train_sets) == ["2007-trainval", "2012-trainval"] and t.data.val_set == "2007-test"
    assert cfg.callbacks.model_checkpoint.monitor == "val/map" and cfg.callbacks.model_checkpoint.mode == "max"
    assert (cfg.backbone.name, cfg.backbone.C, cfg.backbone.layers) == ("RelativeNAS", 46, 14)
    assert _compose("backbone=mobilenet_v2").backbone.name == "mobilenet_v2"


def _run_in_process(tmp_path, capsys, *overrides):
    """The entry point's ``run`` on a composed config: it must exit with status 2 and one stderr line."""
    from relnas.transfer.__main__ import run

    cfg = _compose(f"paths.output_dir={tmp_path}", "logger=none", *overrides)
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        run(cfg)
    assert e.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, errors
    return errors[0]


def test_missing_voc_fails_in_one_line(tmp_path, capsys):
    msg = _run_in_process(tmp_path, capsys, f"task.data.root={tmp_path / 'nowhere'}", "backbone.C=8", "backbone.layers=5")
    assert msg.startswith("error: PASCAL VOC 2007-trainval not found") and "\n" not in msg
    assert "VOCdevkit/VOC2007" in msg and "JPEGImages" in msg


def test_unknown_backbone_and_task(tmp_path, capsys):
    msg = _run_in_process(tmp_path, capsys, "backbone.name=resnet_huge")
    assert msg.startswith("error: unknown backbone 'resnet_huge'") and "mobilenet_v2" in msg
    msg = _run_in_process(tmp_path, capsys, "task._target_=relnas.transfer.tasks.captioning.CaptioningModule")
    assert msg.startswith("error: unknown task 'relnas.transfer.tasks.captioning.CaptioningModule' (task._target_)")
    assert "relnas.transfer.tasks.detection.DetectionModule" in msg
    msg = _run_in_process(tmp_path, capsys, "task._target_=torch.nn.Linear")  # importable, but no transfer task
    assert msg.startswith("error: unknown task 'torch.nn.Linear' (task._target_)")
    msg = _run_in_process(tmp_path, capsys, "+backbone.depth=3")
    assert msg.startswith("error: unknown backbone keys ['depth']; known: [") and "'frozen_bn'" in msg
    msg = _run_in_process(tmp_path, capsys, "backbone=cell")
    assert msg.startswith("error: no backbone given: set backbone=<RelativeNAS")


def test_inspect_task_cli(tmp_path):
    p = subprocess.run([sys.executable, "-m", "relnas.inspect", "task=detection", "backbone=mobilenet_v2",
                        "input_size=64", f"hydra.run.dir={tmp_path}"], cwd=ROOT, env=cli_env(), capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    last = json.loads(p.stdout.strip().splitlines()[-1])
    # 3,304,708 parameters: the authors' MobileNetV2 SSDLite (tests/transfer/test_transfer_detection.py, test_transfer_sizes.py)
    assert last["params_m"] == pytest.approx(3.3047, abs=1e-4)
    # the authors' model for this task and backbone, counted in their code: the same
    assert last["authors_params_m"] == pytest.approx(3.3047, abs=1e-4)
    assert "authors' model  3.305  (3,304,708 parameters: equal)" in p.stdout
    assert last["task"] == "detection" and last["num_classes"] == 21 and last["input_size"] == [64, 64]
    assert last["flops_m"] > 0 and "params (M)" in p.stdout


def _detection_cmd(data, run_dir, *extra):
    return [sys.executable, "-m", "relnas.transfer", "task=detection", "backbone=RelativeNAS", "backbone.C=8",
            "backbone.layers=5", "task.model.input_size=64", f"task.data.root={data}",
            "task.data.train_sets=[2007-trainval]", "task.data.batch_size=2", "task.data.eval_batch_size=2",
            "task.data.num_workers=0", "trainer=cpu", "+trainer.limit_train_batches=1",
            "+trainer.num_sanity_val_steps=0", "callbacks.progress_bar.refresh_rate=0", f"hydra.run.dir={run_dir}",
            *extra]


@pytest.fixture(scope="module")
def detection_run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("det")
    data = tmp_path / "data"
    make_fake_voc(data, n_trainval=4, n_test=3)
    run_dir = tmp_path / "run"
    p = subprocess.run(_detection_cmd(data, run_dir, "task.epochs=1", "predictions.num_images=3"), cwd=ROOT,
                       env=cli_env(), capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    return data, run_dir, p


@pytest.mark.slow
def test_detection_end_to_end(detection_run):
    data, run_dir, p = detection_run
    assert "NO pretrained weights" in p.stdout + p.stderr
    r = json.loads((run_dir / "result.json").read_text())
    assert r["task"] == "detection" and r["backbone"] == "RelativeNAS" and r["weights"] is None
    assert "random" in r["weights_warning"] and r["num_classes"] == 21 and r["input_size"] == [64, 64]
    assert 0.0 <= r["metrics"]["map"] <= 1.0 and r["params_m"] > 0 and r["flops_m"] > 0
    # the headline (what a sweep summary shows) is the metric detection keeps checkpoints by: val/map
    assert (r["status"], r["kind"], r["headline"]) == ("ok", "transfer", {"metric": "map", "value": r["metrics"]["map"]})
    # per-class AP: the fake set has bottle, pottedplant, car, person; the other 16 classes have no objects
    assert set(r["per_class"]) == set(r["class_names"][1:])
    assert {k for k, v in r["per_class"].items() if v is not None} == {"bottle", "pottedplant", "car", "person"}
    assert r["global_step"] == 1 and r["wall_time_s"] > 0 and "cpu" in r["hardware"]
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    # by default the final weights are tested: no choice made on the evaluation split
    assert r["test_checkpoint"] == "final weights" and r["max_steps"] is None  # a run counted in epochs
    assert r["test_selection"]["rule"] == "final" and r["test_selection"]["selected_on_test_set"] is False
    from torchvision.io import read_image

    img = read_image(str(run_dir / "predictions.png"))
    # 3 images x (prediction, ground truth), 2 panels per row; the 72-96 px images are shown >= 256 px
    assert img.shape[0] == 3 and img.shape[1] >= 3 * 256 and img.shape[2] >= 2 * 256


# ---------------------------------------------------------------------- shared task helpers

def test_schedules_by_hand():
    from relnas.transfer.tasks.base import schedule_factor

    cos = schedule_factor({"name": "cosine"}, 200)
    assert cos(0) == pytest.approx(1.0) and cos(100) == pytest.approx(0.5) and cos(200) == pytest.approx(0.0)
    poly = schedule_factor({"name": "poly", "power": 0.9, "warmup_steps": 10, "warmup_ratio": 0.1}, 1000)
    assert poly(0) == pytest.approx(0.1) and poly(5) == pytest.approx(0.55)
    assert poly(500) == pytest.approx(0.5 ** 0.9) and poly(1000) == 0.0
    ms = schedule_factor({"name": "multistep", "milestones": [90, 120], "gamma": 0.1}, 140)
    assert (ms(89), ms(90), ms(119), ms(120)) == (1.0, pytest.approx(0.1), pytest.approx(0.1), pytest.approx(0.01))
    with pytest.raises(ValueError, match="unknown scheduler 'step'"):
        schedule_factor({"name": "step"}, 10)
    # the authors' BiSeNet (opt_utils/optimizer.py): lr0 0.01, 1e-5 * ((0.01 / 1e-5) ** (1 / 1000)) ** it for
    # it <= 1000, then 0.01 * (1 - (it - 1000) / (80000 - 1000)) ** 0.9
    theirs = schedule_factor({"name": "poly", "power": 0.9, "warmup_steps": 1000, "warmup_ratio": 0.001,
                              "warmup_mode": "exp", "poly_offset": True}, 80000)
    for it, lr in ((0, 1e-5), (500, 1e-5 * 1000 ** 0.5), (1000, 0.01), (40500, 0.01 * 0.5 ** 0.9), (80000, 0.0)):
        assert 0.01 * theirs(it) == pytest.approx(lr, rel=1e-9, abs=1e-15)
    with pytest.raises(ValueError, match="warmup_mode"):
        schedule_factor({"name": "poly", "warmup_mode": "cubic"}, 10)


def test_prediction_grid_pads_mixed_sizes():
    import torch

    from relnas.transfer.tasks.base import prediction_grid

    a = torch.zeros(3, 20, 30, dtype=torch.uint8)
    b = torch.full((1, 10, 10), 7, dtype=torch.uint8)
    g = prediction_grid([a, b, a], ncol=2, padding=2)
    # 2 columns x 2 rows of 20x30 slots with 2-pixel borders
    assert g.shape == (3, 2 + 2 * (20 + 2), 2 + 2 * (30 + 2)) and g.dtype == torch.uint8
    slot_b = g[:, 2:22, 34:64]
    assert int(slot_b[:, :10, :10].max()) == 7 and int(slot_b[:, 10:, :].min()) == 255  # white padding
    with pytest.raises(ValueError, match="panel 0: expected a uint8"):
        prediction_grid([torch.zeros(3, 4, 4)])


@pytest.mark.slow
def test_detection_resume(detection_run, tmp_path):
    data, run_dir, _ = detection_run
    resumed = tmp_path / "resumed"
    p = subprocess.run(_detection_cmd(data, resumed, "task.epochs=2", f"resume={run_dir}", "predictions.num_images=0",
                                      "test_checkpoint=best_test_epoch"),
                       cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    r = json.loads((resumed / "result.json").read_text())
    assert r["resumed_from"].endswith("last.ckpt") and r["epochs_run"] == 2 and r["global_step"] == 2
    # test_checkpoint=best_test_epoch: the monitored checkpoint, said to be chosen on the evaluation split
    sel = r["test_selection"]
    assert sel["rule"] == "best_test_epoch" and sel["selected_on_test_set"] is True and "val/map" in sel["description"]
    best = Path(sel["checkpoint"])
    assert best.parent == resumed / "checkpoints" and best.is_file() and best.name != "last.ckpt"
    assert r["test_checkpoint"] == sel["checkpoint"]
    # a checkpoint of another class count is refused in one line before training
    bad = subprocess.run(_detection_cmd(data, tmp_path / "bad", "task.epochs=2", f"resume={run_dir}",
                                        "task.model.extra_channels=[512,256,256,32]"),
                         cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=600)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith("error: resume:")


def test_test_checkpoint_rules():
    from relnas.errors import ConfigError
    from relnas.transfer.__main__ import resolve_test_checkpoint

    assert resolve_test_checkpoint(None) == resolve_test_checkpoint("auto") == resolve_test_checkpoint("final") == "final"
    assert resolve_test_checkpoint("best_test_epoch") == "best_test_epoch"
    with pytest.raises(ConfigError, match="best_val needs a validation split held out"):
        resolve_test_checkpoint("best_val")
    with pytest.raises(ConfigError, match="unknown test_checkpoint='best'; choose one of auto, final, best_test_epoch"):
        resolve_test_checkpoint("best")


def test_inspect_task_errors_are_one_line(tmp_path):
    """A bad backbone, and a head that cannot be built from the given settings (the task's own
    ValueError), each end ``relnas.inspect task=...`` with status 2 and one ``error:`` line."""
    for args, expect in ((["backbone.name=resnet_huge"], "unknown backbone 'resnet_huge'"),
                         (["task.model.extra_channels=[512,256]"], "task.model (detection): extra_channels")):
        p = subprocess.run([sys.executable, "-m", "relnas.inspect", "task=detection", "backbone=mobilenet_v2",
                            "input_size=64", *args, f"hydra.run.dir={tmp_path}"], cwd=ROOT, env=cli_env(),
                           capture_output=True, text=True, timeout=300)
        errors = [line for line in p.stderr.splitlines() if line.startswith("error:")]
        assert p.returncode == 2 and len(errors) == 1 and expect in errors[0], p.stderr[-2000:]
        assert "Traceback" not in p.stderr


def test_last_checkpoint_every_epoch_when_validating_every_n_epochs(tmp_path):
    """The transfer experiments validate every 10 or 20 epochs (trainer.check_val_every_n_epoch);
    checkpoints/last.ckpt (what resume=<run dir> continues from) must still be written after every
    training epoch, not only after a validation."""
    import lightning as L
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from relnas.utils import instantiate_callbacks

    class Tiny(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(2, 1)

        def training_step(self, batch, i):
            return self.lin(batch[0]).pow(2).mean()

        def validation_step(self, batch, i):
            self.log("val/map", float(self.current_epoch))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    cfg = _compose("+experiment=voc_ssdlite", f"paths.output_dir={tmp_path}")
    assert cfg.trainer.check_val_every_n_epoch == 10
    callbacks = [c for c in instantiate_callbacks(cfg.callbacks) if isinstance(c, L.pytorch.callbacks.ModelCheckpoint)]
    data = DataLoader(TensorDataset(torch.randn(4, 2)), batch_size=2)
    trainer = L.Trainer(max_epochs=2, check_val_every_n_epoch=10, callbacks=callbacks, logger=False,
                        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    trainer.fit(Tiny(), train_dataloaders=data, val_dataloaders=data)
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert last.is_file()
    assert torch.load(last, weights_only=True)["epoch"] == 1  # the second epoch's end


def test_bisenet_recipe_validates_its_final_weights():
    """cityscapes_bisenet runs 80K iterations (about 430 epochs of 186): validation is scheduled in
    iterations across epochs so that the last one falls on the final iteration and the best-checkpoint
    choice (and the test) can see the final weights; every 20 epochs left the last 1,880 unvalidated."""
    cfg = _compose("+experiment=cityscapes_bisenet", "backbone=RelativeNAS")
    t = cfg.trainer
    assert t.max_epochs == -1 and t.max_steps == 80000 and t.check_val_every_n_epoch is None
    assert isinstance(t.val_check_interval, int) and t.max_steps % t.val_check_interval == 0


def test_inspect_of_a_task_at_an_input_size_the_backbone_cannot_take_is_one_line(tmp_path):
    p = subprocess.run([sys.executable, "-m", "relnas.inspect", "task=keypoints", "backbone=RelativeNAS",
                        "input_size=[64,48]", "backbone.C=8", "backbone.layers=5", f"hydra.run.dir={tmp_path}"],
                       cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert p.returncode == 2
    assert p.stderr.strip().splitlines() == ["error: input size 64x48 does not fit backbone RelativeNAS: a cell backbone "
                                             "takes heights and widths that are multiples of 32"]
