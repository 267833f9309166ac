"""relnas.train / relnas.evaluate at the boundary: nonsense settings and data options fail in one
line before any work, failing jobs of a multirun, ImageFolder trees whose class folders differ,
which checkpoint is the best one (ties, and after a resume into a new run directory)."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from helpers.cli import cli_env

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = str(ROOT / "configs")

TINY = [
    "data=synthetic", "data.num_train=96", "data.num_test=32", "data.batch_size=32", "data.eval_batch_size=64",
    "model.C=4", "model.layers=3", "model.auxiliary=false", "model.drop_path_prob=0.0", "logger=none",
    "trainer.accelerator=cpu", "trainer.enable_model_summary=false", "callbacks.progress_bar.refresh_rate=0",
]


def _compose(tmp_path: Path, *overrides: str, config: str = "train"):
    with initialize_config_dir(config_dir=CONFIGS, version_base="1.3"):
        return compose(config_name=config, overrides=[f"paths.output_dir={tmp_path}",
                                                      f"paths.data_dir={tmp_path / 'nodata'}", *overrides])


def _cli(module: str, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=cli_env(), capture_output=True,
                          text=True, timeout=300)


# ---------------------------------------------------------------------- nonsense values

@pytest.mark.parametrize("override, key", [
    ("epochs=0", "epochs"),
    ("epochs=-1", "epochs"),  # was: Lightning's endless training, then a crash on a negative drop path
    ("trainer.max_epochs=-1", "trainer.max_epochs"),
    ("optimizer.lr=-1", "optimizer.lr"),  # was: torch's ValueError traceback
    ("optimizer.lr=0", "optimizer.lr"),
    ("optimizer.momentum=1.5", "optimizer.momentum"),
    ("optimizer.weight_decay=-0.1", "optimizer.weight_decay"),
    ("model.auxiliary_weight=-1", "model.auxiliary_weight"),  # was: accepted silently
    ("model.label_smoothing=2", "model.label_smoothing"),  # was: a traceback after the sanity check
    ("model.drop_path_prob=1.5", "model.drop_path_prob"),
    ("trainer.gradient_clip_val=-5", "trainer.gradient_clip_val"),
    ("scheduler.warmup_epochs=-1", "scheduler.warmup_epochs"),
])
def test_nonsense_training_values_fail_in_one_line_before_the_data(tmp_path, override, key):
    from relnas.errors import ConfigError
    from relnas.train import train

    # CIFAR-10 is absent here: a check made after loading the data would fail on the data set instead
    cfg = _compose(tmp_path, "data=cifar10", "trainer.accelerator=cpu", "logger=none", override)
    with pytest.raises(ConfigError) as e:
        train(cfg)
    msg = str(e.value)
    assert msg.startswith(f"{key} must be") and "\n" not in msg, msg


def test_the_shipped_experiments_pass_the_checks(tmp_path):
    from relnas.train import check_train_config

    for exp in ("cifar10", "cifar100", "imagenet", "fashion_mnist", "quickstart"):
        check_train_config(_compose(tmp_path, f"+experiment={exp}"))
    check_train_config(_compose(tmp_path, "+experiment=imagenet", "scheduler.name=official_imagenet"))


@pytest.mark.parametrize("override, expected", [
    ("data.batch_size=0", "batch sizes must be >= 1, got 0"),
    ("data.cutout=-3", "crop_padding and cutout must be >= 0, got 4 and -3"),
    ("data.val_size=1000", "val_size=1000 must be smaller than the training set (96)"),
])
def test_data_option_errors_are_one_config_error_line(tmp_path, override, expected):
    from relnas.errors import ConfigError
    from relnas.train import train

    with pytest.raises(ConfigError) as e:
        train(_compose(tmp_path, *TINY, override))
    msg = str(e.value)
    assert msg.startswith("data (relnas.data.SyntheticDataModule): ") and expected in msg and "\n" not in msg, msg


def test_data_option_error_on_the_command_line_is_one_error_line(tmp_path):
    p = _cli("relnas.train", tmp_path, f"hydra.run.dir={tmp_path / 'run'}", *TINY, "data.batch_size=0")
    assert p.returncode == 2, p.stderr[-2000:]
    assert "Traceback" not in p.stderr and "Error executing job" not in p.stderr, p.stderr[-2000:]
    errors = [line for line in p.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: data (relnas.data.SyntheticDataModule): batch sizes must be >= 1, got 0 and 64"]


# ---------------------------------------------------------------------- multirun

@pytest.mark.parametrize("module, args", [
    ("relnas.train", ["genotype=NoSuchCell1,NoSuchCell2"]),
    ("relnas.evaluate", ["checkpoint=/no/such/run1,/no/such/run2", "data=synthetic"]),
])
def test_failing_jobs_of_a_multirun_give_their_error_lines_and_the_summary(tmp_path, module, args):
    """Each failed job printed its line and then died in ``main`` (``None.get``): a traceback, and
    Hydra stopped the sweep before the summary was written."""
    sweep = tmp_path / "sweep"
    p = _cli(module, tmp_path, "-m", *args, "trainer.accelerator=cpu", "logger=none", f"hydra.sweep.dir={sweep}")
    out = p.stdout + p.stderr
    assert "Traceback" not in out and "AttributeError" not in out, out[-3000:]
    errors = [line for line in p.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 3, p.stderr[-3000:]  # one per job, then the sweep's own line
    assert errors[-1].startswith("error: 2 of 2 jobs failed"), errors
    assert p.returncode == 1
    rows = list(csv.DictReader(open(sweep / "sweep_summary.csv")))
    # each job recorded its own error line (failure.json), which the summary shows as the reason
    assert [(r["status"], r["reason"]) for r in rows] == [("failed", e[len("error: "):]) for e in errors[:2]]


# ---------------------------------------------------------------------- ImageFolder trees

def _tree(root: Path, layout: dict[str, int]) -> None:
    from PIL import Image

    for cls, n in layout.items():
        d = root / cls
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.new("RGB", (8, 8), (10 * i, 0, 0)).save(d / f"{cls}_{i}.png")


def _imagefolder(root: Path):
    from relnas.data import ImageFolderDataModule

    return ImageFolderDataModule(data_dir=str(root), image_size=8, num_workers=0, batch_size=2, eval_batch_size=2)


def test_imagefolder_val_tree_missing_a_class_keeps_the_training_labels(tmp_path):
    _tree(tmp_path / "train", {"n01": 2, "n02": 2, "n03": 2})
    _tree(tmp_path / "val", {"n01": 1, "n03": 2})  # no n02 folder
    dm = _imagefolder(tmp_path)
    dm.setup("fit")
    assert dm.num_classes == 3
    # n03 is the third training class (index 2); torchvision alone numbers the val tree's own
    # folders, which made n03 class 1 (n02's label) without a word
    for ds in (dm.val_set, dm.test_set):
        labels = {Path(path).parent.name: t for path, t in ds.samples}
        assert labels == {"n01": 0, "n03": 2}
        assert sorted(ds.targets) == [0, 2, 2]
        assert [int(y) for _, y in (ds[i] for i in range(len(ds)))] == sorted(ds.targets)


def test_imagefolder_same_classes_unchanged(tmp_path):
    _tree(tmp_path / "train", {"a": 1, "b": 1})
    _tree(tmp_path / "val", {"a": 1, "b": 2})
    dm = _imagefolder(tmp_path)
    dm.setup("fit")
    assert sorted(dm.val_set.targets) == [0, 1, 1]


def test_imagefolder_val_class_the_training_tree_lacks_fails_in_one_line(tmp_path):
    from relnas.errors import DataError

    _tree(tmp_path / "train", {"a": 1, "b": 1})
    _tree(tmp_path / "val", {"a": 1, "zz": 1})
    with pytest.raises(DataError, match=r"has class folders the training tree .* lacks: zz;"):
        _imagefolder(tmp_path).setup("fit")


def test_imagefolder_flat_val_tree_fails_in_one_line(tmp_path):
    """ImageNet's val/ as distributed (50,000 images, no class folders)."""
    from PIL import Image

    from relnas.errors import DatasetNotFoundError

    _tree(tmp_path / "train", {"a": 1, "b": 1})
    (tmp_path / "val").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "val" / "ILSVRC2012_val_00000001.JPEG")
    with pytest.raises(DatasetNotFoundError, match=r"has no class folders"):
        _imagefolder(tmp_path).setup("fit")


