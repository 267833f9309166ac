"""Keypoint transfer (SimpleBaseline on COCO): geometry, heatmap encode/decode, flip, OKS against
pycocotools, the head's size, the data set on a fake COCO tree (keypoint json + images) and an
end-to-end run through ``python -m relnas.transfer +experiment=coco_simplebaseline``."""
from __future__ import annotations

import contextlib
import io
import json
import math
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from torch import nn

from relnas.errors import DatasetNotFoundError
from relnas.transfer.data.coco_keypoints import (FLIP_PAIRS, KEYPOINT_NAMES, SKELETON, CocoKeypoints,
                                                 CocoKeypointsDataModule, affine_matrix, apply_affine,
                                                 box_to_center_scale, encode_heatmaps, flip_joint_order, warp_image)
from relnas.transfer.metrics.keypoints import (crop_to_image, decode_heatmaps, evaluate_coco_keypoints, flip_back,
                                               oks, oks_nms)
from relnas.transfer.tasks.keypoints import SimpleBaseline, joints_mse_loss
from helpers.cli import cli_env

ROOT = Path(__file__).resolve().parents[2]
IMG_W, IMG_H = 160, 120

# A standing person in a 40x80 box (x, y relative to the box's top-left corner), COCO joint order.
_POSE = np.array([[20, 6], [22, 4], [18, 4], [25, 6], [15, 6], [29, 18], [11, 18], [33, 32], [7, 32],
                  [35, 44], [5, 44], [26, 46], [14, 46], [27, 62], [13, 62], [28, 78], [12, 78]], float)


def _person(x0: float, y0: float, hidden=()) -> dict:
    kp = np.concatenate([_POSE + [x0, y0], np.full((17, 1), 2.0)], 1)
    for j in hidden:
        kp[j] = 0
    return {"bbox": [x0, y0, 40.0, 80.0], "keypoints": kp}


def write_fake_coco(root: Path) -> Path:
    """COCO 2017 layout: annotations/person_keypoints_{train,val}2017.json and {train,val}2017/*.jpg,
    persons drawn as stick figures at their keypoints, one crowd annotation and one person without
    keypoints (both excluded, as in the reference loader)."""
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    category = {"id": 1, "name": "person", "supercategory": "person", "keypoints": list(KEYPOINT_NAMES),
                "skeleton": [[a + 1, b + 1] for a, b in SKELETON]}
    ann_id = 1
    layouts = {"train": [[(10, 20), (90, 25, (3, 4))], [(50, 30)]],
               "val": [[(15, 20, (15, 16)), (95, 30)], [(60, 25)]]}
    for split, images in layouts.items():
        (root / f"{split}2017").mkdir(exist_ok=True)
        imgs, anns = [], []
        for i, persons in enumerate(images):
            image_id = (1000 if split == "val" else 1) + i
            name = f"{image_id:012d}.jpg"
            canvas = Image.new("RGB", (IMG_W, IMG_H), (90, 110, 90))
            draw = ImageDraw.Draw(canvas)
            for spec in persons:
                p = _person(*spec[:2], hidden=spec[2] if len(spec) > 2 else ())
                k = p["keypoints"]
                for a, b in SKELETON:
                    draw.line([tuple(_POSE[a] + spec[:2]), tuple(_POSE[b] + spec[:2])], fill=(240, 200, 160), width=3)
                n_vis = int((k[:, 2] > 0).sum())
                anns.append({"id": ann_id, "image_id": image_id, "category_id": 1, "iscrowd": 0,
                             "bbox": p["bbox"], "area": 40.0 * 80.0 * 0.6, "num_keypoints": n_vis,
                             "keypoints": [float(v) for v in k.reshape(-1)], "segmentation": []})
                ann_id += 1
            canvas.save(root / f"{split}2017" / name, quality=95)
            imgs.append({"id": image_id, "file_name": name, "width": IMG_W, "height": IMG_H})
        # excluded: a crowd region and a person box without labelled keypoints
        anns.append({"id": ann_id, "image_id": imgs[0]["id"], "category_id": 1, "iscrowd": 1, "bbox": [0, 0, 30, 30],
                     "area": 900.0, "num_keypoints": 0, "keypoints": [0] * 51, "segmentation": {"counts": [], "size": [IMG_H, IMG_W]}})
        anns.append({"id": ann_id + 1, "image_id": imgs[-1]["id"], "category_id": 1, "iscrowd": 0,
                     "bbox": [120, 60, 20, 40], "area": 800.0, "num_keypoints": 0, "keypoints": [0] * 51,
                     "segmentation": []})
        ann_id += 2
        doc = {"info": {"description": "fake COCO person keypoints"}, "licenses": [], "images": imgs,
               "annotations": anns, "categories": [category]}
        (root / "annotations" / f"person_keypoints_{split}2017.json").write_text(json.dumps(doc))
    return root


