"""Exporting a network (`python -m relnas.export`): ONNX and TorchScript files that compute the
network's function, run without relnas, take any batch size; parity record; one-line errors."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import relnas.nas.operations as operations
from relnas.errors import ExportError
from relnas.export import Logits, export, export_onnx, export_torchscript, measure_latency
from relnas.nas.arch import ArchSpec
from relnas.nas.genotypes import list_genotypes
from relnas.utils.compose import compose_config
from helpers.cli import ROOT, cli_env

onnxruntime = pytest.importorskip("onnxruntime")

EXPORTS = {"onnx": export_onnx, "torchscript": export_torchscript}


def _randomise_batchnorm(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Running statistics and affine parameters away from their initial values, so that the
    eval-mode batch norm the exported graph must contain is not an identity."""
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(0.2 * torch.randn(n, generator=g))
            m.running_var.copy_(0.5 + torch.rand(n, generator=g))
            if m.affine:
                m.weight.data.copy_(1 + 0.2 * torch.randn(n, generator=g))
                m.bias.data.copy_(0.2 * torch.randn(n, generator=g))
    return net


def _plain_logits(net: torch.nn.Module, x: torch.Tensor, monkeypatch) -> np.ndarray:
    """The network's logits without its CPU fast paths: NCHW input, plain dilated kernels (the
    strided 1x1 convs of FactorizedReduce are taken for NCHW inputs)."""
    with monkeypatch.context() as m, torch.no_grad():
        m.setattr(operations, "PHASE_DILATED_CONV", False)
        plain = net.to(memory_format=torch.contiguous_format)
        out = plain(x.contiguous())[0].numpy()
    return out


def _run_onnx(path: Path, x: torch.Tensor) -> dict:
    sess = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"images": x.numpy()})))


def _tiny(genotype: str, network: str = "cifar", **kw) -> ArchSpec:
    size = 32 if network == "cifar" else 224
    return ArchSpec(network=network, genotype=genotype, C=4, layers=4, num_classes=10, image_size=size, **kw)


@pytest.mark.parametrize("genotype", list_genotypes())
def test_every_zoo_genotype_exports_the_function_of_the_network_in_both_formats(genotype, tmp_path, monkeypatch):
    torch.manual_seed(0)
    arch = _tiny(genotype)
    net = _randomise_batchnorm(arch.build()).eval()
    x = torch.randn(3, 3, 32, 32)
    expected = _plain_logits(net, x, monkeypatch)
    assert np.abs(expected).max() > 0.1  # outputs large enough for a 1e-4 comparison to mean something
    module = Logits(net, channels_last=True).eval()  # channels-last: the fast paths as training runs them
    onnx_path = export_onnx(module, torch.randn(2, 3, 32, 32), tmp_path / "n.onnx", ["logits"])
    ts_path = export_torchscript(module, torch.randn(2, 3, 32, 32), tmp_path / "n.pt", ["logits"])
    np.testing.assert_allclose(_run_onnx(onnx_path, x)["logits"], expected, rtol=0, atol=1e-4)
    with torch.no_grad():
        got = torch.jit.load(str(ts_path))(x).numpy()
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_searched_cells_export_the_function_of_the_network(seed, tmp_path, monkeypatch):
    from relnas.search.encoding import decode, sample

    genotype = decode(sample(np.random.default_rng(seed)))
    torch.manual_seed(seed)
    net = _randomise_batchnorm(ArchSpec(genotype=genotype, C=4, layers=4).build(), seed).eval()
    x = torch.randn(3, 3, 32, 32)
    expected = _plain_logits(net, x, monkeypatch)
    path = export_onnx(Logits(net, True).eval(), torch.randn(2, 3, 32, 32), tmp_path / "n.onnx", ["logits"])
    np.testing.assert_allclose(_run_onnx(path, x)["logits"], expected, rtol=0, atol=1e-4)


