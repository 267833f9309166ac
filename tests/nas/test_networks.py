"""Evaluation networks, checkpoint loading and profiling."""
from __future__ import annotations

import pytest
import torch

from relnas import NetworkCIFAR, NetworkImageNet, build_network, list_genotypes, load_reference_checkpoint
from relnas.nas.checkpoint import CheckpointError, extract_state_dict
from relnas.nas.profile import count_mult_adds, count_params, network_summary

ZOO = list_genotypes()


@pytest.mark.parametrize("network, cls, size, classes, eval_batch", [("cifar", NetworkCIFAR, 32, 10, 2),
                                                                     ("imagenet", NetworkImageNet, 224, 7, 1)])
@pytest.mark.parametrize("name", ZOO)
def test_every_zoo_cell_runs_with_its_auxiliary_head_in_training_only(name, network, cls, size, classes, eval_batch):
    torch.manual_seed(0)
    net = build_network(network, name, 8, 5, classes, auxiliary=True)
    assert isinstance(net, cls)
    net.train()
    logits, aux = net(torch.randn(2, 3, size, size))
    assert logits.shape == (2, classes) and aux.shape == (2, classes)
    net.eval()
    with torch.no_grad():
        logits, aux = net(torch.randn(eval_batch, 3, size, size))
    assert logits.shape == (eval_batch, classes) and aux is None


def test_no_auxiliary_head():
    net = build_network("cifar", "RelativeNAS", 8, 5, 10, auxiliary=False).train()
    logits, aux = net(torch.randn(2, 3, 32, 32))
    assert aux is None
    assert not any(k.startswith("auxiliary_head") for k in net.state_dict())


def test_in_channels_one():
    net = build_network("cifar", "RelativeNAS", 8, 5, 10, in_channels=1).eval()
    with torch.no_grad():
        logits, _ = net(torch.randn(2, 1, 32, 32))
    assert logits.shape == (2, 10)
    assert net.stem[0].weight.shape[1] == 1


def test_reduction_positions():
    net = build_network("cifar", "RelativeNAS", 8, 8, 10)
    assert [i for i, c in enumerate(net.cells) if c.reduction] == [2, 5]


