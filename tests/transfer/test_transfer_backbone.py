"""Transfer backbones: taps, feature_info, out_indices, weights, frozen BN, FX feature extraction."""
from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from relnas.nas.genotypes import get_genotype
from relnas.nas.arch import build_network
from relnas.transfer.backbones import BackboneError, build_backbone


def _tiny(**kw):
    return build_backbone("RelativeNAS", C=8, layers=5, **kw)


def test_cell_taps_shapes_and_channels():
    # L=5: reduction cells 1 and 3, so the stage ends are cells 0, 2, 4 at strides 8, 16, 32; the
    # RelativeNAS cells concatenate 4 nodes: 4*C, 4*2C, 4*4C channels.
    bb = _tiny().eval()
    assert bb.feature_info.module_name() == ["cells.0", "cells.2", "cells.4"]
    assert bb.feature_info.reduction() == [8, 16, 32]
    assert bb.feature_info.channels() == [32, 64, 128]
    with torch.no_grad():
        out = bb(torch.randn(2, 3, 64, 96))
    assert list(out) == ["stride8", "stride16", "stride32"]
    assert [tuple(v.shape) for v in out.values()] == [(2, 32, 8, 12), (2, 64, 4, 6), (2, 128, 2, 3)]
    names = {k.split(".")[0] for k in bb.state_dict()}
    assert names == {"stem0", "stem1", "cells"}  # no classifier, no auxiliary head


def test_mobile_setting_taps():
    bb = build_backbone("RelativeNAS")  # NetworkImageNet C=46, L=14: reductions at cells 4 and 9
    assert bb.feature_info.module_name() == ["cells.3", "cells.8", "cells.13"]
    assert bb.feature_info.channels() == [184, 368, 736]


def test_out_indices_negative_truncate_and_errors():
    bb = _tiny(out_indices=[-2])
    assert bb.feature_info.reduction() == [16]
    assert len(bb.cells) == 3  # cells after the last tap are not built
    assert _tiny(out_indices=(0, -1)).feature_info.keys() == ["stride8", "stride32"]
    with pytest.raises(BackboneError, match=r"has 3 feature maps \(indices 0..2 or -3..-1"):
        _tiny(out_indices=[3])
    with pytest.raises(BackboneError, match="distinct"):
        _tiny(out_indices=[1, -2])


def test_unknown_name_lists_known():
    with pytest.raises(BackboneError) as e:
        build_backbone("resnet_huge")
    msg = str(e.value)
    assert "\n" not in msg and "RelativeNAS" in msg and "mobilenet_v2" in msg and "DARTS_V2" in msg


def test_random_init_is_loud(caplog):
    with caplog.at_level(logging.WARNING, logger="relnas.transfer.backbones"):
        bb = _tiny()
    assert any("NO pretrained weights" in r.message for r in caplog.records)
    assert bb.pretrained is False and "random" in bb.describe()["weights_warning"]


class _Stop(Exception):
    pass


def _taps_of_network(net, x):
    """The stage-end cell outputs of a NetworkImageNet, read with forward hooks (the forward is
    stopped after the last cell: its 7x7 average pooling needs 224x224 inputs)."""
    out = {}

    def hook(m, a, o, i):
        out[i] = o
        if i == 4:
            raise _Stop

    hooks = [net.cells[i].register_forward_hook(lambda m, a, o, i=i: hook(m, a, o, i)) for i in (0, 2, 4)]
    try:
        with torch.no_grad():
            net(x)
    except _Stop:
        pass
    for h in hooks:
        h.remove()
    return out


def _randomise_bn(net):
    g = torch.Generator().manual_seed(0)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)


def test_official_state_dict_loads(tmp_path):
    net = build_network("imagenet", "RelativeNAS", C=8, layers=5, num_classes=7, auxiliary=True).eval()
    _randomise_bn(net)
    path = tmp_path / "official.pt"
    torch.save({"epoch": 3, "state_dict": {"module." + k: v for k, v in net.state_dict().items()}}, path)
    bb = _tiny(weights=str(path)).eval()
    assert bb.pretrained and bb.weights == str(path)
    x = torch.randn(1, 3, 64, 64)
    want = _taps_of_network(net, x)
    with torch.no_grad():
        got = bb(x)
    for key, i in (("stride8", 0), ("stride16", 2), ("stride32", 4)):
        torch.testing.assert_close(got[key], want[i])


