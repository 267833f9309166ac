"""Speed benchmark of candidate estimation (inherit, train one epoch, validate, merge).

    python experiments/bench_search.py --device cpu --quick          # < 2 min on a 2-core CPU
    python experiments/bench_search.py --device cuda --candidates 4 --variants relnas-graphs,relnas,naive
    python experiments/bench_search.py --device cuda                 # full: 25K/25K per candidate

Workload (identical for every implementation): a seeded set of candidate genotypes (decoded from
seeded random vectors, taken in pairs), CIFAR-shaped synthetic images (3x32x32, 10 classes; full
mode 25K search-train + 25K search-valid per candidate as the paper's split), C=16, L=8, batch 256,
eval batch 1024 (relnas) / 256 (naive), crop pad 4 + flip + Cutout 16, SGD(0.9, 3e-4), clip 5,
drop path ``--drop-path`` (default 0.15, the mean of the paper's ramp 0 -> 0.3).

Implementations, timed interleaved (round r: variant A on pair r, variant B on pair r, ...) so
machine noise hits all of them:

* ``relnas``: the project's own search step through the same code ``python -m relnas.search``
  runs: one Lightning Trainer (fresh per round) with :class:`SearchModule` + :class:`SearchLoop`
  over a :class:`SyntheticDataModule` (uint8 tensors on the device, batched augmentation);
  the candidates come from a fixed strategy. Everything inside ``Trainer(...)`` + ``fit`` is
  timed (framework overhead counts). Variants: ``relnas`` (fp32, channels_last),
  ``relnas-bf16`` (``precision=bf16-mixed``), ``relnas-nchw`` (channels_last off),
  ``relnas-graphs`` (cuda: ``search.cuda_graphs=true``, each candidate's steps replayed as CUDA
  graphs; ``relnas-graphs-bf16`` the same in bf16-mixed), and ablations of the real path with one
  speed-up switched off: ``relnas-sync`` (a host sync every step), ``relnas-valgrad`` (validation
  with autograd on, batch 256, no ``inference_mode``), ``relnas-nophase`` (plain dilated convs).
  ``relnas-nobench`` (cuda: ``benchmark=False``).
* ``naive``: the common DARTS-codebase style, written below: a torchvision Dataset augmenting
  image by image with PIL through a DataLoader with 2 workers, the candidate built as the full
  supernet (a fresh WeightSet per candidate + ``load_state_dict`` of Omega), fp32 NCHW,
  ``.item()`` on loss and accuracy every step, validation in eval mode with autograd on and the
  training augmentation, Eq. 6 by walking the state dict with python dict loops.

Images/s = (train + val images) x candidates / wall time. Also printed: peak memory (RSS sampled
per variant on CPU, ``torch.cuda.max_memory_allocated`` on GPU), per-candidate framework
overhead of ``relnas`` (1-batch epochs through the Trainer minus the same batches run bare), the
cost of snapshot/restore/merge, and on cuda a projection of the paper's search (1000 candidates x
(25K + 25K)). Results are appended to ``experiments/results/bench.md``.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import gc
import os
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from relnas.nas import operations  # noqa: E402
from relnas.search import encoding  # noqa: E402
from relnas.search.weight_set import WeightSet, merge_eq6, restore, snapshot  # noqa: E402

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
PAPER_CANDIDATES, PAPER_TRAIN, PAPER_VAL = 1000, 25_000, 25_000


# ====================================================================== workload
def make_candidates(n: int, seed: int) -> List[Any]:
    rng = np.random.default_rng(seed)
    return [rng.uniform(encoding.LOWER, encoding.UPPER) for _ in range(n)]


def make_datamodule(args):
    from relnas.data import SyntheticDataModule

    n = args.num_train + args.num_val
    dm = SyntheticDataModule(num_train=n, num_test=16, image_size=32, in_channels=3, num_classes=10,
                             train_portion=args.num_train / n, split_seed=0, batch_size=args.batch_size,
                             eval_batch_size=args.eval_batch_size, crop_padding=4, flip=True, cutout=16,
                             mean=CIFAR_MEAN, std=CIFAR_STD, dataset_seed=args.seed)
    dm.setup()
    assert len(dm.train_data[0]) == args.num_train and len(dm.val_data[0]) == args.num_val
    return dm


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


# ====================================================================== relnas
class FixedPairs:
    """A strategy (the :class:`relnas.search.strategies.Strategy` protocol) that estimates given
    pairs in one generation; the fast learner is the lower loss, as RelativeNAS."""

    name = "fixed"

    def __init__(self, vectors: Sequence[np.ndarray]):
        from relnas.search.strategies import Job

        self.vectors = [np.asarray(v, dtype=np.float64) for v in vectors]
        self.jobs = [Job(p, [2 * p, 2 * p + 1], [self.vectors[2 * p], self.vectors[2 * p + 1]])
                     for p in range(len(self.vectors) // 2)]
        self.budget = len(self.jobs) * 2
        self.losses = np.full(len(self.vectors), np.inf)

    generations = 1

    def init(self, rng): pass

    def ask(self, rng, generation):
        return list(self.jobs)

    def tell(self, rng, job, losses):
        from relnas.search.slow_fast import fast_slow
        from relnas.search.strategies import JobResult

        f, s = fast_slow(losses[0], losses[1])
        for m, loss in zip(job.members, losses):
            self.losses[m] = loss
        return JobResult(roles=["fast", "slow"] if f == 0 else ["slow", "fast"], merge_priority=[s, f])

    def end_generation(self, rng, generation): pass

    def population(self):
        return {i: v.copy() for i, v in enumerate(self.vectors)}

    def best(self):
        i = int(np.argmin(self.losses))
        return i, self.vectors[i].copy(), float(self.losses[i])

    def state_dict(self):
        return {}


class RelnasRunner:
    """One Omega (kept across rounds) estimated through Trainer + SearchModule + SearchLoop."""

    def __init__(self, name: str, omega0: Dict[str, torch.Tensor], dm, args, device: torch.device,
                 precision: str = "32-true", channels_last: bool = True, benchmark: Optional[bool] = None,
                 cuda_graphs: bool = False, ablate: Optional[str] = None):
        self.name, self.dm, self.args, self.device = name, dm, args, device
        self.cuda_graphs, self.ablate = cuda_graphs, ablate
        self.graph_stats = {"eager": 0, "captures": 0, "replays": 0}
        self.precision, self.channels_last, self.benchmark = precision, channels_last, benchmark
        self.ws = WeightSet(C=args.C, num_classes=10, layers=args.layers)
        self.ws.load_state_dict(omega0)
        if channels_last:
            self.ws = self.ws.to(memory_format=torch.channels_last)
        self.val_losses: List[float] = []

    def trainer_kwargs(self) -> Dict[str, Any]:
        return dict(accelerator="gpu" if self.device.type == "cuda" else "cpu", devices=1, precision=self.precision,
                    benchmark=self.benchmark, logger=False, enable_checkpointing=False, num_sanity_val_steps=0,
                    enable_progress_bar=False, enable_model_summary=False, check_val_every_n_epoch=1,
                    log_every_n_steps=1_000_000, default_root_dir=tempfile.gettempdir(),
                    inference_mode=self.ablate != "valgrad")

    def module(self):
        """The real SearchModule, or (ablations) a subclass with one speed-up switched off."""
        from relnas.search.search_module import SearchModule

        cls = {None: SearchModule, "sync": SyncEveryStep, "valgrad": ValidateWithAutograd}[
            self.ablate if self.ablate in ("sync", "valgrad") else None]
        return cls(self.ws, channels_last=self.channels_last, cuda_graphs=self.cuda_graphs)

    def run(self, vectors: Sequence[np.ndarray], **limits: Any) -> float:
        """Estimate ``vectors`` (pairs); returns the wall time of Trainer construction + fit."""
        import lightning as L

        from relnas.search.callback import SearchLoop
        from relnas.search.engine import SearchEngine, SearchSettings

        sync(self.device)
        t0 = time.perf_counter()
        strategy = FixedPairs(vectors)
        settings = SearchSettings(seed=self.args.seed, lr=self.args.lr, drop_path_prob=self.args.drop_path,
                                  drop_path_ramp=False)
        loop = SearchLoop(SearchEngine(strategy, self.ws, settings, rng=np.random.default_rng(0)), progress=False)
        module = self.module()
        trainer = L.Trainer(max_epochs=loop.remaining_estimations(), callbacks=[loop], **limits,
                            **self.trainer_kwargs())
        phase, eval_bs = operations.PHASE_DILATED_CONV, self.dm.eval_batch_size
        if self.ablate == "nophase":
            operations.PHASE_DILATED_CONV = False
        if self.ablate == "valgrad":
            self.dm.eval_batch_size = self.args.batch_size
        try:
            trainer.fit(module, datamodule=self.dm)
        finally:
            operations.PHASE_DILATED_CONV, self.dm.eval_batch_size = phase, eval_bs
        sync(self.device)
        dt = time.perf_counter() - t0
        assert loop.done, "the search loop did not finish"
        if not limits:
            self.val_losses += [r["val_loss"] for r in loop.history]
            for k, v in module.graph_stats.items():
                self.graph_stats[k] += v
        return dt


def _ablation_classes():
    from relnas.search.search_module import SearchModule

    class SyncEveryStep(SearchModule):
        """Ablation: read the loss on the host after every training step (as ``.item()`` does)."""

        def training_step(self, batch, batch_idx):
            super().training_step(batch, batch_idx)
            self._train_sum.item()

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


def darts_train_transform():
    import torchvision.transforms as T

    return T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                      T.Normalize(CIFAR_MEAN, CIFAR_STD), Cutout(16)])


def _accuracy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (logits.argmax(1) == target).float().mean() * 100.0


class NaiveRunner:
    def __init__(self, name: str, omega0: Dict[str, torch.Tensor], dm, args, device: torch.device):
        self.name, self.args, self.device = name, args, device
        self.omega = {k: v.clone().to(device) for k, v in omega0.items()}
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
        model.load_state_dict(self.omega)
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
        phase = operations.PHASE_DILATED_CONV
        operations.PHASE_DILATED_CONV = False  # the DARTS codebase runs the plain dilated kernels
        try:
            return self._run(vectors)
        finally:
            operations.PHASE_DILATED_CONV = phase

    def _run(self, vectors: Sequence[np.ndarray]) -> float:
        sync(self.device)
        t0 = time.perf_counter()
        for p in range(len(vectors) // 2):
            ma, ua, la = self._estimate(vectors[2 * p])
            mb, ub, lb = self._estimate(vectors[2 * p + 1])
            (fm, fu), (sm, su) = ((ma, ua), (mb, ub)) if la <= lb else ((mb, ub), (ma, ua))
            fsd, ssd = fm.state_dict(), sm.state_dict()
            merged = {}
            for k, v in self.omega.items():  # Eq. 6 with python dict loops
                if k in fu:
                    merged[k] = fsd[k].clone()
                elif k in su:
                    merged[k] = ssd[k].clone()
                else:
                    merged[k] = v
            self.omega = merged
            self.val_losses += [la, lb]
            del ma, mb, fm, sm, fsd, ssd
        sync(self.device)
        return time.perf_counter() - t0


# ====================================================================== overhead
def bare_batches(runner: RelnasRunner, vectors: Sequence[np.ndarray]) -> float:
    """Seconds per candidate of one training batch + one validation batch of the relnas code run
    without Lightning (same module, same augmentation, same precision, fresh SGD per candidate)."""
    dm, ws, dev = runner.dm, runner.ws, runner.device
    dm.to(dev)
    ws.to(dev)  # Lightning's teardown moved the module back to the CPU after fit
    cl = (lambda x: x.contiguous(memory_format=torch.channels_last)) if runner.channels_last else (lambda x: x)
    auto = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=runner.precision.startswith("bf16"))
    x_tr, y_tr = dm.train_data[0][: runner.args.batch_size], dm.train_data[1][: runner.args.batch_size]
    x_va, y_va = dm.val_data[0][: runner.args.eval_batch_size], dm.val_data[1][: runner.args.eval_batch_size]
    sync(dev)
    t0 = time.perf_counter()
    for v in vectors:
        arch = ws.compile(encoding.decode(v))
        params = ws.parameters_of(arch)
        before = snapshot(ws.tensors(), ws.keys_of(arch.groups))
        opt = torch.optim.SGD(params, lr=runner.args.lr, momentum=0.9, weight_decay=3e-4)
        ws.train()
        x = dm.preprocess(x_tr, train=True)
        with auto:
            loss = F.cross_entropy(ws(cl(x), arch, runner.args.drop_path), y_tr)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 5.0, foreach=True)
        opt.step()
        opt.zero_grad(set_to_none=True)
        ws.eval()
        with torch.inference_mode(), auto:
            F.cross_entropy(ws(cl(dm.preprocess(x_va, train=False)), arch).float(), y_va, reduction="sum")
        ws.train()
        restore(ws.tensors(), before)
    sync(dev)
    return (time.perf_counter() - t0) / len(vectors)


def bookkeeping_cost(runner: RelnasRunner, vectors: Sequence[np.ndarray]) -> float:
    """Seconds per candidate of compile + snapshot + snapshot-of-trained + restore + merge (per pair /2)."""
    ws = runner.ws
    tensors = ws.tensors()
    sync(runner.device)
    t0 = time.perf_counter()
    for p in range(len(vectors) // 2):
        trained = []
        for v in vectors[2 * p: 2 * p + 2]:
            arch = ws.compile(encoding.decode(v))
            before = snapshot(tensors, ws.keys_of(arch.groups))
            trained.append(snapshot(tensors, before))
            restore(tensors, before)
        merge_eq6(tensors, trained[0], trained[1])  # values equal to Omega's: a no-op merge, same cost
    sync(runner.device)
    return (time.perf_counter() - t0) / len(vectors)


# ====================================================================== data pipelines alone
_VIEW_OPS = {"aten::empty", "aten::empty_strided", "aten::view", "aten::as_strided", "aten::resize_", "aten::detach",
             "aten::alias", "aten::unsqueeze", "aten::expand", "aten::permute", "aten::select", "aten::slice", "aten::t",
             "aten::transpose", "aten::reshape", "aten::_reshape_alias", "aten::squeeze", "aten::lift_fresh",
             "aten::result_type"}


def ops_per_step(runner: RelnasRunner, vectors: Sequence[np.ndarray], batch: int = 32) -> List[int]:
    """Leaf ATen operations (views and allocations left out) of one eager training step (forward,
    backward, clipping, SGD) per candidate: roughly the kernels a GPU launches one by one."""
    from torch.profiler import ProfilerActivity, profile

    ws, dev = runner.ws.to(runner.device), runner.device
    x = torch.randn(batch, 3, 32, 32, device=dev).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,), device=dev)
    counts = []
    for v in vectors:
        arch = ws.compile(encoding.decode(v))
        params = ws.parameters_of(arch)
        before = snapshot(ws.tensors(), ws.keys_of(arch.groups))
        opt = torch.optim.SGD(params, lr=runner.args.lr, momentum=0.9, weight_decay=3e-4)

        def step():
            F.cross_entropy(ws(x, arch, runner.args.drop_path), y).backward()
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
    p.add_argument("--quick", action="store_true", help="a few thousand images, 2 candidates per variant")
    p.add_argument("--candidates", type=int, default=None, help="candidates per variant (even; default 8, quick 2)")
    p.add_argument("--num-train", type=int, default=None, help="search-train images (default 25000, quick 384)")
    p.add_argument("--num-val", type=int, default=None, help="search-valid images (default 25000, quick 384)")
    p.add_argument("--variants", default=None,
                   help="comma list of relnas, relnas-bf16, relnas-nchw, relnas-nobench, relnas-graphs, "
                        "relnas-graphs-bf16, relnas-sync, relnas-valgrad, relnas-nophase, naive "
                        "(default cpu: relnas,naive; cuda: relnas-graphs,relnas,naive)")
    p.add_argument("--pairs-per-round", type=int, default=1, help="pairs per interleaving round")
    p.add_argument("--warmup-pairs", type=int, default=None, help="untimed pairs per relnas variant first (cpu 0, cuda 1)")
    p.add_argument("--overhead-candidates", type=int, default=None, help="1-batch-epoch candidates for the overhead (0: skip)")
    p.add_argument("--C", type=int, default=16)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--eval-batch-size", type=int, default=1024)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--drop-path", type=float, default=0.15)
    p.add_argument("--naive-workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--results", default=str(ROOT / "experiments" / "results" / "bench.md"))
    p.add_argument("--note", default="", help="free text recorded with the results")
    a = p.parse_args(argv)
    a.candidates = a.candidates or (2 if a.quick else 8)
    a.overhead_candidates = a.overhead_candidates if a.overhead_candidates is not None else (0 if a.quick else 4)
    a.num_train = a.num_train or (384 if a.quick else PAPER_TRAIN)
    a.num_val = a.num_val or (384 if a.quick else PAPER_VAL)
    if a.candidates % 2 or a.candidates < 2:
        p.error("--candidates must be even and >= 2")
    if a.variants is None:
        a.variants = "relnas,naive" if a.device == "cpu" else "relnas-graphs,relnas,naive"
    a.variants = [v.strip() for v in a.variants.split(",") if v.strip()]
    if a.warmup_pairs is None:
        a.warmup_pairs = 0 if a.device == "cpu" else 1
    return a


def build_runner(name: str, omega0, dm, args, device):
    cuda = device.type == "cuda"
    if name == "naive":
        return NaiveRunner(name, omega0, dm, args, device)
    specs = {"relnas": dict(), "relnas-bf16": dict(precision="bf16-mixed"), "relnas-nchw": dict(channels_last=False),
             "relnas-nobench": dict(benchmark=False), "relnas-graphs": dict(cuda_graphs=True),
             "relnas-graphs-bf16": dict(cuda_graphs=True, precision="bf16-mixed"),
             # ablations: the real path with one speed-up switched off
             "relnas-sync": dict(ablate="sync"), "relnas-valgrad": dict(ablate="valgrad"),
             "relnas-nophase": dict(ablate="nophase")}
    if name not in specs:
        raise SystemExit(f"unknown variant {name!r}; known: naive, {', '.join(specs)}")
    if specs[name].get("cuda_graphs") and not cuda:
        raise SystemExit(f"variant {name!r} replays CUDA graphs: it needs --device cuda")
    kw = dict(benchmark=True if cuda else None)
    kw.update(specs[name])
    return RelnasRunner(name, omega0, dm, args, device, **kw)


def fmt_bytes(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def main(argv=None) -> int:
    import faulthandler
    import signal

    faulthandler.register(signal.SIGUSR1)  # kill -USR1 <pid> prints every thread's stack
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but torch.cuda.is_available() is False")
    import logging

    for lg in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(lg).setLevel(logging.ERROR)
    import warnings

    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*GPU available but not used.*")
    command = "python " + " ".join([os.path.relpath(__file__, ROOT)] + (argv if argv is not None else sys.argv[1:]))
    print(f"# {command}", flush=True)
    t_start = time.time()

    dm = make_datamodule(args)
    torch.manual_seed(args.seed)
    omega0 = {k: v.clone() for k, v in WeightSet(C=args.C, num_classes=10, layers=args.layers).state_dict().items()}
    vectors = make_candidates(args.candidates + 2 * args.warmup_pairs + args.overhead_candidates + 2, args.seed + 1)
    warm, timed = vectors[: 2 * args.warmup_pairs], vectors[2 * args.warmup_pairs: 2 * args.warmup_pairs + args.candidates]
    extra = vectors[2 * args.warmup_pairs + args.candidates:]
    runners = [build_runner(v, omega0, dm, args, device) for v in args.variants]
    per_cand_imgs = args.num_train + args.num_val
    print(f"workload: {args.candidates} candidates x ({args.num_train} train + {args.num_val} val) images, "
          f"C={args.C} L={args.layers} batch {args.batch_size}, device {device}, variants {args.variants}", flush=True)

    for r in runners:
        if warm and not isinstance(r, NaiveRunner):  # naive: no autotuning to warm, save the time
            dt = r.run(warm)
            print(f"  warm-up {r.name}: {len(warm)} candidates {dt:.1f}s", flush=True)
            r.graph_stats = dict.fromkeys(r.graph_stats, 0)
    times = {r.name: 0.0 for r in runners}
    peaks = {r.name: 0 for r in runners}
    step = 2 * args.pairs_per_round
    for i in range(0, len(timed), step):
        chunk = timed[i: i + step]
        for r in runners:
            gc.collect()
            with MemWatch(device) as mw:
                dt = r.run(chunk)
            times[r.name] += dt
            peaks[r.name] = max(peaks[r.name], mw.peak)
            print(f"  round {i // step + 1}: {r.name:14s} {len(chunk)} candidates {dt:8.1f}s "
                  f"({len(chunk) * per_cand_imgs / dt:8.1f} img/s)", flush=True)

    rates = {n: args.candidates * per_cand_imgs / t for n, t in times.items()}
    graph_lines = [f"- {r.name}: CUDA graph steps over the timed candidates: {r.graph_stats['captures']} captures, "
                   f"{r.graph_stats['replays']} replays, {r.graph_stats['eager']} eager steps"
                   for r in runners if getattr(r, "cuda_graphs", False)]
    lines = ["| variant | img/s | s/candidate | peak mem | mean val loss |", "|---|---|---|---|---|"]
    for r in runners:
        vl = np.mean([v for v in r.val_losses if np.isfinite(v)]) if r.val_losses else float("nan")
        lines.append(f"| {r.name} | {rates[r.name]:.1f} | {times[r.name] / args.candidates:.2f} | "
                     f"{fmt_bytes(peaks[r.name])} | {vl:.4f} |")
    summary = []
    if "naive" in rates:
        for n in rates:
            if n != "naive":
                summary.append(f"- {n} / naive: **{rates[n] / rates['naive']:.2f}x** images/s")
    if "relnas" in rates:
        for n in rates:
            if n.startswith("relnas-"):
                summary.append(f"- {n} / relnas: {rates[n] / rates['relnas']:.2f}x")

    # ---------------------------------------------------------------- overhead (relnas path)
    over = []
    rel = next((r for r in runners if r.name.startswith("relnas")), None)
    if rel is not None and args.overhead_candidates >= 2:
        oc = extra[: args.overhead_candidates - args.overhead_candidates % 2]
        rel.run(oc, limit_train_batches=1, limit_val_batches=1)  # warm every kernel these candidates use
        t1s, bares = [], []
        for _ in range(2):  # interleaved, best of 2
            t1s.append(rel.run(oc, limit_train_batches=1, limit_val_batches=1) / len(oc))
            bares.append(bare_batches(rel, oc))
        t1, bare = min(t1s), min(bares)
        book = bookkeeping_cost(rel, oc)
        n_ops = ops_per_step(rel, oc)
        per_cand = times[rel.name] / args.candidates
        oh = max(t1 - bare, 0.0)
        over.append(f"- per-candidate framework overhead of `{rel.name}` (Trainer epoch switch, loop hooks, "
                    f"snapshot/restore/merge; a 1-batch epoch through the Trainer {t1 * 1e3:.1f} ms minus the same "
                    f"2 batches run bare {bare * 1e3:.1f} ms): **{oh * 1e3:.1f} ms = {100 * oh / per_cand:.2f}%** "
                    f"of a measured candidate ({per_cand:.2f} s)")
        over.append(f"  - of which compile + snapshot + restore + merge: {book * 1e3:.1f} ms")
        if device.type == "cuda":
            full = per_cand * (PAPER_TRAIN + PAPER_VAL) / per_cand_imgs
            over.append(f"  - projected on the paper's 25K+25K: {100 * oh / full:.2f}%")
        over.append(f"- ATen operations (views and allocations left out) per eager training step of these candidates: "
                    f"{', '.join(map(str, n_ops))} (on a GPU roughly one kernel launch each, unless the step is a CUDA graph)")
    nv = next((r for r in runners if isinstance(r, NaiveRunner)), None)
    data_rates = {}
    if nv is not None:
        data_rates = data_pipeline_rates(dm, nv, device, n_batches=min(8, max(1, args.num_train // args.batch_size)))
        over.append("- augmentation pipelines alone: " + "; ".join(f"{k} {v:.0f} img/s" for k, v in data_rates.items()))

    proj = []
    if device.type == "cuda":
        for n, t in times.items():
            per = t / args.candidates * (PAPER_TRAIN + PAPER_VAL) / per_cand_imgs
            proj.append(f"- {n}: {per:.2f} s/candidate -> paper protocol ({PAPER_CANDIDATES} candidates x "
                        f"25K+25K) **{per * PAPER_CANDIDATES / 3600:.2f} h**")

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
          f"- workload: {args.candidates} candidates (seeded genotypes, in pairs, interleaved by {step}) x "
          f"({args.num_train} train + {args.num_val} val) synthetic 3x32x32 images, C={args.C}, L={args.layers}, "
          f"batch {args.batch_size} (relnas eval batch {args.eval_batch_size}), drop path {args.drop_path}, "
          f"warm-up pairs {args.warmup_pairs}",
          f"- process peak RSS (all variants): {fmt_bytes(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)}; "
          f"wall {time.time() - t_start:.0f}s"]
    if args.note:
        md.append(f"- note: {args.note}")
    md += ["", *lines, "", *summary, *graph_lines, *over, *proj, ""]
    text = "\n".join(md)
    print("\n" + text, flush=True)
    path = Path(args.results)
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists()
    with open(path, "a") as f:
        if new:
            f.write("# Search speed benchmark (`experiments/bench_search.py`)\n\n"
                    "Candidate estimation (inherit, train one epoch, validate, merge); images/s = (train + val) x "
                    "candidates / wall time, framework overhead included. Appended by each run.\n\n")
        f.write(text + "\n")
    print(f"appended to {path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
