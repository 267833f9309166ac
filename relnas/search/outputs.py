"""Files a search leaves in its run directory: genotype.json, population.json, history.csv,
generations.csv and the plots (loss trajectories, diversity, the Pareto fronts of loss and size,
the final cells)."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np

from relnas.nas.genotypes import Genotype
from relnas.nas.spaces import DARTS, SearchSpace
from relnas.search.constraints import Cost

#: a candidate's sizes on the evaluation network (fields of :class:`~relnas.search.constraints.Cost`,
#: millions) and how the plots name them
SIZES = {"params_m": "parameters (M)", "mult_adds_m": "multiply-adds (M)"}
HISTORY_FIELDS = ["generation", "individual", "pair", "role", "val_loss", "diverged", *SIZES, "train_loss", "lr",
                  "drop_path_prob", "vector", "genotype"]
#: the columns of the table of every estimated candidate (:func:`estimated_candidates`)
CANDIDATE_FIELDS = ["generation", "individual", "role", "val_loss", *SIZES, *(f"front_{k}" for k in SIZES),
                    "chosen", "genotype"]


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
                     cost: Callable[[Genotype], Cost], last: Optional[Dict[int, Dict[str, Any]]] = None,
                     space: SearchSpace = DARTS) -> Path:
    """The population as a JSON list, best first: each individual's vector and genotype, the
    genotype's sizes (``params_m``, ``mult_adds_m``: ``cost(genotype)``, the evaluation network's)
    and its most recent estimate (``val_loss``, ``diverged``; ``role`` from ``last``, its most
    recent history row).

    A slow learner of the last generation has moved after its estimate: when its genotype changed,
    ``estimated`` is false and ``estimated_genotype`` names the genotype whose loss ``val_loss`` is
    (the listed one was never estimated; the sizes are the listed one's); ``estimated`` is true when
    the loss is that of the listed genotype. ``space``: the search space the vectors encode."""
    from dataclasses import asdict

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
        item.update(asdict(cost(genotype)))
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


def pareto_front(sizes: Sequence[float], losses: Sequence[float]) -> List[int]:
    """Indices of the points ``(sizes[i], losses[i])`` that no other point dominates, both
    coordinates minimised, in the order of increasing size (and so of decreasing loss).

    A point dominates another when it is no worse in both coordinates and better in one. Ties,
    deliberately: of points with the same size only those with the lowest loss are on the front,
    of points with the same loss only those with the smallest size; points equal in both
    coordinates dominate none of each other, so copies of a front point are all on it (in index
    order) and copies of a dominated point all off it. A point with a coordinate that is not finite
    (a diverged candidate) is never on the front and dominates nothing."""
    if len(sizes) != len(losses):
        raise ValueError(f"pareto_front: {len(sizes)} sizes but {len(losses)} losses")
    finite = [i for i in range(len(sizes)) if math.isfinite(sizes[i]) and math.isfinite(losses[i])]
    front: List[int] = []
    for i in sorted(finite, key=lambda i: (sizes[i], losses[i], i)):
        if not front or losses[i] < losses[front[-1]]:
            front.append(i)
        elif losses[i] == losses[front[-1]] and sizes[i] == sizes[front[-1]]:
            front.append(i)  # a copy of the last front point
    return front


def estimated_candidates(history: Sequence[Dict[str, Any]], chosen: Optional[int] = None) -> List[Dict[str, Any]]:
    """Every estimated candidate (each history row with a finite validation loss) with the
    :data:`CANDIDATE_FIELDS`: its row's values, ``front_<size>`` = whether it is on the Pareto front
    of validation loss against that size (:func:`pareto_front` among these candidates), and
    ``chosen`` = whether it is the history row ``chosen`` (its index; None: no cell was chosen)."""
    rows = [(k, r) for k, r in enumerate(history) if math.isfinite(float(r["val_loss"]))]
    losses = [float(r["val_loss"]) for _, r in rows]
    fronts = {key: set(pareto_front([float(r[key]) for _, r in rows], losses)) for key in SIZES}
    out = []
    for n, (k, r) in enumerate(rows):
        item = {f: r[f] for f in CANDIDATE_FIELDS if f in r}
        item.update({f"front_{key}": n in fronts[key] for key in SIZES}, chosen=k == chosen)
        out.append({f: item[f] for f in CANDIDATE_FIELDS})
    return out


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


def plot_pareto(path: Path, history: Sequence[Dict[str, Any]], network: Mapping[str, Any],
                budgets: Mapping[str, Optional[float]], chosen: Optional[int] = None) -> Path:
    """Validation loss against each of the :data:`SIZES` on the evaluation network ``network``
    (:meth:`~relnas.search.constraints.SizeConstraints.evaluation_network`), one panel each:
    every estimated candidate coloured by its generation, the Pareto front of the panel
    (:func:`pareto_front`) circled and joined by a step line, the chosen cell (the history row ``chosen``) as a star, the panel's budget
    (``budgets[size]``, None: no limit) as a dashed line. Diverged candidates are not drawn; the
    title counts them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import Normalize
    from matplotlib.lines import Line2D

    records = estimated_candidates(history, chosen)
    diverged = len(history) - len(records)
    gens = [int(r["generation"]) for r in records]
    norm = Normalize(vmin=1, vmax=max(gens + [2]))
    fig, axes = plt.subplots(1, len(SIZES), figsize=(11, 4.5), squeeze=False, sharey=True)
    for ax, (key, label) in zip(axes[0], SIZES.items()):
        xs, ys = [float(r[key]) for r in records], [float(r["val_loss"]) for r in records]
        points = ax.scatter(xs, ys, c=gens, cmap="viridis", norm=norm, s=16, alpha=0.8, zorder=2)
        front = [r for r in records if r[f"front_{key}"]]  # in history order; the step line by size
        front.sort(key=lambda r: (float(r[key]), float(r["val_loss"])))
        fx, fy = [float(r[key]) for r in front], [float(r["val_loss"]) for r in front]
        ax.step(fx, fy, where="post", color="#d62728", lw=1.2, zorder=3)
        ax.scatter(fx, fy, s=70, facecolors="none", edgecolors="#d62728", linewidths=1.3, zorder=4)
        handles = [Line2D([], [], color="#d62728", lw=1.2, marker="o", mfc="none",
                          label=f"Pareto front ({len(front)} of {len(records)})")]
        for r in records:
            if r["chosen"]:
                ax.plot([float(r[key])], [float(r["val_loss"])], "*", ms=17, color="gold", mec="black", zorder=5)
                handles.append(Line2D([], [], ls="none", marker="*", ms=12, color="gold", mec="black",
                                      label=f"chosen: individual {r['individual']} ({float(r['val_loss']):.3f}, "
                                            f"{float(r[key]):.4g}M)"))
        limit = budgets.get(key)
        if limit is not None:
            ax.axvline(limit, ls="--", color="black", lw=1.0, zorder=1)
            handles.append(Line2D([], [], ls="--", color="black", lw=1.0, label=f"budget {limit:g}M"))
        ax.legend(handles=handles, fontsize=8, loc="best", framealpha=0.9)
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("validation loss (one epoch, weight set)")
    bar = fig.colorbar(points, ax=axes[0].tolist(), pad=0.02)
    bar.set_label("generation")
    bar.locator = matplotlib.ticker.MaxNLocator(integer=True)
    bar.update_ticks()
    fig.suptitle(f"{len(records)} estimated candidates, sizes on the {network['network']} network C={network['C']} "
                 f"L={network['layers']} ({network['image_size']}x{network['image_size']})"
                 + (f"; {diverged} diverged, not drawn" if diverged else ""), fontsize=9)
    fig.savefig(path, dpi=150, bbox_inches="tight")
    plt.close(fig)
    return path