def test_imagefolder_class_folder_without_images_fails_as_a_relnas_error(tmp_path):
    from relnas.errors import DatasetNotFoundError

    _tree(tmp_path / "train", {"a": 1, "b": 0})
    _tree(tmp_path / "val", {"a": 1})
    with pytest.raises(DatasetNotFoundError, match=r"image folder .*train"):
        _imagefolder(tmp_path).setup("fit")


# ---------------------------------------------------------------------- the best checkpoint

def test_best_val_of_equal_top1_is_the_earliest_epoch():
    """ModelCheckpoint(monitor=val/acc1, mode=max) replaces its best only on a strict improvement,
    so of two epochs with the same top-1 it keeps the earlier one; result.json's best epoch must
    be that one (it was the later one when its top-5 was higher)."""
    from relnas.models.classifier import ClassifierModule

    m = ClassifierModule(genotype="RelativeNAS", C=4, layers=3, num_classes=10, auxiliary=False)
    m.val_history = [{"epoch": 0, "acc1": 0.25, "acc5": 0.5}, {"epoch": 1, "acc1": 0.5, "acc5": 0.6},
                     {"epoch": 2, "acc1": 0.5, "acc5": 0.9}, {"epoch": 3, "acc1": 0.375, "acc5": 1.0}]
    assert m.best_val() == {"epoch": 1, "acc1": 0.5, "acc5": 0.6}


