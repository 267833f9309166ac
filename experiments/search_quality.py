"""Search quality study: RelativeNAS vs random search vs regularized evolution on Fashion-MNIST,
at an equal budget of one-epoch weight-set estimations, each found cell then trained from scratch
with one fixed short protocol and evaluated on the full Fashion-MNIST test set; random
architectures trained under the same protocol as a reference; and the rank fidelity (Kendall tau)
of the one-epoch weight-set estimate against the test accuracy after the short training.

Exact command (from the repository root; about 40 minutes on a busy 2-core CPU)::

    PYTHONPATH=. nohup python experiments/search_quality.py > /tmp/search_quality.log 2>&1 &

Options: ``--work DIR`` (search and training run directories, default /tmp/relnas_search_quality;
not committed), ``--threads N`` (torch threads, default 1), ``--quick`` (a tiny smoke
configuration, a few minutes; writes under /tmp only), ``--report-only`` (rewrite the .md from the
JSON logs).

Writes ``experiments/results/search_quality.md`` and one JSON log per run under
``experiments/results/search_quality/``. Every size is in ``SIZES`` below and in the report.

Definitions:
* search: ``configs/search.yaml`` composed with Hydra and the overrides of
  :func:`search_overrides` (``strategy=`` relativenas / random / evolution, the same
  budget ``search.budget``, supernet, data and schedule), run by ``relnas.search.run.run_search``
  as ``python -m relnas.search`` runs it; the reported cell is the run's ``genotype.json``
  (RelativeNAS: lowest loss in the last generation; baselines: lowest loss ever estimated).
* training protocol (the same for every architecture): ``configs/train.yaml`` composed with the
  overrides of :func:`train_overrides` and run by ``relnas.train.train``, the code of
  ``python -m relnas.train`` (NetworkCIFAR, SGD momentum 0.9, weight decay 3e-4, cosine lr per
  epoch, gradient clip 5, crop + flip augmentation, fixed seed, no validation during training),
  then top-1 on the whole 10K test set.
* rank-fidelity estimate: every architecture of the sample (the 9 found + the random ones) is
  re-estimated once from the *final weight set of the RelativeNAS seed-0 search*: inherit its
  weights, train one epoch on that search's search-train split (constant lr ``RF_LR``, no drop
  path, nothing written back), validation loss on its search-validation split. Kendall tau is
  computed between minus that loss and the test accuracy (positive = the estimate ranks like the
  trained accuracy).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Sequence

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from omegaconf import OmegaConf  # noqa: E402

from relnas.search import encoding  # noqa: E402
from relnas.utils.compose import compose_config  # noqa: E402
from relnas.search.strategies import Job, JobResult, Strategy  # noqa: E402

STRATEGY_NAMES = ("relativenas", "random", "evolution")
SEEDS = (0, 1, 2)

SIZES: Dict[str, Any] = {
    # search
    "search_subset": 2000,          # training images used by a search (seeded subset) ...
    "search_train_portion": 0.5,    # ... split into search-train / search-valid
    "image_size": 28,
    "supernet_C": 6, "supernet_layers": 5,
    "search_batch_size": 64,
    "population_size": 6,
    "budget": 24,                   # one-epoch estimations per search (RelativeNAS: 4 generations of 6)
    "evolution_sample_size": 2,
    "search_lr": 0.1, "search_drop_path": 0.0,
    # training protocol
    "train_C": 8, "train_layers": 5,
    "train_subset": 3000,           # training images (seeded subset of the 60K)
    "train_epochs": 3,
    "train_batch_size": 64,
    "train_lr": 0.05, "train_weight_decay": 3e-4, "train_seed": 0,
    "test_images": 10000,           # the whole Fashion-MNIST test set
    "num_random_archs": 4,
    # rank fidelity
    "rf_lr": 0.05,
}

QUICK: Dict[str, Any] = dict(SIZES, search_subset=200, supernet_C=4, supernet_layers=3, budget=4, population_size=2,
                             train_subset=256, train_epochs=1, num_random_archs=1, test_images=1000)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------------- search
def search_overrides(strategy: str, seed: int, sz: Dict[str, Any], run_dir: Path) -> List[str]:
    """``python -m relnas.search`` overrides of one search of the study."""
    out = [
        "data=fashion_mnist", "logger=none", "trainer.accelerator=cpu", f"paths.output_dir={run_dir}",
        f"seed={seed}", f"strategy={strategy}", f"search.population_size={sz['population_size']}",
        f"search.generations={max(1, sz['budget'] // sz['population_size'])}", f"search.budget={sz['budget']}",
        f"search.train_portion={sz['search_train_portion']}", f"search.lr={sz['search_lr']}",
        f"search.drop_path_prob={sz['search_drop_path']}", "search.progress=false", "search.plots=false",
        f"supernet.C={sz['supernet_C']}", f"supernet.layers={sz['supernet_layers']}",
        f"search.subset={sz['search_subset']}", f"data.image_size={sz['image_size']}",
        f"data.batch_size={sz['search_batch_size']}", "data.eval_batch_size=500", "data.cutout=0",
        "data.crop_padding=2", "data.flip=true", "data.on_device=false",
    ]
    if strategy == "evolution":
        out.append(f"strategy.sample_size={sz['evolution_sample_size']}")
    return out


def run_one_search(strategy: str, seed: int, sz: Dict[str, Any], work: Path) -> Dict[str, Any]:
    import csv
    import shutil

    from relnas.search.run import run_search

    run_dir = work / f"{strategy}_seed{seed}"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    overrides = search_overrides(strategy, seed, sz, run_dir)
    cfg = compose_config("search", overrides)
    t0 = time.time()
    run_search(cfg, run_dir)
    search_time = time.time() - t0
    with open(run_dir / "history.csv") as f:
        history = list(csv.DictReader(f))
    result = json.loads((run_dir / "result.json").read_text())
    return {"strategy": strategy, "seed": seed, "run_dir": str(run_dir), "search_time_s": search_time,
            "genotype": result["genotype"], "genotype_str": result["genotype_str"], "vector": result["vector"],
            "search_val_loss": result["val_loss"], "estimations": result["estimations"],
            "generations": result["generations"], "history": history, "overrides": overrides,
            "config": OmegaConf.to_container(cfg, resolve=True)}


# ---------------------------------------------------------------------- training protocol
def train_overrides(genotype: str, sz: Dict[str, Any], run_dir: Path) -> List[str]:
    """``python -m relnas.train`` overrides of the study's short training protocol."""
    test_batches = -(-int(sz["test_images"]) // 500)
    return [
        f"genotype={genotype}", "data=fashion_mnist", "logger=none", "callbacks=none",
        "trainer.accelerator=cpu", "++trainer.enable_checkpointing=false", "++trainer.limit_val_batches=0",
        f"++trainer.limit_test_batches={test_batches}", f"paths.output_dir={run_dir}",
        "model.network=cifar", f"model.C={sz['train_C']}", f"model.layers={sz['train_layers']}",
        "model.auxiliary=false", "model.drop_path_prob=0.0", f"epochs={sz['train_epochs']}",
        f"optimizer.lr={sz['train_lr']}", f"optimizer.weight_decay={sz['train_weight_decay']}",
        f"seed={sz['train_seed']}", f"++data.subset={sz['train_subset']}", f"data.image_size={sz['image_size']}",
        f"data.batch_size={sz['train_batch_size']}", "data.eval_batch_size=500", "data.cutout=0",
        "data.crop_padding=2", "data.flip=true", "data.on_device=false", "data.split_seed=0",
        "++trainer.enable_progress_bar=false",
    ]


def train_and_test(genotype, sz: Dict[str, Any], run_dir: Path) -> Dict[str, Any]:
    """The fixed short protocol, through ``relnas.train`` (see :func:`train_overrides`)."""
    from relnas.train import train

    run_dir.mkdir(parents=True, exist_ok=True)
    genotype_file = genotype.save(run_dir / "cell.json")
    overrides = train_overrides(str(genotype_file), sz, run_dir)
    res = train(compose_config("train", overrides))
    return {"test_acc": 1.0 - res["test_top1_err"] / 100.0, "test_images": int(sz["test_images"]),
            "params": round(res["params_m"] * 1e6), "train_time_s": res["wall_time_s"],
            "steps": res["global_step"], "overrides": overrides, "results": res}


# ---------------------------------------------------------------------- rank fidelity
class FixedList(Strategy):
    """Estimates a fixed list of vectors once each; nothing is written back into the weight set,
    so every architecture starts from the same (loaded) weight set."""

    name = "fixed_list"

    def __init__(self, vectors: Sequence[np.ndarray]):
        self.vectors = [np.asarray(v, dtype=np.float64) for v in vectors]
        self.budget = len(self.vectors)
        self.losses: List[float] = []

    @property
    def generations(self) -> int:
        return 1

    def init(self, rng):
        pass

    def ask(self, rng, generation):
        return [Job(i, [i], [v.copy()]) for i, v in enumerate(self.vectors)]

    def tell(self, rng, job, losses):
        self.losses.append(float(losses[0]))
        return JobResult(roles=["estimate"], merge_priority=[])

    def population(self):
        return {i: v.copy() for i, v in enumerate(self.vectors)}

    def best(self):
        i = int(np.argmin(self.losses))
        return i, self.vectors[i].copy(), self.losses[i]

    def state_dict(self):
        return {"losses": list(self.losses)}

    def load_state_dict(self, state):
        self.losses = list(state["losses"])


def reestimate(vectors: Sequence[np.ndarray], search_run: Dict[str, Any], sz: Dict[str, Any]) -> List[float]:
    import hydra
    import lightning as L

    from relnas.search.callback import SearchLoop
    from relnas.search.engine import SearchEngine, SearchSettings
    from relnas.search.state import load_state

    # the pieces from the search's own composed config (its data, supernet and module nodes); the
    # engine gets the fixed list of vectors as its strategy and starts from the search's final Omega
    cfg = OmegaConf.create(search_run["config"])
    state, _ = load_state(Path(search_run["run_dir"]))
    data_kwargs = {"train_portion": float(cfg.search.train_portion)}
    if cfg.search.get("subset") is not None:  # as run_search applies search.subset
        data_kwargs["subset"] = int(cfg.search.subset)
    dm = hydra.utils.instantiate(cfg.data, **data_kwargs)
    dm.setup("fit")
    ws = hydra.utils.instantiate(cfg.supernet, num_classes=dm.num_classes, in_channels=dm.in_channels)
    ws.load_state_dict(state["weight_set"])
    ws = ws.to(memory_format=torch.channels_last)
    strat = FixedList(vectors)
    settings = SearchSettings(seed=int(cfg.seed) + 1000, lr=sz["rf_lr"], lr_min=sz["rf_lr"], drop_path_prob=0.0,
                              drop_path_ramp=False)
    loop = SearchLoop(SearchEngine(strat, ws, settings, rng=np.random.default_rng(0)), progress=False)
    module = hydra.utils.instantiate(cfg.module, weight_set=ws)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=len(vectors), callbacks=[loop], logger=False,
                        enable_checkpointing=False, num_sanity_val_steps=0, enable_progress_bar=False,
                        enable_model_summary=False, check_val_every_n_epoch=1, log_every_n_steps=1000000,
                        default_root_dir=str(Path(search_run["run_dir"]) / "rank_fidelity"))
    trainer.fit(module, datamodule=dm)
    return [float(r["val_loss"]) for r in loop.history]


