"""Speed benchmark of the search: seconds per candidate of the real search path, and of the
authors' per-candidate loop on the same workload.

    python experiments/bench_search.py --device cpu --quick          # a few minutes on a 2-core CPU
    python experiments/bench_search.py --device cuda --candidates 4 --variants relnas,relnas-pair,naive
    python experiments/bench_search.py --device cuda                 # 25K + 25K images per candidate

What is timed (``relnas*`` variants): the search itself, ``relnas.search.run.run_search`` on a
configuration composed with Hydra from ``configs/search.yaml`` (``compose`` + overrides: synthetic
CIFAR-shaped data, the workload below, the variant's overrides), i.e. exactly what
``python -m relnas.search`` runs. Seconds per candidate = the search's own generation times
(``generations.csv``, from the first candidate's start to the last merge of the generation)
summed over whole generations and divided by the candidates: every CUDA-graph warm-up step and
capture, Lightning's per-candidate hooks, snapshots and merges are inside. Before the timed search
each variant runs an untimed one of ``--warmup-pairs`` pairs (process-level set-up: CUDA context,
cuDNN/cuBLAS handles, autotuning of the shapes it meets).

Workload (identical for every variant): the initial population of a RelativeNAS search with
``--seed`` (its first generation's pairs), CIFAR-shaped synthetic images (3x32x32, 10 classes;
default 25K search-train + 25K search-valid per candidate as the paper's split), C=16, L=8, batch
256, eval batch 1024 (relnas) / 256 (naive), crop pad 4 + flip + Cutout 16, SGD(0.9, 3e-4),
clip 5, drop path ``--drop-path`` (default 0.15 unramped, the mean of the paper's ramp 0 -> 0.3).

Variants (``--variants``, comma list):

* ``relnas``: the defaults (on a CUDA device: CUDA graphs on, fp32, channels_last);
  ``relnas-eager`` (``search.cuda_graphs=false``); ``relnas-pair`` (``search.executor=concurrent_pair``:
  both members of a pair at once, two CUDA streams); ``relnas-bf16`` / ``relnas-pair-bf16``
  (``trainer.precision=bf16-mixed``, i.e. bf16 inside the graphs); ``relnas-bench`` /
  ``relnas-pair-bench`` (``trainer.benchmark=true``: cuDNN autotuning); ablations of the CPU
  speed-ups: ``relnas-nchw`` (``search.channels_last=false``), ``relnas-nophase`` (plain dilated
  convolutions), ``relnas-sync`` (a host sync every step), ``relnas-valgrad`` (validation with
  autograd on at batch 256).
* ``naive``: the authors' per-candidate loop (:class:`NaiveRunner`), run first, in the same
  process, on the same images and candidates.

Reported: seconds per candidate and images/s ((train + val) x candidates / time), peak memory,
relnas / naive, and on CUDA the projection to the paper's search (1000 candidates x 25K+25K) and
the ratio to the authors' code measured on an H200 (``OFFICIAL_H200_S_PER_CANDIDATE``). Results are
appended to ``experiments/results/bench.md`` (``--results``).
"""
from __future__ import annotations

import argparse
import csv
import datetime as _dt
import gc
import json
import os
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from relnas.nas import operations  # noqa: E402
from relnas.search import encoding  # noqa: E402
from relnas.search.weight_set import WeightSet, restore, snapshot  # noqa: E402
from relnas.utils.io import append_markdown  # noqa: E402

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
PAPER_CANDIDATES, PAPER_TRAIN, PAPER_VAL = 1000, 25_000, 25_000
# the authors' official search code on an H200, 25K + 25K images per candidate, C=16, L=8, batch 256
# (2 candidates after a warm-up pair; experiments/results/speed.md)
OFFICIAL_H200_S_PER_CANDIDATE = 13.9
TARGET_S_PER_CANDIDATE = 1.8  # the paper's 1000 candidates in 30 minutes


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ====================================================================== memory
class MemWatch:
    """Peak resident memory (CPU, sampled) or peak allocated (CUDA) over a ``with`` block."""

    def __init__(self, device: torch.device):
        self.device, self.peak = device, 0

    @staticmethod
    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self._stop = threading.Event()
            self.peak = self.rss()

            def loop():
                while not self._stop.wait(0.02):
                    self.peak = max(self.peak, self.rss())

            self._t = threading.Thread(target=loop, daemon=True)
            self._t.start()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            self.peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self._stop.set()
            self._t.join()
            self.peak = max(self.peak, self.rss())