# ---------------------------------------------------------------------- flips

def test_flip_pairs_swap_left_and_right():
    names = flip_joint_order(np.array(KEYPOINT_NAMES))
    expected = ["nose", "right_eye", "left_eye", "right_ear", "left_ear", "right_shoulder", "left_shoulder",
                "right_elbow", "left_elbow", "right_wrist", "left_wrist", "right_hip", "left_hip", "right_knee",
                "left_knee", "right_ankle", "left_ankle"]
    assert list(names) == expected
    t = flip_joint_order(torch.arange(17.0).view(1, 17), dim=1)
    assert t[0].tolist() == [0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15]


def test_flip_back_mirrors_swaps_and_shifts_one_pixel():
    hm = torch.zeros(1, 17, 8, 6)
    hm[0, 9, 3, 1] = 1.0  # left wrist at column 1 of the mirrored image
    out = flip_back(hm)
    # mirrored column: 6 - 1 - 1 = 4, then shifted right by one pixel -> 5; now a right-wrist map
    assert out[0, 10, 3, 5] == 1.0 and out.sum() == 1.0
    assert flip_back(hm, shift=False)[0, 10, 3, 4] == 1.0


# ---------------------------------------------------------------------- heatmaps

def test_decode_moves_a_quarter_pixel_towards_the_higher_neighbour():
    hm = torch.zeros(1, 2, 5, 5)
    hm[0, 0, 2, 2], hm[0, 0, 2, 3], hm[0, 0, 2, 1] = 1.0, 0.5, 0.2  # right neighbour higher
    hm[0, 0, 1, 2], hm[0, 0, 3, 2] = 0.3, 0.3                       # vertical tie: no shift
    hm[0, 1, 0, 4] = 0.8                                             # on the border: no shift
    coords, maxvals = decode_heatmaps(hm)
    assert coords[0, 0].tolist() == [2.25, 2.0] and coords[0, 1].tolist() == [4.0, 0.0]
    assert maxvals[0].tolist() == pytest.approx([1.0, 0.8])


def test_encode_decode_round_trip_within_a_quarter_pixel():
    rng = np.random.default_rng(0)
    joints = np.column_stack([rng.uniform(8, 184, 17), rng.uniform(8, 248, 17)])  # crop pixels of 192x256
    target, weight = encode_heatmaps(joints, np.ones(17), (48, 64), stride=4, sigma=2.0)
    assert target.shape == (17, 64, 48) and weight.tolist() == [1.0] * 17
    coords, maxvals = decode_heatmaps(torch.from_numpy(target)[None])
    err = np.abs(coords[0].numpy() - joints / 4)
    assert err.max() <= 0.25 + 1e-6
    assert np.all(maxvals.numpy() > 0.8)
    # Gaussian of sigma 2 (heatmap pixels): value at 2 pixels from the centre is exp(-1/2)
    g, _ = encode_heatmaps(np.array([[40.0, 40.0]]), np.ones(1), (48, 64), 4, 2.0)
    assert g[0, 10, 10] == pytest.approx(1.0) and g[0, 10, 12] == pytest.approx(math.exp(-0.5))
    assert g[0, 10, 17] == 0.0  # beyond 3 sigma