def test_relnas_train_checkpoint_and_run_dir(tmp_path):
    net = build_network("imagenet", "DARTS_V2", C=8, layers=5, num_classes=10, auxiliary=True)
    ckpt = {"state_dict": {"net." + k: v for k, v in net.state_dict().items()},
            "hyper_parameters": {"network": "imagenet", "genotype": get_genotype("DARTS_V2").to_dict(), "C": 8,
                                 "layers": 5}}
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    torch.save(ckpt, run / "checkpoints" / "last.ckpt")
    bb = build_backbone("DARTS_V2", weights=str(run), C=8, layers=5)
    assert bb.weights.endswith("last.ckpt")
    torch.testing.assert_close(bb.stem0[0].weight, net.stem0[0].weight)
    with pytest.raises(BackboneError, match="trained with genotype"):
        build_backbone("RelativeNAS", weights=str(run), C=8, layers=5)
    with pytest.raises(BackboneError, match=r"C=8 \(backbone: 10\)"):
        build_backbone("DARTS_V2", weights=str(run), C=10, layers=5)
    with pytest.raises(BackboneError, match="not found"):
        build_backbone("DARTS_V2", weights=str(tmp_path / "nope.pt"), C=8, layers=5)


def test_run_dir_gives_the_checkpoint_behind_the_reported_number(tmp_path):
    """An ImageNet run validates on the val split it reports: its best-on-validation checkpoint is
    an epoch chosen on that split, so a run directory gives the weights the run itself tested."""
    import json

    hp = {"network": "imagenet", "genotype": get_genotype("DARTS_V2").to_dict(), "C": 8, "layers": 5}
    nets = {}
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    for name in ("best_epoch001.ckpt", "last.ckpt"):
        net = build_network("imagenet", "DARTS_V2", C=8, layers=5, num_classes=10, auxiliary=True)
        nets[name] = net
        torch.save({"state_dict": {"net." + k: v for k, v in net.state_dict().items()}, "hyper_parameters": hp},
                   run / "checkpoints" / name)
    # no test record (an interrupted run, no config): the final weights, not the best-on-val epoch
    bb = build_backbone("DARTS_V2", weights=str(run), C=8, layers=5)
    assert bb.weights.endswith("last.ckpt")
    torch.testing.assert_close(bb.stem0[0].weight, nets["last.ckpt"].stem0[0].weight)
    # a finished run that tested its best checkpoint (test_checkpoint=best_val): that one
    best = run / "checkpoints" / "best_epoch001.ckpt"
    (run / "result.json").write_text(json.dumps({"test_selection": {"rule": "best_val", "checkpoint": str(best)}}))
    bb = build_backbone("DARTS_V2", weights=str(run), C=8, layers=5)
    assert bb.weights == str(best)
    torch.testing.assert_close(bb.stem0[0].weight, nets["best_epoch001.ckpt"].stem0[0].weight)
    # the default rule recorded: the final weights
    (run / "result.json").write_text(json.dumps({"test_selection": {"rule": "final", "checkpoint": None}}))
    assert build_backbone("DARTS_V2", weights=str(run), C=8, layers=5).weights.endswith("last.ckpt")


def test_frozen_bn_same_outputs():
    bb = _tiny().eval()
    _randomise_bn(bb)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        before = bb(x)
    from relnas.transfer.backbones import freeze_batchnorm
    from torchvision.ops.misc import FrozenBatchNorm2d

    freeze_batchnorm(bb)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in bb.modules())
    assert any(isinstance(m, FrozenBatchNorm2d) for m in bb.modules())
    bb.train()  # frozen statistics do not depend on the mode
    with torch.no_grad():
        after = bb(x)
    for k in before:
        torch.testing.assert_close(after[k], before[k])
    assert _tiny(frozen_bn=True).describe()["frozen_bn"] is True


def test_create_feature_extractor_on_cell_network():
    from torchvision.models.feature_extraction import create_feature_extractor

    net = build_network("imagenet", "RelativeNAS", C=8, layers=5, num_classes=10).eval()  # has dil_conv_5x5
    fx = create_feature_extractor(net, return_nodes={"cells.2": "c2", "cells.4": "c4"})
    # the device choice of the dilated conv stays a runtime call in the traced graph
    assert any(n.op == "call_function" and getattr(n.target, "__name__", "") == "dil_depthwise_conv"
               for n in fx.graph.nodes)
    x = torch.randn(1, 3, 64, 64)
    want = _taps_of_network(net, x)
    with torch.no_grad():
        got = fx(x)
    torch.testing.assert_close(got["c2"], want[2])
    torch.testing.assert_close(got["c4"], want[4])
    bb = _tiny().eval()
    fx2 = create_feature_extractor(bb, return_nodes={"cells.4": "last"})
    with torch.no_grad():
        torch.testing.assert_close(fx2(x)["last"], bb(x)["stride32"])