# ====================================================================== relnas (the real search path)
VARIANTS: Dict[str, List[str]] = {
    "relnas": [],
    "relnas-eager": ["search.cuda_graphs=false"],
    "relnas-pair": ["search.executor=concurrent_pair"],
    "relnas-bf16": ["trainer.precision=bf16-mixed"],
    "relnas-pair-bf16": ["search.executor=concurrent_pair", "trainer.precision=bf16-mixed"],
    "relnas-bench": ["trainer.benchmark=true"],
    "relnas-pair-bench": ["search.executor=concurrent_pair", "trainer.benchmark=true"],
    "relnas-nchw": ["search.channels_last=false"],
    "relnas-nophase": [],   # operations.PHASE_DILATED_CONV off around the run
    "relnas-sync": [],      # SearchModule with a host sync every step
    "relnas-valgrad": ["+trainer.inference_mode=false"],  # + validation with autograd on at batch 256
}


def compose_search(args, overrides: Sequence[str], population: int, run_dir: Path):
    """configs/search.yaml composed with Hydra, shrunk/set to the benchmark's workload."""
    from relnas.utils.compose import compose_config

    n = args.num_train + args.num_val
    base = [
        "data=synthetic", f"data.num_train={n}", "data.num_test=16", f"search.train_portion={args.num_train / n}",
        f"data.batch_size={args.batch_size}", f"data.eval_batch_size={args.eval_batch_size}",
        f"supernet.C={args.C}", f"supernet.layers={args.layers}", f"search.population_size={population}",
        f"search.generations={args.generations}", f"search.drop_path_prob={args.drop_path}",
        "search.drop_path_ramp=false", f"search.lr={args.lr}", f"seed={args.seed}",
        f"trainer.accelerator={'gpu' if args.device == 'cuda' else 'cpu'}", "logger=none",
        "search.plots=false", "search.progress=false",
    ]
    cfg = compose_config("search", base + list(overrides), output_dir=run_dir)
    return cfg


def first_generation_jobs(population: int, seed: int) -> List[List[np.ndarray]]:
    """The pairs a RelativeNAS search with ``seed`` estimates first (what run_search asks)."""
    from relnas.search.strategies import create_strategy

    strategy = create_strategy("relativenas", population_size=population, generations=1)
    rng = np.random.default_rng(seed)
    strategy.init(rng)
    return [list(job.vectors) for job in strategy.ask(rng, 0)]


