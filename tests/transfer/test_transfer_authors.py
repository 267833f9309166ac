"""The authors' transfer models load into relnas's networks and compute what theirs computed.

Reference outputs: tests/fixtures/authors_*.pt, made with the authors' own model code (see
tests/fixtures/README.md for how; the weights are regenerated here from the recorded recipe).
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from relnas.errors import ConfigError
from relnas.transfer.authors import convert_authors_state_dict, load_authors_weights, looks_like_authors
from relnas.transfer.backbones import build_backbone
from relnas.transfer.tasks.detection import build_ssdlite
from relnas.transfer.tasks.keypoints import KeypointModule
from relnas.transfer.tasks.segmentation import SegmentationModule

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def authors_state(fixture: dict) -> dict:
    """Their state dict as the fixture's recipe made it (tests/fixtures/README.md)."""
    g = torch.Generator().manual_seed(int(fixture["weight_seed"]))
    sd = {}
    for name, shape in fixture["keys"]:
        if name.endswith("running_var"):
            v = 0.5 + torch.rand(shape, generator=g)
        elif name.endswith("running_mean"):
            v = 0.1 * torch.randn(shape, generator=g)
        else:
            v = 0.3 * torch.randn(shape, generator=g)
        sd[name] = v.half().double()
    total = float(sum(v.abs().sum() for v in sd.values()))
    assert total == pytest.approx(fixture["abs_sum"], rel=1e-12), "the recipe no longer reproduces the weights"
    return sd


def small_backbone():
    return build_backbone("RelativeNAS", C=8, layers=5)


def test_simplebaseline_equals_the_authors_model():
    fx = torch.load(FIXTURES / "authors_simplebaseline_c8_l5.pt")
    sd = authors_state(fx)
    assert looks_like_authors("keypoints", sd) and not looks_like_authors("segmentation", sd)
    net = KeypointModule.build_model(small_backbone(), 17, deconv_channels=32).double().eval()
    load_authors_weights(net, "keypoints", {"module." + k: v for k, v in sd.items()}, "test")  # a DDP prefix too
    with torch.no_grad():
        out = net(fx["input"].double())
    torch.testing.assert_close(out, fx["heatmaps"], rtol=0, atol=1e-10)


def test_bisenet_equals_the_authors_model_with_their_settings():
    fx = torch.load(FIXTURES / "authors_bisenet_c8_l5.pt")
    sd = authors_state(fx)
    assert looks_like_authors("segmentation", sd)
    theirs = SegmentationModule.build_model(small_backbone(), 3, activation="leaky_relu", align_corners=True)
    theirs = theirs.double().eval()
    load_authors_weights(theirs, "segmentation", {"state_dict": sd}, "test")
    with torch.no_grad():
        out = theirs(fx["input"].double())
    torch.testing.assert_close(out, fx["logits"], rtol=0, atol=1e-9)
    # training mode (batch statistics): the main output and both auxiliary heads, in their order
    theirs.train()
    with torch.no_grad():
        train_out = theirs(fx["input"].double())
    assert len(train_out) == len(fx["train_logits"]) == 3
    for mine, ref in zip(train_out, fx["train_logits"]):
        torch.testing.assert_close(mine.float(), ref, rtol=0, atol=1e-4)
    theirs.eval()
    load_authors_weights(theirs, "segmentation", {"state_dict": sd}, "test")  # running statistics as saved
    # the in-place ABN scale |w| + eps is what makes them equal: the raw weights do not
    converted = convert_authors_state_dict("segmentation", sd)
    raw = dict(converted)
    raw["head.0.1.weight"] = sd["conv_out.conv.bn.weight"]
    theirs.load_state_dict(raw, strict=False)
    with torch.no_grad():
        assert (theirs(fx["input"].double()) - fx["logits"]).abs().max() > 1e-3
    # relnas's defaults (ReLU, align_corners=False) compute something else from the same weights
    ours = SegmentationModule.build_model(small_backbone(), 3).double().eval()
    load_authors_weights(ours, "segmentation", sd, "test")
    with torch.no_grad():
        assert (ours(fx["input"].double()) - fx["logits"]).abs().max() > 1e-3


def test_ssdlite_equals_the_authors_model():
    fx = torch.load(FIXTURES / "authors_ssdlite_c8_l5.pt")
    sd = authors_state(fx)
    assert looks_like_authors("detection", sd) and not looks_like_authors("keypoints", sd)
    net = build_ssdlite(small_backbone(), 21, input_size=320).double().eval()
    load_authors_weights(net, "detection", sd, "test")
    with torch.no_grad():  # raw head outputs on an already normalised input (their forward with is_test=False)
        out = net.head(list(net.backbone(fx["input"].double()).values()))
    torch.testing.assert_close(out["cls_logits"], fx["confidences"], rtol=0, atol=1e-10)
    torch.testing.assert_close(out["bbox_regression"], fx["locations"], rtol=0, atol=1e-10)
    # their default boxes at 320x320 (cx, cy, w, h of the image) are ours, in the same order
    from torchvision.models.detection.image_list import ImageList

    feats = [torch.zeros(1, 1, n, n) for n in (20, 10, 5, 3, 2, 1)]
    boxes = net.float().anchor_generator(ImageList(torch.zeros(1, 3, 320, 320), [(320, 320)]), feats)[0] / 320
    ours = torch.cat([(boxes[:, :2] + boxes[:, 2:]) / 2, boxes[:, 2:] - boxes[:, :2]], 1)
    torch.testing.assert_close(ours, fx["priors_320"], rtol=0, atol=1e-6)


def test_mismatches_are_one_line_errors():
    fx = torch.load(FIXTURES / "authors_simplebaseline_c8_l5.pt")
    sd = authors_state(fx)
    net = KeypointModule.build_model(small_backbone(), 17)  # 256 deconvolution channels, theirs 32
    with pytest.raises(ConfigError, match="head.deconv.0.weight.*shape"):
        load_authors_weights(net, "keypoints", sd, "init_weights 'x'")
    with pytest.raises(ConfigError, match="'mystery.weight'"):
        convert_authors_state_dict("keypoints", {**sd, "mystery.weight": torch.zeros(1)})
    with pytest.raises(ConfigError, match="known: detection, keypoints, segmentation"):
        convert_authors_state_dict("captioning", sd)


@pytest.mark.slow
def test_init_weights_takes_the_authors_file_through_the_entry_point(tmp_path):
    from helpers.cli import cli_env
    from test_transfer_keypoints import TINY, write_fake_coco

    fx = torch.load(FIXTURES / "authors_simplebaseline_c8_l5.pt")
    sd = {k: v.float() for k, v in authors_state(fx).items()}
    theirs = tmp_path / "model_best.pth.tar"
    torch.save(sd, theirs)  # as their train.py saves it: a plain state dict
    write_fake_coco(tmp_path / "data" / "coco")
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "relnas.transfer", "+experiment=coco_simplebaseline", f"hydra.run.dir={run}",
           f"paths.data_dir={tmp_path / 'data'}", *TINY, "task.epochs=0", f"init_weights={theirs}"]
    r = subprocess.run(cmd, cwd=Path(__file__).resolve().parents[2], env=cli_env(), capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "from the authors' keypoints model" in r.stderr + r.stdout
    res = json.loads((run / "result.json").read_text())
    assert res["init_weights"] == str(theirs) and 0.0 <= res["metrics"]["AP"] <= 1.0