def test_drop_path():
    torch.manual_seed(0)
    net = build_network("cifar", "RelativeNAS", 8, 5, 10, drop_path_prob=0.5)
    x = torch.randn(4, 3, 32, 32)
    net.eval()
    with torch.no_grad():
        e1, _ = net(x)
        e2, _ = net(x)
    assert torch.equal(e1, e2)  # identity in eval mode
    net.train()
    with torch.no_grad():
        torch.manual_seed(1)
        t1, _ = net(x)
        torch.manual_seed(2)
        t2, _ = net(x)
        net.drop_path_prob = 0.0
        t0a, _ = net(x)
        t0b, _ = net(x)
    assert torch.allclose(t0a, t0b)
    assert not torch.allclose(t1, t2)  # the random masks differ
    assert not torch.allclose(t1, t0a)


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal values, NaNs in the same places and zeros with the same sign."""
    return (torch.equal(torch.nan_to_num(a, nan=7.0), torch.nan_to_num(b, nan=7.0))
            and torch.equal(a.isnan(), b.isnan()) and torch.equal(torch.signbit(a), torch.signbit(b)))


def _drop_path_run(fn, x0, g, drop_prob, seed):
    x = x0.clone().requires_grad_(True)
    gen = torch.Generator(device=x.device).manual_seed(seed)
    y = fn(x, drop_prob, gen)
    y.backward(g)
    return y.detach(), x.grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("drop_prob", [0.15, 0.2, 0.5, 0.3 * 7 / 49, 1 / 3])
def test_drop_path_is_bit_identical_to_the_official_formula(dtype, drop_prob):
    """drop_path (one kernel each way) against the official code's ``x.div(keep) * mask`` written
    out (operations.drop_path_reference), values and gradients bit for bit, signed zeros of
    dropped samples and non-finite inputs included."""
    from relnas.nas.operations import drop_path, drop_path_reference

    torch.manual_seed(0)
    x0 = torch.randn(64, 5, 6, 6, dtype=torch.float64).mul(torch.logspace(-30, 30, 64, dtype=torch.float64)[:, None, None, None])
    x0 = x0.to(dtype)
    x0[0, 0, 0, :3] = torch.tensor([float("inf"), -float("inf"), float("nan")], dtype=dtype)
    x0[1, 0, 0, :2] = torch.tensor([0.0, -0.0], dtype=dtype)
    g = torch.randn(x0.shape, dtype=dtype)
    y_ref, gx_ref = _drop_path_run(drop_path_reference, x0, g, drop_prob, seed=3)
    y, gx = _drop_path_run(drop_path, x0, g, drop_prob, seed=3)
    dropped = (y_ref == 0).flatten(1).all(1)
    assert 0 < int(dropped.sum()) < 64  # both kinds of samples are in the test
    assert _same_bits(y, y_ref) and _same_bits(gx, gx_ref)
    # the rescaling itself is checked by hand on the kept samples: x / keep, computed apart in the
    # kernels' arithmetic type (float32 for float32 and bfloat16, float64 for float64)
    kept = ~dropped
    kept[0] = False  # the sample holding the non-finite inputs
    op = torch.float64 if dtype == torch.float64 else torch.float32
    assert torch.equal(y[kept], (x0[kept].to(op) / torch.tensor(1.0 - drop_prob, dtype=op)).to(dtype))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_drop_path_is_bit_identical_to_the_official_formula_on_gpu(dtype):
    from relnas.nas.operations import drop_path, drop_path_reference

    torch.manual_seed(0)
    x0 = torch.randn(256, 16, 32, 32, device="cuda", dtype=dtype)
    g = torch.randn_like(x0)
    for drop_prob in (0.15, 0.2, 0.3 * 7 / 49, 1 / 3):
        y_ref, gx_ref = _drop_path_run(drop_path_reference, x0, g, drop_prob, seed=3)
        y, gx = _drop_path_run(drop_path, x0, g, drop_prob, seed=3)
        assert _same_bits(y, y_ref) and _same_bits(gx, gx_ref), drop_prob


def test_drop_path_traces_with_fx_in_training_mode():
    """create_feature_extractor traces train and eval graphs: a cell network with drop path on
    traces (drop_path is an fx leaf) and its traced training graph draws the same masks."""
    from torchvision.models.feature_extraction import create_feature_extractor

    net = build_network("cifar", "RelativeNAS", 4, 5, 10, drop_path_prob=0.3)
    fx_net = create_feature_extractor(net, return_nodes={"cells.4": "last"})
    x = torch.randn(6, 3, 16, 16)
    net.train(), fx_net.train()
    with torch.no_grad():
        torch.manual_seed(5)
        a = fx_net(x)["last"]
        torch.manual_seed(5)
        s0 = s1 = net.stem(x)
        for cell in net.cells:
            s0, s1 = s1, cell(s0, s1, net.drop_path_prob)
    assert torch.equal(a, s1)
    assert any(n.target.__name__ == "drop_path" for n in fx_net.graph.nodes if n.op == "call_function")


@pytest.mark.parametrize("shape,channels_last", [((6, 16, 32, 32), True), ((6, 16, 32, 32), False),
                                                 ((2, 24, 56, 56), True), ((5, 12, 8, 8), False)])
def test_factorized_reduce_equals_the_strided_convs(shape, channels_last):
    """FactorizedReduce's convs (pointwise_stride2_conv) against the official code's 1x1 stride-2
    convolutions written out: values and input gradients bit for bit (even sizes); the weight
    gradients sum the same products in the CPU kernel's own order, so they agree to fp32 rounding."""
    import torch.nn.functional as F

    from relnas.nas.operations import FactorizedReduce

    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    m = FactorizedReduce(shape[1], 2 * shape[1]).to(memory_format=fmt)
    x0 = torch.randn(shape).contiguous(memory_format=fmt)
    g = torch.randn(shape[0], 2 * shape[1], shape[2] // 2, shape[3] // 2)

    def official(x):
        x = torch.relu(x)
        return m.bn(torch.cat([F.conv2d(x, m.conv_1.weight, stride=2), F.conv2d(x[:, :, 1:, 1:], m.conv_2.weight, stride=2)], 1))

    grads = []
    for fn in (m, official):
        x = x0.clone().requires_grad_(True)
        m.zero_grad(set_to_none=True)
        y = fn(x)
        y.backward(g)
        grads.append((y.detach(), x.grad, m.conv_1.weight.grad, m.conv_2.weight.grad))
    (y, gx, gw1, gw2), (y_ref, gx_ref, gw1_ref, gw2_ref) = grads
    assert torch.equal(y, y_ref) and torch.equal(gx, gx_ref)
    for gw, ref in ((gw1, gw1_ref), (gw2, gw2_ref)):
        torch.testing.assert_close(gw, ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()))