@pytest.mark.parametrize("genotype", ["RelativeNAS", "DARTS_V2"])
def test_the_imagenet_network_exports_its_factorized_reduce_stem_and_dilated_convs(genotype, tmp_path, monkeypatch):
    torch.manual_seed(1)
    net = _randomise_batchnorm(_tiny(genotype, "imagenet").build()).eval()
    x = torch.randn(3, 3, 224, 224)
    expected = _plain_logits(net, x, monkeypatch)
    module = Logits(net, channels_last=True).eval()
    path = export_onnx(module, torch.randn(2, 3, 224, 224), tmp_path / "n.onnx", ["logits"])
    np.testing.assert_allclose(_run_onnx(path, x)["logits"], expected, rtol=0, atol=1e-4)


def test_an_exported_network_takes_any_batch_size(tmp_path):
    net = _tiny("RelativeNAS").build().eval()
    path = export_onnx(Logits(net, True).eval(), torch.randn(2, 3, 32, 32), tmp_path / "n.onnx", ["logits"])
    sess = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert sess.get_inputs()[0].shape == ["batch", 3, 32, 32]
    for batch in (1, 3):
        (logits,) = sess.run(None, {"images": np.random.default_rng(0).standard_normal((batch, 3, 32, 32),
                                                                                        dtype=np.float32)})
        assert logits.shape == (batch, 10)


def test_onnx_files_hold_each_dilated_convolution_as_one_dilated_conv_node(tmp_path):
    import onnx

    net = _tiny("DARTS_V2").build().eval()  # one dil_conv_3x3 per normal cell: 2 normal cells of 4
    path = export_onnx(Logits(net, True).eval(), torch.randn(2, 3, 32, 32), tmp_path / "n.onnx", ["logits"])
    nodes = onnx.load(str(path)).graph.node
    dilated = [n for n in nodes if n.op_type == "Conv"
               and any(a.name == "dilations" and list(a.ints) == [2, 2] for a in n.attribute)]
    assert len(dilated) == 2 and not [n for n in nodes if n.op_type == "ScatterND"]
    assert operations.PHASE_DILATED_CONV  # the PyTorch network keeps its CPU path


def test_the_auxiliary_head_is_not_part_of_the_exported_graph(tmp_path):
    net = _tiny("DARTS_V2", auxiliary=True).build().eval()
    aux = {k for k in net.state_dict() if k.startswith("auxiliary_head.")}
    assert aux
    path = export_torchscript(Logits(net, True).eval(), torch.randn(2, 3, 32, 32), tmp_path / "n.pt", ["logits"])
    names = {k.removeprefix("net.") for k in torch.jit.load(str(path)).state_dict()}
    assert not names & aux and "classifier.weight" in names


BLOCK_RELNAS = textwrap.dedent("""
    import importlib.abc, sys
    class NoRelnas(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "relnas" or name.startswith("relnas."):
                raise ModuleNotFoundError("relnas is blocked")
    sys.meta_path.insert(0, NoRelnas())
    try:
        import relnas
    except ModuleNotFoundError:
        pass
    else:
        raise SystemExit("relnas is importable")
    """)