class SearchRunner:
    """A relnas variant: ``run_search`` on the composed configuration."""

    def __init__(self, name: str, args, device: torch.device):
        if name not in VARIANTS:
            raise SystemExit(f"unknown variant {name!r}; known: naive, {', '.join(VARIANTS)}")
        self.name, self.args, self.device = name, args, device
        self.overrides = list(VARIANTS[name]) + list(args.override)
        if name == "relnas-valgrad":
            self.overrides.append(f"data.eval_batch_size={args.batch_size}")
        self.val_losses: List[float] = []
        self.graph_stats = {"eager": 0, "captures": 0, "replays": 0}
        self.capture_seconds = 0.0
        self.generation_seconds: List[float] = []
        self.fit_seconds = 0.0
        self.candidates = 0

    def run(self, population: int, timed: bool = True) -> float:
        """One search of ``args.generations`` generations; returns the seconds of its generations."""
        import relnas.search.run as run_mod
        from relnas.search.search_module import SearchModule

        cls = {"relnas-sync": SyncEveryStep, "relnas-valgrad": ValidateWithAutograd}.get(self.name, SearchModule)
        modules = []

        build = run_mod._build

        def build_module(node, what, **kw):
            """run_search builds the module from cfg.module: here as the variant's class."""
            if what != "module":
                return build(node, what, **kw)
            from omegaconf import OmegaConf

            kwargs = {k: v for k, v in OmegaConf.to_container(node, resolve=True).items() if k != "_target_"}
            modules.append(cls(**kwargs, **kw))
            return modules[-1]

        with tempfile.TemporaryDirectory(prefix="bench_search_") as tmp:
            run_dir = Path(tmp)
            cfg = compose_search(self.args, self.overrides, population, run_dir)
            # Lightning sets cudnn.benchmark for the process when trainer.benchmark is not null: restored after
            saved = run_mod._build, operations.PHASE_DILATED_CONV, torch.backends.cudnn.benchmark
            run_mod._build = build_module
            if self.name == "relnas-nophase":
                operations.PHASE_DILATED_CONV = False
            try:
                result = run_mod.run_search(cfg, run_dir)
            finally:
                run_mod._build, operations.PHASE_DILATED_CONV, torch.backends.cudnn.benchmark = saved
            with open(run_dir / "generations.csv") as f:
                gens = [float(r["time_s"]) for r in csv.DictReader(f)]
            with open(run_dir / "history.csv") as f:
                losses = [float(r["val_loss"]) for r in csv.DictReader(f)]
        if timed:
            m = modules[0]
            pair = getattr(m, "_pair_trainer", None)
            for k, v in m.graph_stats.items():
                self.graph_stats[k] += v
            self.capture_seconds += m.capture_seconds + (pair.capture_seconds if pair is not None else 0.0)
            self.generation_seconds += gens
            self.fit_seconds += float(result.get("time_s", 0.0))
            self.val_losses += losses
            self.candidates += len(losses)
        return sum(gens)


def _ablation_classes():
    from relnas.search.search_module import SearchModule

    class SyncEveryStep(SearchModule):
        """Ablation: read the loss on the host after every training step (as ``.item()`` does)."""

        def training_step(self, batch, batch_idx):
            super().training_step(batch, batch_idx)
            self.member.sums[0].item()

    class ValidateWithAutograd(SearchModule):
        """Ablation: validation with autograd on (the runner also sets batch 256, no inference_mode)."""

        def validation_step(self, batch, batch_idx):
            with torch.enable_grad():
                super().validation_step(batch, batch_idx)

    return SyncEveryStep, ValidateWithAutograd


SyncEveryStep, ValidateWithAutograd = _ablation_classes()


