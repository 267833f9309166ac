"""Files a search leaves in its run directory: genotype.json, population.json, history.csv,
generations.csv and the plots (loss trajectories, diversity, the final cells)."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any, Dict, List, Sequence

import numpy as np

HISTORY_FIELDS = ["generation", "individual", "pair", "role", "val_loss", "train_loss", "lr", "drop_path_prob",
                  "vector", "genotype"]


def write_csv(path: Path, rows: Sequence[Dict[str, Any]], fields: Sequence[str]) -> Path:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(fields), extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    tmp.replace(path)
    return path


def _json_safe(x: float) -> Any:
    return x if math.isfinite(x) else None


def write_population(path: Path, population: Dict[int, np.ndarray], losses: Dict[int, float]) -> Path:
    from relnas.search.encoding import decode

    items = [{"individual": int(i), "val_loss": _json_safe(float(losses.get(i, math.inf))),
              "vector": [float(v) for v in vec], "genotype": decode(vec).to_dict()}
             for i, vec in population.items()]
    items.sort(key=lambda d: math.inf if d["val_loss"] is None else d["val_loss"])
    path.write_text(json.dumps(items, indent=1) + "\n")
    return path


def plot_trajectories(path: Path, history: List[Dict[str, Any]], title: str = "validation loss per individual") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_ind: Dict[int, List[tuple]] = {}
    for r in history:
        by_ind.setdefault(int(r["individual"]), []).append((int(r["generation"]), float(r["val_loss"])))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    cmap = plt.get_cmap("viridis", max(len(by_ind), 1))
    for k, (ind, pts) in enumerate(sorted(by_ind.items())):
        pts = [(g, v) for g, v in sorted(pts) if math.isfinite(v)]
        if pts:
            g, v = zip(*pts)
            ax.plot(g, v, "-", lw=1, marker=".", ms=3, color=cmap(k), alpha=0.8)
    ax.set_xlabel("generation")
    ax.set_ylabel("validation loss (one epoch, weight set)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_generation_stats(path: Path, summaries: List[Dict[str, Any]]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    g = [s["generation"] for s in summaries]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    a1.plot(g, [s["best_loss"] for s in summaries], label="best")
    a1.plot(g, [s["mean_loss"] for s in summaries], label="mean")
    a1.set_xlabel("generation")
    a1.set_ylabel("validation loss")
    a1.legend()
    a1.grid(alpha=0.3)
    a2.plot(g, [s["diversity"] for s in summaries], color="tab:green")
    a2.set_xlabel("generation")
    a2.set_ylabel("population diversity (mean std / range)")
    a2.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