def test_unlabelled_and_outside_joints_get_zero_weight():
    joints = np.array([[20.0, 20.0], [20.0, 20.0], [-40.0, 10.0], [10.0, 400.0]])
    _, weight = encode_heatmaps(joints, np.array([1, 0, 1, 1]), (48, 64), 4, 2.0)
    assert weight.tolist() == [1.0, 0.0, 0.0, 0.0]


def test_joints_mse_loss_weights_joints():
    pred, target = torch.ones(2, 2, 3, 3), torch.zeros(2, 2, 3, 3)
    # 0.5 * mean((w (pred - target))^2) with w = (1, 0): half of the values count, each 1
    assert joints_mse_loss(pred, target, torch.tensor([[1.0, 0.0], [1.0, 0.0]])).item() == pytest.approx(0.25)
    assert joints_mse_loss(pred, target, torch.ones(2, 2)).item() == pytest.approx(0.5)


# ---------------------------------------------------------------------- geometry

def test_box_to_center_scale_keeps_the_3_to_4_aspect_and_pads():
    c, s = box_to_center_scale([10, 20, 40, 80])  # 40 < 0.75 * 80: widen to 60
    assert c.tolist() == [30.0, 60.0]
    assert s.tolist() == pytest.approx([60 / 200 * 1.25, 80 / 200 * 1.25])
    _, s = box_to_center_scale([0, 0, 90, 80])  # 90 > 60: heighten to 120
    assert s.tolist() == pytest.approx([90 / 200 * 1.25, 120 / 200 * 1.25])


def test_affine_maps_the_box_onto_the_crop_and_back():
    c, s = np.array([100.0, 80.0]), np.array([0.6, 0.8])  # a 120x160 box
    m = affine_matrix(c, s, 0.0, (48, 64))
    corners = apply_affine(np.array([[40.0, 0.0], [160.0, 160.0], [100.0, 80.0]]), m)
    assert corners == pytest.approx(np.array([[0.0, 0.0], [48.0, 64.0], [24.0, 32.0]]))
    m90 = affine_matrix(c, s, 90.0, (48, 64))
    # rotation by 90 degrees: a point 60 px right of the centre goes 24 px up in the crop
    assert apply_affine(np.array([[160.0, 80.0]]), m90) == pytest.approx(np.array([[24.0, 32.0 - 24.0]]))
    inv = affine_matrix(c, s, 30.0, (48, 64), inverse=True)
    pts = np.array([[3.0, 7.0], [40.0, 50.0]])
    assert apply_affine(apply_affine(pts, inv), affine_matrix(c, s, 30.0, (48, 64))) == pytest.approx(pts)
    mf = affine_matrix(c, s, 0.0, (48, 64), flip=True)
    assert apply_affine(np.array([[40.0, 0.0]]), mf) == pytest.approx(np.array([[47.0, 0.0]]))


@pytest.mark.parametrize("rotation,flip", [(0.0, False), (25.0, False), (-40.0, True)])
def test_warped_image_and_transformed_joints_agree(rotation, flip):
    img = np.zeros((120, 160, 3), np.uint8)
    img[61, 97] = 255  # one bright pixel at x=97, y=61
    c, s = np.array([92.0, 60.0]), np.array([0.12, 0.16])  # a 24x32 box, enlarged 2x into the crop
    m = affine_matrix(c, s, rotation, (48, 64), flip=flip)
    crop = np.asarray(warp_image(Image.fromarray(img), m, (48, 64)))[..., 0].astype(float)
    y, x = np.unravel_index(crop.argmax(), crop.shape)
    # the bright pixel's intensity centroid lands where the point transform puts it
    ys, xs = np.mgrid[0:64, 0:48]
    centroid = np.array([(xs * crop).sum(), (ys * crop).sum()]) / crop.sum()
    expected = apply_affine(np.array([[97.0, 61.0]]), m)[0]
    assert np.abs(centroid - expected).max() < 0.3, (centroid, expected)


