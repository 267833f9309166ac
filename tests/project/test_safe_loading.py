"""Files relnas reads may come from others: reading one never runs code in it.

Every entry point that reads a file is given a booby-trapped one, a file whose unpickling calls
``exec`` to create a marker file: it must stop with one ``error:`` line (exit status 2) that names
the file, and the marker must not exist afterwards. relnas's own files of every kind still load.
"""
from __future__ import annotations

import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from helpers.search import tiny_search_cfg
from helpers.voc import make_fake_voc

CONFIGS = str(Path(__file__).resolve().parents[2] / "configs")
SYNTHETIC = ["data=synthetic", "data.num_train=64", "data.num_test=32", "data.image_size=32", "data.batch_size=32",
             "data.eval_batch_size=32", "trainer.accelerator=cpu", "logger=none"]
DETECTION = ["task=detection", "task.model.input_size=64", "task.data.train_sets=[2007-trainval]",
             "task.data.batch_size=2", "task.data.eval_batch_size=2", "task.data.num_workers=0", "trainer=cpu",
             "logger=none"]


class Payload:
    """Unpickled in full, this runs ``exec``, which creates ``marker``."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').close()",)


def trapped_torch_file(path: Path, marker: Path) -> Path:
    """A torch file laid out like a checkpoint (a state dict and hyper-parameters) that also
    holds the payload."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {"w": torch.zeros(2)}, "hyper_parameters": {"network": "cifar"},
                "epoch": 0, "extra": Payload(marker)}, path)
    return path


def _compose(config: str, *overrides: str):
    with initialize_config_dir(config_dir=CONFIGS, version_base="1.3"):
        return compose(config_name=config, overrides=list(overrides))


