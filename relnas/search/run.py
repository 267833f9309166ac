"""The search driver: config checks, resume, one Trainer for the whole search, outputs.

``run_search(cfg, run_dir)`` is what ``python -m relnas.search`` calls; tests call it directly.
"""
from __future__ import annotations

import json
import logging
import math
import time
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional

import hydra
import lightning as L
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from relnas.models.search_module import SearchModule
from relnas.search import distributed as search_dist
from relnas.search import encoding
from relnas.search.callback import SearchLoop, SearchSettings
from relnas.search.outputs import HISTORY_FIELDS, plot_generation_stats, plot_trajectories, write_csv, write_population
from relnas.search.state import load_state, save_state
from relnas.search.strategies import STRATEGIES, create_strategy
from relnas.search.weight_set import WeightSet

log = logging.getLogger(__name__)

WEIGHT_SET_UPDATES = ("sequential", "per_generation")
# config keys that do not change what a search computes (may differ on resume)
NON_SEMANTIC = {"search.interrupt_after", "search.progress", "search.plots", "search.cuda_graphs",
                "search.concurrent_pair",
                "search.graph_warmup", "data.data_dir", "data.download", "data.on_device", "data.num_workers"}


class ConfigError(ValueError):
    """A search configuration that cannot run; raised before any work starts."""


def check_config(cfg: DictConfig) -> None:
    s = cfg.search
    n = s.population_size
    if not isinstance(n, int) or isinstance(n, bool) or n < 2 or n % 2:
        raise ConfigError(f"search.population_size must be an even integer >= 2 (it is split into pairs), got {n!r}")
    g = s.generations
    if not isinstance(g, int) or isinstance(g, bool) or g < 1:
        raise ConfigError(f"search.generations must be a positive integer, got {g!r}")
    tp = s.train_portion
    if not isinstance(tp, (int, float)) or not 0.0 < float(tp) < 1.0:
        raise ConfigError(f"search.train_portion must be in (0, 1), got {tp!r}")
    if s.strategy not in STRATEGIES:
        raise ConfigError(f"unknown search.strategy {s.strategy!r}; known strategies: {', '.join(STRATEGIES)}")
    if s.weight_set_update not in WEIGHT_SET_UPDATES:
        raise ConfigError(f"unknown search.weight_set_update {s.weight_set_update!r}; use one of {WEIGHT_SET_UPDATES}")
    if s.strategy == "evolution" and s.weight_set_update == "per_generation":
        raise ConfigError("search.strategy=evolution needs search.weight_set_update=sequential: each child is "
                          "bred from the losses of the cycles before it, so its estimations cannot run in parallel")
    if s.budget is not None and (not isinstance(s.budget, int) or s.budget < 1):
        raise ConfigError(f"search.budget must be a positive integer or null, got {s.budget!r}")
    strategy = str(cfg.trainer.get("strategy", "auto") or "auto")
    devices, nodes = cfg.trainer.get("devices", 1), cfg.trainer.get("num_nodes", 1)
    if strategy not in ("auto", "single_device") or (isinstance(devices, int) and devices > 1) or \
            (not isinstance(devices, (int, str)) and devices is not None and len(devices) > 1) or (nodes or 1) > 1:
        raise ConfigError(
            "the search trains each candidate on one device (trainer.strategy=auto, trainer.devices=1, "
            "trainer.num_nodes=1): a DDP strategy would shard the data and average the gradients of different "
            "candidates. To use several devices, run one process per device with "
            "search.weight_set_update=per_generation, e.g. `torchrun --nproc_per_node=4 -m relnas.search "
            "search.weight_set_update=per_generation` (see docs/scale_out.md)")
    world = search_dist.requested_world_size()
    if world > 1 and s.weight_set_update != "per_generation" and (world != 2 or s.strategy != "relativenas"):
        raise ConfigError(f"a search in {world} processes needs search.weight_set_update=per_generation (the pairs of a "
                          f"generation in parallel, any number of processes); in the paper's sequential order only "
                          f"2 processes can work at once (the two members of each pair, strategy relativenas)")
    for key in ("cuda_graphs", "concurrent_pair"):
        if s.get(key, False) not in (True, False, "auto"):
            raise ConfigError(f"search.{key} must be true, false or auto, got {s.get(key)!r}")
    if s.get("cuda_graphs", "auto") is not False:
        if s.get("cuda_graphs") is True and str(cfg.trainer.get("accelerator", "auto")) == "cpu":
            raise ConfigError("search.cuda_graphs=true needs a GPU (trainer.accelerator=gpu or auto); "
                              "set search.cuda_graphs=auto or false on a CPU")
        if int(s.get("graph_warmup", 1)) < 1:
            raise ConfigError(f"search.graph_warmup must be >= 1 (SGD's momentum must exist before the capture), "
                              f"got {s.graph_warmup}")
    if s.get("concurrent_pair", False) is True and world > 1:
        raise ConfigError("search.concurrent_pair=true trains both members of a pair in one process; it cannot be "
                          "combined with a search in several processes (set search.concurrent_pair=false or auto)")
    precision = str(cfg.trainer.get("precision", "32-true"))
    if precision.startswith("16"):
        raise ConfigError(f"trainer.precision={precision} is not supported by the search (per-candidate optimizers "
                          f"bypass the fp16 grad scaler); use 32-true or bf16-mixed")