def test_heatmap_to_image_round_trip_through_the_crop():
    c, s, rot = np.array([120.0, 90.0]), np.array([0.9, 1.2]), 15.0
    pts = np.array([[110.0, 70.0], [150.0, 120.0], [95.5, 100.25]])
    m = affine_matrix(c, s, rot, (192, 256))
    crop_pts = apply_affine(pts, m)
    target, _ = encode_heatmaps(crop_pts, np.ones(3), (48, 64), 4, 2.0)
    coords, _ = decode_heatmaps(torch.from_numpy(target)[None])
    back = crop_to_image(coords[0].double().numpy(), c, s, rot, (48, 64))
    # a quarter heatmap pixel is 1 crop pixel = scale * 200 / 192 image pixels
    assert np.abs(back - pts).max() <= 0.25 * 4 * (0.9 * 200 / 192) * math.sqrt(2) + 1e-6


# ---------------------------------------------------------------------- OKS

def _coco_from(doc: dict):
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        c = COCO()
        c.dataset = doc
        c.createIndex()
    return c


def test_oks_on_a_hand_made_case_matches_pycocotools():
    from pycocotools.cocoeval import COCOeval

    gt = np.zeros((17, 3))
    gt[0] = [50, 40, 2]   # nose
    gt[5] = [40, 60, 2]   # left shoulder
    gt[11] = [45, 100, 1]  # left hip (labelled, occluded)
    dt = gt.copy()
    dt[0, :2] += [3, 4]   # 5 px off
    dt[5, :2] += [0, -6]  # 6 px off
    dt[11, :2] += [8, 0]  # 8 px off
    dt[3, :2] = [5, 5]    # an unlabelled joint does not count
    area = 2500.0
    # by hand: e = d^2 / (2 * area * (2 sigma)^2), sigmas 0.026 (nose), 0.079 (shoulder), 0.107 (hip)
    e = [25 / (2 * area * 0.052 ** 2), 36 / (2 * area * 0.158 ** 2), 64 / (2 * area * 0.214 ** 2)]
    by_hand = sum(math.exp(-v) for v in e) / 3
    assert oks(gt, dt, area) == pytest.approx(by_hand, rel=1e-9)

    doc = {"images": [{"id": 1, "width": 200, "height": 200}], "categories": [{"id": 1, "name": "person"}],
           "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": area,
                            "bbox": [30, 30, 40, 80], "num_keypoints": 3, "keypoints": gt.reshape(-1).tolist()}]}
    coco = _coco_from(doc)
    det = np.concatenate([dt[:, :2], np.ones((17, 1))], 1)
    with contextlib.redirect_stdout(io.StringIO()):
        res = coco.loadRes([{"image_id": 1, "category_id": 1, "keypoints": det.reshape(-1).tolist(), "score": 0.9}])
        ev = COCOeval(coco, res, iouType="keypoints")
        ev.params.imgIds = [1]
        ev.evaluate()
    assert float(ev.ious[(1, 1)][0, 0]) == pytest.approx(by_hand, rel=1e-9)


def test_oks_nms_suppresses_duplicates():
    a = np.concatenate([_POSE, np.ones((17, 1))], 1)
    b = a.copy()
    b[:, :2] += 0.5           # near duplicate
    c = a.copy()
    c[:, :2] += 60            # another person
    keep = oks_nms(np.stack([a, b, c]), np.array([0.8, 0.9, 0.5]), np.full(3, 3200.0), thresh=0.9)
    assert keep == [1, 2]


# ---------------------------------------------------------------------- the data set