def refusal(capsys, run, *args) -> str:
    """``run(*args)`` (an entry point's command-line function) must exit with status 2 and print
    one ``error:`` line; that line."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        run(*args)
    assert e.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, errors
    return errors[0]


def assert_refused(msg: str, path: Path, what: str = "checkpoint", prefix: str = "error: ") -> None:
    """``msg`` is the refusal of ``path``, naming the function its pickle calls (torch's reader
    spells the builtin ``exec`` with or without its module)."""
    head = f"{prefix}refusing {what} {str(path)!r}: it names "
    assert msg.startswith(head), msg
    assert re.match(r"(builtins\.)?exec, and relnas loads only tensors, numbers, strings, containers and numpy "
                    r"arrays from a file$", msg[len(head):]), msg


@pytest.fixture
def marker(tmp_path) -> Path:
    m = tmp_path / "payload_ran"
    yield m
    assert not m.exists(), "a file relnas read ran code"


def test_the_payload_runs_when_a_file_is_unpickled_in_full(tmp_path):
    """What every other test guards against: full unpickling of the trapped file creates the marker."""
    m = tmp_path / "payload_ran"
    torch.load(trapped_torch_file(tmp_path / "x.ckpt", m), weights_only=False)
    assert m.exists()
    m.unlink()
    with open(tmp_path / "batch", "wb") as fh:
        pickle.dump({"data": Payload(m)}, fh)
    with open(tmp_path / "batch", "rb") as fh:
        pickle.load(fh)
    assert m.exists()


# ---------------------------------------------------------------------- evaluate

def test_evaluate_refuses_a_trapped_checkpoint_file(tmp_path, marker, capsys):
    from relnas.evaluate import run

    ckpt = trapped_torch_file(tmp_path / "run" / "checkpoints" / "last.ckpt", marker)
    msg = refusal(capsys, run, _compose("evaluate", f"checkpoint={ckpt}", f"paths.output_dir={tmp_path}", *SYNTHETIC))
    assert_refused(msg, ckpt)


def test_evaluate_refuses_a_trapped_checkpoint_in_a_run_directory(tmp_path, marker, capsys):
    from relnas.evaluate import run

    ckpt = trapped_torch_file(tmp_path / "run" / "checkpoints" / "last.ckpt", marker)
    msg = refusal(capsys, run, _compose("evaluate", f"checkpoint={tmp_path / 'run'}", f"paths.output_dir={tmp_path}",
                                        *SYNTHETIC))
    assert_refused(msg, ckpt)


def test_evaluate_refuses_a_trapped_reference_checkpoint(tmp_path, marker, capsys):
    from relnas.evaluate import run

    ckpt = trapped_torch_file(tmp_path / "cifar10.pt", marker)
    msg = refusal(capsys, run, _compose("evaluate", f"reference_checkpoint={ckpt}", f"paths.output_dir={tmp_path}",
                                        "model.C=4", "model.layers=3", *SYNTHETIC))
    assert_refused(msg, ckpt)


# ---------------------------------------------------------------------- train and search

def test_train_refuses_a_trapped_resume_checkpoint(tmp_path, marker, capsys):
    from relnas.train import run

    ckpt = trapped_torch_file(tmp_path / "run" / "checkpoints" / "last.ckpt", marker)
    for resume in (ckpt, tmp_path / "run"):
        msg = refusal(capsys, run, _compose("train", f"resume={resume}", f"paths.output_dir={tmp_path / 'out'}",
                                            "model.C=4", "model.layers=3", *SYNTHETIC))
        assert_refused(msg, ckpt)


def test_search_refuses_a_trapped_search_state_rather_than_skip_it(tmp_path, marker, capsys):
    """A refused newest state is not passed over for the previous one (that is for a file an
    interrupted write left incomplete): the resume stops."""
    from relnas.search.run import run_search
    from relnas.search.state import PREV_FILE, STATE_FILE
    from relnas.utils.cli import command

    run_dir = tmp_path / "search"
    run_dir.mkdir()
    torch.save({"format": 0, "generation": 1, "weight_set": {}}, run_dir / PREV_FILE)  # complete and harmless
    torch.save({"generation": 2, "weight_set": {}, "strategy": Payload(marker)}, run_dir / STATE_FILE)
    cfg = tiny_search_cfg(tmp_path / "resumed", [f"resume={run_dir}", "data.data_dir=/nonexistent"])
    msg = refusal(capsys, command(run_search), cfg)
    assert_refused(msg, run_dir / STATE_FILE, "search checkpoint")


# ---------------------------------------------------------------------- transfer

@pytest.fixture(scope="module")
def voc(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("voc")
    make_fake_voc(root, n_trainval=2, n_test=1)
    return root


def _transfer(tmp_path, voc, *overrides):
    return _compose("transfer", *DETECTION, f"task.data.root={voc}", f"paths.output_dir={tmp_path / 'out'}",
                    *overrides)


def test_transfer_refuses_trapped_cell_backbone_weights(tmp_path, voc, marker, capsys):
    from relnas.transfer.__main__ import run

    weights = trapped_torch_file(tmp_path / "imagenet" / "checkpoints" / "last.ckpt", marker)
    for given in (weights, tmp_path / "imagenet"):
        msg = refusal(capsys, run, _transfer(tmp_path, voc, "backbone=RelativeNAS", "backbone.C=8",
                                             "backbone.layers=5", f"backbone.weights={given}"))
        assert_refused(msg, weights, prefix="error: backbone weights: ")


def test_transfer_refuses_trapped_torchvision_backbone_weights(tmp_path, voc, marker, capsys, monkeypatch):
    """A state-dict file, and the file of a torchvision weights name in the torch hub cache."""
    import torchvision

    from relnas.transfer.__main__ import run
    from relnas.transfer.backbones import torchvision_weights_path

    weights = trapped_torch_file(tmp_path / "mbv2.pth", marker)
    msg = refusal(capsys, run, _transfer(tmp_path, voc, "backbone=mobilenet_v2", f"backbone.weights={weights}"))
    assert_refused(msg, weights, prefix="error: backbone weights: ")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    cached = trapped_torch_file(torchvision_weights_path(torchvision.models.MobileNet_V2_Weights.DEFAULT), marker)
    msg = refusal(capsys, run, _transfer(tmp_path, voc, "backbone=mobilenet_v2", "backbone.weights=DEFAULT"))
    assert_refused(msg, cached, prefix="error: backbone weights: ")


def test_transfer_refuses_trapped_init_weights_and_resume(tmp_path, voc, marker, capsys):
    from relnas.transfer.__main__ import run

    ckpt = trapped_torch_file(tmp_path / "run" / "checkpoints" / "last.ckpt", marker)
    for key in ("init_weights", "resume"):
        for given in (ckpt, tmp_path / "run"):
            msg = refusal(capsys, run, _transfer(tmp_path, voc, "backbone=RelativeNAS", "backbone.C=8",
                                                 "backbone.layers=5", f"+{key}={given}" if key == "init_weights"
                                                 else f"{key}={given}"))
            assert_refused(msg, ckpt)


# ---------------------------------------------------------------------- CIFAR

def test_a_trapped_cifar_batch_is_refused(tmp_path, marker, capsys):
    """Through the train entry point: one line naming the file and the function it names."""
    from relnas.train import run

    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    for f in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]:
        with open(d / f, "wb") as fh:
            pickle.dump({"data": np.zeros((2, 3072), dtype=np.uint8), "labels": [0, 1]}, fh)
    with open(d / "data_batch_3", "wb") as fh:
        pickle.dump({"data": np.zeros((2, 3072), dtype=np.uint8), "labels": Payload(marker)}, fh)
    msg = refusal(capsys, run, _compose("train", "data=cifar10", f"data.data_dir={tmp_path}", "data.val_size=0",
                                        f"paths.output_dir={tmp_path / 'out'}", "trainer.accelerator=cpu",
                                        "logger=none"))
    assert msg.startswith(f"error: CIFAR-10: {d / 'data_batch_3'} is not a readable CIFAR python batch (refusing "
                          f"builtins.exec: a data file may hold only containers, strings, numbers and numpy arrays)")


def test_cifar_batches_as_numpy_pickles_them_still_load(tmp_path):
    """A batch as pickle protocol 2 (the real batches' protocol) writes it, under numpy 2's and
    numpy 1's module names (the real batches name numpy 1's): the same arrays and lists come back."""
    from relnas.utils.io import load_data_pickle

    data = np.arange(2 * 3072, dtype=np.int64).reshape(2, 3072).astype(np.uint8)
    stream = pickle.dumps({"batch_label": "training batch 1 of 5", "labels": [3, 7], "data": data,
                           "filenames": ["a.png", "b.png"], "empty": np.zeros((0, 3072), dtype=np.uint8)},
                          protocol=2)
    numpy1 = stream.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert numpy1 != stream
    for i, s in enumerate((stream, numpy1)):
        (tmp_path / f"b{i}").write_bytes(s)
        entry = load_data_pickle(tmp_path / f"b{i}")
        assert entry["labels"] == [3, 7] and entry["filenames"] == ["a.png", "b.png"]
        assert entry["data"].dtype == np.uint8 and np.array_equal(entry["data"], data)
        assert entry["empty"].shape == (0, 3072)


# ---------------------------------------------------------------------- relnas's own files

@pytest.mark.parametrize("name", ["relativenas", "random", "evolution"])
def test_search_states_of_every_strategy_load_as_data(tmp_path, name):
    """A search state holds tensors, numbers, strings, lists, dicts and numpy arrays: read back
    without full unpickling, it equals what was saved and restores the strategy."""
    from relnas.search.state import load_state, save_state
    from relnas.search.strategies import create_strategy

    rng = np.random.default_rng(0)
    strategy = create_strategy(name, population_size=4, generations=3)
    strategy.init(rng)
    for job in strategy.ask(rng, 0):
        strategy.tell(rng, job, [0.5 + 0.1 * m for m in job.members])
    strategy.end_generation(rng, 0)
    state = {"generation": 1, "rng": rng.bit_generator.state, "strategy": strategy.state_dict(),
             "history": [{"generation": 0, "individual": 1, "val_loss": 0.6, "vector": "0.1,0.2"}],
             "summaries": [{"generation": 0, "best_loss": 0.5}], "weight_set": {"w": torch.randn(3, 2)},
             "spec": {"seed": 0, "search.budget": None, "data.mean": [0.5, 0.5]}, "logger_ids": {}}
    save_state(tmp_path, state)
    loaded, _ = load_state(tmp_path)
    assert loaded.keys() == state.keys() | {"format_version"} and loaded["rng"] == state["rng"]
    assert loaded["history"] == state["history"] and loaded["spec"] == state["spec"]
    assert torch.equal(loaded["weight_set"]["w"], state["weight_set"]["w"])
    for k, v in state["strategy"].items():
        assert type(loaded["strategy"][k]) is type(v) and (np.array_equal(loaded["strategy"][k], v)
                                                           if isinstance(v, np.ndarray) else loaded["strategy"][k] == v)
    again = create_strategy(name, population_size=4, generations=3)
    again.load_state_dict(loaded["strategy"])
    assert {k: v.tolist() for k, v in again.population().items()} == \
        {k: v.tolist() for k, v in strategy.population().items()}


def test_a_classifier_checkpoint_with_config_nodes_is_written_plain(tmp_path):
    """A module given OmegaConf nodes (as Hydra passes them) still writes a checkpoint of plain
    containers: it loads as data."""
    import lightning as L
    from omegaconf import OmegaConf
    from torch.utils.data import DataLoader, TensorDataset

    from relnas.models.classifier import ClassifierModule
    from relnas.utils.io import load_checkpoint_dict

    sched = OmegaConf.create({"name": "cosine", "eta_min": 0.0, "extra": {"milestones": [1, 2]}})
    model = ClassifierModule(genotype="DARTS_V2", C=4, layers=3, num_classes=2, image_size=8, auxiliary=False, scheduler=sched,
                             channels_last=False)
    data = DataLoader(TensorDataset(torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 0, 1])), batch_size=4)
    trainer = L.Trainer(max_steps=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=False, accelerator="cpu", limit_val_batches=0)
    trainer.fit(model, train_dataloaders=data)
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    ckpt = load_checkpoint_dict(tmp_path / "last.ckpt")
    assert ckpt["hyper_parameters"]["scheduler"] == {"name": "cosine", "eta_min": 0.0, "extra": {"milestones": [1, 2]}}


def test_a_damaged_file_is_one_line_not_a_refusal(tmp_path):
    """A truncated or foreign file is a CheckpointError (the search falls back from it), not the
    refusal of a file that would run code."""
    from relnas.errors import CheckpointError, UnsafeFileError
    from relnas.utils.io import load_torch_file

    good = tmp_path / "good.pt"
    torch.save({"w": torch.ones(3)}, good)
    (tmp_path / "cut.pt").write_bytes(good.read_bytes()[:100])
    (tmp_path / "other.pkl").write_bytes(pickle.dumps({"w": [1, 2]}, protocol=4))
    for name, reason in (("cut.pt", "PytorchStreamReader failed reading zip archive"),
                         ("other.pkl", "not a file written by torch.save")):
        with pytest.raises(CheckpointError) as e:
            load_torch_file(tmp_path / name, "checkpoint")
        assert not isinstance(e.value, UnsafeFileError)
        assert str(e.value).startswith(f"cannot read checkpoint {str(tmp_path / name)!r}: {reason}")
        assert "\n" not in str(e.value) and "weights_only" not in str(e.value)