def test_the_exported_files_run_in_a_process_where_relnas_cannot_be_imported(tmp_path):
    net = _randomise_batchnorm(_tiny("RelativeNAS").build()).eval()
    module = Logits(net, True).eval()
    export_onnx(module, torch.randn(2, 3, 32, 32), tmp_path / "n.onnx", ["logits"])
    export_torchscript(module, torch.randn(2, 3, 32, 32), tmp_path / "n.pt", ["logits"])
    x = torch.randn(3, 3, 32, 32)
    np.save(tmp_path / "x.npy", x.numpy())
    script = BLOCK_RELNAS + textwrap.dedent(f"""
        import numpy as np, onnxruntime, torch
        x = np.load({str(tmp_path / 'x.npy')!r})
        sess = onnxruntime.InferenceSession({str(tmp_path / 'n.onnx')!r}, providers=["CPUExecutionProvider"])
        np.save({str(tmp_path / 'onnx.npy')!r}, sess.run(None, {{"images": x}})[0])
        with torch.no_grad():
            np.save({str(tmp_path / 'ts.npy')!r}, torch.jit.load({str(tmp_path / 'n.pt')!r})(torch.from_numpy(x)).numpy())
        assert "relnas" not in sys.modules
        """)
    env = cli_env()
    env.pop("PYTHONPATH")
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    with torch.no_grad():
        expected = net(x)[0].numpy()
    np.testing.assert_allclose(np.load(tmp_path / "onnx.npy"), expected, rtol=0, atol=1e-4)
    np.testing.assert_allclose(np.load(tmp_path / "ts.npy"), expected, rtol=0, atol=1e-4)