def test_dataset_crops_gt_persons_and_flips_with_swapped_joints(tmp_path):
    root = write_fake_coco(tmp_path / "coco")
    ds = CocoKeypoints(root, "val", input_size=(128, 96))
    assert len(ds) == 3  # crowd and keypoint-less boxes left out
    assert ds.records[0]["image_id"] == 1000 and ds.records[0]["score"] == 1.0
    x, meta = ds[0]
    target, weight = meta["heatmaps"], meta["weights"]
    assert x.shape == (3, 128, 96) and target.shape == (17, 32, 24) and weight.shape == (17,)
    assert weight[15] == 0 and weight[16] == 0 and weight[:15].min() == 1  # hidden ankles
    # the crop-space joints are the image joints through the box's affine map; the box is the
    # reference loader's cleaned box [x, y, w - 1, h - 1]
    c, s = box_to_center_scale([15, 20, 39, 79], 96 / 128)
    expected = apply_affine(_POSE[:15] + [15, 20], affine_matrix(c, s, 0.0, (96, 128)))
    assert meta["joints"][:15, :2].numpy() == pytest.approx(expected)

    flipped = CocoKeypoints(root, "val", train=True, input_size=(128, 96), scale_factor=0.0, rotation_factor=0.0,
                            flip_p=1.0)
    xf, mf = flipped[0]
    wf = mf["weights"]
    assert bool(mf["flip"])
    # the crop is mirrored (up to one 8-bit grey level of rounding: 1 / 255 / 0.225 after normalisation)
    assert torch.allclose(xf, torch.flip(x, dims=[-1]), atol=0.02)
    j, jf = meta["joints"].numpy(), mf["joints"].numpy()
    for left, right in FLIP_PAIRS:
        assert jf[left, 0] == pytest.approx(95 - j[right, 0]) and jf[left, 1] == pytest.approx(j[right, 1])
        assert wf[left] == weight[right]


def test_detections_file_gives_the_person_boxes(tmp_path):
    root = write_fake_coco(tmp_path / "coco")
    dets = [{"image_id": 1000, "category_id": 1, "bbox": [14, 19, 42, 82], "score": 0.93},
            {"image_id": 1000, "category_id": 3, "bbox": [0, 0, 10, 10], "score": 0.99},  # not a person
            {"image_id": 1001, "category_id": 1, "bbox": [59, 24, 41, 81], "score": 0.05}]
    path = tmp_path / "dets.json"
    path.write_text(json.dumps(dets))
    ds = CocoKeypoints(root, "val", input_size=(128, 96), detections=str(path))
    assert [(r["image_id"], r["score"]) for r in ds.records] == [(1000, 0.93), (1001, 0.05)]
    assert len(CocoKeypoints(root, "val", input_size=(128, 96), detections=str(path), min_score=0.1)) == 1


def test_evaluate_perfect_and_shifted_predictions(tmp_path):
    root = write_fake_coco(tmp_path / "coco")
    ann = root / "annotations" / "person_keypoints_val2017.json"
    doc = json.loads(ann.read_text())
    persons = [a for a in doc["annotations"] if a["num_keypoints"] > 0]
    perfect = []
    for a in persons:
        k = np.array(a["keypoints"], float).reshape(17, 3)
        k[:, 2] = 1.0
        perfect.append({"image_id": a["image_id"], "category_id": 1, "keypoints": k.reshape(-1).tolist(), "score": 1.0})
    stats = evaluate_coco_keypoints(ann, perfect)
    assert stats["AP"] == pytest.approx(1.0) and stats["AP50"] == pytest.approx(1.0)
    assert stats["APl"] is None  # no large persons in the fake split (area < 96^2): pycocotools says -1
    # missing one of the three persons: recall 2/3
    assert evaluate_coco_keypoints(ann, perfect[:2])["AR"] == pytest.approx(2 / 3)


