"""Segmentation transfer (BiSeNet on Cityscapes): label mapping, OHEM, mIoU, multi-scale inference,
the head's size, the data set on a fake Cityscapes tree in the official layout, and an end-to-end
run through ``python -m relnas.transfer +experiment=cityscapes_bisenet``."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from relnas.errors import DatasetNotFoundError
from relnas.transfer.data.cityscapes import (CITYSCAPES_CLASSES, CityscapesDataModule, CityscapesSegmentation,
                                             SegmentationEvalTransform, SegmentationTrainTransform, to_train_ids)
from relnas.transfer.metrics.segmentation import MeanIoU, predict_probabilities
from relnas.transfer.tasks.segmentation import BiSeNet, OhemCrossEntropy, ohem_cross_entropy
from helpers.cli import cli_env

ROOT = Path(__file__).resolve().parents[2]

# Cityscapes label ids (cityscapesScripts labels.py) of the classes painted in the fake frames.
ROAD, SIDEWALK, BUILDING, SKY, PERSON, CAR, UNLABELED, EGO, LICENSE_PLATE_FREE = 7, 8, 11, 23, 24, 26, 0, 1, 34
H, W = 64, 128


def _frame(seed: int):
    """A synthetic street frame: label ids (H, W) and a matching RGB picture."""
    rng = np.random.default_rng(seed)
    lab = np.full((H, W), BUILDING, np.uint8)
    lab[: H // 4] = SKY
    lab[H // 2:] = ROAD
    lab[H // 2:, : W // 5] = SIDEWALK
    x0 = int(rng.integers(10, 70))
    lab[36:52, x0:x0 + 30] = CAR
    lab[20:56, x0 + 40:x0 + 48] = PERSON
    lab[H - 6:] = EGO  # ego vehicle: ignored
    lab[:, :2] = UNLABELED
    colours = {BUILDING: (70, 70, 70), SKY: (70, 130, 180), ROAD: (128, 64, 128), SIDEWALK: (244, 35, 232),
               CAR: (0, 0, 142), PERSON: (220, 20, 60), EGO: (0, 0, 0), UNLABELED: (0, 0, 0)}
    rgb = np.zeros((H, W, 3), np.uint8)
    for k, c in colours.items():
        rgb[lab == k] = c
    rgb = np.clip(rgb.astype(int) + rng.integers(-20, 20, rgb.shape), 0, 255).astype(np.uint8)
    return lab, rgb


def write_fake_cityscapes(root: Path, cities=(("train", "aachen", 4), ("val", "frankfurt", 2))) -> Path:
    """A Cityscapes tree in the official layout: leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    with gtFine/<split>/<city>/..._gtFine_{labelIds,instanceIds,color}.png and _polygons.json."""
    seed = 0
    for split, city, n in cities:
        img_dir, gt_dir = root / "leftImg8bit" / split / city, root / "gtFine" / split / city
        img_dir.mkdir(parents=True, exist_ok=True)
        gt_dir.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            stem = f"{city}_{i:06d}_000019"
            lab, rgb = _frame(seed)
            seed += 1
            Image.fromarray(rgb).save(img_dir / f"{stem}_leftImg8bit.png")
            Image.fromarray(lab, mode="L").save(gt_dir / f"{stem}_gtFine_labelIds.png")
            inst = np.where(np.isin(lab, (CAR, PERSON)), lab.astype(np.uint16) * 1000, lab).astype(np.uint16)
            Image.fromarray(inst).save(gt_dir / f"{stem}_gtFine_instanceIds.png")  # 16-bit, as released
            Image.fromarray(rgb).save(gt_dir / f"{stem}_gtFine_color.png")
            (gt_dir / f"{stem}_gtFine_polygons.json").write_text(json.dumps({"imgHeight": H, "imgWidth": W, "objects": []}))
    return root


# ---------------------------------------------------------------------- label ids -> train ids

def test_label_ids_map_to_the_19_train_ids():
    # From the Cityscapes benchmark table (cityscapesScripts labels.py): id -> trainId.
    expected = {0: 255, 1: 255, 3: 255, 6: 255, 7: 0, 8: 1, 9: 255, 10: 255, 11: 2, 12: 3, 13: 4, 14: 255,
                16: 255, 17: 5, 18: 255, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12, 26: 13, 27: 14,
                28: 15, 29: 255, 30: 255, 31: 16, 32: 17, 33: 18, 34: 255, 200: 255, 255: 255}
    ids = torch.tensor(list(expected), dtype=torch.uint8)
    assert to_train_ids(ids).tolist() == list(expected.values())
    assert len(CITYSCAPES_CLASSES) == 19
    assert CITYSCAPES_CLASSES[0] == "road" and CITYSCAPES_CLASSES[13] == "car" and CITYSCAPES_CLASSES[18] == "bicycle"


def test_dataset_reads_the_official_tree(tmp_path):
    root = write_fake_cityscapes(tmp_path / "cityscapes")
    ds = CityscapesSegmentation(root, "val")
    assert len(ds) == 2
    assert Path(ds.images[0]).name == "frankfurt_000000_000019_leftImg8bit.png"
    image, mask = ds.load(0)
    lab, rgb = _frame(4)  # the first val frame was written with seed 4
    assert image.shape == (3, H, W) and image.dtype == torch.uint8
    assert torch.equal(image.permute(1, 2, 0), torch.from_numpy(rgb))
    # painted label ids -> train ids: sky 10, road 0, sidewalk 1, building 2, car 13, person 11, void 255
    assert mask[5, 50] == 10 and mask[40, W - 1] == 0 and mask[33, 10] == 1 and mask[20, 5] == 2
    assert mask[H - 1, 64] == 255 and mask[30, 0] == 255
    assert set(mask.unique().tolist()) == {0, 1, 2, 10, 11, 13, 255}
    assert torch.equal(mask, to_train_ids(torch.from_numpy(lab)))


def test_train_transform_crops_pads_with_ignore_and_keeps_labels_aligned():
    torch.manual_seed(0)
    import random
    random.seed(0)
    img = torch.zeros(3, 20, 30, dtype=torch.uint8)
    img[0] = 200  # red everywhere: labelled 1
    mask = torch.ones(20, 30, dtype=torch.long)
    t = SegmentationTrainTransform(crop_size=(64, 64), scale_range=(1.0, 1.0), flip_p=0.0, jitter=0.0)
    x, m = t(img, mask)
    assert x.shape == (3, 64, 64) and m.shape == (64, 64) and m.dtype == torch.long
    assert set(m.unique().tolist()) == {1, 255}  # padding is the ignore index
    assert int((m == 1).sum()) == 20 * 30
    # the padded image pixels are black before normalisation: red channel differs where labelled
    red = x[0]
    assert torch.all(red[m == 1] > red[m == 255].max())
    x2, _ = SegmentationEvalTransform(0.5)(img, mask)
    assert x2.shape == (3, 10, 15)


def test_missing_cityscapes_fails_in_one_line_naming_the_layout(tmp_path):
    dm = CityscapesDataModule(root=str(tmp_path / "nowhere"), num_workers=0)
    with pytest.raises(DatasetNotFoundError) as e:
        dm.setup("fit")
    msg = str(e.value)
    assert "\n" not in msg and "leftImg8bit/train" in msg and "gtFine_labelIds.png" in msg and "data.root" in msg


# ---------------------------------------------------------------------- OHEM cross-entropy

def _two_class_logits(p_true: list[float], target: list[int]) -> torch.Tensor:
    """(1, 2, 1, N) logits whose softmax gives probability p_true[i] to class target[i]."""
    z = []
    for p, t in zip(p_true, target):
        margin = math.log(p / (1 - p))
        z.append((margin, 0.0) if t == 0 else (0.0, margin))
    return torch.tensor(z, dtype=torch.float64).T.reshape(1, 2, 1, -1)


def test_ohem_keeps_the_pixels_below_the_probability_threshold():
    # 32 valid pixels: 5 hard (p=0.5, loss ln 2) and 27 easy (p=0.9, loss -ln 0.9); n_min = 32 // 16 = 2 < 5,
    # so the loss is the mean over the 5 hard pixels = ln 2. 8 ignored pixels have a huge loss and must not count.
    p = [0.5] * 5 + [0.9] * 27 + [1e-6] * 8
    t = [0] * 32 + [255] * 8
    logits = _two_class_logits(p, [0] * 40)
    target = torch.tensor(t).reshape(1, 1, -1)
    assert ohem_cross_entropy(logits, target).item() == pytest.approx(math.log(2), abs=1e-9)


def test_ohem_falls_back_to_the_hardest_sixteenth():
    # 64 valid pixels, only one below p=0.7 (p=0.5) and 63 with p=0.9: n_min = 4, so the loss is
    # the mean of the 4 largest losses: (ln 2 + 3 * -ln 0.9) / 4.
    p = [0.9] * 30 + [0.5] + [0.9] * 33
    logits = _two_class_logits(p, [1] * 64)
    target = torch.ones(1, 1, 64, dtype=torch.long)
    expected = (math.log(2) + 3 * -math.log(0.9)) / 4
    assert ohem_cross_entropy(logits, target).item() == pytest.approx(expected, abs=1e-9)
    # threshold 0.95 makes every pixel hard: plain mean of all 64 losses
    plain = (math.log(2) + 63 * -math.log(0.9)) / 64
    assert ohem_cross_entropy(logits, target, thresh=0.95).item() == pytest.approx(plain, abs=1e-9)


def test_ohem_sums_main_and_auxiliary_outputs():
    p = [0.5] * 4 + [0.9] * 12
    logits = _two_class_logits(p, [0] * 16)
    target = torch.zeros(1, 1, 16, dtype=torch.long)
    single = ohem_cross_entropy(logits, target)
    assert OhemCrossEntropy()((logits, logits, logits), target).item() == pytest.approx(3 * single.item())
    assert OhemCrossEntropy(aux_weight=0.4)((logits, logits, logits), target).item() == pytest.approx(1.8 * single.item())
    all_ignored = torch.full((1, 1, 16), 255)
    assert ohem_cross_entropy(logits, all_ignored).item() == 0.0


# ---------------------------------------------------------------------- mIoU

def test_miou_is_dataset_level_over_present_classes():
    m = MeanIoU(num_classes=4, ignore_index=255, class_names=["a", "b", "c", "d"])
    # image 1: target a a b b | pred a b b b   -> a: tp1 fp0 fn1; b: tp2 fp1 fn0
    m.update(torch.tensor([[0, 1, 1, 1]]), torch.tensor([[0, 0, 1, 1]]))
    # image 2: target c c a 255 | pred c a a d (the ignored pixel's prediction does not count)
    #          -> c: tp1 fn1; a: tp1 fp1; d never predicted on a valid pixel nor labelled
    m.update(torch.tensor([[2, 0, 0, 3]]), torch.tensor([[2, 2, 0, 255]]))
    r = m.compute()
    # totals: a tp2 fp1 fn1 -> 2/4; b tp2 fp1 fn0 -> 2/3; c tp1 fp0 fn1 -> 1/2; d absent -> None (not 0), left
    # out of the mean
    per = r["per_class_iou"]
    assert per["d"] is None and {k: per[k] for k in "abc"} == pytest.approx({"a": 0.5, "b": 2 / 3, "c": 0.5})
    assert r["miou"] == pytest.approx((0.5 + 2 / 3 + 0.5) / 3)
    # the mean of per-image mIoUs would differ: image 1 alone is (1/2 + 2/3) / 2
    m.reset()
    m.update(torch.tensor([[0, 1, 1, 1]]), torch.tensor([[0, 0, 1, 1]]))
    assert m.compute()["miou"] == pytest.approx((0.5 + 2 / 3) / 2)


def test_miou_accepts_logits():
    m = MeanIoU(num_classes=2)
    logits = torch.tensor([[[[2.0, -1.0]], [[0.0, 3.0]]]])  # argmax: class 0 then class 1
    m.update(logits, torch.tensor([[[0, 0]]]))
    assert m.compute()["per_class_iou"] == pytest.approx({"0": 0.5, "1": 0.0})


def test_multiscale_flip_averages_the_mirrored_prediction():
    class Ramp(nn.Module):  # logits independent of the input: class 0 grows to the right
        def forward(self, x):
            n, _, h, w = x.shape
            ramp = torch.linspace(0, 3, w).expand(n, 1, h, w)
            return torch.cat([ramp, torch.zeros_like(ramp)], 1)

    x = torch.zeros(1, 3, 4, 8)
    p = predict_probabilities(Ramp(), x, (4, 8), scales=(1.0,), flip=False)
    pf = predict_probabilities(Ramp(), x, (4, 8), scales=(1.0,), flip=True)
    ramp = torch.linspace(0, 3, 8)
    p0 = torch.sigmoid(ramp)  # softmax of (ramp, 0) for class 0
    assert torch.allclose(p[0, 0, 0], p0, atol=1e-6)
    assert torch.allclose(pf[0, 0, 0], (p0 + p0.flip(0)) / 2, atol=1e-6)
    # scales: each pass is resized back to the output size and the passes are averaged
    pm = predict_probabilities(Ramp(), x, (4, 8), scales=(1.0, 2.0), flip=False, size_divisor=1)
    assert torch.allclose(pm.sum(1), torch.ones(1, 4, 8), atol=1e-6)


# ---------------------------------------------------------------------- BiSeNet

class _FakeBackbone(nn.Module):
    """Stride-16 and stride-32 maps of the given widths (average pooling + 1x1 conv)."""

    def __init__(self, c16: int, c32: int):
        super().__init__()
        self.p16, self.p32 = nn.Conv2d(3, c16, 1), nn.Conv2d(3, c32, 1)

    def forward(self, x):
        return OrderedDict(stride16=self.p16(nn.functional.avg_pool2d(x, 16)),
                           stride32=self.p32(nn.functional.avg_pool2d(x, 32)))


def test_bisenet_outputs_and_head_size():
    bb = _FakeBackbone(96, 320)
    net = BiSeNet(bb, (96, 320), num_classes=19, tap_keys=("stride16", "stride32"))
    x = torch.randn(2, 3, 64, 96)
    net.train()
    main, aux16, aux32 = net(x)
    assert main.shape == aux16.shape == aux32.shape == (2, 19, 64, 96)
    net.eval()
    assert net(x).shape == (2, 19, 64, 96)

    def cbr(cin, cout, k):  # conv (no bias) + BN (weight, bias)
        return cin * cout * k * k + 2 * cout

    spatial = cbr(3, 64, 7) + cbr(64, 64, 3) * 2 + cbr(64, 128, 1)
    arm = lambda cin: cbr(cin, 128, 3) + 128 * 128 + 2 * 128  # 3x3 CBR, 1x1 conv, BN
    context = arm(96) + arm(320) + cbr(320, 128, 1) + 2 * cbr(128, 128, 3)
    ffm = cbr(256, 256, 1) + 256 * 64 + 64 * 256
    head = cbr(256, 256, 3) + 256 * 19  # the class conv has no bias (the authors' BiSeNetOutput)
    aux = 2 * (cbr(128, 64, 3) + 64 * 19)
    n_head = sum(p.numel() for n, p in net.named_parameters() if not n.startswith("backbone."))
    assert n_head == spatial + context + ffm + head + aux
    assert sum(p.numel() for p in net.aux_heads.parameters()) == aux


# ---------------------------------------------------------------------- end to end



TINY = ["backbone=RelativeNAS", "backbone.C=8", "backbone.layers=5", "task.data.crop_size=[64,64]",
        "task.data.batch_size=2", "task.data.num_workers=0", "task.data.pin_memory=false",
        "task.module.ms_scales=[1.0,1.5]", "task.scheduler.warmup_steps=1", "trainer.accelerator=cpu",
        "trainer.max_steps=2", "trainer.val_check_interval=2", "trainer.log_every_n_steps=1",
        "trainer.enable_model_summary=false", "logger=csv"]


def run_transfer(run_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "relnas.transfer", "+experiment=cityscapes_bisenet", f"hydra.run.dir={run_dir}",
           *overrides]
    return subprocess.run(cmd, cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_cityscapes_bisenet_end_to_end(tmp_path):
    write_fake_cityscapes(tmp_path / "data" / "cityscapes")
    run_dir = tmp_path / "run"
    r = run_transfer(run_dir, f"paths.data_dir={tmp_path / 'data'}", *TINY)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((run_dir / "result.json").read_text())
    assert res["task"] == "segmentation" and res["num_classes"] == 19
    assert res["max_steps"] == 2  # the run's length in iterations (TINY's trainer.max_steps)
    m = res["metrics"]
    assert 0.0 <= m["miou"] <= 1.0 and 0.0 <= m["miou_ms_flip"] <= 1.0 and m["ms_scales"] == [1.0, 1.5]
    assert list(res["per_class"]) == list(CITYSCAPES_CLASSES)
    assert set(res["per_class"]["road"]) == {"iou", "iou_ms_flip"}
    png = Image.open(run_dir / "predictions.png")
    # 2 validation frames x (prediction, ground truth), each panel 64x128, 4-pixel padding
    assert png.size == (2 * W + 3 * 4, 2 * H + 3 * 4)
    # the ground-truth panel of the first frame shows the Cityscapes sky colour blended over the image
    gt = np.asarray(png)[4:4 + H, 8 + W:8 + 2 * W]
    sky = gt[14, 64].astype(int)
    assert sky[2] > sky[0]  # bluish (70, 130, 180) overlay


@pytest.mark.slow
def test_cli_missing_cityscapes_is_one_line(tmp_path):
    r = run_transfer(tmp_path / "run", f"paths.data_dir={tmp_path / 'empty'}", *TINY)
    assert r.returncode != 0
    last = [l for l in r.stderr.strip().splitlines() if l.strip()][-1]
    assert "leftImg8bit/train" in last and "gtFine" in last, r.stderr[-2000:]
    assert "Traceback" not in r.stderr


@pytest.mark.slow
def test_cli_epoch_validation_with_an_iteration_interval_is_one_line(tmp_path):
    """cityscapes_bisenet validates every N iterations across epochs; asking for per-epoch
    validation while keeping an interval longer than an epoch stops in one line saying which pair
    of keys to set (Lightning's own message is a multi-line traceback)."""
    write_fake_cityscapes(tmp_path / "data" / "cityscapes")
    tiny = [o for o in TINY if not o.startswith("trainer.val_check_interval")]
    r = run_transfer(tmp_path / "run", f"paths.data_dir={tmp_path / 'data'}", *tiny,
                     "trainer.check_val_every_n_epoch=1", "trainer.val_check_interval=4000")
    assert r.returncode == 2, r.stderr[-2000:]
    last = [line for line in r.stderr.strip().splitlines() if line.strip()][-1]
    assert last.startswith("error: trainer.val_check_interval=4000 counts iterations across epochs only with "
                           "trainer.check_val_every_n_epoch=null"), last
    assert "Traceback" not in r.stderr


# ---------------------------------------------------------------------- the authors' variants

def test_ohem_min_kept_of_all_pixels_ranks_ignored_pixels_at_zero():
    # 48 pixels: 32 labelled (one hard, p=0.5; 31 easy, p=0.9) and 16 ignored
    p = [0.5] + [0.9] * 31 + [0.01] * 16
    logits = _two_class_logits(p, [0] * 48)
    target = torch.tensor([0] * 32 + [255] * 16).reshape(1, 1, -1)
    easy = -math.log(0.9)
    # valid: n_min = 32 // 16 = 2 -> the two largest labelled losses
    assert ohem_cross_entropy(logits, target).item() == pytest.approx((math.log(2) + easy) / 2, abs=1e-9)
    # all (the authors'): n_min = 48 // 16 = 3 -> the three largest of all 48, ignored ones at 0
    assert ohem_cross_entropy(logits, target, min_kept_of="all").item() == pytest.approx(
        (math.log(2) + 2 * easy) / 3, abs=1e-9)
    # few labelled pixels: 2 easy ones among 48 -> n_min 3 takes one ignored pixel's 0 into the mean
    target = torch.tensor([0] * 2 + [255] * 46).reshape(1, 1, -1)
    logits = _two_class_logits([0.9] * 2 + [0.01] * 46, [0] * 48)
    assert ohem_cross_entropy(logits, target, min_kept_of="all").item() == pytest.approx(2 * easy / 3, abs=1e-9)
    assert ohem_cross_entropy(logits, target).item() == pytest.approx(easy, abs=1e-9)
    with pytest.raises(ValueError, match="min_kept_of"):
        ohem_cross_entropy(logits, target, min_kept_of="some")


def test_authors_activation_and_upsampling():
    torch.manual_seed(0)
    relu = BiSeNet(_FakeBackbone(16, 32), (16, 32), num_classes=5, tap_keys=("stride16", "stride32"))
    leaky = BiSeNet(_FakeBackbone(16, 32), (16, 32), num_classes=5, tap_keys=("stride16", "stride32"),
                    activation="leaky_relu", align_corners=True)
    assert sum(p.numel() for p in relu.parameters()) == sum(p.numel() for p in leaky.parameters())
    acts = [m for m in leaky.modules() if isinstance(m, (nn.ReLU, nn.LeakyReLU))]
    # every Conv-BN-activation block leaks (slope 0.01); the fusion attention keeps its plain ReLU
    assert sum(isinstance(m, nn.LeakyReLU) and m.negative_slope == 0.01 for m in acts) == len(acts) - 1
    assert not any(isinstance(m, nn.LeakyReLU) for m in relu.modules())
    # align_corners=True: output pixel 9 of 64 samples source pixel 9 * 7 / 63 = 1 of the 8-pixel logits exactly
    x = torch.randn(1, 3, 64, 64)
    for net, exact in ((leaky, True), (relu, False)):
        net.eval()
        low = {}
        net.head.register_forward_hook(lambda m, i, o: low.setdefault("logits", o))
        with torch.no_grad():
            out = net(x)
        assert low["logits"].shape[-2:] == (8, 8)
        same = torch.allclose(out[0, :, 9, 9], low["logits"][0, :, 1, 1], atol=1e-6)
        assert same == exact
    with pytest.raises(ValueError, match="leaky_relu"):
        BiSeNet(_FakeBackbone(16, 32), (16, 32), activation="gelu")


def test_authors_variant_from_the_config():
    from relnas.transfer.__main__ import backbone_from_config
    from relnas.transfer.tasks.segmentation import SegmentationModule
    from relnas.utils.compose import compose_config

    cfg = compose_config("transfer", ["+experiment=cityscapes_bisenet", "backbone.C=8", "backbone.layers=5",
                                      "task.model.activation=leaky_relu", "task.model.align_corners=true",
                                      "task.module.ohem_min_kept_of=all"])
    model = SegmentationModule.build_model(backbone_from_config(cfg.backbone), 19, **cfg.task.model)
    module = SegmentationModule(model, 19, **cfg.task.module)
    assert model.align_corners is True and any(isinstance(m, nn.LeakyReLU) for m in model.head.modules())
    assert module.criterion.min_kept_of == "all"
    default = compose_config("transfer", ["+experiment=cityscapes_bisenet"])
    assert (default.task.model.activation, default.task.model.align_corners,
            default.task.module.ohem_min_kept_of) == ("relu", False, "valid")


def test_the_authors_parameter_groups():
    from relnas.transfer.tasks.segmentation import SegmentationModule

    net = BiSeNet(_FakeBackbone(16, 32), (16, 32), num_classes=3, tap_keys=("stride16", "stride32"))
    opt = lambda params: torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=5e-4)  # noqa: E731
    sched = {"name": "poly", "interval": "step", "power": 0.9, "warmup_steps": 0}
    module = SegmentationModule(net, 3, optimizer=opt, scheduler=sched, epochs=100, head_lr_mult=10,
                                norm_bias_decay=False)
    optimizer = module.configure_optimizers()["optimizer"]
    lr = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    wd = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    assert len(lr) == sum(1 for _ in net.parameters())  # every parameter once
    # the authors' BiSeNet: the fusion module and the three output heads at 10x; no decay on BN or biases
    assert lr[id(net.fusion.conv[0].weight)] == lr[id(net.head[1].weight)] == lr[id(net.aux_heads[1][0][0].weight)] == 0.1
    assert lr[id(net.context_path.arm16.conv[0].weight)] == lr[id(net.backbone.p16.weight)] == 0.01
    assert wd[id(net.spatial_path[0][0].weight)] == wd[id(net.head[1].weight)] == 5e-4
    assert wd[id(net.spatial_path[0][1].weight)] == wd[id(net.backbone.p16.bias)] == wd[id(net.fusion.conv[1].bias)] == 0.0
    # the schedule scales every group alike: the head keeps its 10x
    conf = module.configure_optimizers()
    conf["optimizer"].step()
    conf["lr_scheduler"]["scheduler"].step()
    lrs = sorted({round(g["lr"], 12) for g in conf["optimizer"].param_groups})
    assert len(lrs) == 2 and lrs[0] < 0.01 and lrs[1] == pytest.approx(10 * lrs[0])
    # the defaults: one lr and one weight decay
    plain = SegmentationModule(net, 3, optimizer=opt, scheduler=sched).configure_optimizers()["optimizer"]
    assert {(g["lr"], g["weight_decay"]) for g in plain.param_groups} == {(0.01, 5e-4)}
    with pytest.raises(ValueError, match="head_lr_mult"):
        SegmentationModule(net, 3, head_lr_mult=0)


