"""Per-candidate framework cost of the search at the paper's supernet size (C=16, L=8).

    python experiments/framework_overhead.py            # ~1 min on a 2-core CPU

Runs the real search machinery (one Lightning Trainer, ``SearchModule`` + ``SearchLoop``, Eq. 6
merges, slow-fast updates) on candidates whose one-epoch estimation is a single 16-image batch of
8x8 images for training and one for validation, so that the arithmetic is small and what remains
is the framework: Lightning's epoch switch and hooks (train/eval mode walks over Omega's ~4,000
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
from relnas.search.weight_set import WeightSet, restore, snapshot  # noqa: E402


def through_trainer(ws, dm, generations: int, population: int) -> float:
    import lightning as L

    from relnas.search.search_module import SearchModule
    from relnas.search.callback import SearchLoop
    from relnas.search.engine import SearchEngine
    from relnas.search.strategies import create_strategy

    strategy = create_strategy("relativenas", population_size=population, generations=generations)
    loop = SearchLoop(SearchEngine(strategy, ws, rng=np.random.default_rng(0)), progress=False)
    module = SearchModule(ws, channels_last=False)
    trainer = L.Trainer(max_epochs=loop.remaining_estimations(), callbacks=[loop], accelerator="cpu", logger=False,
                        enable_checkpointing=False, num_sanity_val_steps=0, enable_progress_bar=False,
                        enable_model_summary=False, log_every_n_steps=10**6)
    t0 = time.perf_counter()
    trainer.fit(module, datamodule=dm)
    return time.perf_counter() - t0


def bare(ws, dm, n: int) -> float:
    """The same arithmetic and snapshots per candidate without Lightning, the loop or any walk
    over Omega's modules (the tensor dict is made once; validation runs in training mode, which
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

    from relnas.data import SyntheticDataModule

    dm = SyntheticDataModule(num_train=32, num_test=8, image_size=8, batch_size=16, eval_batch_size=16, cutout=0,
                             crop_padding=0, train_portion=0.5)
    ws = WeightSet(C=16, layers=8)
    through_trainer(ws, dm, 1, args.population)  # warm-up (and Lightning's one-off set-up)
    # fit() has a fixed cost too: difference of two searches of different lengths, per candidate
    t_short = through_trainer(ws, dm, 1, args.population)
    t_long = through_trainer(ws, dm, 1 + args.generations, args.population)
    per_candidate = (t_long - t_short) / (args.generations * args.population)
    n = args.generations * args.population
    bare(ws, dm, 2)
    per_bare = bare(ws, dm, n) / n
    print(f"C=16 L=8, 16+16 images of 8x8 per candidate, {torch.get_num_threads()} torch thread, torch {torch.__version__}")
    print(f"through the Trainer: {per_candidate * 1e3:.1f} ms per candidate")
    print(f"bare (same arithmetic and snapshots, no Lightning): {per_bare * 1e3:.1f} ms per candidate")
    print(f"framework overhead: {(per_candidate - per_bare) * 1e3:.1f} ms per candidate")
    return 0


if __name__ == "__main__":
    sys.exit(main())