@pytest.mark.slow
def test_resume_into_a_new_run_directory_keeps_the_best_checkpoint_so_far(tmp_path):
    """After a resume into another directory Lightning's ModelCheckpoint forgot the best score, so
    the best of the resumed epochs only was tested (test_checkpoint=best_val)."""
    from relnas.train import train

    first, second = tmp_path / "first", tmp_path / "second"
    common = [*TINY, "data.val_size=32", "epochs=3"]
    train(_compose(first, *common, "trainer.max_epochs=1"))
    old_best = first / "checkpoints" / "best_epoch000.ckpt"
    assert old_best.is_file()
    # make epoch 0's score unbeatable (top-1 of 1.0), so it stays the best of the whole run
    last = first / "checkpoints" / "last.ckpt"
    ck = torch.load(last, map_location="cpu", weights_only=True)
    states = [s for k, s in ck["callbacks"].items() if "val/acc1" in k]
    assert len(states) == 1 and states[0]["best_model_path"] == str(old_best)
    states[0]["best_model_score"] = torch.tensor(1.0)
    states[0]["best_k_models"] = {str(old_best): torch.tensor(1.0)}
    ck["val_history"] = [{"epoch": 0, "acc1": 1.0, "acc5": 1.0}]
    torch.save(ck, last)

    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = train(_compose(second, *common, "trainer.max_epochs=2", f"resume={first}"))
    # Lightning's "The dirpath has changed ... best_model_score ... won't be reloaded" would now be wrong
    assert not [w for w in caught if "dirpath has changed" in str(w.message)]
    assert last.is_file()  # the first run's last.ckpt too
    copied = second / "checkpoints" / "best_epoch000.ckpt"
    assert res["epochs_run"] == 2 and res["best_val_epoch"] == 0 and res["best_val_top1_err"] == 0.0
    assert res["best_checkpoint"] == str(copied) and res["test_selection"]["checkpoint"] == str(copied)
    assert copied.is_file() and not (second / "checkpoints" / "best_epoch001.ckpt").exists()
    assert old_best.is_file()  # the first run's files are left alone
    assert json.loads((second / "result.json").read_text())["best_checkpoint"] == str(copied)


# ---------------------------------------------------------------------- relnas.evaluate

def test_evaluate_refuses_a_data_image_size_other_than_the_trained_one(tmp_path):
    """A CIFAR network without its auxiliary head runs on 16x16 images too: a checkpoint trained
    on 32x32 (e.g. the quickstart's Fashion-MNIST padded to 32) was tested on other images
    without a word when data.image_size was left at the data set's default."""
    from relnas.errors import ConfigError
    from relnas.evaluate import evaluate
    from relnas.train import train

    run = tmp_path / "run"
    train(_compose(run, *TINY, "epochs=1", "test_after_training=false"))
    ev = [f"checkpoint={run}", "data=synthetic", "data.num_train=96", "data.num_test=32", "trainer.accelerator=cpu"]
    with pytest.raises(ConfigError, match=r"was trained on 32x32 images but the data set gives 16x16: "
                                          r"set data.image_size=32$"):
        evaluate(_compose(tmp_path / "e1", *ev, "data.image_size=16", config="evaluate"))
    res = evaluate(_compose(tmp_path / "e2", *ev, config="evaluate"))
    assert res["network"]["image_size"] == 32 and res["test_top1_err"] is not None


