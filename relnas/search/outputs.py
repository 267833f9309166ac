"""Files a search leaves in its run directory: genotype.json, population.json, history.csv,
generations.csv and the plots (loss trajectories, diversity, the final cells)."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from relnas.nas.spaces import DARTS, SearchSpace

HISTORY_FIELDS = ["generation", "individual", "pair", "role", "val_loss", "diverged", "train_loss", "lr",
                  "drop_path_prob", "vector", "genotype"]


def mark_diverged(rows: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Rows with ``diverged`` = whether the candidate's validation loss is not finite."""
    return [{**r, "diverged": not math.isfinite(float(r["val_loss"]))} for r in rows]


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table; ``|`` in cells (genotype strings) is escaped so the columns hold."""
    def cell(c: Any) -> str:
        return str(c).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")

    head = "| " + " | ".join(cell(c) for c in columns) + " |\n|" + "---|" * len(columns)
    return head + "".join("\n| " + " | ".join(cell(c) for c in row) + " |" for row in rows)


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


def write_population(path: Path, population: Dict[int, np.ndarray], losses: Dict[int, float],
                     last: Optional[Dict[int, Dict[str, Any]]] = None, space: SearchSpace = DARTS) -> Path:
    """The population as a JSON list, best first: each individual's vector and genotype, and its most
    recent estimate (``val_loss``, ``diverged``; ``role`` from ``last``, its most recent history row).

    A slow learner of the last generation has moved after its estimate: when its genotype changed,
    ``estimated`` is false and ``estimated_genotype`` names the genotype whose loss ``val_loss`` is
    (the listed one was never estimated); ``estimated`` is true when the loss is that of the listed
    genotype. ``space``: the search space the vectors encode."""
    from relnas.search.encoding import decode

    items = []
    for i, vec in population.items():
        genotype = decode(vec, space=space)
        item: Dict[str, Any] = {"individual": int(i), "val_loss": _json_safe(float(losses.get(i, math.inf))),
                                "diverged": i in losses and not math.isfinite(float(losses[i]))}
        row = (last or {}).get(int(i))
        if row is not None:
            item["role"] = str(row.get("role", ""))
            item["estimated"] = str(row.get("genotype")) == str(genotype)
            if not item["estimated"]:
                item["estimated_genotype"] = str(row.get("genotype"))
        item.update({"vector": [float(v) for v in vec], "genotype": genotype.to_dict()})
        items.append(item)
    items.sort(key=lambda d: math.inf if d["val_loss"] is None else d["val_loss"])
    path.write_text(json.dumps(items, indent=1) + "\n")
    return path


def final_ranks(history: Sequence[Dict[str, Any]]) -> Dict[int, int]:
    """Rank (0 = best) of each individual by its most recent validation loss (diverged last)."""
    last: Dict[int, tuple] = {}
    for r in history:
        g, v = int(r["generation"]), float(r["val_loss"])
        ind = int(r["individual"])
        if ind not in last or g >= last[ind][0]:
            last[ind] = (g, v if math.isfinite(v) else math.inf)
    order = sorted(last, key=lambda i: (last[i][1], i))
    return {ind: k for k, ind in enumerate(order)}


_BEST_COLORS = ("#d62728", "#ff7f0e", "#1f77b4", "#9467bd", "#8c564b")


def plot_trajectories(path: Path, history: List[Dict[str, Any]], title: str = "validation loss per individual",
                      best: int = 3) -> Path:
    """Each individual's validation loss per generation, coloured by its final rank (the best
    ``best`` in distinct colours, named in the legend; the rest on a viridis scale, dark = better),
    fast learners as filled circles and slow learners as open ones, diverged estimations as black
    crosses at the top. Integer generation ticks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    by_ind: Dict[int, List[tuple]] = {}
    for r in history:
        by_ind.setdefault(int(r["individual"]), []).append(
            (int(r["generation"]), float(r["val_loss"]), str(r.get("role", ""))))
    ranks = final_ranks(history)
    n = max(len(by_ind), 1)
    cmap = plt.get_cmap("viridis")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    finite_all = [v for pts in by_ind.values() for _, v, _ in pts if math.isfinite(v)]
    top = max(finite_all) if finite_all else 1.0
    handles = []
    for ind in sorted(by_ind, key=lambda i: -ranks[i]):  # best drawn last (on top)
        pts = sorted(by_ind[ind])
        k = ranks[ind]
        emph = k < best
        color = _BEST_COLORS[k % len(_BEST_COLORS)] if emph else cmap(0.15 + 0.8 * k / max(n - 1, 1))
        ok = [(g, v, role) for g, v, role in pts if math.isfinite(v)]
        if ok:
            ax.plot([p[0] for p in ok], [p[1] for p in ok], "-", lw=1.8 if emph else 0.8, color=color,
                    alpha=1.0 if emph else 0.55, zorder=3 if emph else 2)
            for role, face in (("fast", color), ("slow", "white")):
                sel = [p for p in ok if p[2] == role]
                if sel:
                    ax.plot([p[0] for p in sel], [p[1] for p in sel], "o", ms=5 if emph else 3.5, mfc=face,
                            mec=color, mew=1.0, ls="none", zorder=4 if emph else 2)
            other = [p for p in ok if p[2] not in ("fast", "slow")]
            if other:
                ax.plot([p[0] for p in other], [p[1] for p in other], "s", ms=3, color=color, ls="none")
        bad = [g for g, v, _ in pts if not math.isfinite(v)]
        if bad:
            ax.plot(bad, [top] * len(bad), "x", color="black", ms=6, mew=1.5, zorder=5)
        if emph:
            final = [v for _, v, _ in pts][-1]
            label = f"#{k + 1}: individual {ind}" + (f" ({final:.3f})" if math.isfinite(final) else " (diverged)")
            handles.append((k, Line2D([], [], color=color, lw=1.8, marker="o", label=label)))
    handles = [h for _, h in sorted(handles, key=lambda t: t[0])]
    roles = {str(r.get("role", "")) for r in history}
    if "fast" in roles or "slow" in roles:
        handles += [Line2D([], [], color="gray", marker="o", ls="none", label="fast learner"),
                    Line2D([], [], color="gray", marker="o", mfc="white", ls="none", label="slow learner")]
    if any(not math.isfinite(float(r["val_loss"])) for r in history):
        handles.append(Line2D([], [], color="black", marker="x", ls="none", label="diverged (drawn at the top)"))
    if handles:
        ax.legend(handles=handles, fontsize=8, loc="upper right", framealpha=0.9)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("generation")
    ax.set_ylabel("validation loss (one epoch, weight set)")
    ax.set_title(title + f" (best {min(best, n)} by final loss named; others: colour by final rank)", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=150)
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
    from matplotlib.ticker import MaxNLocator

    for a in (a1, a2):
        a.xaxis.set_major_locator(MaxNLocator(integer=True))
    a2.set_xlabel("generation")
    a2.set_ylabel("population diversity (mean std / range)")
    a2.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