def test_missing_coco_fails_in_one_line_naming_the_layout(tmp_path):
    dm = CocoKeypointsDataModule(root=str(tmp_path / "nowhere"), num_workers=0)
    with pytest.raises(DatasetNotFoundError) as e:
        dm.setup("fit")
    msg = str(e.value)
    assert "\n" not in msg and "person_keypoints_train2017.json" in msg and "train2017" in msg
    root = write_fake_coco(tmp_path / "coco")
    dm = CocoKeypointsDataModule(root=str(root), num_workers=0, detections=str(tmp_path / "dets.json"))
    with pytest.raises(DatasetNotFoundError, match="detections file .*dets.json not found"):
        dm.setup("fit")


# ---------------------------------------------------------------------- SimpleBaseline

def test_simplebaseline_head_shapes_and_size():
    class Fake(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Conv2d(3, 320, 1)

        def forward(self, x):
            return OrderedDict(stride32=self.proj(nn.functional.avg_pool2d(x, 32)))

    net = SimpleBaseline(Fake(), 320, 17)
    assert net(torch.randn(1, 3, 256, 192)).shape == (1, 17, 64, 48)
    head = sum(p.numel() for p in net.head.parameters())
    # three 4x4 deconvolutions (no bias) + BN, then a 1x1 conv with bias to 17 maps
    assert head == (320 * 256 * 16 + 512) + 2 * (256 * 256 * 16 + 512) + 256 * 17 + 17


# ---------------------------------------------------------------------- end to end



TINY = ["backbone=RelativeNAS", "backbone.C=8", "backbone.layers=5", "task.model.input_size=[128,96]",
        "task.model.deconv_channels=32", "task.data.batch_size=2", "task.data.eval_batch_size=4",
        "task.data.num_workers=0", "task.data.pin_memory=false", "trainer.accelerator=cpu",
        "task.epochs=1", "trainer.log_every_n_steps=1", "trainer.check_val_every_n_epoch=1", "logger=csv"]


@pytest.mark.slow
def test_coco_simplebaseline_end_to_end(tmp_path):
    write_fake_coco(tmp_path / "data" / "coco")
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "relnas.transfer", "+experiment=coco_simplebaseline", f"hydra.run.dir={run_dir}",
           f"paths.data_dir={tmp_path / 'data'}", *TINY]
    r = subprocess.run(cmd, cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((run_dir / "result.json").read_text())
    assert res["task"] == "keypoints" and res["num_classes"] == 17 and res["input_size"] == [128, 96]
    m = res["metrics"]
    assert 0.0 <= m["AP"] <= 1.0 and m["person_boxes"] == "ground-truth boxes" and m["flip_test"] is True
    poses = json.loads((run_dir / "keypoint_results.json").read_text())  # COCO results format
    assert all(len(p["keypoints"]) == 51 and p["category_id"] == 1 for p in poses)
    png = Image.open(run_dir / "predictions.png")
    # 3 validation persons x (prediction, ground truth), panels 96x128, padding 4
    assert png.size == (2 * 96 + 3 * 4, 2 * 128 + 3 * 4 + 128 + 4)


class _Oracle(nn.Module):
    """Returns the heatmaps it is given for the next batch (the ground-truth targets)."""

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))
        self.next: torch.Tensor | None = None

    def forward(self, x):
        return self.next + 0 * self.dummy