def test_a_cell_backbone_exports_its_feature_maps_as_named_outputs(tmp_path):
    cfg = compose_config("export", ["backbone=DARTS_V2", "backbone.C=8", "backbone.layers=3", "input_size=64"],
                         output_dir=tmp_path)
    record = export(cfg)
    assert record["parity"]["passed"] and record["backbone"] == "DARTS_V2"
    # strides 8, 16, 32 of a 64x64 image; channels: 4 nodes x C, doubled at each reduction
    assert record["outputs"] == {"stride8": ["batch", 32, 8, 8], "stride16": ["batch", 64, 4, 4],
                                 "stride32": ["batch", 128, 2, 2]}
    sess = onnxruntime.InferenceSession(str(tmp_path / "network.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in sess.get_outputs()] == ["stride8", "stride16", "stride32"]


def _train_checkpoint(path: Path, C: int = 4, state_from_C: int = 4) -> Path:
    """A relnas.train checkpoint (the keys Lightning writes that relnas reads): hyper-parameters of
    a network with ``C`` and the weights of one with ``state_from_C``."""
    from relnas.models.classifier import ClassifierModule

    torch.manual_seed(0)
    model = ClassifierModule(genotype="DARTS_V2", C=C, layers=4, auxiliary=False)
    weights = ClassifierModule(genotype="DARTS_V2", C=state_from_C, layers=4, auxiliary=False)
    _randomise_batchnorm(weights.net)
    path.parent.mkdir(parents=True, exist_ok=True)
    from relnas.nas.arch import ArchSpec
    from relnas.train_spec import FORMAT_VERSION, TrainSpec

    spec = TrainSpec(arch=ArchSpec(genotype="DARTS_V2", C=C, layers=4), epochs=1, scheduler={}, drop_path_prob=0.0,
                     auxiliary_weight=0.0, label_smoothing=0.0, image_size=32, optimizer={})
    torch.save({"hyper_parameters": dict(model.hparams), "state_dict": weights.state_dict(),
                "format_version": FORMAT_VERSION, "train_spec": spec.to_dict()}, path)
    return path


@pytest.mark.slow
def test_a_train_checkpoint_exports_with_its_input_size_and_its_weights(tmp_path):
    ckpt = _train_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    cfg = compose_config("export", [f"checkpoint={tmp_path / 'run'}", "format=torchscript"], output_dir=tmp_path / "out")
    record = export(cfg)
    assert record["checkpoint"] == str(ckpt) and record["input"]["shape"] == ["batch", 3, 32, 32]
    saved = json.loads((tmp_path / "out" / "result.json").read_text())
    assert saved["parity"] == record["parity"] and saved["parity"]["batch"] == 3
    x = torch.randn(2, 3, 32, 32)
    state = torch.load(ckpt, weights_only=True)["state_dict"]
    net = ArchSpec(genotype="DARTS_V2", C=4, layers=4).build()
    net.load_state_dict({k.removeprefix("net."): v for k, v in state.items()})
    with torch.no_grad():
        np.testing.assert_allclose(torch.jit.load(str(tmp_path / "out" / "network.pt"))(x).numpy(),
                                   net.eval()(x)[0].numpy(), rtol=0, atol=1e-4)


def test_an_export_that_differs_from_the_network_fails_after_recording_the_difference(tmp_path, monkeypatch):
    import relnas.export as export_module

    real = export_module.run_exported

    def off_by(fmt, path, x, names):
        return {k: v + 0.01 for k, v in real(fmt, path, x, names).items()}

    monkeypatch.setattr(export_module, "run_exported", off_by)
    cfg = compose_config("export", ["genotype=DARTS_V2", "C=4", "layers=4"], output_dir=tmp_path)
    with pytest.raises(ExportError, match="parity check failed"):
        export(cfg)
    result = json.loads((tmp_path / "result.json").read_text())
    parity = result["parity"]
    assert parity["passed"] is False and parity["max_abs_diff"] == pytest.approx(0.01, abs=1e-4)
    assert result["status"] == "failed" and result["kind"] == "export" and "parity check failed" in result["reason"]
    assert result["headline"] == {"metric": "max_abs_diff", "value": parity["max_abs_diff"]}


def test_latency_is_measured_for_eager_torchscript_and_onnx_runtime():
    net = _tiny("DARTS_V2").build().eval()
    rows = measure_latency(Logits(net, True).eval(), (3, 32, 32), batch=2, warmup=1, repeats=2, devices=["cpu"])
    assert [r["runtime"] for r in rows] == ["eager", "torchscript", "onnxruntime"]
    assert all(r["ms_per_image_batch1"] > 0 and r["images_per_s"] > 0 and r["batch"] == 2 for r in rows)


def _cli(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "relnas.export", *overrides, f"hydra.run.dir={tmp_path / 'out'}"]
    return subprocess.run(cmd, cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=300)


def _one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


def test_a_corrupt_checkpoint_is_one_error_line(tmp_path):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint" * 10)
    line = _one_error_line(_cli(tmp_path, f"checkpoint={bad}"))
    assert "cannot read checkpoint" in line and str(bad) in line
    assert not (tmp_path / "out" / "network.onnx").exists()


def test_a_checkpoint_whose_weights_do_not_fit_its_architecture_is_one_error_line(tmp_path):
    ckpt = _train_checkpoint(tmp_path / "mismatch.ckpt", C=4, state_from_C=6)
    line = _one_error_line(_cli(tmp_path, f"checkpoint={ckpt}"))
    assert "shape mismatch" in line and "C=6" in line


def test_an_official_checkpoint_with_an_auxiliary_head_exports_with_its_weights(tmp_path):
    torch.manual_seed(0)
    net = _randomise_batchnorm(ArchSpec(genotype="NASNet", C=4, layers=4, auxiliary=True).build())
    torch.save({"state_dict": {"module." + k: v for k, v in net.state_dict().items()}}, tmp_path / "official.pt")
    cfg = compose_config("export", [f"reference_checkpoint={tmp_path / 'official.pt'}", "genotype=NASNet", "C=4",
                                    "layers=4", "auxiliary=true"], output_dir=tmp_path / "out")
    record = export(cfg)
    assert record["reference_checkpoint"] == str(tmp_path / "official.pt") and record["parity"]["passed"]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = net.eval()(x)[0].numpy()
    np.testing.assert_allclose(_run_onnx(tmp_path / "out" / "network.onnx", x)["logits"], expected, rtol=0, atol=1e-4)


def test_an_official_checkpoint_of_another_architecture_is_one_error_line(tmp_path):
    net = ArchSpec(genotype="DARTS_V2", C=6, layers=4).build()
    torch.save(net.state_dict(), tmp_path / "official.pt")
    line = _one_error_line(_cli(tmp_path, f"reference_checkpoint={tmp_path / 'official.pt'}", "genotype=DARTS_V2",
                                "C=4", "layers=4"))
    assert "C=6" in line