def semantic_config(cfg: DictConfig) -> Dict[str, Any]:
    """The flattened keys that define the search's result (compared on resume)."""
    flat: Dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}.{k}" if prefix else str(k))
        else:
            flat[prefix] = node

    container = OmegaConf.to_container(cfg, resolve=True)
    for key in ("seed", "search", "supernet", "data"):
        walk({key: container.get(key)}, "")
    return {k: v for k, v in flat.items() if k not in NON_SEMANTIC}


def diff_configs(saved: Dict[str, Any], current: Dict[str, Any]) -> List[str]:
    keys = sorted(set(saved) | set(current))
    return [f"{k} ({saved.get(k, '<unset>')!r} -> {current.get(k, '<unset>')!r})" for k in keys
            if saved.get(k, "<unset>") != current.get(k, "<unset>")]


def _log_generation(loop: SearchLoop, trainer: L.Trainer) -> None:
    summary = loop.generation_summaries[-1]
    g = summary["generation"]
    rows = [r for r in loop.history if r["generation"] == g]
    metrics = {f"search/{k}": float(v) for k, v in summary.items() if k not in ("generation",)}
    for r in rows:
        metrics[f"val_loss/ind_{int(r['individual']):03d}"] = float(r["val_loss"]) if math.isfinite(r["val_loss"]) else float("nan")
    metrics["search/generation"] = g
    for lg in trainer.loggers:
        lg.log_metrics(metrics, step=g)
        table = [[r["generation"], r["individual"], r["pair"], r["role"], r["val_loss"], r["genotype"]] for r in rows]
        columns = ["generation", "individual", "pair", "role", "val_loss", "genotype"]
        if hasattr(lg, "log_text") and type(lg).__name__ == "WandbLogger":
            lg.log_text(key="search/genotypes", columns=columns, data=table)
        elif type(lg).__name__ == "TensorBoardLogger":
            md = "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n" + \
                 "\n".join("| " + " | ".join(str(c) for c in row) + " |" for row in table)
            lg.experiment.add_text("search/genotypes", md, global_step=g)
        lg.save()


def _write_outputs(loop: SearchLoop, run_dir: Path, final: bool, plots: bool) -> Dict[str, Any]:
    write_csv(run_dir / "history.csv", loop.history, HISTORY_FIELDS)
    write_csv(run_dir / "generations.csv", loop.generation_summaries,
              ["generation", "best_loss", "mean_loss", "diversity", "lr", "drop_path_prob", "diverged", "time_s"])
    strat = loop.strategy
    # each individual's most recent estimate (RelativeNAS: the last generation; baselines: its only one)
    losses = {int(r["individual"]): float(r["val_loss"]) for r in loop.history}
    write_population(run_dir / "population.json", strat.population(), losses)
    out: Dict[str, Any] = {}
    if final:
        best_id, best_vec, best_loss = strat.best()
        genotype = encoding.decode(best_vec)
        genotype.save(run_dir / "genotype.json")
        out = {"genotype": genotype, "individual": best_id, "val_loss": best_loss, "vector": best_vec}
        (run_dir / "result.json").write_text(json.dumps({
            "genotype": genotype.to_dict(), "genotype_str": str(genotype), "individual": best_id,
            "val_loss": best_loss if math.isfinite(best_loss) else None, "vector": [float(v) for v in best_vec],
            "strategy": strat.name, "generations": strat.generations, "estimations": len(loop.history),
        }, indent=2) + "\n")
        if plots:
            from relnas.nas.draw import plot_genotype

            plot_trajectories(run_dir / "val_loss_trajectories.png", loop.history)
            plot_generation_stats(run_dir / "diversity.png", loop.generation_summaries)
            plot_genotype(genotype, run_dir)
    return out


