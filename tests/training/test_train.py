"""Training / evaluation apps: short runs on synthetic data, resume, DDP, config composition, errors."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf, open_dict
from helpers.cli import cli_env

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = str(ROOT / "configs")
EXPERIMENTS = ["cifar10", "cifar100", "imagenet", "fashion_mnist", "quickstart"]

# A tiny network on tiny synthetic data: 4 batches of 32 per epoch.
TINY = [
    "data=synthetic", "data.num_train=128", "data.num_test=64", "data.image_size=32", "data.batch_size=32",
    "data.eval_batch_size=64", "model.C=4", "model.layers=3", "model.auxiliary=true", "model.drop_path_prob=0.1",
    "optimizer.lr=0.1", "logger=csv", "trainer.accelerator=cpu", "trainer.log_every_n_steps=1",
    "trainer.enable_model_summary=false", "callbacks.progress_bar.refresh_rate=0",
]
STEPS_PER_EPOCH = 4




def run_cli(module: str, run_dir: Path, *overrides: str, timeout: int = 300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", module, f"hydra.run.dir={run_dir}", *overrides]
    return subprocess.run(cmd, cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=timeout)


def _compose(*overrides: str, config: str = "train"):
    with initialize_config_dir(config_dir=CONFIGS, version_base="1.3"):
        return compose(config_name=config, overrides=list(overrides))


def _cfg(tmp_path: Path, *overrides: str):
    return _compose(*TINY, f"paths.output_dir={tmp_path}", f"paths.data_dir={tmp_path / 'data'}", *overrides)


def _epoch_losses(run_dir: Path) -> list[float]:
    with open(run_dir / "csv" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/loss_epoch")]
    return [float(r["train/loss_epoch"]) for r in sorted(rows, key=lambda r: int(r["epoch"]))]


# ---------------------------------------------------------------------- a short training + resume

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """epochs=3 (schedule) but stopped after 2 epochs (max_epochs=2), as an interrupted run."""
    run_dir = tmp_path_factory.mktemp("train") / "run"
    p = run_cli("relnas.train", run_dir, *TINY, "epochs=3", "trainer.max_epochs=2")
    assert p.returncode == 0, p.stderr[-3000:]
    return run_dir, p


RESULT_KEYS = {"genotype", "network", "params_m", "mult_adds_m", "best_val_top1_err", "best_val_top5_err",
               "test_top1_err", "test_top5_err", "epochs", "wall_time_s", "hardware"}


def test_short_training_writes_results(trained):
    run_dir, p = trained
    res = json.loads((run_dir / "result.json").read_text())
    assert RESULT_KEYS <= set(res)
    assert res["genotype"]["normal"][0] == ["sep_conv_3x3", 0]
    assert res["network"]["C"] == 4 and res["network"]["layers"] == 3 and res["network"]["auxiliary"]
    assert res["params_m"] > 0 and res["mult_adds_m"] > 0
    assert 0 <= res["test_top1_err"] <= 100 and 0 <= res["test_top5_err"] <= res["test_top1_err"]
    # a training's headline is its best validation top-1 error
    assert (res["status"], res["kind"], res["headline"]) == (
        "ok", "train", {"metric": "best_val_top1_err", "value": res["best_val_top1_err"]})
    assert res["epochs"] == 3 and res["epochs_run"] == 2 and res["global_step"] == 2 * STEPS_PER_EPOCH
    assert {"cpu", "cpu_cores", "gpus", "torch"} <= set(res["hardware"])
    assert (run_dir / "checkpoints" / "last.ckpt").is_file() and res["best_checkpoint"]
    assert "genotype: normal:" in p.stdout and "test_acc1=" in p.stdout
    losses = _epoch_losses(run_dir)
    assert len(losses) == 2 and losses[-1] < losses[0], losses


def test_resume_continues_epoch_and_step(trained, tmp_path):
    run_dir, _ = trained
    ck = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ck["epoch"] == 1 and ck["global_step"] == 2 * STEPS_PER_EPOCH
    assert len(ck["val_history"]) == 2
    new = tmp_path / "resumed"
    p = run_cli("relnas.train", new, *TINY, "epochs=3", f"resume={run_dir}", "test_after_training=false")
    assert p.returncode == 0, p.stderr[-3000:]
    res = json.loads((new / "result.json").read_text())
    assert res["resumed_from"].endswith("last.ckpt")
    assert res["global_step"] == 3 * STEPS_PER_EPOCH and res["epochs_run"] == 3
    ck2 = torch.load(new / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ck2["global_step"] == 3 * STEPS_PER_EPOCH and len(ck2["val_history"]) == 3
    # only the third epoch ran in the resumed process
    losses = _epoch_losses(new)
    assert len(losses) == 1


@pytest.mark.slow
def test_evaluate_our_checkpoint(trained, tmp_path):
    run_dir, _ = trained
    p = run_cli("relnas.evaluate", tmp_path / "eval", f"checkpoint={run_dir}", "data=synthetic",
                "data.num_train=128", "data.num_test=64", "trainer.accelerator=cpu")
    assert p.returncode == 0, p.stderr[-3000:]
    assert "test_top1_err=" in p.stdout
    res = json.loads((tmp_path / "eval" / "result.json").read_text())
    trained_res = json.loads((run_dir / "result.json").read_text())
    assert res["test_top1_err"] == pytest.approx(trained_res["test_top1_err"], abs=1e-6)
    assert (res["kind"], res["headline"]) == ("evaluate", {"metric": "test_top1_err", "value": res["test_top1_err"]})


def test_mismatched_resume_checkpoint(trained, tmp_path):
    from relnas.train import ConfigError, train

    run_dir, _ = trained
    cfg = _cfg(tmp_path, f"resume={run_dir}", "model.C=6", "genotype=DARTS_V2")
    with pytest.raises(ConfigError, match=r"different architecture \(genotype, C differ\)"):
        train(cfg)


@pytest.mark.slow
def test_ddp_two_cpu_processes(tmp_path):
    run_dir = tmp_path / "ddp"
    p = run_cli("relnas.train", run_dir, *TINY, "epochs=1", "trainer=ddp", "trainer.accelerator=cpu",
                "trainer.devices=2", timeout=400)
    assert p.returncode == 0, p.stderr[-3000:]
    res = json.loads((run_dir / "result.json").read_text())
    assert res["world_size"] == 2
    # 128 images / (32 per process x 2 processes) = 2 steps
    assert res["global_step"] == STEPS_PER_EPOCH // 2
    assert res["test_top1_err"] is not None


# ---------------------------------------------------------------------- composition

def _synthetic_like(cfg) -> None:
    """Replace cfg.data by a synthetic data set with the same image size / classes / channels."""
    target = cfg.data._target_
    shape = {"relnas.data.CIFAR10DataModule": (3, 32, 10), "relnas.data.CIFAR100DataModule": (3, 32, 100),
             "relnas.data.FashionMNISTDataModule": (1, cfg.data.get("image_size", 28), 10),
             "relnas.data.ImageFolderDataModule": (3, cfg.data.get("image_size", 224), 1000)}[target]
    syn_data = _compose("data=synthetic").data
    with open_dict(cfg):
        cfg.data = OmegaConf.merge(syn_data, {"in_channels": shape[0], "image_size": shape[1],
                                              "num_classes": shape[2], "num_train": 8, "num_test": 8,
                                              "batch_size": cfg.data.batch_size})


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_composes_and_instantiates(name, tmp_path):
    from relnas.nas.arch import ArchSpec
    from relnas.train import build_model, instantiate_datamodule

    cfg = _compose(f"+experiment={name}", f"paths.output_dir={tmp_path}")
    assert cfg.trainer.max_epochs == cfg.epochs
    # gradient clipping at 5 in the CIFAR-style recipes; none on ImageNet (the authors' ImageNet training)
    assert cfg.trainer.gradient_clip_val == (None if name == "imagenet" else 5)
    _synthetic_like(cfg)
    dm = instantiate_datamodule(cfg.data)
    arch = ArchSpec.from_config(cfg.model, cfg.genotype, dm)
    arch.check_input()
    model = build_model(cfg, arch)
    assert model.net.classifier.out_features == dm.num_classes
    assert model.hparams.C == cfg.model.C and model.hparams.epochs == cfg.epochs
    assert model.hparams.drop_path_prob == cfg.model.drop_path_prob
    assert model.hparams.scheduler == OmegaConf.to_container(cfg.scheduler)
    opt = model.optimizer_factory(model.parameters())
    assert isinstance(opt, torch.optim.SGD)
    assert opt.param_groups[0]["lr"] == cfg.optimizer.lr and opt.param_groups[0]["nesterov"] is False


def test_default_is_the_cifar10_protocol():
    cfg = _compose()
    exp = _compose("+experiment=cifar10")
    assert _compose("trainer=ddp").trainer.strategy.startswith("ddp")
    for c in (cfg, exp):
        assert c.data._target_.endswith("CIFAR10DataModule")
        assert (c.model.C, c.model.layers, c.model.auxiliary, c.model.auxiliary_weight) == (36, 20, True, 0.4)
        assert c.model.drop_path_prob == 0.2 and c.epochs == 600 and c.data.batch_size == 128
        assert (c.optimizer.lr, c.optimizer.momentum, c.optimizer.weight_decay) == (0.025, 0.9, 3e-4)
        assert c.scheduler.name == "cosine" and c.scheduler.eta_min == 0 and c.data.cutout == 16
        assert c.data.train_portion is None and c.trainer.gradient_clip_val == 5
    c100 = _compose("+experiment=cifar100")
    assert c100.optimizer.weight_decay == 5e-4 and c100.data.batch_size == 96
    imn = _compose("+experiment=imagenet")
    assert (imn.model.network, imn.model.C, imn.model.layers, imn.epochs) == ("imagenet", 46, 14, 250)
    assert (imn.optimizer.lr, imn.optimizer.weight_decay, imn.data.batch_size) == (0.5, 3e-5, 1024)
    assert (imn.scheduler.name, imn.scheduler.warmup_epochs, imn.model.label_smoothing) == ("linear_warmup", 5, 0.1)


def test_unknown_experiment():
    from hydra.errors import MissingConfigException

    with pytest.raises(MissingConfigException, match="experiment"):
        _compose("+experiment=no_such_experiment")


# ---------------------------------------------------------------------- errors before training

def test_unknown_genotype(tmp_path):
    from relnas.train import ConfigError, train

    with pytest.raises(ConfigError, match="unknown genotype 'NoSuchNet'.*RelativeNAS"):
        train(_cfg(tmp_path, "genotype=NoSuchNet"))


def test_bad_genotype_file(tmp_path):
    from relnas.train import ConfigError, train

    bad = tmp_path / "g.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="does not parse"):
        train(_cfg(tmp_path, f"genotype={bad}"))
    bad.write_text(json.dumps({"normal": [["sep_conv_3x3", 5]] * 8, "reduce": [["max_pool_3x3", 0]] * 8}))
    with pytest.raises(ConfigError, match="not a valid genotype"):
        train(_cfg(tmp_path, f"genotype={bad}"))


def test_aux_head_needs_32x32(tmp_path):
    from relnas.train import ConfigError, train

    with pytest.raises(ConfigError, match=r"auxiliary head needs 32x32.*28x28.*data.image_size=32.*model.auxiliary=false"):
        train(_cfg(tmp_path, "data.image_size=28"))


def test_imagenet_network_needs_224(tmp_path):
    from relnas.train import ConfigError, train

    with pytest.raises(ConfigError, match="NetworkImageNet needs 224x224"):
        train(_cfg(tmp_path, "model.network=imagenet", "model.auxiliary=false"))


def test_cifar100_without_data(tmp_path, capsys):
    from relnas.train import run

    with pytest.raises(SystemExit) as e:
        run(_compose("data=cifar100", "model.C=4", "model.layers=3", "trainer.accelerator=cpu", "logger=none",
                     f"paths.output_dir={tmp_path}", f"paths.data_dir={tmp_path / 'empty'}"))
    assert e.value.code == 2
    msg = capsys.readouterr().err.strip().splitlines()[-1]
    assert msg.startswith("error: ") and "download" in msg.lower(), msg


def test_cli_error_is_one_line(tmp_path):
    p = run_cli("relnas.train", tmp_path / "run", *TINY, "genotype=NoSuchNet")
    assert p.returncode == 2
    assert p.stderr.strip().splitlines()[-1].startswith("error: unknown genotype 'NoSuchNet'")
    assert not (tmp_path / "run" / "checkpoints").exists()


# ---------------------------------------------------------------------- module pieces

def test_linear_warmup_schedule():
    from relnas.models import ClassifierModule

    m = ClassifierModule(C=4, layers=3, auxiliary=False, epochs=10,
                         scheduler={"name": "linear_warmup", "warmup_epochs": 2, "final_lr": 1e-5},
                         optimizer=lambda p: torch.optim.SGD(p, lr=0.5))
    m._base_lr = 0.5
    f = m.lr_lambda_per_step(steps_per_epoch=10)
    assert f(0) == pytest.approx(1 / 20) and f(19) == pytest.approx(1.0)
    assert f(20) == pytest.approx(1.0) and f(100) == pytest.approx(1e-5 / 0.5)
    assert f(60) == pytest.approx((1e-5 / 0.5) + (1 - 1e-5 / 0.5) * 0.5)


def test_configure_wandb_mode(monkeypatch, tmp_path):
    from relnas.utils.logging import configure_wandb_mode

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("NETRC", str(tmp_path / ".netrc"))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert configure_wandb_mode() == "offline" and os.environ["WANDB_MODE"] == "offline"
    monkeypatch.delenv("WANDB_MODE")
    (tmp_path / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password abc\n")
    assert configure_wandb_mode() == "online" and "WANDB_MODE" not in os.environ
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert configure_wandb_mode() == "disabled"


@pytest.mark.slow
def test_evaluate_official_reference_checkpoint(tmp_path):
    """An official-code checkpoint (DataParallel prefix, wrapped under state_dict) evaluates
    through load_reference_checkpoint and gives the error the network itself gives."""
    ref_dir = Path(os.environ.get("RELNAS_REFERENCE_DIR", ROOT.parent / "shared" / "reference"))
    fixture = ref_dir / "relativenas_cifar_c8_l5.pt"
    if not fixture.is_file():
        pytest.skip("reference fixtures not found")
    blob = torch.load(fixture, weights_only=True)
    ckpt = tmp_path / "official.pt"
    torch.save({"epoch": 600, "state_dict": {f"module.{k}": v for k, v in blob["state_dict"].items()}}, ckpt)
    data = ["data=synthetic", "data.num_train=64", "data.num_test=96", "data.eval_batch_size=32"]
    p = run_cli("relnas.evaluate", tmp_path / "eval", f"reference_checkpoint={ckpt}", "genotype=RelativeNAS",
                "model.C=8", "model.layers=5", "model.auxiliary=true", "trainer.accelerator=cpu", *data)
    assert p.returncode == 0, p.stderr[-3000:]
    res = json.loads((tmp_path / "eval" / "result.json").read_text())

    import hydra

    from relnas import load_reference_checkpoint

    net = load_reference_checkpoint(ckpt, kind="cifar", genotype="RelativeNAS", C=8, layers=5, num_classes=10).eval()
    dm = hydra.utils.instantiate(_compose(*data, f"paths.data_dir={tmp_path}").data)
    dm.setup("test")
    x, y = dm.test_data
    with torch.no_grad():
        logits, _ = net(dm.preprocess(x, train=False))
    expected = 100.0 * (logits.argmax(1) != y).float().mean().item()
    assert res["test_top1_err"] == pytest.approx(expected, abs=1e-3)


# ---------------------------------------------------------------------- which weights are tested

def _val_errors(run_dir: Path) -> dict:
    """Top-1 error (%) of each epoch's validation, from the CSV log."""
    with open(run_dir / "csv" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("val/acc1")]
    return {int(r["epoch"]): 100.0 * (1.0 - float(r["val/acc1"])) for r in rows}


