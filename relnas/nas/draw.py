"""Cell diagrams with matplotlib only (no graphviz).

Input nodes ``c_{k-2}``, ``c_{k-1}`` on the left, intermediate nodes ``0..n-1`` in layers by their
depth, the output ``c_{k}`` on the right. Each (operation, input) pair is an arrow labelled with
the operation; the concatenated nodes have unlabelled arrows to the output. Two arrows between the
same pair of nodes are curved in opposite directions so that they and their labels never overlap.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Sequence, Tuple, Union

import matplotlib

matplotlib.use("Agg")  # noqa: E402  (headless; must precede pyplot)
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Circle, FancyArrowPatch  # noqa: E402

from relnas.nas.genotypes import Genotype, get_genotype  # noqa: E402

Pair = Tuple[str, int]

_COLORS = {"input": "#b7e4c7", "inter": "#bde0fe", "output": "#ffe8a3"}
_RADIUS = 0.36


def _node_name(i: int) -> str:
    return {0: "c_{k-2}", 1: "c_{k-1}"}.get(i, str(i - 2))


def _layout(pairs: Sequence[Pair], concat: Sequence[int]) -> dict:
    """Node -> (x, y): x is the node's depth (inputs 0), nodes of a layer spread vertically."""
    steps = len(pairs) // 2
    depth = {0: 0, 1: 0}
    for j in range(steps):
        depth[j + 2] = 1 + max(depth[pairs[2 * j][1]], depth[pairs[2 * j + 1][1]])
    out_depth = max(depth.values()) + 1
    layers: dict = {}
    for node, d in depth.items():
        layers.setdefault(d, []).append(node)
    widest = max(len(v) for v in layers.values())
    xstep, ystep = 2.6 + 0.5 * max(0, widest - 2), 1.9
    pos = {}
    for d, nodes in layers.items():
        n = len(nodes)
        for r, node in enumerate(sorted(nodes)):
            pos[node] = (d * xstep, ((n - 1) / 2 - r) * ystep)
    pos["out"] = (out_depth * xstep, 0.0)
    return pos


def _bezier(p0, p2, rad, t):
    """Point at parameter ``t`` of matplotlib's ``arc3`` curve from p0 to p2 (control point
    mid + rad * (dy, -dx), a quadratic Bezier)."""
    (x0, y0), (x2, y2) = p0, p2
    dx, dy = x2 - x0, y2 - y0
    cx, cy = (x0 + x2) / 2 + rad * dy, (y0 + y2) / 2 - rad * dx
    a, b, c = (1 - t) ** 2, 2 * t * (1 - t), t ** 2
    return a * x0 + b * cx + c * x2, a * y0 + b * cy + c * y2


# where along an edge a label may sit, best first
_LABEL_T = (0.5, 0.42, 0.58, 0.34, 0.66, 0.27, 0.73, 0.2, 0.8)
# curvatures tried for an edge, straightest first
_RADS = (0.0, 0.25, -0.25, 0.45, -0.45, 0.65, -0.65)


def _overlap(b1, b2) -> float:
    w = min(b1.x1, b2.x1) - max(b1.x0, b2.x0)
    h = min(b1.y1, b2.y1) - max(b1.y0, b2.y0)
    return w * h if w > 0 and h > 0 else 0.0


def _straight_blocked(pos, src, dst) -> bool:
    """Whether the straight segment src->dst passes close to another node's circle."""
    (x0, y0), (x1, y1) = pos[src], pos[dst]
    dx, dy = x1 - x0, y1 - y0
    ll = dx * dx + dy * dy
    for node, (px, py) in pos.items():
        if node in (src, dst):
            continue
        t = ((px - x0) * dx + (py - y0) * dy) / ll
        if 0.0 < t < 1.0:
            qx, qy = x0 + t * dx, y0 + t * dy
            if (px - qx) ** 2 + (py - qy) ** 2 < (_RADIUS * 1.6) ** 2:
                return True
    return False


FORMATS = ("png", "pdf", "svg")


def _curve_blocked(pos, src, dst, rad) -> bool:
    """Whether the ``arc3`` curve src->dst with curvature ``rad`` passes close to another node."""
    others = [p for n, p in pos.items() if n not in (src, dst)]
    for k in range(1, 20):
        x, y = _bezier(pos[src], pos[dst], rad, k / 20)
        if any((x - px) ** 2 + (y - py) ** 2 < (_RADIUS * 1.5) ** 2 for px, py in others):
            return True
    return False


def _choose_rad(pos, src, dst, candidates=_RADS) -> float:
    for rad in candidates:
        if not _curve_blocked(pos, src, dst, rad):
            return rad
    return candidates[0]