def _wandb_line_series(trainer: L.Trainer, history: List[Dict[str, Any]]) -> None:
    for lg in trainer.loggers:
        if type(lg).__name__ != "WandbLogger":
            continue
        import wandb

        by_ind: Dict[int, Dict[int, float]] = {}
        for r in history:
            by_ind.setdefault(int(r["individual"]), {})[int(r["generation"])] = float(r["val_loss"])
        gens = sorted({int(r["generation"]) for r in history})
        ys = [[by_ind[i].get(g, float("nan")) for g in gens] for i in sorted(by_ind)]
        lg.experiment.log({"search/val_loss_trajectories": wandb.plot.line_series(
            xs=gens, ys=ys, keys=[f"ind_{i:03d}" for i in sorted(by_ind)], title="validation loss per individual",
            xname="generation")})


def run_search(cfg: DictConfig, run_dir: Optional[Path] = None) -> Dict[str, Any]:
    """Run (or resume) a search as configured; returns the found genotype and its loss.

    Launched in several processes (``torchrun``, ``srun``; see :mod:`relnas.search.distributed`)
    with ``search.weight_set_update=per_generation``, the pairs of each generation are spread over
    the processes; only rank 0 writes outputs, checkpoints and logs (every rank returns the result).
    """
    check_config(cfg)
    dist = search_dist.setup()
    try:
        return _run_search(cfg, run_dir, dist)
    finally:
        dist.close()


def _trainer_devices(cfg: DictConfig, dist: search_dist.DistContext) -> Dict[str, Any]:
    """One device per process: on GPUs the local rank's GPU."""
    accelerator = str(cfg.trainer.get("accelerator", "auto"))
    gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    if dist.distributed and gpu and torch.cuda.device_count() > 0:
        index = dist.local_rank % torch.cuda.device_count()
        torch.cuda.set_device(index)
        return {"devices": [index], "num_nodes": 1}
    return {"devices": 1, "num_nodes": 1}


def _result(loop: SearchLoop) -> Dict[str, Any]:
    best_id, best_vec, best_loss = loop.strategy.best()
    return {"genotype": encoding.decode(best_vec), "individual": best_id, "val_loss": best_loss, "vector": best_vec}