def test_oracle_heatmaps_decode_to_the_ground_truth_through_the_whole_evaluation(tmp_path):
    """Perfect heatmaps -> decode -> back to the image -> rescoring, OKS-NMS -> pycocotools: every
    person found (AP50 = AP75 = 1); the pictures show the prediction on the ground truth."""
    from torch.utils.data import DataLoader

    from relnas.transfer.tasks.keypoints import KeypointModule

    root = write_fake_coco(tmp_path / "coco")
    ds = CocoKeypoints(root, "val", input_size=(128, 96))
    oracle = _Oracle()
    module = KeypointModule(oracle, 17, KEYPOINT_NAMES, flip_test=False)
    module._val_dataset = lambda: ds
    module.eval()
    images, meta = next(iter(DataLoader(ds, batch_size=len(ds))))
    oracle.next = meta["heatmaps"]
    with torch.no_grad():
        module._eval_step((images, meta), "val")
    stats = module._evaluate()
    assert stats["AP50"] == pytest.approx(1.0) and stats["AP75"] == pytest.approx(1.0) and stats["AP"] > 0.8
    # the same with one person's heatmaps blanked: it is missed (recall 2/3)
    hm = meta["heatmaps"].clone()
    hm[1] = 0
    oracle.next = hm
    with torch.no_grad():
        module._eval_step((images, meta), "val")
    assert module._evaluate()["AR50"] == pytest.approx(2 / 3)
    # picture: prediction and ground-truth panels put their joints at the same places
    oracle.next = meta["heatmaps"][:2]
    grid = module.draw_predictions((images[:2], {k: v[:2] for k, v in meta.items()}), max_images=2)
    assert grid.shape == (3, 2 * 128 + 3 * 4, 2 * 96 + 3 * 4)
    pred_panel = grid[:, 4:4 + 128, 4:4 + 96].int()
    gt_panel = grid[:, 4:4 + 128, 8 + 96:8 + 192].int()
    drawn_pred = (pred_panel[0] == 255) & (pred_panel[1] == 64)   # prediction colour (255, 64, 0)
    drawn_gt = (gt_panel[0] == 0) & (gt_panel[1] == 200)          # ground-truth colour (0, 200, 255)
    near_pred = nn.functional.max_pool2d(drawn_pred[None, None].float(), 3, 1, 1)[0, 0] > 0  # within 1 px
    overlap = (near_pred & drawn_gt).sum() / drawn_gt.sum()
    assert drawn_gt.sum() > 100 and overlap > 0.9


def test_detections_protocol_counts_persons_in_images_without_detections(tmp_path):
    """With a detections file the OKS evaluation still covers every image of the split (a person
    in an image with no detected box is a miss), and result.json says the boxes were detections."""
    from torch.utils.data import DataLoader

    from relnas.transfer.tasks.keypoints import KeypointModule

    root = write_fake_coco(tmp_path / "coco")
    gt = CocoKeypoints(root, "val", input_size=(128, 96))
    # detections: exactly the ground-truth boxes of image 1000 (2 persons); image 1001 (1 person): none
    ann = json.loads((root / "annotations" / "person_keypoints_val2017.json").read_text())
    dets = [{"image_id": a["image_id"], "category_id": 1, "bbox": a["bbox"], "score": 1.0}
            for a in ann["annotations"] if a["image_id"] == 1000 and a["num_keypoints"] > 0]
    path = tmp_path / "dets.json"
    path.write_text(json.dumps(dets))
    ds = CocoKeypoints(root, "val", input_size=(128, 96), detections=str(path))
    assert len(ds) == 2 and ds.eval_image_ids == [1000, 1001]
    oracle = _Oracle()
    module = KeypointModule(oracle, 17, KEYPOINT_NAMES, flip_test=False)
    module._val_dataset = lambda: ds
    module.eval()
    images, meta = next(iter(DataLoader(ds, batch_size=len(ds))))
    _, gt_meta = next(iter(DataLoader(gt, batch_size=2)))  # the same two crops, with their heatmaps
    oracle.next = gt_meta["heatmaps"]
    with torch.no_grad():
        module._eval_step((images, meta), "test")
    stats = module._evaluate()
    assert stats["AP50"] < 1.0 and stats["AR50"] == pytest.approx(2 / 3)  # the third person is missed
    assert module.person_boxes() == f"detections: {path}"
    module._val_dataset = lambda: gt
    assert module.person_boxes() == "ground-truth boxes"
