"""Where a search process's first seconds go: CUDA start-up, the first steps of the first
candidates, captures and replays, one by one.

    python experiments/warmup_profile.py --device cuda                  # ~30 s on an H200
    python experiments/warmup_profile.py --device cpu --C 4 --layers 3 --batch 16 --candidates 2   # dry run

On an H200 the first candidate of a paper-size generation through ``python -m relnas.search``
took 19.9 s against 3.3 s for each later one (experiments/results/bench.md); this script splits
that start-up. After importing torch and relnas it times, with a device sync after each: the
CUDA context, the weight set moved to the device, then for each of ``--candidates`` candidates of a
random initial population, each of its first ``--steps`` training steps and ``--val-steps``
validation steps through the search's own per-candidate path
(:class:`relnas.search.candidate_step.Member`: the eager warm-up step, the CUDA-graph capture, the
replays; on a CPU every step is eager), and the release of its graphs. Paper sizes by default
(C=16, L=8, batch 256 for training, 1024 for validation, 32x32 inputs, channels_last as the
search decides on the device, fp32). Results are printed and appended to ``--results``.
"""
from __future__ import annotations

import time

T_START = time.perf_counter()

import argparse  # noqa: E402
import datetime as _dt  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Dict, List  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from relnas.search import encoding  # noqa: E402
from relnas.search.candidate_step import Member  # noqa: E402
from relnas.search.search_module import channels_last_for  # noqa: E402
from relnas.search.weight_set import WeightSet  # noqa: E402
from relnas.utils.io import append_markdown  # noqa: E402


class Clock:
    """Seconds of each named phase, the device synchronised at each mark."""

    def __init__(self, device: torch.device):
        self.device, self.rows = device, []
        self.t = time.perf_counter()

    def mark(self, name: str) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        self.rows.append((name, now - self.t))
        self.t = now
        return self.rows[-1][1]


def profile(args) -> Dict:
    device = torch.device(args.device)
    imports = time.perf_counter() - T_START
    clock = Clock(device)
    if device.type == "cuda":
        torch.cuda.init()
        torch.zeros(1, device=device).add_(1)
    clock.mark("CUDA context" if device.type == "cuda" else "device (CPU: nothing)")
    channels_last = channels_last_for(args.channels_last, device.type)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    torch.manual_seed(args.seed)
    ws = WeightSet(C=args.C, num_classes=10, layers=args.layers).to(device, memory_format=fmt)
    g = torch.Generator(device=device).manual_seed(args.seed)
    x = torch.randn(args.batch, 3, 32, 32, device=device, generator=g)
    y = torch.randint(0, 10, (args.batch,), device=device, generator=g)
    xv = torch.randn(args.eval_batch, 3, 32, 32, device=device, generator=g)
    yv = torch.randint(0, 10, (args.eval_batch,), device=device, generator=g)
    clock.mark("weight set and batches on the device")
    backend = "cuda" if device.type == "cuda" and args.graphs else None
    stream = torch.cuda.Stream(device) if backend == "cuda" else None
    vectors = encoding.sample(np.random.default_rng(args.seed), args.candidates)
    per_candidate: List[Dict] = []
    for k, v in enumerate(vectors):
        arch = ws.compile(encoding.decode(v))
        m = Member(ws, arch, lr=0.1, drop_prob=args.drop_path, seed=args.seed + k, momentum=0.9, weight_decay=3e-4,
                   grad_clip=5.0, channels_last=channels_last, graph_backend=backend, graph_warmup=1,
                   graph_stream=stream, graph_capture=args.capture)  # one side stream, as SearchModule keeps
        clock.mark(f"candidate {k + 1}: compile and optimizer")
        train, val = [], []
        for i in range(args.steps):
            m.run("train", x, y)
            train.append(clock.mark(f"candidate {k + 1}: train step {i + 1}"))
        ws.eval()
        with torch.inference_mode():
            for i in range(args.val_steps):
                m.run("val", xv, yv)
                val.append(clock.mark(f"candidate {k + 1}: val step {i + 1}"))
        ws.train()
        m.losses().tolist()
        stats, capture_s = m.release()
        clock.mark(f"candidate {k + 1}: losses read, graphs released")
        per_candidate.append({"train_s": train, "val_s": val, "graph_stats": stats, "capture_s": capture_s})
    return {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU",
            "torch": torch.__version__, "imports_s": imports, "channels_last": channels_last,
            "graphs": backend is not None, "capture": args.capture, "phases": clock.rows, "candidates": per_candidate}


def markdown(r: Dict, argv: List[str]) -> str:
    lines = [f"### warm-up profile, {_dt.datetime.now(_dt.timezone.utc):%Y-%m-%d %H:%M} UTC, {r['device']}, "
             f"torch {r['torch']}", "",
             f"`python experiments/warmup_profile.py {' '.join(argv)}` (channels_last {r['channels_last']}, "
             f"CUDA graphs {r['graphs']}, capture {r.get('capture', 'lean')}); seconds, device synchronised after each:",
             "",
             f"- import torch and relnas: {r['imports_s']:.2f}"]
    lines += [f"- {name}: {s:.3f}" for name, s in r["phases"] if ": train step" not in name and ": val step" not in name]
    lines += ["", "| candidate | train steps (s) | val steps (s) | captures | capture s |", "|---|---|---|---|---|"]
    for k, c in enumerate(r["candidates"]):
        lines.append(f"| {k + 1} | {', '.join(f'{s:.3f}' for s in c['train_s'])} | "
                     f"{', '.join(f'{s:.3f}' for s in c['val_s'])} | {c['graph_stats'].get('captures', 0)} | "
                     f"{c['capture_s']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda", choices=["cpu", "cuda"])
    p.add_argument("--candidates", type=int, default=3)
    p.add_argument("--steps", type=int, default=5, help="training steps timed per candidate")
    p.add_argument("--val-steps", type=int, default=3)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--eval-batch", type=int, default=1024)
    p.add_argument("--C", type=int, default=16)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--drop-path", type=float, default=0.15)
    p.add_argument("--channels-last", default="auto", choices=["auto", "true", "false"])
    p.add_argument("--no-graphs", dest="graphs", action="store_false", help="eager steps on a GPU too")
    p.add_argument("--capture", default="lean", choices=["lean", "torch"],
                   help="how graphs are captured (search.graph_capture): lean, or torch.cuda.graph (which syncs and "
                        "empties the allocator cache before each capture)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--results", default=None, help="append the markdown record to this file")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    args.channels_last = {"auto": "auto", "true": True, "false": False}[args.channels_last]
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device here; use --device cpu for a dry run")
    r = profile(args)
    text = markdown(r, argv)
    print(text)
    if args.results:
        append_markdown(Path(args.results), "Warm-up profiles of the search", text)
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