def _run_search(cfg: DictConfig, run_dir: Optional[Path], dist: search_dist.DistContext) -> Dict[str, Any]:
    s = cfg.search
    resume_state = None
    if cfg.get("resume"):
        run_dir = Path(cfg.resume)
        resume_state, path = load_state(run_dir)
        changed = diff_configs(resume_state["config"], semantic_config(cfg))
        if changed:
            raise ConfigError("resume: the configuration differs from the one the search started with in: "
                              + "; ".join(changed))
        log.info("resuming %s from %s (after generation %d)", run_dir, path.name, resume_state["generation"])
    run_dir = Path(run_dir) if run_dir is not None else Path.cwd()
    if dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)

    data_kwargs = {"train_portion": float(s.train_portion)}
    if s.get("subset") is not None:  # search on a random subset of the training set
        data_kwargs["subset"] = int(s.subset)
    datamodule = hydra.utils.instantiate(cfg.data, **data_kwargs)
    torch.manual_seed(int(cfg.seed))
    weight_set = WeightSet(C=int(cfg.supernet.C), num_classes=datamodule.num_classes, layers=int(cfg.supernet.layers),
                           in_channels=datamodule.in_channels, num_nodes=encoding.NUM_NODES)
    extra = s.get(s.strategy)  # strategy-specific settings, e.g. search.evolution.sample_size
    strategy_kwargs = OmegaConf.to_container(extra, resolve=True) if isinstance(extra, DictConfig) else {}
    strategy = create_strategy(s.strategy, population_size=int(s.population_size), generations=int(s.generations),
                               budget=s.budget, **strategy_kwargs)
    rng = np.random.default_rng(int(cfg.seed))
    generation, history, summaries = 0, [], []
    if resume_state is not None:
        weight_set.load_state_dict(resume_state["weight_set"])
        strategy.load_state_dict(resume_state["strategy"])
        rng.bit_generator.state = resume_state["rng"]
        generation, history = int(resume_state["generation"]), list(resume_state["history"])
        summaries = list(resume_state.get("summaries", []))
    else:
        strategy.init(rng)
    if s.channels_last:
        weight_set = weight_set.to(memory_format=torch.channels_last)

    settings = SearchSettings(seed=int(cfg.seed), lr=float(s.lr), lr_min=float(s.lr_min),
                              drop_path_prob=float(s.drop_path_prob), drop_path_ramp=bool(s.drop_path_ramp),
                              weight_set_update=str(s.weight_set_update), interrupt_after=s.get("interrupt_after"))
    semantic = semantic_config(cfg)
    plots = bool(s.get("plots", True))

    def on_generation_end(loop: SearchLoop, trainer: L.Trainer) -> None:
        if trainer.is_global_zero and dist.is_main:
            _log_generation(loop, trainer)
            state = loop.state_dict()
            state.update({"weight_set": {k: v.detach().cpu() for k, v in weight_set.state_dict().items()},
                          "config": semantic, "pair": 0, "strategy_name": strategy.name,
                          "torch_rng": torch.get_rng_state(), "saved_at": time.time()})
            save_state(run_dir, state)
            _write_outputs(loop, run_dir, final=False, plots=False)

    loop = SearchLoop(strategy, settings, rng, generation=generation, history=history,
                      on_generation_end=on_generation_end, progress=bool(s.get("progress", True)), dist=dist)
    loop.generation_summaries = summaries
    if loop.done:
        log.info("the search in %s is already complete", run_dir)
        return _write_outputs(loop, run_dir, final=True, plots=plots) if dist.is_main else _result(loop)

    from relnas.utils import instantiate_loggers

    loggers = instantiate_loggers(cfg.get("logger")) if dist.is_main else []
    for lg in loggers:
        lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    module = SearchModule(weight_set, momentum=float(s.momentum), weight_decay=float(s.weight_decay),
                          grad_clip=float(s.grad_clip), channels_last=bool(s.channels_last),
                          cuda_graphs=s.get("cuda_graphs", "auto"), graph_warmup=int(s.get("graph_warmup", 1)),
                          concurrent_pair=s.get("concurrent_pair", False) if not dist.distributed else False)
    trainer: L.Trainer = hydra.utils.instantiate(
        cfg.trainer, max_epochs=loop.remaining_estimations(), callbacks=[loop], logger=loggers or False,
        **_trainer_devices(cfg, dist),
        enable_checkpointing=False, num_sanity_val_steps=0, enable_progress_bar=False, check_val_every_n_epoch=1,
        default_root_dir=str(run_dir), _convert_="partial")
    start = time.time()
    with warnings.catch_warnings():
        # expected in this design: optimizers are per candidate; the search logs per generation
        warnings.filterwarnings("ignore", message=".*configure_optimizers.*")
        warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")
        warnings.filterwarnings("ignore", message=".*LeafSpec.*")
        trainer.fit(module, datamodule=datamodule)
    if not loop.done:
        raise RuntimeError(f"the search stopped after generation {loop.generation} of {strategy.generations}; "
                           f"continue with resume={run_dir}")
    if not dist.is_main:
        result = _result(loop)
        result.update(time_s=time.time() - start, run_dir=run_dir)
        return result
    result = _write_outputs(loop, run_dir, final=True, plots=plots)
    if trainer.is_global_zero:
        _wandb_line_series(trainer, loop.history)
        for lg in loggers:
            lg.finalize("success")
    result["time_s"] = time.time() - start
    result["run_dir"] = run_dir
    return result