@pytest.mark.parametrize("which", ["checkpoint", "reference_checkpoint"])
def test_evaluate_missing_weights_fail_before_the_data(tmp_path, which):
    from relnas.errors import ConfigError
    from relnas.evaluate import evaluate

    # CIFAR-10 is absent: a weights check made after the data would report the data set instead
    cfg = _compose(tmp_path, f"{which}={tmp_path / 'nothing.ckpt'}", "trainer.accelerator=cpu", config="evaluate")
    with pytest.raises(ConfigError, match=r"does not exist"):
        evaluate(cfg)


# ---------------------------------------------------------------------- CIFAR files that do not read

def _cifar100(root: Path, label_key: str = "fine_labels") -> Path:
    import pickle

    import numpy as np

    d = root / "cifar-100-python"
    d.mkdir(parents=True)
    for f, n in (("train", 6), ("test", 4)):
        with open(d / f, "wb") as fh:
            pickle.dump({"data": np.zeros((n, 3072), dtype=np.uint8), label_key: list(range(n))}, fh)
    return d


def test_truncated_cifar_batch_is_one_data_error_line(tmp_path):
    from relnas.data import CIFAR100DataModule
    from relnas.errors import DataError

    d = _cifar100(tmp_path)
    (d / "train").write_bytes((d / "train").read_bytes()[:500])  # an interrupted copy
    with pytest.raises(DataError) as e:  # was the unpickler's traceback
        CIFAR100DataModule(data_dir=str(tmp_path)).setup("fit")
    msg = str(e.value)
    assert msg.startswith(f"CIFAR-100: {d / 'train'} is not a readable CIFAR python batch (") and "\n" not in msg


def test_cifar10_batches_in_the_cifar100_folder_name_the_missing_labels(tmp_path):
    from relnas.data import CIFAR100DataModule
    from relnas.errors import DataError

    _cifar100(tmp_path, label_key="labels")  # CIFAR-10's key
    with pytest.raises(DataError, match=r"\(no 'fine_labels' entry\)"):  # was KeyError: 'fine_labels'
        CIFAR100DataModule(data_dir=str(tmp_path)).setup("fit")


def test_well_formed_fake_cifar100_still_loads(tmp_path):
    from relnas.data import CIFAR100DataModule

    _cifar100(tmp_path)
    dm = CIFAR100DataModule(data_dir=str(tmp_path), batch_size=2)
    dm.setup("fit")
    assert dm.num_classes == 100 and dm.source == str((tmp_path / "cifar-100-python").resolve())


def test_resume_with_another_schedule_fails_in_one_line(tmp_path):
    """The restored CosineAnnealingLR keeps the checkpoint's T_max: resumed with a longer
    ``epochs`` its learning rate rose again after the old length, while drop path followed the
    new one. A resume must keep the run's schedule; trainer.max_epochs may still stop it early."""
    from relnas.errors import ConfigError
    from relnas.train import train

    first = tmp_path / "first"
    train(_compose(first, *TINY, "epochs=3", "trainer.max_epochs=1", "test_after_training=false"))
    with pytest.raises(ConfigError) as e:
        train(_compose(tmp_path / "second", *TINY, "epochs=5", "model.drop_path_prob=0.2", f"resume={first}"))
    msg = str(e.value)
    assert "epochs: checkpoint 3 vs config 5" in msg and "model.drop_path_prob: checkpoint 0.0 vs config 0.2" in msg
    assert "scheduler" not in msg.split(" - ")[1] and "\n" not in msg
    # the same network on other images (the synthetic data set makes any size)
    with pytest.raises(ConfigError, match=r"data.image_size: checkpoint 32 vs config 16"):
        train(_compose(tmp_path / "second", *TINY, "epochs=3", "data.image_size=16", f"resume={first}"))
    # the optimizer's state comes back from the checkpoint: another lr / weight decay would be ignored
    with pytest.raises(ConfigError, match=r"optimizer.lr: checkpoint 0.025 vs config 0.05; "
                                          r"optimizer.weight_decay: checkpoint 0.0003 vs config 0;"):
        train(_compose(tmp_path / "second", *TINY, "epochs=3", "optimizer.lr=0.05", "optimizer.weight_decay=0",
                       f"resume={first}"))
    # the same settings resume (and stop where trainer.max_epochs says)
    res = train(_compose(tmp_path / "third", *TINY, "epochs=3", "trainer.max_epochs=2", f"resume={first}",
                         "test_after_training=false"))
    assert res["epochs_run"] == 2