def plot_cell(pairs: Sequence[Pair], concat: Sequence[int], path: Union[str, Path], title: str = "",
              formats: Sequence[str] = ()) -> Path:
    """Draw one cell (``pairs``: two (op, input node) per intermediate node) and save it as ``path``
    and, for each of ``formats`` (e.g. ``("pdf", "svg")``, vector formats for papers), beside it
    with that suffix. Labels are placed so that no two overlap and none covers a node."""
    pairs = [(str(op), int(node)) for op, node in pairs]
    concat = [int(c) for c in concat]
    pos = _layout(pairs, concat)
    xs = [p[0] for p in pos.values()]
    ys = [p[1] for p in pos.values()]
    width = max(xs) - min(xs) + 2.0
    height = max(ys) - min(ys) + 2.4
    fig, ax = plt.subplots(figsize=(max(6.0, width * 1.25), max(3.5, height * 1.25)))
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_xlim(min(xs) - 1.0, max(xs) + 1.0)
    ax.set_ylim(min(ys) - 1.2, max(ys) + 1.2)

    circles = {}
    for node, (x, y) in pos.items():
        if node == "out":
            kind, label = "output", "c_{k}"
        elif node < 2:
            kind, label = "input", _node_name(node)
        else:
            kind, label = "inter", _node_name(node)
        c = Circle((x, y), _RADIUS, facecolor=_COLORS[kind], edgecolor="black", lw=1.2, zorder=3)
        ax.add_patch(c)
        circles[node] = c
        ax.text(x, y, f"${label}$" if "_" in label else label, ha="center", va="center", fontsize=11, zorder=4)

    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    obstacles = [c.get_window_extent(renderer) for c in circles.values()]

    def place_label(src, dst, rad, label, color):
        # greedy: the first position along the edge whose box hits no placed label or node
        text = ax.text(0, 0, label, ha="center", va="center", fontsize=8, zorder=5, color="black",
                       bbox=dict(boxstyle="round,pad=0.15", facecolor="white", edgecolor=color, lw=0.6,
                                 alpha=0.92))
        best, best_cost = None, None
        for t in _LABEL_T:
            text.set_position(_bezier(pos[src], pos[dst], rad, t))
            box = text.get_window_extent(renderer).expanded(1.08, 1.25)
            cost = sum(_overlap(box, o) for o in obstacles)
            if best_cost is None or cost < best_cost:
                best, best_cost = (t, box), cost
            if cost == 0:
                break
        text.set_position(_bezier(pos[src], pos[dst], rad, best[0]))
        obstacles.append(best[1])

    def arrow(src, dst, rad, color, label=None, lw=1.3):
        a = FancyArrowPatch(pos[src], pos[dst], connectionstyle=f"arc3,rad={rad}", arrowstyle="-|>",
                            mutation_scale=13, color=color, lw=lw, patchA=circles[src], patchB=circles[dst],
                            zorder=2)
        ax.add_patch(a)
        if label:
            place_label(src, dst, rad, label, color)

    palette = plt.get_cmap("tab10")
    for j in range(len(pairs) // 2):
        dst = j + 2
        (op1, n1), (op2, n2) = pairs[2 * j], pairs[2 * j + 1]
        color = palette(j % 10)
        if n1 == n2:  # two edges between the same nodes: bent to opposite sides
            r = _choose_rad(pos, n1, dst, (0.35, 0.5, 0.65))
            rads = [r, -r]
        else:
            rads = [_choose_rad(pos, n, dst) for n in (n1, n2)]
        arrow(n1, dst, rads[0], color, op1)
        arrow(n2, dst, rads[1], color, op2)
    for c in concat:
        arrow(c, "out", _choose_rad(pos, c, "out"), "gray", None, lw=1.0)
    if title:
        ax.set_title(title, fontsize=12)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=200, bbox_inches="tight")
    for fmt in formats:
        if fmt.lstrip(".") != path.suffix.lstrip("."):
            fig.savefig(path.with_suffix("." + fmt.lstrip(".")), bbox_inches="tight")
    plt.close(fig)
    return path


def plot_genotype(genotype: Union[str, Genotype], out_dir: Union[str, Path], prefix: str = "",
                  formats: Sequence[str] = FORMATS) -> List[Path]:
    """Draw both cells of ``genotype`` to ``<out_dir>/<prefix>normal.png`` and ``<prefix>reduce.png``
    (and the same names in the other ``formats``: PDF and SVG by default); returns the PNG paths."""
    g = get_genotype(genotype)
    out_dir = Path(out_dir)
    name = genotype if isinstance(genotype, str) else ""
    suffix = f" ({name})" if name and Path(name).suffix == "" else ""
    normal = plot_cell(g.normal, g.normal_concat, out_dir / f"{prefix}normal.png", f"normal cell{suffix}", formats)
    reduce = plot_cell(g.reduce, g.reduce_concat, out_dir / f"{prefix}reduce.png", f"reduction cell{suffix}",
                       formats)
    return [normal, reduce]