@pytest.mark.slow
def test_epochs_0_evaluates_init_weights_without_training(tmp_path):
    """``task.epochs=0 init_weights=<transfer checkpoint>`` (docs/transfer.md) evaluates without
    training even though the recipe's length is trainer.max_steps (80K); result.json names the
    checkpoint as the backbone's weights, with no random-initialisation warning."""
    from hydra import compose, initialize_config_dir

    from relnas.transfer.__main__ import build_task

    write_fake_cityscapes(tmp_path / "data" / "cityscapes")
    tiny = [o for o in TINY if not o.startswith("trainer.max_steps")] + ["task.model.input_size=[64,64]",
                                                                         "task.module.ms_scales=[1.0]"]
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose(config_name="transfer", overrides=["+experiment=cityscapes_bisenet", *tiny])
    assert cfg.trainer.max_steps == 80000 and cfg.trainer.max_epochs == -1
    module = build_task(cfg, len(CITYSCAPES_CLASSES), list(CITYSCAPES_CLASSES))
    ckpt = tmp_path / "finetuned.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, ckpt)
    run_dir = tmp_path / "run"
    # trainer.max_steps=3 stands for the recipe's 80K (a training run would take 3 steps, not hours)
    r = run_transfer(run_dir, f"paths.data_dir={tmp_path / 'data'}", *tiny, "trainer.max_steps=3", "task.epochs=0",
                     f"init_weights={ckpt}", "predictions.num_images=1")
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((run_dir / "result.json").read_text())
    assert res["global_step"] == 0 and res["epochs_run"] == 0 and 0.0 <= res["metrics"]["miou"] <= 1.0
    assert res["weights"] == str(ckpt) and res["pretrained"] is True and "weights_warning" not in res
    assert res["backbone_info"]["weights_source"] == "init_weights"
    assert "RANDOM INIT" not in r.stdout