def test_a_training_checkpoint_of_another_format_version_is_refused_in_one_line(tmp_path):
    """Every checkpoint relnas.train writes records its format version and the run's spec; a
    checkpoint of another version, or one without (not written by relnas.train), is refused in one
    line naming the version, by a resume and by relnas.evaluate / relnas.export."""
    from relnas.errors import CheckpointError
    from relnas.evaluate import read_train_checkpoint
    from relnas.train import train
    from relnas.train_spec import FORMAT_VERSION

    first = tmp_path / "first"
    train(_compose(first, *TINY, "epochs=1", "test_after_training=false"))
    ckpt = torch.load(first / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["format_version"] == FORMAT_VERSION and ckpt["train_spec"]["epochs"] == 1
    assert read_train_checkpoint(str(first / "checkpoints" / "last.ckpt"))[1]["format_version"] == FORMAT_VERSION
    for version, said in ((FORMAT_VERSION + 1, f"(its version: {FORMAT_VERSION + 1})"), (None, "(its version: (none))")):
        other = dict(ckpt, format_version=version) if version is not None else \
            {k: v for k, v in ckpt.items() if k != "format_version"}
        path = tmp_path / f"other_{version}.ckpt"
        torch.save(other, path)
        with pytest.raises(CheckpointError) as e:
            train(_compose(tmp_path / "second", *TINY, "epochs=1", f"resume={path}"))
        assert said in str(e.value) and str(e.value).endswith("start the training again")
        assert "\n" not in str(e.value)
        with pytest.raises(CheckpointError) as e:
            read_train_checkpoint(str(path))
        assert said in str(e.value) and str(e.value).endswith("train it again with this relnas")
        assert "\n" not in str(e.value)


@pytest.mark.parametrize("config, expected", [
    ("data:\n  val_size: 0\ntest_checkpoint: auto\n", "last.ckpt"),  # validation = the test split
    ("data:\n  val_size: 500\ntest_checkpoint: auto\n", "best_epoch004.ckpt"),  # held out: best_val
    ("data:\n  val_size: 0\ntest_checkpoint: best_test_epoch\n", "best_epoch004.ckpt"),  # asked for
    (None, "last.ckpt"),  # no config: nothing chosen on any split
])
def test_evaluate_interrupted_run_dir_uses_the_runs_test_rule(tmp_path, config, expected):
    """A run directory without result.json (interrupted): its best*.ckpt, kept by validation top-1,
    was evaluated even when validation was the test split (val_size=0), i.e. selected on the test set."""
    from relnas.evaluate import find_eval_checkpoint

    (tmp_path / "checkpoints").mkdir()
    for name in ("best_epoch004.ckpt", "last.ckpt"):
        (tmp_path / "checkpoints" / name).write_bytes(b"")
    if config is not None:
        (tmp_path / ".hydra").mkdir()
        (tmp_path / ".hydra" / "config.yaml").write_text(config)
    assert find_eval_checkpoint(str(tmp_path)) == tmp_path / "checkpoints" / expected


def test_sweep_summary_counts_evaluation_jobs(tmp_path):
    """The jobs of `relnas.evaluate -m ...` are counted with their test error (not 'missing', which
    would make the finished sweep exit with '2 of 2 jobs failed')."""
    from relnas.sweep import job_record, write_summary

    for job, err in (("0", 12.5), ("1", 7.25)):
        (tmp_path / job).mkdir()
        (tmp_path / job / "result.json").write_text(json.dumps({
            "status": "ok", "kind": "evaluate", "headline": {"metric": "test_top1_err", "value": err},
            "test_top1_err": err, "wall_time_s": 3.0}))
    rows = [{"job": int(j), "dir": str(tmp_path / j), "seed": j, **job_record(tmp_path / j)} for j in ("0", "1")]
    assert [(r["status"], r["val_metric"]) for r in rows] == [("ok", 12.5), ("ok", 7.25)]
    write_summary(tmp_path, rows, ["seed"])
    with open(tmp_path / "sweep_summary.csv") as f:
        header = next(csv.reader(f))
    assert header == ["job", "seed", "status", "reason", "test_top1_err", "wall_time_s", "dir"]
    got = list(csv.DictReader(open(tmp_path / "sweep_summary.csv")))
    assert [r["test_top1_err"] for r in got] == ["12.5", "7.25"]


def test_missing_resume_checkpoint_fails_before_the_data(tmp_path):
    from relnas.errors import ConfigError
    from relnas.train import train

    # CIFAR-10 is absent: a resume check made after the data would report the data set instead
    cfg = _compose(tmp_path, "data=cifar10", "trainer.accelerator=cpu", "logger=none", f"resume={tmp_path / 'old'}")
    with pytest.raises(ConfigError, match=r"^resume: checkpoint .* does not exist$"):
        train(cfg)