def kendall(x: Sequence[float], y: Sequence[float]) -> Dict[str, float]:
    from scipy.stats import kendalltau  # scipy comes with scikit-learn, a dependency

    r = kendalltau(x, y)
    return {"tau": float(r.statistic), "p_value": float(r.pvalue)}


# ---------------------------------------------------------------------- report
def fmt_s(s: float) -> str:
    return f"{s:.0f}s" if s < 120 else f"{s / 60:.1f}min"


def write_report(path: Path, runs: List[Dict[str, Any]], randoms: List[Dict[str, Any]], rf: Dict[str, Any],
                 sz: Dict[str, Any], meta: Dict[str, Any], log_dir: Path) -> None:
    rel = lambda p: str(Path(p).resolve().relative_to(REPO)) if str(Path(p).resolve()).startswith(str(REPO)) else str(p)  # noqa: E731
    def cell(genotype_str: str) -> str:  # a genotype inside a markdown table cell
        return "`" + genotype_str.replace("|", "\\|") + "`"

    L_: List[str] = []
    L_.append("# Search quality: RelativeNAS vs random search vs regularized evolution (Fashion-MNIST)\n")
    L_.append(f"Date: {meta['date']}. Total wall time of the study: {fmt_s(meta['total_time_s'])} "
              f"(searches {fmt_s(meta['search_time_s'])}, trainings {fmt_s(meta['train_time_s'])}, "
              f"rank fidelity {fmt_s(meta['rf_time_s'])}).\n")
    L_.append(f"Command: `{meta['command']}`\n")
    L_.append(f"Machine: `{json.dumps(meta['hardware'])}`; torch threads: {meta['threads']}. The CPU was shared with "
              f"other jobs during the run, so the times are inflated and only comparable within this file.\n")
    L_.append("## Sizes\n")
    L_.append(f"* Search (every strategy, every seed): {sz['search_subset']} Fashion-MNIST training images "
              f"({sz['image_size']}x{sz['image_size']}, seeded subset per seed) split {sz['search_train_portion']:.0%} "
              f"search-train / rest search-valid; supernet C={sz['supernet_C']}, L={sz['supernet_layers']}; batch "
              f"{sz['search_batch_size']}; budget **{sz['budget']} one-epoch estimations** per search; population "
              f"size {sz['population_size']} (RelativeNAS: {sz['budget'] // sz['population_size']} generations of "
              f"{sz['population_size'] // 2} pairs; evolution: {sz['population_size']} random + "
              f"{max(0, sz['budget'] - sz['population_size'])} cycles, tournament size {sz['evolution_sample_size']}); "
              f"SGD lr {sz['search_lr']} cosine over generations, momentum 0.9, wd 3e-4, clip 5, drop path "
              f"{sz['search_drop_path']}, crop(2)+flip. Seeds {list(SEEDS)}.\n")
    L_.append(f"* Training protocol (every architecture): NetworkCIFAR C={sz['train_C']}, L={sz['train_layers']}, "
              f"1 input channel, no auxiliary head, from scratch, {sz['train_epochs']} epochs on a fixed seeded "
              f"subset of {sz['train_subset']} training images, batch {sz['train_batch_size']}, SGD lr "
              f"{sz['train_lr']} (cosine per epoch), momentum 0.9, wd {sz['train_weight_decay']}, clip 5, crop(2)+flip, "
              f"init/data seed {sz['train_seed']}; top-1 on the first {sz['test_images']} test images. Trained by "
              f"`relnas.train` on `configs/train.yaml` composed with the script's `train_overrides`.\n")
    L_.append("* Common random numbers: for a given seed the three strategies draw their first random vectors "
              "from the same generator state, so RelativeNAS's initial population, evolution's initial population "
              "and random search's first chunk are the same architectures (and the supernet initialisation and "
              "data subset are the same); they diverge from the second generation on. A strategy can therefore "
              "report the same cell as another one when the best estimate is in that first chunk.\n")
    L_.append("* These sizes are tiny (minutes per search on a CPU); the study compares the strategies at equal "
              "cost under this budget only. It says nothing about the paper's CIFAR-10 protocol.\n")
    L_.append("## Results per strategy (test accuracy after the short training protocol)\n")
    L_.append("| strategy | test acc mean | std | seed 0 | seed 1 | seed 2 | search time (mean) | training time (mean) |")
    L_.append("|---|---|---|---|---|---|---|---|")
    for s in STRATEGY_NAMES:
        rs = sorted([r for r in runs if r["strategy"] == s], key=lambda r: r["seed"])
        accs = [r["train"]["test_acc"] * 100 for r in rs]
        L_.append(f"| {s} | {np.mean(accs):.2f}% | {np.std(accs, ddof=1) if len(accs) > 1 else 0:.2f} | "
                  + " | ".join(f"{a:.2f}%" for a in accs) + " | "
                  + f"{fmt_s(np.mean([r['search_time_s'] for r in rs]))} | "
                  + f"{fmt_s(np.mean([r['train']['train_time_s'] for r in rs]))} |")
    accs = [r["train"]["test_acc"] * 100 for r in randoms]
    L_.append(f"| random architectures (no search, n={len(randoms)}) | {np.mean(accs):.2f}% | "
              f"{np.std(accs, ddof=1) if len(accs) > 1 else 0:.2f} | "
              + " | ".join(f"{a:.2f}%" for a in accs[:3]) + " | - | "
              + f"{fmt_s(np.mean([r['train']['train_time_s'] for r in randoms]))} |")
    L_.append("\nstd: sample standard deviation over the seeds (over the architectures for the random reference). "
              "Each search reports one cell; its search-validation loss (the estimate that selected it) is listed "
              "below.\n")
    L_.append("## Genotypes found\n")
    L_.append("| strategy | seed | search val loss | params | test acc | genotype | JSON log |")
    L_.append("|---|---|---|---|---|---|---|")
    for r in sorted(runs, key=lambda r: (STRATEGY_NAMES.index(r["strategy"]), r["seed"])):
        L_.append(f"| {r['strategy']} | {r['seed']} | {r['search_val_loss']:.4f} | {r['train']['params']} | "
                  f"{r['train']['test_acc'] * 100:.2f}% | {cell(r['genotype_str'])} | `{rel(r['log'])}` |")
    for i, r in enumerate(randoms):
        L_.append(f"| random arch | {i} | - | {r['train']['params']} | {r['train']['test_acc'] * 100:.2f}% | "
                  f"{cell(r['genotype_str'])} | `{rel(r['log'])}` |")
    L_.append("\n## Rank fidelity of the one-epoch weight-set estimate\n")
    L_.append(f"Estimate: each of the {len(rf['names'])} architectures above (the found cells and the random "
              f"architectures) is re-estimated once from the **final weight set of the RelativeNAS seed-0 search**: "
              f"it inherits the weights, trains one epoch on that search's search-train split (lr {sz['rf_lr']}, no "
              f"drop path, nothing written back) and is validated on its search-validation split. The Kendall tau "
              f"is between minus that validation loss and the test accuracy after the training protocol (+1: "
              f"identical ranking, 0: unrelated).\n")
    L_.append(f"**Kendall tau = {rf['tau']:.3f}** (p = {rf['p_value']:.3g}, n = {len(rf['names'])}). "
              f"Against the search-time estimates of the found cells only (each from its own search's weight set, "
              f"n = {rf['search_time_n']}): tau = {rf['search_time_tau']:.3f} (p = {rf['search_time_p']:.3g}).\n")
    L_.append("| architecture | re-estimated val loss | test acc |")
    L_.append("|---|---|---|")
    for name, loss, acc in sorted(zip(rf["names"], rf["losses"], rf["accs"]), key=lambda t: t[1]):
        L_.append(f"| {name} | {loss:.4f} | {acc * 100:.2f}% |")
    L_.append(f"\n## Raw logs\n\nOne JSON per run in `{rel(log_dir)}/`: "
              + ", ".join(f"`{Path(r['log']).name}`" for r in runs + randoms) + ", `rank_fidelity.json`. "
              "Each search log has the full search history (every estimation: generation, individual, role, "
              "val/train loss, vector, genotype), the config, the found genotype and the training result.\n")
    path.write_text("\n".join(L_) + "\n")


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", default="/tmp/relnas_search_quality")
    ap.add_argument("--out", default=str(REPO / "experiments" / "results"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--report-only", action="store_true",
                    help="rewrite the .md from the JSON logs of a finished run (no computation)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    sz = QUICK if args.quick else SIZES
    out = Path(args.out) if not args.quick else Path("/tmp/relnas_search_quality_quick")
    log_dir = out / "search_quality"
    log_dir.mkdir(parents=True, exist_ok=True)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if args.report_only:
        saved = json.loads((log_dir / "meta.json").read_text())
        seeds = SEEDS[:1] if args.quick else SEEDS
        runs = [json.loads((log_dir / f"{st}_seed{sd}.json").read_text()) for sd in seeds for st in STRATEGY_NAMES]
        randoms = [json.loads((log_dir / f"random_arch{i}.json").read_text()) for i in range(sz["num_random_archs"])]
        rf = json.loads((log_dir / "rank_fidelity.json").read_text())
        write_report(out / "search_quality.md", runs, randoms, rf, saved["sizes"], saved["meta"], log_dir)
        log(f"rewrote {out / 'search_quality.md'}")
        return
    from relnas.utils.run_info import hardware_info

    t_start = time.time()
    runs: List[Dict[str, Any]] = []
    search_time = train_time = 0.0
    seeds = SEEDS[:1] if args.quick else SEEDS
    for seed in seeds:
        for strategy in STRATEGY_NAMES:
            log(f"search {strategy} seed {seed}")
            r = run_one_search(strategy, seed, sz, work)
            search_time += r["search_time_s"]
            log(f"  found {r['genotype_str']} (val loss {r['search_val_loss']:.4f}, {r['search_time_s']:.0f}s)")
            t = time.time()
            r["train"] = train_and_test(encoding.decode(r["vector"]), sz, work / f"train_{strategy}_seed{seed}")
            train_time += time.time() - t
            log(f"  trained: test acc {r['train']['test_acc']:.4f} ({r['train']['train_time_s']:.0f}s train + test)")
            r["log"] = str(log_dir / f"{strategy}_seed{seed}.json")
            Path(r["log"]).write_text(json.dumps(r, indent=1) + "\n")
            runs.append(r)
    rng = np.random.default_rng(12345)
    randoms: List[Dict[str, Any]] = []
    for i in range(sz["num_random_archs"]):
        vec = encoding.sample(rng)
        g = encoding.decode(vec)
        log(f"random architecture {i}: {g}")
        t = time.time()
        tr = train_and_test(g, sz, work / f"train_random_arch{i}")
        train_time += time.time() - t
        log(f"  trained: test acc {tr['test_acc']:.4f}")
        r = {"kind": "random_architecture", "index": i, "vector": [float(v) for v in vec], "genotype": g.to_dict(),
             "genotype_str": str(g), "train": tr, "log": str(log_dir / f"random_arch{i}.json"), "sampling_seed": 12345}
        Path(r["log"]).write_text(json.dumps(r, indent=1) + "\n")
        randoms.append(r)
    # rank fidelity
    t = time.time()
    sample = [(f"{r['strategy']} s{r['seed']}", r["vector"], r["train"]["test_acc"]) for r in runs] + \
             [(f"random arch {r['index']}", r["vector"], r["train"]["test_acc"]) for r in randoms]
    ref = next(r for r in runs if r["strategy"] == "relativenas" and r["seed"] == seeds[0])
    log(f"rank fidelity: re-estimating {len(sample)} architectures from {ref['run_dir']}")
    losses = reestimate([np.asarray(v) for _, v, _ in sample], ref, sz)
    rf_time = time.time() - t
    accs = [a for _, _, a in sample]
    k = kendall([-x for x in losses], accs)
    k2 = kendall([-r["search_val_loss"] for r in runs], [r["train"]["test_acc"] for r in runs])
    rf = {"names": [n for n, _, _ in sample], "losses": losses, "accs": accs, "tau": k["tau"], "p_value": k["p_value"],
          "search_time_tau": k2["tau"], "search_time_p": k2["p_value"], "search_time_n": len(runs),
          "reference_weight_set": ref["run_dir"], "rf_lr": sz["rf_lr"], "time_s": rf_time}
    (log_dir / "rank_fidelity.json").write_text(json.dumps(rf, indent=1) + "\n")
    log(f"Kendall tau {k['tau']:.3f} (p {k['p_value']:.3g})")
    meta = {"date": _dt.datetime.now().isoformat(timespec="seconds"), "total_time_s": time.time() - t_start,
            "search_time_s": search_time, "train_time_s": train_time, "rf_time_s": rf_time,
            "command": "PYTHONPATH=. python experiments/search_quality.py" + (" --quick" if args.quick else "")
            + (f" --threads {args.threads}" if args.threads != 1 else ""),
            "hardware": hardware_info(), "threads": args.threads, "python": platform.python_version()}
    (log_dir / "meta.json").write_text(json.dumps({"meta": meta, "sizes": sz}, indent=1, default=str) + "\n")
    write_report(out / "search_quality.md", runs, randoms, rf, sz, meta, log_dir)
    log(f"done in {fmt_s(meta['total_time_s'])}: {out / 'search_quality.md'}")


if __name__ == "__main__":
    main()