# ====================================================================== naive (DARTS-codebase style)
class Cutout:
    """DARTS ``utils.Cutout``."""

    def __init__(self, length: int):
        self.length = length

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        h, w = img.size(1), img.size(2)
        mask = np.ones((h, w), np.float32)
        y, x = np.random.randint(h), np.random.randint(w)
        y1, y2 = np.clip(y - self.length // 2, 0, h), np.clip(y + self.length // 2, 0, h)
        x1, x2 = np.clip(x - self.length // 2, 0, w), np.clip(x + self.length // 2, 0, w)
        mask[y1:y2, x1:x2] = 0.0
        img *= torch.from_numpy(mask).expand_as(img)
        return img


class ImageArrayDataset(torch.utils.data.Dataset):
    """torchvision-style dataset over HWC uint8 images (as ``torchvision.datasets.CIFAR10``)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        from PIL import Image

        img = Image.fromarray(self.images[i])
        return self.transform(img), int(self.labels[i])


def darts_train_transform(mean=CIFAR_MEAN, std=CIFAR_STD):
    import torchvision.transforms as T

    return T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                      T.Normalize(mean, std), Cutout(16)])


def _accuracy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (logits.argmax(1) == target).float().mean() * 100.0


class NaiveRunner:
    """The authors' per-candidate loop: for each candidate the full search network (every operation
    on every edge) is built and loaded from the weight set's state dict (``strict=True``); SGD over all its
    parameters; batches from a torchvision-style dataset with PIL transforms in 2 DataLoader
    workers (pinned memory); ``.item()`` on loss and accuracy every step; validation on the
    search-validation split with the training transform, in eval mode with autograd on; the Eq. 6
    merge by walking the state dicts; ``cudnn.benchmark=True``; plain dilated convolutions; drop path
    as the official code writes it (``operations.drop_path_reference``)."""

    def __init__(self, name: str, weights0: Dict[str, torch.Tensor], dm, args, device: torch.device):
        self.name, self.args, self.device = name, args, device
        self.weights = {k: v.clone().to(device) for k, v in weights0.items()}
        x_tr, y_tr = dm.train_data
        x_va, y_va = dm.val_data
        images = torch.cat([x_tr, x_va]).cpu().permute(0, 2, 3, 1).contiguous().numpy()
        labels = torch.cat([y_tr, y_va]).cpu().numpy()
        data = ImageArrayDataset(images, labels, darts_train_transform())  # valid uses train transform
        n_tr = len(x_tr)
        pin = device.type == "cuda"
        self.train_queue = torch.utils.data.DataLoader(
            data, batch_size=args.batch_size, sampler=torch.utils.data.SubsetRandomSampler(list(range(n_tr))),
            pin_memory=pin, num_workers=args.naive_workers)
        self.valid_queue = torch.utils.data.DataLoader(
            data, batch_size=args.batch_size, sampler=torch.utils.data.SubsetRandomSampler(list(range(n_tr, len(data)))),
            pin_memory=pin, num_workers=args.naive_workers)
        self.val_losses: List[float] = []

    def _estimate(self, vector: np.ndarray):
        a = self.args
        model = WeightSet(C=a.C, num_classes=10, layers=a.layers).to(self.device)  # every operation allocated
        model.load_state_dict(self.weights, strict=True)
        arch = model.compile(encoding.decode(vector))
        optimizer = torch.optim.SGD(model.parameters(), a.lr, momentum=0.9, weight_decay=3e-4)
        model.train()
        objs = top1 = n_seen = 0.0
        for inp, target in self.train_queue:
            inp, target = inp.to(self.device), target.to(self.device, non_blocking=True)
            optimizer.zero_grad()
            logits = model(inp, arch, a.drop_path)
            loss = F.cross_entropy(logits, target)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            optimizer.step()
            n = inp.size(0)
            objs += loss.item() * n
            top1 += _accuracy(logits, target).item() * n
            n_seen += n
        model.eval()
        vobjs = vtop1 = vn = 0.0
        for inp, target in self.valid_queue:  # autograd on, as the DARTS-derived search code
            inp, target = inp.to(self.device), target.to(self.device, non_blocking=True)
            logits = model(inp, arch)
            loss = F.cross_entropy(logits, target)
            n = inp.size(0)
            vobjs += loss.item() * n
            vtop1 += _accuracy(logits, target).item() * n
            vn += n
        used = set(model.keys_of(arch.groups))
        return model, used, vobjs / vn

    def run(self, vectors: Sequence[np.ndarray]) -> float:
        import relnas.search.weight_set as ws_mod

        phase, bench, drop = operations.PHASE_DILATED_CONV, torch.backends.cudnn.benchmark, ws_mod.drop_path
        operations.PHASE_DILATED_CONV = False  # the DARTS codebase runs the plain dilated kernels
        ws_mod.drop_path = operations.drop_path_reference  # and its drop path as written (divide, then multiply)
        torch.backends.cudnn.benchmark = True   # as the authors' search script sets it
        try:
            return self._run(vectors)
        finally:
            operations.PHASE_DILATED_CONV, torch.backends.cudnn.benchmark, ws_mod.drop_path = phase, bench, drop

    def _run(self, vectors: Sequence[np.ndarray]) -> float:
        sync(self.device)
        t0 = time.perf_counter()
        for p in range(len(vectors) // 2):
            ma, ua, la = self._estimate(vectors[2 * p])
            mb, ub, lb = self._estimate(vectors[2 * p + 1])
            (fm, fu), (sm, su) = ((ma, ua), (mb, ub)) if la <= lb else ((mb, ub), (ma, ua))
            fsd, ssd = fm.state_dict(), sm.state_dict()
            merged = {}
            for k, v in self.weights.items():  # Eq. 6 with python dict loops
                if k in fu:
                    merged[k] = fsd[k].clone()
                elif k in su:
                    merged[k] = ssd[k].clone()
                else:
                    merged[k] = v
            self.weights = merged
            self.val_losses += [la, lb]
            del ma, mb, fm, sm, fsd, ssd
        sync(self.device)
        return time.perf_counter() - t0


# ====================================================================== data pipelines alone
_VIEW_OPS = {"aten::empty", "aten::empty_strided", "aten::view", "aten::as_strided", "aten::resize_", "aten::detach",
             "aten::alias", "aten::unsqueeze", "aten::expand", "aten::permute", "aten::select", "aten::slice", "aten::t",
             "aten::transpose", "aten::reshape", "aten::_reshape_alias", "aten::squeeze", "aten::lift_fresh",
             "aten::result_type"}


def ops_per_step(weights0, args, device: torch.device, vectors: Sequence[np.ndarray], batch: int = 32) -> List[int]:
    """Leaf ATen operations (views and allocations left out) of one eager training step (forward,
    backward, clipping, SGD) per candidate: roughly the kernels a GPU launches one by one."""
    from torch.profiler import ProfilerActivity, profile

    ws = WeightSet(C=args.C, num_classes=10, layers=args.layers)
    ws.load_state_dict(weights0)
    ws, dev = ws.to(device, memory_format=torch.channels_last), device
    x = torch.randn(batch, 3, 32, 32, device=dev).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,), device=dev)
    counts = []
    for v in vectors:
        arch = ws.compile(encoding.decode(v))
        params = ws.parameters_of(arch)
        before = snapshot(ws.tensors(), ws.keys_of(arch.groups))
        opt = torch.optim.SGD(params, lr=args.lr, momentum=0.9, weight_decay=3e-4)

        def step():
            F.cross_entropy(ws(x, arch, args.drop_path), y).backward()
            torch.nn.utils.clip_grad_norm_(params, 5.0, foreach=True)
            opt.step()
            opt.zero_grad(set_to_none=True)

        ws.train()
        step()  # the first SGD step creates the momentum buffers
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            step()
        events = prof.events()
        parents = {e.cpu_parent.id for e in events if e.cpu_parent is not None}
        counts.append(sum(1 for e in events if e.name.startswith("aten::") and e.id not in parents
                          and e.name not in _VIEW_OPS))
        restore(ws.tensors(), before)
    return counts


def data_pipeline_rates(dm, naive: NaiveRunner, device: torch.device, n_batches: int) -> Dict[str, float]:
    """Images/s of the augmentation pipelines alone (no network)."""
    out = {}
    x = dm.train_data[0].to(device)
    b = dm.batch_size
    sync(device)
    t0 = time.perf_counter()
    for i in range(n_batches):
        j = (i * b) % max(1, len(x) - b)
        dm.preprocess(x[j: j + b], train=True)
    sync(device)
    out["batched on-device"] = n_batches * b / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    seen = 0
    for i, (inp, _) in enumerate(naive.train_queue):
        inp.to(device)
        seen += inp.size(0)
        if i + 1 >= n_batches:
            break
    sync(device)
    out[f"PIL per image, DataLoader({naive.args.naive_workers} workers)"] = seen / (time.perf_counter() - t0)
    return out


# ====================================================================== main
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--quick", action="store_true", help="384 + 384 images, 2 candidates per variant")
    p.add_argument("--candidates", type=int, default=None,
                   help="candidates per generation = the timed search's population (even; default 8, quick 2)")
    p.add_argument("--generations", type=int, default=1, help="generations of the timed search (default 1)")
    p.add_argument("--num-train", type=int, default=None, help="search-train images (default 25000, quick 384)")
    p.add_argument("--num-val", type=int, default=None, help="search-valid images (default 25000, quick 384)")
    p.add_argument("--variants", default=None,
                   help=f"comma list of naive, {', '.join(VARIANTS)} (default cpu: relnas,naive; cuda: "
                        "relnas,relnas-eager,relnas-pair,naive)")
    p.add_argument("--naive-candidates", type=int, default=None,
                   help="candidates the naive loop estimates (even; default: --candidates)")
    p.add_argument("--warmup-pairs", type=int, default=None, help="pairs of the untimed search run first per relnas "
                                                                  "variant (cpu 0, cuda 1)")
    p.add_argument("--ops-candidates", type=int, default=None, help="candidates whose ATen operations per eager step "
                                                                    "are counted (0: skip; quick 0, else 2)")
    p.add_argument("--override", action="append", default=[], help="a Hydra override added to every relnas variant")
    p.add_argument("--C", type=int, default=16)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--eval-batch-size", type=int, default=1024)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--drop-path", type=float, default=0.15)
    p.add_argument("--naive-workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--results", default=str(ROOT / "experiments" / "results" / "bench.md"))
    p.add_argument("--json", default=None, help="also write the figures as JSON here")
    p.add_argument("--note", default="", help="free text recorded with the results")
    a = p.parse_args(argv)
    a.candidates = a.candidates or (2 if a.quick else 8)
    a.naive_candidates = a.naive_candidates if a.naive_candidates is not None else a.candidates
    a.ops_candidates = a.ops_candidates if a.ops_candidates is not None else (0 if a.quick else 2)
    a.num_train = a.num_train or (384 if a.quick else PAPER_TRAIN)
    a.num_val = a.num_val or (384 if a.quick else PAPER_VAL)
    if a.candidates % 2 or a.candidates < 2 or a.naive_candidates % 2 or a.naive_candidates > a.candidates:
        p.error("--candidates must be even and >= 2; --naive-candidates even and at most --candidates")
    if a.variants is None:
        a.variants = "relnas,naive" if a.device == "cpu" else "relnas,relnas-eager,relnas-pair,naive"
    a.variants = [v.strip() for v in a.variants.split(",") if v.strip()]
    for v in a.variants:
        if v != "naive" and v not in VARIANTS:
            p.error(f"unknown variant {v!r}; known: naive, {', '.join(VARIANTS)}")
    if a.warmup_pairs is None:
        a.warmup_pairs = 0 if a.device == "cpu" else 1
    return a


def fmt_bytes(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def make_datamodule(args):
    """The images every variant sees: the composed search config's synthetic data module."""
    import hydra

    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose_search(args, [], args.candidates, Path(tmp))
    dm = hydra.utils.instantiate(cfg.data, train_portion=float(cfg.search.train_portion))
    dm.setup()
    assert len(dm.train_data[0]) == args.num_train and len(dm.val_data[0]) == args.num_val
    return dm


def main(argv=None) -> int:
    import faulthandler
    import logging
    import signal
    import warnings

    faulthandler.register(signal.SIGUSR1)  # kill -USR1 <pid> prints every thread's stack
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but torch.cuda.is_available() is False")
    for lg in ("lightning", "lightning.pytorch", "lightning.fabric", "relnas"):
        logging.getLogger(lg).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*GPU available but not used.*")
    command = "python " + " ".join([os.path.relpath(__file__, ROOT)] + (argv if argv is not None else sys.argv[1:]))
    print(f"# {command}", flush=True)
    t_start = time.time()
    per_cand_imgs = args.num_train + args.num_val
    print(f"workload: generations of {args.candidates} candidates x {args.generations} x ({args.num_train} train + "
          f"{args.num_val} val) images, C={args.C} L={args.layers} batch {args.batch_size}, device {device}, "
          f"variants {args.variants}", flush=True)

    times: Dict[str, float] = {}
    counts: Dict[str, int] = {}

    def write_json() -> None:  # after every variant: a run cut short by a timeout keeps what it measured
        if args.json:
            per = {n: times[n] / counts[n] for n in times}
            scale = (PAPER_TRAIN + PAPER_VAL) / per_cand_imgs
            Path(args.json).write_text(json.dumps({
                "command": command, "device": device.type, "s_per_candidate": per,
                "paper_s_per_candidate": {n: v * scale for n, v in per.items()}, "candidates": dict(counts),
                "official_h200_s_per_candidate": OFFICIAL_H200_S_PER_CANDIDATE}, indent=2) + "\n")

    peaks: Dict[str, int] = {}
    val_losses: Dict[str, List[float]] = {}
    extra_lines: List[str] = []
    data_rates: Dict[str, float] = {}
    jobs = first_generation_jobs(args.candidates, args.seed)
    dm = None
    if "naive" in args.variants or args.ops_candidates:
        dm = make_datamodule(args)
    torch.manual_seed(args.seed)
    weights0 = {k: v.clone() for k, v in WeightSet(C=args.C, num_classes=10, layers=args.layers).state_dict().items()}
    if "naive" in args.variants:  # first: a lean process, as the authors' script runs alone
        nv = NaiveRunner("naive", weights0, dm, args, device)
        vectors = [v for job in jobs for v in job][: args.naive_candidates]
        gc.collect()
        with MemWatch(device) as mw:
            dt = nv.run(vectors)
        times["naive"], counts["naive"], peaks["naive"], val_losses["naive"] = dt, len(vectors), mw.peak, nv.val_losses
        print(f"  naive: {len(vectors)} candidates {dt:8.1f}s ({dt / len(vectors):.2f} s/candidate)", flush=True)
        write_json()
        data_rates = data_pipeline_rates(dm, nv, device, n_batches=min(8, max(1, args.num_train // args.batch_size)))
        del nv
    runners = [SearchRunner(v, args, device) for v in args.variants if v != "naive"]
    for r in runners:
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        if args.warmup_pairs:
            dt = r.run(2 * args.warmup_pairs, timed=False)
            print(f"  warm-up {r.name}: {2 * args.warmup_pairs} candidates {dt:.1f}s", flush=True)
        with MemWatch(device) as mw:
            dt = r.run(args.candidates)
        times[r.name], counts[r.name], peaks[r.name], val_losses[r.name] = dt, r.candidates, mw.peak, r.val_losses
        print(f"  {r.name:18s} {r.candidates} candidates {dt:8.1f}s ({dt / r.candidates:.2f} s/candidate; generations "
              f"{', '.join(f'{g:.1f}' for g in r.generation_seconds)} s; fit {r.fit_seconds:.1f} s)", flush=True)
        write_json()
        if r.graph_stats["captures"] or r.graph_stats["replays"]:
            extra_lines.append(f"- {r.name}: CUDA graphs over the timed search: {r.graph_stats['captures']} captures "
                               f"({r.capture_seconds:.1f} s of host time in them), {r.graph_stats['replays']} replays, "
                               f"{r.graph_stats['eager']} eager steps")

    per = {n: times[n] / counts[n] for n in times}
    rates = {n: per_cand_imgs / per[n] for n in per}
    lines = ["| variant | s/candidate | img/s | peak mem | mean val loss |", "|---|---|---|---|---|"]
    for n in times:
        vl = [v for v in val_losses[n] if np.isfinite(v)]
        lines.append(f"| {n} | {per[n]:.2f} | {rates[n]:.1f} | {fmt_bytes(peaks[n])} | "
                     f"{np.mean(vl) if vl else float('nan'):.4f} |")
    summary = []
    if "naive" in per:
        summary += [f"- {n} / naive: **{per['naive'] / per[n]:.2f}x** (seconds per candidate)" for n in per if n != "naive"]
    if "relnas" in per:
        summary += [f"- {n} / relnas: {per['relnas'] / per[n]:.2f}x" for n in per if n.startswith("relnas-")]
    proj = []
    scale = (PAPER_TRAIN + PAPER_VAL) / per_cand_imgs
    for n in (per if device.type == "cuda" else ()):  # a CPU is far from the paper's search
        paper = per[n] * scale
        line = (f"- {n}: {paper:.2f} s per paper-size candidate -> the paper's search ({PAPER_CANDIDATES} candidates) "
                f"**{paper * PAPER_CANDIDATES / 60:.1f} min** (target {TARGET_S_PER_CANDIDATE} s = 30 min)")
        line += f"; the authors' code on an H200 ({OFFICIAL_H200_S_PER_CANDIDATE} s) / {n}: " \
                f"**{OFFICIAL_H200_S_PER_CANDIDATE / paper:.2f}x**"
        proj.append(line)
    if args.ops_candidates and dm is not None:
        n_ops = ops_per_step(weights0, args, device, [v for job in jobs for v in job][: args.ops_candidates])
        extra_lines.append(f"- ATen operations (views and allocations left out) per eager training step: "
                           f"{', '.join(map(str, n_ops))} (on a GPU one kernel launch each, unless replayed as a graph)")
    if data_rates:
        extra_lines.append("- augmentation pipelines alone: " + "; ".join(f"{k} {v:.0f} img/s" for k, v in data_rates.items()))

    try:
        from relnas.utils.run_info import hardware_info

        hw = hardware_info()
    except Exception:  # pragma: no cover
        hw = {"cpu": "?", "cpu_cores": os.cpu_count(), "gpus": []}
    if device.type == "cuda":
        machine = f"{torch.cuda.get_device_name(device)} (host: {hw.get('cpu')}, {hw.get('cpu_cores')} cores)"
    else:
        machine = f"{hw.get('cpu')}, {hw.get('cpu_cores')} cores ({hw.get('cpu_cores_available', '?')} available), " \
                  f"torch threads {torch.get_num_threads()}"
    try:
        load = "load average %.2f %.2f %.2f" % os.getloadavg()
    except OSError:
        load = ""
    md = [f"## {_dt.datetime.now().strftime('%Y-%m-%d %H:%M')} — {device.type}{' quick' if args.quick else ''}", "",
          f"- machine: {machine}; {load} at the end", f"- torch {torch.__version__}"
          + (f", CUDA {torch.version.cuda}" if device.type == "cuda" else "")
          + (f", lightning {hw['lightning']}" if "lightning" in hw else ""),
          f"- command: `{command}`",
          f"- workload: the first generation of a search with seed {args.seed}: {args.candidates} candidates x "
          f"{args.generations} generation(s) (naive: {args.naive_candidates} of them) x ({args.num_train} train + "
          f"{args.num_val} val) synthetic 3x32x32 images, C={args.C}, L={args.layers}, batch {args.batch_size} "
          f"(relnas eval batch {args.eval_batch_size}), drop path {args.drop_path}; relnas timed over whole "
          f"generations of `run_search` (composed from configs/search.yaml) after an untimed search of "
          f"{args.warmup_pairs} pair(s)",
          f"- process peak RSS: {fmt_bytes(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)}; "
          f"wall {time.time() - t_start:.0f}s"]
    if args.note:
        md.append(f"- note: {args.note}")
    md += ["", *lines, "", *summary, *extra_lines, *proj, ""]
    text = "\n".join(md)
    print("\n" + text, flush=True)
    path = append_markdown(Path(args.results), "Search speed benchmark (`experiments/bench_search.py`)", text + "\n")
    print(f"appended to {path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
