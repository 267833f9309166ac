"""Human keypoints with SimpleBaseline (Xiao et al., ECCV 2018) on a relnas backbone: the COCO
transfer study.

The head on the backbone's stride-32 map: three 4x4 stride-2 transposed convolutions of 256
channels (padding 1, no bias), each followed by BatchNorm and ReLU, and a 1x1 convolution (with
bias) to one heatmap per joint at stride 4 (64x48 for a 256x192 input). The loss is the
per-joint weighted mean squared error ``0.5 * mean((w * (pred - target))^2)``; joints are decoded
by argmax with the quarter-pixel shift, with the flip test (mirrored input, heatmaps mirrored
back with left/right joints swapped and averaged) at evaluation.
"""
from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
from torch import nn

from relnas.transfer.tasks.base import TASKS, TransferModule, denormalize, prediction_grid

__all__ = ["SimpleBaselineHead", "SimpleBaseline", "joints_mse_loss", "KeypointModule"]


class SimpleBaselineHead(nn.Module):
    def __init__(self, in_channels: int, num_joints: int = 17, deconv_channels: int = 256, num_deconv: int = 3,
                 kernel_size: int = 4) -> None:
        super().__init__()
        if kernel_size not in (2, 3, 4):
            raise ValueError(f"deconvolution kernel must be 2, 3 or 4, got {kernel_size}")
        padding, output_padding = {4: (1, 0), 3: (1, 1), 2: (0, 0)}[kernel_size]
        layers: List[nn.Module] = []
        c = int(in_channels)
        for _ in range(num_deconv):
            layers += [nn.ConvTranspose2d(c, deconv_channels, kernel_size, 2, padding, output_padding, bias=False),
                       nn.BatchNorm2d(deconv_channels), nn.ReLU(inplace=True)]
            c = deconv_channels
        self.deconv = nn.Sequential(*layers)
        self.final = nn.Conv2d(c, num_joints, 1)
        for m in self.deconv.modules():
            if isinstance(m, nn.ConvTranspose2d):
                nn.init.normal_(m.weight, std=0.001)
        nn.init.normal_(self.final.weight, std=0.001)
        nn.init.zeros_(self.final.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.final(self.deconv(x))


class SimpleBaseline(nn.Module):
    """Backbone + :class:`SimpleBaselineHead` on the map ``tap_key`` (stride 32): heatmaps (N, K, H/4, W/4)."""

    def __init__(self, backbone: nn.Module, in_channels: int, num_joints: int = 17, tap_key: str = "stride32",
                 **head_cfg: Any) -> None:
        super().__init__()
        self.backbone = backbone
        self.tap_key = tap_key
        self.head = SimpleBaselineHead(in_channels, num_joints, **head_cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.backbone(x)
        f = feats[self.tap_key] if isinstance(feats, dict) else feats[-1]
        return self.head(f)


def joints_mse_loss(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``0.5 * mean over (N, K, H, W) of (w_k * (pred - target))^2`` with per-joint weights (N, K)."""
    w = weight.reshape(weight.shape[0], weight.shape[1], 1, 1).to(pred.dtype)
    return 0.5 * ((pred - target) * w).pow(2).mean()


def _gather_objects(module: "KeypointModule", obj: Any) -> List[Any]:
    """``obj`` of every process (one entry per rank) under DDP, ``[obj]`` otherwise."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        out: List[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(out, obj)
        return out
    return [obj]


@TASKS.register("keypoints")
class KeypointModule(TransferModule):
    """SimpleBaseline on COCO person keypoints. Validation and test decode every person crop,
    map the joints back to the image, rescore and OKS-NMS them, and evaluate OKS AP with
    pycocotools against the data module's annotation file (``val/AP``); the test also writes the
    poses in the COCO results format to ``keypoint_results.json`` in the run directory. Extra arguments:
    ``flip_test``, ``flip_shift`` (one-pixel shift of the mirrored heatmaps), ``nms_thresh``,
    ``vis_thresh`` (joint confidence counted in the person score)."""

    task_name = "keypoints"
    paper_input_size = (256, 192)
    paper_num_classes = 17
    paper_note = "COCO person keypoints: a 256x192 person crop, 17 heatmaps of 64x48"
    monitor = "val/AP"
    monitor_mode = "max"

    def __init__(self, model: nn.Module, num_classes: int = 17, class_names: Optional[Sequence[str]] = None,
                 flip_test: bool = True, flip_shift: bool = True, nms_thresh: float = 0.9, vis_thresh: float = 0.2,
                 **kwargs: Any) -> None:
        super().__init__(model, num_classes, class_names, flip_test=bool(flip_test), flip_shift=bool(flip_shift),
                         nms_thresh=float(nms_thresh), vis_thresh=float(vis_thresh), **kwargs)
        self.flip_test, self.flip_shift = bool(flip_test), bool(flip_shift)
        self.nms_thresh, self.vis_thresh = float(nms_thresh), float(vis_thresh)
        self._preds: List[Dict[str, np.ndarray]] = []

    @classmethod
    def build_model(cls, backbone: nn.Module, num_classes: int, **model_cfg: Any) -> nn.Module:
        from relnas.transfer.tasks.segmentation import _backbone_taps

        model_cfg.pop("input_size", None)  # the entry point's FLOP-count size, not a head setting
        (channels,), (key,) = _backbone_taps(backbone, (32,), "SimpleBaseline")
        return SimpleBaseline(backbone, channels, num_classes, tap_key=key, **model_cfg)

    # ------------------------------------------------------------------ steps
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        images, t = batch
        loss = joints_mse_loss(self.model(images), t["heatmaps"], t["weights"])
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=False, batch_size=images.shape[0])
        return loss

    def predict_heatmaps(self, images: torch.Tensor) -> torch.Tensor:
        """Heatmaps of ``images``, averaged with those of the mirrored images when ``flip_test``."""
        from relnas.transfer.metrics.keypoints import flip_back

        out = self.model(images)
        if self.flip_test:
            out = 0.5 * (out + flip_back(self.model(torch.flip(images, dims=[-1])), shift=self.flip_shift))
        return out

    def _eval_step(self, batch: Any, stage: str) -> None:
        from relnas.transfer.metrics.keypoints import crop_to_image, decode_heatmaps, person_area

        images, meta = batch
        heatmaps = self.predict_heatmaps(images)
        self.log(f"{stage}/loss", joints_mse_loss(heatmaps, meta["heatmaps"], meta["weights"]), on_epoch=True,
                 sync_dist=True, batch_size=images.shape[0])
        coords, maxvals = decode_heatmaps(heatmaps.float())
        coords, maxvals = coords.cpu().double().numpy(), maxvals.cpu().double().numpy()
        hm_size = (heatmaps.shape[-1], heatmaps.shape[-2])
        centers, scales = meta["center"].cpu().numpy(), meta["scale"].cpu().numpy()
        rotations = meta["rotation"].cpu().numpy()
        kpts = np.zeros((coords.shape[0], coords.shape[1], 3))
        for i in range(coords.shape[0]):
            kpts[i, :, :2] = crop_to_image(coords[i], centers[i], scales[i], float(rotations[i]), hm_size)
            kpts[i, :, 2] = maxvals[i]
        self._preds.append({"kpts": kpts, "image_id": meta["image_id"].cpu().numpy(),
                            "score": meta["score"].cpu().numpy(),
                            "area": np.array([person_area(s) for s in scales])})

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def on_validation_epoch_start(self) -> None:
        self._preds = []

    def on_test_epoch_start(self) -> None:
        self._preds = []

    def _evaluate(self, results_file: Optional[str] = None) -> Dict[str, Optional[float]]:
        from relnas.transfer.metrics.keypoints import COCO_STATS, coco_keypoint_results, evaluate_coco_keypoints

        parts = [p for rank in _gather_objects(self, self._preds) for p in rank]
        self._preds = []
        if not parts:
            return {k: 0.0 for k in COCO_STATS}
        cat = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        results = coco_keypoint_results(cat["kpts"], cat["image_id"], cat["score"], cat["area"],
                                        self.nms_thresh, self.vis_thresh)
        dataset = self._val_dataset()
        if dataset is None:
            raise RuntimeError("the keypoint evaluation needs the data module's validation set (its annotation file)")
        return evaluate_coco_keypoints(dataset.ann_file, results, image_ids=dataset.eval_image_ids,
                                       results_file=results_file)

    def _val_dataset(self):
        trainer = self._trainer
        dm = getattr(trainer, "datamodule", None) if trainer is not None else None
        return getattr(dm, "val_set", None)

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            self._preds = []
            return
        stats = self._evaluate()
        self.log("val/AP", float(stats["AP"] or 0.0), prog_bar=True)
        self.log("val/AR", float(stats["AR"] or 0.0))

    def on_test_epoch_end(self) -> None:
        out = None
        if self._trainer is not None and self.trainer.is_global_zero and self.trainer.default_root_dir:
            out = os.path.join(self.trainer.default_root_dir, "keypoint_results.json")  # COCO results format
        stats = self._evaluate(out)
        for k, v in stats.items():
            if v is not None:
                self.log(f"test/{k}", float(v))
        self.remember_metrics({**stats, "person_boxes": self.person_boxes(), "flip_test": self.flip_test})

    def person_boxes(self) -> str:
        """Which person boxes the evaluation crops: ``"ground-truth boxes"`` or ``"detections: <file>"``."""
        detections = getattr(self._val_dataset(), "detections", None)
        return f"detections: {detections}" if detections else "ground-truth boxes"

    # ------------------------------------------------------------------ picture
    @torch.no_grad()
    def draw_predictions(self, batch: Any, max_images: int = 4) -> torch.Tensor:
        """Per person crop: the predicted skeleton and the ground-truth skeleton (labelled joints
        only) drawn with the COCO skeleton; predicted joints whose heatmap maximum is not positive
        are left out. ``batch``: a validation batch ``(images, targets)``
        (stacked, or lists of samples)."""
        from torchvision.utils import draw_keypoints

        from relnas.transfer.data.coco_keypoints import IMAGENET_MEAN, IMAGENET_STD, SKELETON
        from relnas.transfer.metrics.keypoints import decode_heatmaps

        images, meta = batch
        if isinstance(images, (list, tuple)):  # a list of samples: stack them
            images = torch.stack(list(images))
        if isinstance(meta, (list, tuple)):
            meta = {k: torch.stack([m[k] for m in meta]) for k in meta[0]}
        images = images[:max_images]
        was = self.model.training
        self.model.eval()
        try:
            heatmaps = self.predict_heatmaps(images.to(self.device)).float().cpu()
        finally:
            self.model.train(was)
        coords, maxvals = decode_heatmaps(heatmaps)
        stride = images.shape[-1] / heatmaps.shape[-1]
        pred = coords * stride
        gt = meta["joints"][:max_images].float()
        raw = denormalize(images.cpu(), IMAGENET_MEAN, IMAGENET_STD)
        skeleton = list(SKELETON) if self.num_classes == 17 else None
        panels, titles = [], []
        for img, p, conf, g in zip(raw, pred, maxvals, gt):
            panels.append(draw_keypoints(img, p[None], connectivity=skeleton, colors=(255, 64, 0), radius=2, width=2,
                                         visibility=(conf > 0)[None]))
            panels.append(draw_keypoints(img, g[None, :, :2], connectivity=skeleton, colors=(0, 200, 255), radius=2,
                                         width=2, visibility=(g[None, :, 2] > 0)))
            titles += ["prediction", "ground truth"]
        return prediction_grid(panels, ncol=2, titles=titles)
