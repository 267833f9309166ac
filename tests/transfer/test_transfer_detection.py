"""SSDLite detection: default boxes, box coder, VOC07 AP (hand cases, torchmetrics), VOC data, sizes."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from helpers.voc import make_fake_voc

from relnas.transfer.backbones import build_backbone
from relnas.transfer.metrics.voc_ap import VOCMeanAP, voc07_ap, voc_detection_ap
from relnas.transfer.tasks.detection import DetectionModule, build_ssdlite


@pytest.fixture(scope="module")
def ssd320():
    bb = build_backbone("RelativeNAS", C=8, layers=5)
    return build_ssdlite(bb, 21, input_size=320).eval()


# ---------------------------------------------------------------------- network

def test_six_maps_and_extra_blocks(ssd320):
    with torch.no_grad():
        maps = ssd320.backbone(torch.zeros(1, 3, 320, 320))
    assert [tuple(m.shape[1:]) for m in maps.values()] == [
        (64, 20, 20), (128, 10, 10), (512, 5, 5), (256, 3, 3), (256, 2, 2), (64, 1, 1)]
    # inverted residuals: 1x1 expansion to round(in * ratio), 3x3 depthwise stride 2, 1x1 projection
    hidden = [blk.conv[0][0].out_channels for blk in ssd320.backbone.extra]
    assert hidden == [round(128 * 0.2), round(512 * 0.25), round(256 * 0.5), round(256 * 0.25)]
    assert [blk.conv[1][0].stride for blk in ssd320.backbone.extra] == [(2, 2)] * 4


def test_default_boxes_count_and_order(ssd320):
    from torchvision.models.detection.image_list import ImageList

    assert ssd320.anchor_generator.num_anchors_per_location() == [6] * 6
    feats = [torch.zeros(1, 1, n, n) for n in (20, 10, 5, 3, 2, 1)]
    boxes = ssd320.anchor_generator(ImageList(torch.zeros(1, 3, 320, 320), [(320, 320)]), feats)[0]
    assert boxes.shape == (6 * (400 + 100 + 25 + 9 + 4 + 1), 4) == (3234, 4)

    def box(cx, cy, w, h):
        return [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]

    r2, r3 = math.sqrt(2), math.sqrt(3)
    # first location of the 20x20 map (step 16, centre 8,8); scale 60 px, next scale 105 px
    want = [box(8, 8, 60, 60), box(8, 8, math.sqrt(60 * 105), math.sqrt(60 * 105)), box(8, 8, 60 * r2, 60 / r2),
            box(8, 8, 60 / r2, 60 * r2), box(8, 8, 60 * r3, 60 / r3), box(8, 8, 60 / r3, 60 * r3)]
    torch.testing.assert_close(boxes[:6], torch.tensor(want), atol=1e-3, rtol=0)
    # locations are row-major: box 6 is the next column (centre 24, 8); box 120 the next row
    torch.testing.assert_close(boxes[6], torch.tensor(box(24, 8, 60, 60)), atol=1e-3, rtol=0)
    torch.testing.assert_close(boxes[120], torch.tensor(box(8, 24, 60, 60)), atol=1e-3, rtol=0)
    # the 10x10 map starts at index 2400 with centre 16,16 and scale 105 px
    torch.testing.assert_close(boxes[2400], torch.tensor(box(16, 16, 105, 105)), atol=1e-3, rtol=0)
    # the small maps keep the authors' steps 100, 150, 300 px (ssdlite_config.py), not 320 / cells:
    # the 3x3 map (from index 6 * 525 = 3150, scale 195 px) has centres 50, 150, 250; the 1x1 map
    # (the last 6 boxes, scale 285 px) its centre at 150, not 160
    torch.testing.assert_close(boxes[3150], torch.tensor(box(50, 50, 195, 195)), atol=1e-3, rtol=0)
    torch.testing.assert_close(boxes[3156], torch.tensor(box(150, 50, 195, 195)), atol=1e-3, rtol=0)
    torch.testing.assert_close(boxes[3228], torch.tensor(box(150, 150, 285, 285)), atol=1e-3, rtol=0)


def test_other_input_sizes_spread_the_centres_evenly():
    from torchvision.models.detection.image_list import ImageList

    net = build_ssdlite(build_backbone("RelativeNAS", C=8, layers=5), 21, input_size=64)
    feats = [torch.zeros(1, 1, n, n) for n in (4, 2, 1, 1, 1, 1)]
    boxes = net.anchor_generator(ImageList(torch.zeros(1, 3, 64, 64), [(64, 64)]), feats)[0]
    # 4x4 map: centres every 16 px from 8; a 1x1 map: the image centre (scales: 60/320 of 64 = 12 px)
    torch.testing.assert_close(boxes[0], torch.tensor([8 - 6, 8 - 6, 8 + 6, 8 + 6.0]), atol=1e-3, rtol=0)
    torch.testing.assert_close(boxes[6], torch.tensor([24 - 6, 8 - 6, 24 + 6, 8 + 6.0]), atol=1e-3, rtol=0)
    assert boxes[-6:, :2].add(boxes[-6:, 2:]).div(2).sub(32).abs().max() < 1e-3


def test_box_coder_hand_case_and_round_trip(ssd320):
    coder = ssd320.box_coder
    anchor = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    gt = torch.tensor([[1.0, 2.0, 11.0, 14.0]])  # centre (6, 8), 10 x 12 vs anchor centre (5, 5), 10 x 10
    code = coder.encode_single(gt, anchor)
    torch.testing.assert_close(code, torch.tensor([[10 * 1 / 10, 10 * 3 / 10, 5 * math.log(1.0),
                                                    5 * math.log(12 / 10)]]))
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(50, 2, generator=g) * 200
    anchors = torch.cat([xy, xy + 10 + torch.rand(50, 2, generator=g) * 90], 1)
    xy2 = torch.rand(50, 2, generator=g) * 200
    targets = torch.cat([xy2, xy2 + 5 + torch.rand(50, 2, generator=g) * 100], 1)
    back = coder.decode_single(coder.encode_single(targets, anchors), anchors)
    torch.testing.assert_close(back, targets, atol=1e-3, rtol=1e-5)


def test_whole_model_parameter_count_mobilenet_v2():
    from relnas.transfer.inspect import inspect_task
    from relnas.utils.compose import compose_config

    cfg = compose_config("transfer", ["task=detection", "backbone=mobilenet_v2"])
    info = inspect_task(cfg.task, cfg.backbone, flops=False)
    backbone = 3_504_872 - (1280 * 1000 + 1000)  # torchvision MobileNetV2 without its classifier

    def inverted_residual(i, o, r):
        h = round(i * r)
        return i * h + 2 * h + 9 * h + 2 * h + h * o + 2 * o  # expand+BN, depthwise+BN, project+BN

    extras = (inverted_residual(1280, 512, 0.2) + inverted_residual(512, 256, 0.25)
              + inverted_residual(256, 256, 0.5) + inverted_residual(256, 64, 0.25))
    # the authors' SSDLite head (ssd_mobile.py, SeperableConv2d) per map (C channels, 6 boxes, 21 classes):
    # 3x3 depthwise with bias + BN, then a 1x1 conv with bias; on the last map (64 channels) a 1x1 conv
    # alone; once for the class scores (6 * 21) and once for the box offsets (6 * 4)
    head = sum(2 * (9 * c + c + 2 * c) + c * 126 + 126 + c * 24 + 24 for c in (96, 1280, 512, 256, 256))
    head += 64 * 126 + 126 + 64 * 24 + 24
    assert info["params"] == backbone + extras + head == 3_304_708  # the authors' model, counted in their code
    assert info["input_size"] == [320, 320] and info["num_classes"] == 21


# ---------------------------------------------------------------------- VOC07 AP

def _one(boxes, scores=None, labels=None, difficult=None, image_id=0):
    boxes = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    n = boxes.shape[0]
    d = {"boxes": boxes, "labels": torch.tensor(labels if labels is not None else [1] * n)}
    if scores is not None:
        d["scores"] = torch.tensor(scores, dtype=torch.float32)
    if difficult is not None:
        d["difficult"] = torch.tensor(difficult)
    d["image_id"] = image_id
    return d


def test_voc07_eleven_points_by_hand():
    # TP (0.9), FP (0.8), TP (0.7) against 2 objects: precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1
    # -> recall levels 0..0.5 (6 of them) see precision 1, levels 0.6..1 (5) see 2/3
    gt = _one([[0, 0, 10, 10], [20, 20, 30, 30]])
    pred = _one([[0, 0, 10, 10], [50, 50, 60, 60], [20, 20, 30, 31]], scores=[0.9, 0.8, 0.7])
    r = voc_detection_ap([pred], [gt], num_classes=2)
    assert r["ap"][1] == pytest.approx((6 * 1 + 5 * 2 / 3) / 11)
    assert r["map"] == pytest.approx((6 + 5 * 2 / 3) / 11)
    assert voc07_ap(torch.tensor([0.5, 0.5, 1.0]), torch.tensor([1.0, 0.5, 2 / 3])) == pytest.approx((6 + 10 / 3) / 11)


def test_duplicates_difficult_and_missing_classes():
    # a second detection of a taken object is a false positive: TP, FP (duplicate), TP against two
    # objects -> precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1
    gt = _one([[0, 0, 10, 10], [20, 20, 30, 30]])
    pred = _one([[0, 0, 10, 10], [0, 0, 10, 11], [20, 20, 30, 30]], scores=[0.9, 0.8, 0.7])
    assert voc_detection_ap([pred], [gt], 2)["ap"][1] == pytest.approx((6 + 5 * 2 / 3) / 11)
    # a detection of a difficult object is ignored (neither TP nor FP) and the object is not counted:
    # difficult hit (ignored), FP, TP -> precision 0, 1/2 at recall 0, 1 -> every level sees 1/2
    gt = _one([[0, 0, 10, 10], [20, 20, 30, 30]], difficult=[False, True])
    pred = _one([[20, 20, 30, 30], [60, 60, 70, 70], [0, 0, 10, 10]], scores=[0.9, 0.8, 0.7])
    assert voc_detection_ap([pred], [gt], 2)["ap"][1] == pytest.approx(0.5)
    # IoU must exceed 0.5: [0,0,10,10] vs [0,0,10,20] is exactly 0.5 -> false positive
    pred = _one([[0, 0, 10, 20]], scores=[0.9])
    assert voc_detection_ap([pred], [_one([[0, 0, 10, 10]])], 2)["ap"][1] == 0.0
    # class 2 has ground truth but no detection (AP 0); class 3 has none (left out of the mean)
    gt = _one([[0, 0, 10, 10], [20, 20, 30, 30]], labels=[1, 2])
    pred = _one([[0, 0, 10, 10], [60, 60, 70, 70]], scores=[0.9, 0.5], labels=[1, 3])
    r = voc_detection_ap([pred], [gt], 4)
    assert r["ap"] == [None, pytest.approx(1.0), 0.0, None]
    assert r["map"] == pytest.approx(0.5)


def _random_case(n_images=12, n_classes=4, seed=0):
    """Ground truth on a grid (no two objects overlap, so every matching rule agrees) and noisy
    detections: jittered copies of the objects, some with the wrong class, plus random boxes."""
    g = torch.Generator().manual_seed(seed)
    preds, targets = [], []
    for i in range(n_images):
        cells = torch.randperm(16, generator=g)[: 1 + i % 4]
        gb = torch.stack([torch.tensor([c % 4 * 50.0 + 5, c // 4 * 50.0 + 5, c % 4 * 50.0 + 40, c // 4 * 50.0 + 40])
                          for c in cells.tolist()])
        gl = torch.randint(1, n_classes, (len(cells),), generator=g)
        jitter = (torch.rand(gb.shape, generator=g) - 0.5) * 16
        pb = torch.cat([gb + jitter, torch.rand(3, 2, generator=g).mul(150).repeat(1, 2)
                        + torch.tensor([0.0, 0.0, 30.0, 30.0])])
        pl = torch.cat([torch.where(torch.rand(len(cells), generator=g) < 0.2,
                                    torch.randint(1, n_classes, (len(cells),), generator=g), gl),
                        torch.randint(1, n_classes, (3,), generator=g)])
        preds.append({"boxes": pb, "scores": torch.rand(len(pb), generator=g), "labels": pl})
        targets.append({"boxes": gb, "labels": gl, "image_id": torch.tensor(i)})
    return preds, targets


def test_agrees_with_torchmetrics():
    pytest.importorskip("pycocotools")
    from torchmetrics.detection import MeanAveragePrecision

    preds, targets = _random_case()
    tm = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", iou_thresholds=[0.5],
                              rec_thresholds=[i / 10 for i in range(11)], max_detection_thresholds=[1, 10, 100],
                              class_metrics=True)
    tm.update(preds, [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets])
    ref = tm.compute()
    ours = VOCMeanAP(num_classes=4)
    ours.update(preds[:5], targets[:5])
    ours.update(preds[5:], targets[5:])
    r = ours.compute()
    ref_per_class = dict(zip(ref["classes"].tolist(), ref["map_per_class"].tolist()))
    assert len(ref_per_class) == 3
    for c, ap in ref_per_class.items():
        assert float(r["ap_per_class"][c]) == pytest.approx(ap, abs=1e-6), c
    assert float(r["map"]) == pytest.approx(float(ref["map"]), abs=1e-6)
    assert 0.2 < float(r["map"]) < 0.95  # a case with both hits and misses


def test_repeated_images_of_a_padded_sampler_count_once():
    preds, targets = _random_case(n_images=4)
    m1, m2 = VOCMeanAP(4), VOCMeanAP(4)
    m1.update(preds, targets)
    m2.update(preds + preds[:2], targets + targets[:2])  # DistributedSampler padding repeats images
    torch.testing.assert_close(m2.compute()["ap_per_class"], m1.compute()["ap_per_class"], equal_nan=True)


# ---------------------------------------------------------------------- data

def test_voc_tree_loads(tmp_path):
    from relnas.transfer.data.voc import VOCDataModule

    truth = make_fake_voc(tmp_path, n_trainval=4, n_test=2)
    dm = VOCDataModule(root=str(tmp_path), train_sets=["2007-trainval"], image_size=48, batch_size=2,
                       num_workers=0)
    dm.setup("fit")
    assert dm.num_classes == 21 and dm.class_names[5] == "bottle" and dm.class_names[16] == "pottedplant"
    img, t = dm.val_set_data[0]  # test image 000004: the original size, all objects, difficult flags
    objs = truth["000004"]
    assert img.dtype == torch.float32 and 0 <= float(img.min()) and float(img.max()) <= 1
    assert t["boxes"].tolist() == [[b[0] - 1, b[1] - 1, b[2], b[3]] for _, b, _ in objs]
    assert t["difficult"].tolist() == [d for _, _, d in objs] == [False, True]
    assert t["labels"].tolist() == [dm.class_names.index(c) for c, _, _ in objs]
    img, t = dm.train_set[0]  # trainval 000000 has a difficult second object: not trained on
    assert img.shape == (3, 48, 48) and len(t["labels"]) <= 1
    images, targets = next(iter(dm.train_dataloader()))
    assert len(images) == 2 and isinstance(targets[0]["boxes"], torch.Tensor)


def test_missing_voc_is_one_line(tmp_path):
    from relnas.data import DatasetNotFoundError
    from relnas.transfer.data.voc import VOCDataModule

    with pytest.raises(DatasetNotFoundError) as e:
        VOCDataModule(root=str(tmp_path)).setup("fit")
    msg = str(e.value)
    assert "\n" not in msg and "VOCdevkit/VOC2007" in msg and "Annotations" in msg and "2007-trainval" in msg


def test_class_count_mismatch_is_named(tmp_path):
    from relnas.errors import ConfigError
    from relnas.transfer.__main__ import check_checkpoint_fits

    bb = build_backbone("RelativeNAS", C=8, layers=5)
    module = DetectionModule(build_ssdlite(bb, 21, input_size=64), 21, backbone_info=bb.describe())
    other = DetectionModule(build_ssdlite(build_backbone("RelativeNAS", C=8, layers=5), 5, input_size=64), 5,
                            backbone_info=bb.describe())
    ckpt = {"state_dict": other.state_dict(), "hyper_parameters": dict(other.hparams)}
    with pytest.raises(ConfigError, match="trained for 5 classes but the data set has 21"):
        check_checkpoint_fits(ckpt, module, tmp_path / "x.ckpt", "init_weights")
    ckpt = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}
    check_checkpoint_fits(ckpt, module, tmp_path / "x.ckpt", "init_weights")  # same classes: fine
