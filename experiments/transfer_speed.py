"""Training speed of the transfer recipes, and the time each recipe takes on this device.

    python experiments/transfer_speed.py --device cuda                     # the three paper recipes
    python experiments/transfer_speed.py --device cuda --backbone mobilenet_v2 --tasks detection
    python experiments/transfer_speed.py --device cpu --tiny               # a smoke run (minutes)

For each task the script composes the paper's experiment (``configs/transfer.yaml`` with
``+experiment=voc_ssdlite | cityscapes_bisenet | coco_simplebaseline`` and the backbone, as
``python -m relnas.transfer`` would), builds the task's LightningModule with
``relnas.transfer.__main__.build_task`` and fits it with a Lightning Trainer of the composed
trainer settings on random batches of the recipe's shape (batch size and input size of the
config: 32 x 320x320 images with boxes; 16 x 1024x1024 crops with label masks; 128 x 256x192
crops with 17 heatmaps). The timed steps come after ``--warmup`` untimed ones. The recipe time is
the timed seconds per iteration times the recipe's iterations:

* detection: ``task.epochs`` (200) x ceil(16,551 VOC07+12 trainval images / batch);
* segmentation: ``trainer.max_steps`` (80,000);
* keypoints: ``task.epochs`` (140) x ceil(149,813 COCO train2017 person instances / batch).

Data loading, augmentation and the periodic validation are not in the figure (they overlap with
training in DataLoader workers on a machine with enough cores), so it is a lower bound of the wall
time of ``python -m relnas.transfer`` on one device. Results go to
``experiments/results/transfer_speed.md`` (``--results``).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import platform
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Sequence

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from relnas.utils.compose import compose_config  # noqa: E402
from relnas.utils.io import append_markdown  # noqa: E402

EXPERIMENTS = {"detection": "voc_ssdlite", "segmentation": "cityscapes_bisenet", "keypoints": "coco_simplebaseline"}
#: training-set sizes the recipes' epochs count (VOC2007+2012 trainval images; COCO train2017
#: person instances with keypoints, as SimpleBaseline trains on them)
TRAIN_IMAGES = {"detection": 16551, "keypoints": 149813}
#: settings of ``--tiny``: a small backbone and inputs, for a CPU smoke run
TINY = {
    "common": ["backbone.C=8", "backbone.layers=5"],
    "detection": ["task.model.input_size=96", "task.data.batch_size=2"],
    "segmentation": ["task.data.crop_size=[64,64]", "task.model.input_size=[64,64]", "task.data.batch_size=2"],
    "keypoints": ["task.model.input_size=[128,96]", "task.model.deconv_channels=32", "task.data.batch_size=2"],
}


def _pair(v: Any) -> List[int]:
    return [int(v), int(v)] if isinstance(v, (int, float)) else [int(x) for x in v]


class RandomBatches(torch.utils.data.IterableDataset):
    """The same random batch of a task's training format, ``n`` times (made once, on the CPU)."""

    def __init__(self, task: str, batch: int, size: Sequence[int], num_classes: int, n: int, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        h, w = size
        images = torch.rand(batch, 3, h, w, generator=g)
        if task == "detection":
            targets = []
            for _ in range(batch):  # 3 boxes of 20-60 % of the side, classes 1..num_classes-1
                k = 3
                xy = torch.rand(k, 2, generator=g) * 0.4
                wh = 0.2 + torch.rand(k, 2, generator=g) * 0.4
                boxes = torch.cat([xy, xy + wh], 1) * torch.tensor([w, h, w, h])
                targets.append({"boxes": boxes, "labels": torch.randint(1, num_classes, (k,), generator=g)})
            self.batch = (list(images), targets)
        elif task == "segmentation":
            masks = torch.randint(0, num_classes, (batch, h, w), generator=g)
            masks[:, : h // 8] = 255  # some ignored pixels, as Cityscapes has
            self.batch = (images, masks)
        elif task == "keypoints":
            heatmaps = torch.rand(batch, num_classes, h // 4, w // 4, generator=g)
            self.batch = (images, {"heatmaps": heatmaps, "weights": torch.ones(batch, num_classes, 1)})
        else:
            raise ValueError(f"unknown task {task!r}; known: {', '.join(EXPERIMENTS)}")
        self.n = n

    def __iter__(self):
        for _ in range(self.n):
            yield self.batch


class StepTimer:
    """Lightning callback: wall time of the training steps after ``warmup`` (device synchronised)."""

    def __new__(cls, *args, **kwargs):  # a Callback subclass made lazily (Lightning imported late)
        import lightning as L

        class _Timer(L.Callback):
            def __init__(self, warmup: int, device: torch.device):
                self.warmup, self.device, self.times, self._t = warmup, device, [], None

            def _sync(self):
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)

            def on_train_batch_start(self, trainer, module, batch, batch_idx):
                if batch_idx >= self.warmup:
                    self._sync()
                    self._t = time.perf_counter()

            def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
                if self._t is not None:
                    self._sync()
                    self.times.append(time.perf_counter() - self._t)
                    self._t = None

        return _Timer(*args, **kwargs)


def recipe_iterations(task: str, cfg) -> int:
    batch = int(cfg.task.data.batch_size)
    if task == "segmentation":
        return int(cfg.trainer.max_steps)
    return int(cfg.task.epochs) * math.ceil(TRAIN_IMAGES[task] / batch)


def time_task(task: str, args) -> Dict[str, Any]:
    import lightning as L

    from relnas.transfer.__main__ import build_task

    overrides = [f"+experiment={EXPERIMENTS[task]}", f"backbone={args.backbone}", "logger=none"]
    if args.tiny:
        overrides += TINY["common"] * (args.backbone not in ("mobilenet_v2", "shufflenet_v2_x1_0", "mnasnet1_0"))
        overrides += TINY[task]
    overrides += list(args.override)
    cfg = compose_config("transfer", overrides)
    from relnas.transfer.__main__ import task_class

    cls = task_class(cfg.task)
    n = int(cls.paper_num_classes)
    module = build_task(cfg, n, class_names=None)
    batch = int(cfg.task.data.batch_size)
    size = _pair(cfg.task.data.crop_size) if task == "segmentation" else _pair(cfg.task.model.input_size)
    device = torch.device(args.device)
    timer = StepTimer(args.warmup, device)
    total = args.warmup + args.steps
    loader = torch.utils.data.DataLoader(RandomBatches(task, batch, size, n, total), batch_size=None)
    trainer = L.Trainer(accelerator="gpu" if device.type == "cuda" else "cpu", devices=1, max_steps=total,
                        max_epochs=1, precision=args.precision, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        num_sanity_val_steps=0, callbacks=[timer], benchmark=args.cudnn_benchmark)
    t0 = time.perf_counter()
    trainer.fit(module, train_dataloaders=loader)
    wall = time.perf_counter() - t0
    per = sum(timer.times) / max(1, len(timer.times))
    iters = recipe_iterations(task, cfg)
    out = {"task": task, "experiment": EXPERIMENTS[task], "backbone": args.backbone, "batch": batch,
           "input_size": size, "timed_steps": len(timer.times), "s_per_iter": per,
           "images_per_s": batch / per if per > 0 else None, "recipe_iterations": iters,
           "recipe_hours": per * iters / 3600, "fit_wall_s": wall}
    if device.type == "cuda":
        out["peak_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        torch.cuda.reset_peak_memory_stats(device)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    p.add_argument("--tasks", default="detection,segmentation,keypoints")
    p.add_argument("--backbone", default="RelativeNAS")
    p.add_argument("--steps", type=int, default=20, help="timed training steps per task")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    p.add_argument("--precision", default="32-true", help="Lightning precision (32-true, bf16-mixed, 16-mixed)")
    p.add_argument("--cudnn-benchmark", action="store_true", help="trainer benchmark=True (cuDNN autotuning)")
    p.add_argument("--tiny", action="store_true", help="small backbone and inputs: a smoke run on a CPU")
    p.add_argument("--override", action="append", default=[], help="one more Hydra override (repeatable)")
    p.add_argument("--results", default=str(ROOT / "experiments" / "results" / "transfer_speed.md"))
    p.add_argument("--json", default=None, help="also write the figures here")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is visible")
    tasks = [t for t in args.tasks.split(",") if t]
    unknown = [t for t in tasks if t not in EXPERIMENTS]
    if unknown:
        p.error(f"unknown task(s) {unknown}; known: {', '.join(EXPERIMENTS)}")
    rows = []
    for task in tasks:
        r = time_task(task, args)
        rows.append(r)
        print(f"{task:13s} {r['backbone']}: batch {r['batch']} at {r['input_size'][0]}x{r['input_size'][1]}: "
              f"{r['s_per_iter']:.3f} s/iter ({r['images_per_s']:.1f} img/s); recipe {r['recipe_iterations']} "
              f"iterations = {r['recipe_hours']:.1f} h", flush=True)
    dev = torch.cuda.get_device_name(0) if args.device == "cuda" else platform.processor() or platform.machine()
    lines = [f"\n## {_dt.datetime.now(_dt.timezone.utc):%Y-%m-%d %H:%M} UTC — {args.device} ({dev})\n",
             f"- torch {torch.__version__}; command: `python experiments/transfer_speed.py "
             f"{' '.join(argv if argv is not None else sys.argv[1:])}`",
             f"- precision {args.precision}, {args.steps} timed steps after {args.warmup}; random batches of the "
             f"recipe's shape; data loading and validation not included{' (TINY settings: not the recipe)' if args.tiny else ''}\n",
             "| task | backbone | batch x input | s/iteration | images/s | recipe iterations | recipe time (h) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['task']} | {r['backbone']} | {r['batch']} x {r['input_size'][0]}x{r['input_size'][1]} | "
                     f"{r['s_per_iter']:.3f} | {r['images_per_s']:.1f} | {r['recipe_iterations']} | "
                     f"{r['recipe_hours']:.1f} |")
    text = "\n".join(lines) + "\n"
    if args.results:
        path = append_markdown(Path(args.results), "Transfer recipe speed (`experiments/transfer_speed.py`)", text)
        print(f"appended to {path}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
