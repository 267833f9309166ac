"""Per-candidate framework cost of the search at the paper's weight-set size (C=16, L=8).

    python experiments/framework_overhead.py            # ~1 min on a 2-core CPU

Runs the real search, ``relnas.search.run.run_search`` on ``configs/search.yaml`` composed with
Hydra (one Lightning Trainer, ``SearchModule`` + ``SearchLightningAdapter`` + ``SearchEngine``, Eq. 6 merges,
slow-fast updates, the recorders' files and checkpoint per generation) on candidates whose one-epoch estimation is a single 16-image batch of
8x8 images for training and one for validation, so that the arithmetic is small and what remains
is the framework: Lightning's epoch switch and hooks (train/eval mode walks over the weight set's ~4,000
modules, gradient release before validation), the loop's snapshot/restore/merge, the per-candidate
optimizer. It reports the wall time per candidate through the Trainer, the same batches run bare
(compile, fresh SGD, one training step, one validation step, snapshot/restore; no Lightning), and
their difference: the framework's overhead per candidate. On a GPU with CUDA graphs a paper-size
candidate should take on the order of a second or two, so this overhead is what is left to keep
to a few percent of it. One torch thread, so that the figures do not depend on the core count.
"""
from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from relnas.search import encoding  # noqa: E402
from relnas.search.weight_set import restore, snapshot  # noqa: E402
from relnas.utils.compose import compose_config  # noqa: E402

#: the tiny per-candidate workload: one 16-image batch of 8x8 images for training, one for validation
WORKLOAD = [
    "data=synthetic", "data.num_train=32", "data.num_test=8", "data.image_size=8", "data.batch_size=16",
    "data.eval_batch_size=16", "data.cutout=0", "data.crop_padding=0", "data.flip=false", "search.train_portion=0.5",
    "supernet.C=16", "supernet.layers=8", "search.channels_last=false", "search.drop_path_prob=0.0",
    "trainer.accelerator=cpu", "logger=none", "search.plots=false", "search.progress=false", "seed=0",
]


def search_config(generations: int, population: int, run_dir: Path):
    """configs/search.yaml composed with the tiny workload, as ``python -m relnas.search`` would."""
    return compose_config("search", WORKLOAD + [f"search.generations={generations}",
                                                f"search.population_size={population}"], output_dir=run_dir)


def through_search(generations: int, population: int) -> float:
    """Wall time of ``run_search`` (the entry point's function: the Trainer, SearchLightningAdapter, engine,
    executor, recorders writing the history, summaries and a checkpoint per generation)."""
    from relnas.search.run import run_search

    with tempfile.TemporaryDirectory(prefix="framework_overhead_") as tmp:
        cfg = search_config(generations, population, Path(tmp))
        t0 = time.perf_counter()
        run_search(cfg, Path(tmp))
        return time.perf_counter() - t0


def bare(ws, dm, n: int) -> float:
    """The same arithmetic and snapshots per candidate without Lightning, the loop or any walk
    over the weight set's modules (the tensor dict is made once; validation runs in training mode, which
    costs the same arithmetic), so that it does not depend on how fast those walks are."""
    x_tr, y_tr = dm.train_data[0][: dm.batch_size], dm.train_data[1][: dm.batch_size]
    x_va, y_va = dm.val_data[0][: dm.eval_batch_size], dm.val_data[1][: dm.eval_batch_size]
    rng = np.random.default_rng(1)
    tensors = {**dict(ws.named_parameters()), **dict(ws.named_buffers())}
    params_by_key = dict(ws.named_parameters())
    ws.train()
    t0 = time.perf_counter()
    for _ in range(n):
        arch = ws.compile(encoding.decode(encoding.sample(rng)))
        keys = ws.keys_of(arch.groups)
        params = [params_by_key[k] for k in keys if k in params_by_key]
        before = snapshot(tensors, keys)
        opt = torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=3e-4)
        F.cross_entropy(ws(dm.preprocess(x_tr, train=True), arch, 0.0), y_tr).backward()
        torch.nn.utils.clip_grad_norm_(params, 5.0, foreach=True)
        opt.step()
        opt.zero_grad(set_to_none=True)
        with torch.inference_mode():
            F.cross_entropy(ws(dm.preprocess(x_va, train=False), arch), y_va, reduction="sum")
        trained = snapshot(tensors, before)
        restore(tensors, before)
        del trained
    return time.perf_counter() - t0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--population", type=int, default=20)
    p.add_argument("--generations", type=int, default=2, help="timed generations (one more runs first, untimed)")
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore")
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    torch.set_num_threads(1)
    torch.manual_seed(0)

    through_search(1, args.population)  # warm-up (and Lightning's one-off set-up)
    # run_search has a fixed cost too (data, the weight set's construction, fit's set-up): the difference of
    # two searches of different lengths, per candidate
    t_short = through_search(1, args.population)
    t_long = through_search(1 + args.generations, args.population)
    per_candidate = (t_long - t_short) / (args.generations * args.population)
    n = args.generations * args.population
    import hydra

    cfg = search_config(1, args.population, Path(tempfile.gettempdir()))
    dm = hydra.utils.instantiate(cfg.data, train_portion=float(cfg.search.train_portion))
    dm.setup("fit")
    ws = hydra.utils.instantiate(cfg.supernet, num_classes=dm.num_classes, in_channels=dm.in_channels)
    bare(ws, dm, 2)
    per_bare = bare(ws, dm, n) / n
    print(f"C=16 L=8, 16+16 images of 8x8 per candidate, {torch.get_num_threads()} torch thread, torch {torch.__version__}")
    print(f"through the Trainer: {per_candidate * 1e3:.1f} ms per candidate")
    print(f"bare (same arithmetic and snapshots, no Lightning): {per_bare * 1e3:.1f} ms per candidate")
    print(f"framework overhead: {(per_candidate - per_bare) * 1e3:.1f} ms per candidate")
    return 0


if __name__ == "__main__":
    sys.exit(main())