def test_default_tests_the_final_epoch_not_a_test_selected_one(trained):
    # data.val_size=0: validation runs on the test split, so the final epoch's validation error is
    # the final weights' test error, and the best epoch is one chosen on the test set
    run_dir, _ = trained
    res = json.loads((run_dir / "result.json").read_text())
    sel = res["test_selection"]
    assert sel["rule"] == "final" and not sel["selected_on_test_set"] and res["test_checkpoint"] == "final weights"
    assert "test split" in res["validation_split"]
    errors = _val_errors(run_dir)
    assert res["test_top1_err"] == pytest.approx(errors[max(errors)], abs=1e-3)


def test_selection_rules_are_labelled(tmp_path):
    from relnas.runs import resolve_test_rule

    assert resolve_test_rule("auto", 0) == "final" and resolve_test_rule("auto", 500) == "best_val"
    with pytest.raises(ValueError, match="data.val_size"):
        resolve_test_rule("best_val", 0)
    with pytest.raises(ValueError, match="test split"):
        resolve_test_rule("best_test_epoch", 100)
    p = run_cli("relnas.train", tmp_path / "r", *TINY, "epochs=1", "test_checkpoint=best_val")
    assert p.returncode != 0 and "error: test_checkpoint=best_val needs" in p.stderr and "Traceback" not in p.stderr


def test_authors_protocol_is_available_and_labelled(tmp_path):
    run_dir = tmp_path / "r"
    p = run_cli("relnas.train", run_dir, *TINY, "epochs=3", "test_checkpoint=best_test_epoch")
    assert p.returncode == 0, p.stderr[-3000:]
    res = json.loads((run_dir / "result.json").read_text())
    sel = res["test_selection"]
    assert sel["rule"] == "best_test_epoch" and sel["selected_on_test_set"] and "TEST SPLIT" in sel["description"]
    errors = _val_errors(run_dir)
    best = min(errors, key=lambda e: (errors[e], e))
    assert res["test_top1_err"] == pytest.approx(errors[best], abs=1e-3)
    assert sel["checkpoint"].endswith(f"best_epoch{best:03d}.ckpt")
    assert res["data_source"].startswith("generated in memory")
