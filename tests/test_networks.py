"""Evaluation networks, checkpoint loading and profiling."""
from __future__ import annotations

import pytest
import torch

from relnas import NetworkCIFAR, NetworkImageNet, build_network, list_genotypes, load_reference_checkpoint
from relnas.nas.checkpoint import CheckpointError, extract_state_dict
from relnas.nas.profile import count_mult_adds, count_params, network_summary

ZOO = list_genotypes()


@pytest.mark.parametrize("name", ZOO)
def test_cifar_forward_all_zoo(name):
    torch.manual_seed(0)
    net = build_network("cifar", name, 8, 5, 10, auxiliary=True)
    assert isinstance(net, NetworkCIFAR)
    net.train()
    logits, aux = net(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 10) and aux.shape == (2, 10)
    net.eval()
    with torch.no_grad():
        logits, aux = net(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 10) and aux is None


@pytest.mark.parametrize("name", ZOO)
def test_imagenet_forward_all_zoo(name):
    torch.manual_seed(0)
    net = build_network("imagenet", name, 8, 5, 7, auxiliary=True)
    assert isinstance(net, NetworkImageNet)
    net.train()
    logits, aux = net(torch.randn(2, 3, 224, 224))
    assert logits.shape == (2, 7) and aux.shape == (2, 7)
    net.eval()
    with torch.no_grad():
        logits, aux = net(torch.randn(1, 3, 224, 224))
    assert logits.shape == (1, 7) and aux is None


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