@pytest.mark.parametrize("name,channels", [
    ("mobilenet_v2", [24, 32, 96, 1280]),        # MobileNetV2 table: 24@4, 32@8, 96@16, 1280 (last conv)@32
    ("shufflenet_v2_x1_0", [24, 116, 232, 1024]),  # ShuffleNetV2 1x: 24 (maxpool), stages 116/232, conv5 1024
    ("mnasnet1_0", [24, 40, 96, 1280]),           # MnasNet-A1... torchvision's mnasnet1_0 stacks 24/40/96/1280
])
def test_torchvision_backbones(name, channels):
    bb = build_backbone(name).eval()
    with torch.no_grad():
        out = bb(torch.randn(1, 3, 64, 64))
    assert list(out) == ["stride4", "stride8", "stride16", "stride32"]
    assert [v.shape[1] for v in out.values()] == channels == bb.feature_info.channels()
    assert [v.shape[-1] for v in out.values()] == [16, 8, 4, 2]
    assert not any(k.startswith(("classifier", "fc")) for k in bb.state_dict())


def test_torchvision_weights_must_be_cached(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(BackboneError, match=r"not cached \(expected .*mobilenet_v2-.*\.pth"):
        build_backbone("mobilenet_v2", weights="DEFAULT")
    with pytest.raises(BackboneError, match="unknown torchvision weights 'IMAGENET9K'"):
        build_backbone("mobilenet_v2", weights="IMAGENET9K")


def test_torchvision_state_dict_file(tmp_path):
    import torchvision

    ref = torchvision.models.mobilenet_v2().eval()
    path = tmp_path / "mbv2.pth"
    torch.save(ref.state_dict(), path)
    bb = build_backbone("mobilenet_v2", weights=str(path)).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(bb(x)["stride32"], ref.features(x))


@pytest.mark.parametrize("as_plain_dict", [False, True])
def test_an_mnasnet_state_dict_file_loads_with_or_without_its_module_versions(tmp_path, as_plain_dict):
    """torchvision's MNASNet reads the state-dict version of its own module when it loads: a file saved
    from ``state_dict()`` carries it, a plain dict does not (the built module's version applies)."""
    import torchvision

    torch.manual_seed(0)
    ref = torchvision.models.mnasnet1_0().eval()
    path = tmp_path / "mnasnet.pth"
    torch.save(dict(ref.state_dict()) if as_plain_dict else ref.state_dict(), path)
    bb = build_backbone("mnasnet1_0", weights=str(path)).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(bb(x)["stride32"], ref.layers(x))


def test_relnas_build_backbone_is_exported():
    import relnas

    assert relnas.build_backbone("RelativeNAS", C=8, layers=5, out_indices=[-1]).feature_info.channels() == [128]


def test_cached_torchvision_weights_load_without_download(tmp_path, monkeypatch):
    import torchvision

    from relnas.transfer.backbones import torchvision_weights_path

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    enum = torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1
    ref = torchvision.models.mobilenet_v2().eval()
    _randomise_bn(ref)
    path = torchvision_weights_path(enum)
    assert path == tmp_path / "checkpoints" / "mobilenet_v2-b0353104.pth"
    path.parent.mkdir(parents=True)
    torch.save(ref.state_dict(), path)
    bb = build_backbone("mobilenet_v2", weights="MobileNet_V2_Weights.IMAGENET1K_V1", frozen_bn=True)
    assert bb.pretrained and bb.weights == "MobileNet_V2_Weights.IMAGENET1K_V1"
    x = torch.randn(1, 3, 64, 64)
    bb.train()  # frozen BN: the statistics of the weights even in training mode
    with torch.no_grad():
        torch.testing.assert_close(bb(x)["stride32"], ref.features(x))


def test_genotype_file_and_search_run_dir(tmp_path):
    g = get_genotype("DARTS_V2")
    g.save(tmp_path / "genotype.json")  # a search run directory holds genotype.json
    for spec in (tmp_path / "genotype.json", tmp_path):
        bb = build_backbone(str(spec), C=8, layers=5)
        assert bb.genotype == g and bb.describe()["genotype"] == g.to_dict()
    with pytest.raises(BackboneError, match="backbone"):
        build_backbone(str(tmp_path / "missing.json"))


def test_a_cell_backbone_refuses_an_input_size_its_reduction_cells_cannot_halve():
    """64x48: the stride-16 map is 4x3, whose odd width the stride-32 reduction cell cannot halve
    (its two factorized branches disagree); 64x64 runs."""
    bb = build_backbone("RelativeNAS", C=8, layers=5).eval()
    with pytest.raises(BackboneError, match=r"input size 64x48 does not fit backbone RelativeNAS: .* multiples of 32"):
        bb.check_input_size((64, 48))
    with pytest.raises(RuntimeError):  # what the network itself does with it
        bb(torch.randn(1, 3, 64, 48))
    bb.check_input_size((64, 64))
    assert bb(torch.randn(1, 3, 64, 64))["stride32"].shape[-2:] == (2, 2)
    build_backbone("mobilenet_v2").check_input_size((64, 48))  # torchvision backbones take any size