def test_factorized_reduce_backward_survives_the_cpu_channels_last_defect():
    """torch 2.14's CPU weight gradient of a channels-last 1x1 stride-2 convolution corrupts the
    heap for a (4, 8, 56, 56) input (the process aborts); FactorizedReduce must train there (an
    ImageNet network at C=8 meets this shape). In a subprocess, so a crash fails this test only."""
    import subprocess
    import sys

    code = (
        "import torch\n"
        "from relnas.nas.operations import FactorizedReduce\n"
        "m = FactorizedReduce(8, 16).to(memory_format=torch.channels_last)\n"
        "x = torch.randn(4, 8, 56, 56).contiguous(memory_format=torch.channels_last).requires_grad_(True)\n"
        "for _ in range(3):\n"
        "    m(x).sum().backward()\n"
        "print('trained')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "trained" in r.stdout, (r.returncode, r.stderr[-500:])


def test_build_network_errors():
    with pytest.raises(KeyError, match="cifar"):
        build_network("mnist", "RelativeNAS", 8, 5, 10)
    with pytest.raises(ValueError, match="C"):
        build_network("cifar", "RelativeNAS", 0, 5, 10)
    with pytest.raises(ValueError, match="even"):
        build_network("imagenet", "RelativeNAS", 9, 5, 10)


# ---------------------------------------------------------------------- checkpoints

CIFAR_FIXTURE = "relativenas_cifar_c8_l5.pt"


@pytest.fixture(scope="module")
def cifar_fixture(reference_dir):
    return torch.load(reference_dir / CIFAR_FIXTURE, weights_only=True)


def _eval_out(net, x):
    net.eval()
    with torch.no_grad():
        return net(x)[0]


def _small(path, **kw):
    args = dict(kind="cifar", genotype="RelativeNAS", C=8, layers=5, num_classes=10, auxiliary=True)
    args.update(kw)
    return load_reference_checkpoint(path, **args)


def test_checkpoint_plain_state_dict(tmp_path, cifar_fixture):
    p = tmp_path / "plain.pt"
    torch.save(cifar_fixture["state_dict"], p)
    net = _small(p)
    assert (_eval_out(net, cifar_fixture["input"]) - cifar_fixture["logits_eval"]).abs().max() < 1e-4


def test_checkpoint_fixture_file_directly(reference_dir, cifar_fixture):
    net = _small(reference_dir / CIFAR_FIXTURE)
    assert (_eval_out(net, cifar_fixture["input"]) - cifar_fixture["logits_eval"]).abs().max() < 1e-4


@pytest.mark.parametrize("key", ["state_dict", "model", "model_state_dict", "net", "network"])
def test_checkpoint_wrapped_and_module_prefix(tmp_path, cifar_fixture, key):
    sd = {f"module.{k}": v for k, v in cifar_fixture["state_dict"].items()}
    p = tmp_path / "wrapped.pt"
    torch.save({"epoch": 599, key: sd, "best_acc_top1": 97.7}, p)
    net = _small(p)
    assert (_eval_out(net, cifar_fixture["input"]) - cifar_fixture["logits_eval"]).abs().max() < 1e-4


def test_checkpoint_into_given_network(tmp_path, cifar_fixture):
    p = tmp_path / "plain.pt"
    torch.save(cifar_fixture["state_dict"], p)
    net = build_network("cifar", "RelativeNAS", 8, 5, 10, auxiliary=True)
    assert load_reference_checkpoint(p, network=net) is net
    assert (_eval_out(net, cifar_fixture["input"]) - cifar_fixture["logits_eval"]).abs().max() < 1e-4


def test_extract_state_dict_variants(cifar_fixture):
    sd = cifar_fixture["state_dict"]
    assert extract_state_dict(sd).keys() == sd.keys()
    assert extract_state_dict({"state_dict": {"module." + k: v for k, v in sd.items()}}).keys() == sd.keys()
    with pytest.raises(CheckpointError, match="no state dict"):
        extract_state_dict({"epoch": 3, "optimizer": {"lr": 0.1}})


def test_checkpoint_shape_mismatch_wrong_C(tmp_path, cifar_fixture):
    p = tmp_path / "plain.pt"
    torch.save(cifar_fixture["state_dict"], p)
    with pytest.raises(CheckpointError) as e:
        _small(p, C=10)
    msg = str(e.value)
    assert "shape mismatch" in msg and "stem.0.weight" in msg and "(24, 3, 3, 3)" in msg and "(30, 3, 3, 3)" in msg
    assert "C=8 (network: 10)" in msg and "\n" not in msg


def test_checkpoint_wrong_num_classes(tmp_path, cifar_fixture):
    p = tmp_path / "plain.pt"
    torch.save(cifar_fixture["state_dict"], p)
    with pytest.raises(CheckpointError, match=r"num_classes=10 \(network: 100\)"):
        _small(p, num_classes=100)


def test_checkpoint_missing_key_named(tmp_path, cifar_fixture):
    sd = dict(cifar_fixture["state_dict"])
    del sd["cells.2._ops.3.op.1.weight"]
    p = tmp_path / "missing.pt"
    torch.save(sd, p)
    with pytest.raises(CheckpointError, match=r"missing key 'cells\.2\._ops\.3\.op\.1\.weight'"):
        _small(p)


def test_checkpoint_unexpected_auxiliary(tmp_path, cifar_fixture):
    p = tmp_path / "plain.pt"
    torch.save(cifar_fixture["state_dict"], p)
    with pytest.raises(CheckpointError, match=r"unexpected key 'auxiliary_head\..*auxiliary=True"):
        _small(p, auxiliary=False)


def test_checkpoint_wrong_genotype_or_layers(tmp_path, cifar_fixture):
    p = tmp_path / "plain.pt"
    torch.save(cifar_fixture["state_dict"], p)
    with pytest.raises(CheckpointError, match="genotype probably differs"):
        _small(p, genotype="DARTS_V2")
    with pytest.raises(CheckpointError, match=r"layers=5 \(network: 6\)"):
        _small(p, layers=6)
    with pytest.raises(CheckpointError, match="network='cifar'"):
        _small(p, kind="imagenet")


def test_infer_settings(reference_dir, cifar_fixture):
    from relnas.nas.checkpoint import infer_settings

    assert infer_settings(cifar_fixture["state_dict"]) == dict(network="cifar", C=8, in_channels=3, layers=5,
                                                               num_classes=10, auxiliary=True)
    fx = torch.load(reference_dir / "relativenas_imagenet_c8_l5.pt", weights_only=True)
    got = infer_settings(fx["state_dict"])
    cfg = fx["config"]
    assert got == dict(network="imagenet", C=cfg["C"], in_channels=3, layers=cfg["layers"],
                       num_classes=cfg["num_classes"], auxiliary=True)


def test_checkpoint_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        _small(tmp_path / "nope.pt")


# ---------------------------------------------------------------------- profile

def test_profile_small():
    net = build_network("cifar", "RelativeNAS", 8, 5, 10, auxiliary=True)
    assert count_params(net) < count_params(net, exclude_auxiliary=False)
    m = count_mult_adds(net, 32)
    assert m > 0 and count_mult_adds(net, 64) > 3 * m
    assert net.training  # the mode is restored
    s = network_summary(net)
    assert s["params"] == count_params(net) and s["cells"] == 5 and s["reduction_positions"] == [1, 3]


@pytest.mark.slow
def test_profile_relativenas_paper_numbers():
    cifar = build_network("cifar", "RelativeNAS", 36, 20, 10, auxiliary=True)
    s = network_summary(cifar)
    assert 3.8 < s["params_m"] < 4.05  # paper: 3.93M
    imagenet = build_network("imagenet", "RelativeNAS", 46, 14, 1000, auxiliary=True)
    s = network_summary(imagenet)
    assert 4.9 < s["params_m"] < 5.2  # paper: 5.05M
    assert 450 < s["mult_adds_m"] < 600  # mobile setting


def test_arch_spec_is_parsed_once_and_compared_by_weight_shapes(tmp_path):
    from relnas import ArchSpec, get_genotype
    from relnas.errors import ConfigError, RegistryError

    path = get_genotype("DARTS_V2").save(tmp_path / "cell.json")
    a = ArchSpec(network="cifar", genotype=str(path), C=8, layers=5, num_classes=10)
    assert a.genotype == get_genotype("DARTS_V2") and a.image_size == 32  # the CIFAR network's own size
    path.unlink()  # resolved when the spec was made: the file is not read again
    assert ArchSpec.from_dict(a.to_dict()) == a
    b = a.replace(genotype="RelativeNAS", C=6, image_size=28)
    assert list(a.differences(b)) == ["genotype", "C"]  # the image size does not shape the weights
    assert a.replace(image_size=36).differences(a) == {}
    sd = a.build().state_dict()
    ref = build_network("cifar", "DARTS_V2", 8, 5, 10).state_dict()
    assert {k: tuple(v.shape) for k, v in sd.items()} == {k: tuple(v.shape) for k, v in ref.items()}
    assert ArchSpec(network="imagenet", C=8, layers=5).image_size == 224
    with pytest.raises(ConfigError, match="C must be a positive integer, got 0"):
        ArchSpec(C=0)
    with pytest.raises(RegistryError, match="unknown network 'mnist'; known networks: cifar, imagenet"):
        ArchSpec(network="mnist")
