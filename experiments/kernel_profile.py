"""Where a search candidate's training step spends its GPU time: kernels grouped by kind, per
memory layout and precision.

    python experiments/kernel_profile.py --device cuda                 # ~1 min on an H200
    python experiments/kernel_profile.py --device cpu --batch 32 --C 4 --layers 3 --steps 1   # dry run

For each setting (``--settings``: ``nchw``/``nhwc`` x ``fp32``/``bf16``) and each of the first
``--candidates`` candidates of a RelativeNAS search's initial population (``--seed``), one eager
training step of the search (forward with drop path, backward, clipping, SGD with momentum, on a
``WeightSet`` of C=16, L=8 at batch 256 on 32x32 inputs, the paper's search network) is warmed
up and then profiled over ``--steps`` steps with ``torch.profiler``. On a CUDA device it reports,
per step: wall time, the number of kernels, the summed kernel time (and so the fraction of the
wall time the GPU is busy), and kernel time by kind (convolution forward / data-gradient /
weight-gradient, depthwise, BatchNorm, pooling, elementwise, reductions, GEMM, copies, other),
plus the most expensive kernels by name. With CUDA graphs the launch gaps go away and the summed
kernel time is the floor of a step, so this table says which kernels to make faster.

On a CPU (a dry run of the script) the "kernels" are the ATen operations with their self CPU
time. Results are appended to ``--results`` (markdown) and ``--json``.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import re
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench_search import _VIEW_OPS  # noqa: E402  (views and allocations: not work of their own)
from relnas.search import encoding  # noqa: E402
from relnas.search.weight_set import WeightSet  # noqa: E402
from relnas.utils.io import append_markdown  # noqa: E402

# kernel (or ATen operation) name -> kind; the first pattern that matches wins
KINDS: List[Tuple[str, str]] = [
    ("depthwise weight-grad", r"(depthwise|dw_).*(grad_weight|wgrad|backward_weight)"),
    ("depthwise", r"depthwise|dw_"),
    ("conv weight-grad", r"wgrad|grad_weight|weight_grad|backward_weight|bwd_filter"),
    ("conv data-grad", r"dgrad|grad_input|backward_input|bwd_data"),
    ("conv backward (CPU: both)", r"convolution_backward"),
    ("conv forward", r"fprop|convolve|conv|winograd|fft"),
    ("batchnorm", r"batch_norm|batchnorm|bn_|welford"),
    ("pooling", r"pool"),
    ("gemm", r"gemm|gemv|addmm|\bmm\b|matmul|cutlass|sm\d+_xmma"),
    ("reduction", r"reduce|sum|norm|mean"),
    ("copy/layout", r"copy|memcpy|memset|nchwToNhwc|nhwcToNchw|transpose"),
    ("elementwise", r"elementwise|vectorized|unrolled|relu|threshold|clamp|add|mul|where|fill|foreach|multi_tensor"
                    r"|bernoulli|lerp"),
]


def kind_of(name: str) -> str:
    for kind, pattern in KINDS:
        if re.search(pattern, name, flags=re.IGNORECASE):
            return kind
    return "other"


def first_candidates(n: int, seed: int):
    """The first ``n`` genotypes of a random initial population drawn with ``seed``."""
    return [encoding.decode(v) for v in encoding.sample(np.random.default_rng(seed), n)]


def profile_setting(args, device: torch.device, layout: str, precision: str) -> Dict:
    from torch.profiler import ProfilerActivity, profile

    fmt = torch.channels_last if layout == "nhwc" else torch.contiguous_format
    torch.manual_seed(args.seed)
    ws = WeightSet(C=args.C, num_classes=10, layers=args.layers).to(device, memory_format=fmt)
    x = torch.randn(args.batch, 3, 32, 32, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, 10, (args.batch,), device=device)
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    by_kind: Dict[str, float] = defaultdict(float)
    by_name: Dict[str, float] = defaultdict(float)
    n_kernels, kernel_us, wall_s = 0, 0.0, 0.0
    for genotype in first_candidates(args.candidates, args.seed):
        arch = ws.compile(genotype)
        params = ws.parameters_of(arch)
        opt = torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=3e-4)

        def step():
            with amp:
                loss = F.cross_entropy(ws(x, arch, args.drop_path), y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 5.0, foreach=True)
            opt.step()
            opt.zero_grad(set_to_none=True)

        ws.train()
        for _ in range(args.warmup):
            step()
        if cuda:
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        for _ in range(args.steps):
            step()
        if cuda:
            torch.cuda.synchronize(device)
        wall_s += time.perf_counter() - t0
        with profile(activities=activities) as prof:
            for _ in range(args.steps):
                step()
            if cuda:
                torch.cuda.synchronize(device)
        for name, us in leaf_times(prof, cuda):
            by_kind[kind_of(name)] += us
            by_name[name] += us
            kernel_us += us
            n_kernels += 1
    steps = args.candidates * args.steps
    per_step_ms = kernel_us / steps / 1000
    wall_ms = wall_s / steps * 1000
    return {
        "layout": layout, "precision": precision, "wall_ms_per_step": wall_ms,
        "kernels_per_step": n_kernels / steps, "kernel_ms_per_step": per_step_ms,
        "busy_fraction": per_step_ms / wall_ms if wall_ms else 0.0,
        "by_kind_ms": {k: v / steps / 1000 for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1])},
        "top": [(n, v / steps / 1000) for n, v in Counter(by_name).most_common(args.top)],
    }


def leaf_times(prof, cuda: bool):
    """(name, microseconds) of every GPU kernel (CUDA), or of every ATen operation with its self CPU
    time (CPU; views and allocations left out), in a profile."""
    from torch.autograd import DeviceType

    events = prof.events()
    if cuda:
        for e in events:
            if getattr(e, "device_type", None) == DeviceType.CUDA:
                yield e.name, float(e.time_range.elapsed_us())
        return
    for e in events:
        if e.name.startswith("aten::") and e.name not in _VIEW_OPS and e.self_cpu_time_total > 0:
            yield e.name, float(e.self_cpu_time_total)


def markdown(results: List[Dict], args, device: torch.device) -> str:
    hw = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    unit = "kernel" if device.type == "cuda" else "ATen op"
    lines = [
        f"### kernel profile, {_dt.datetime.now(_dt.timezone.utc):%Y-%m-%d %H:%M} UTC, {hw}, torch {torch.__version__}",
        "",
        f"`python experiments/kernel_profile.py {' '.join(sys.argv[1:])}`: one eager training step of the search "
        f"(C={args.C}, L={args.layers}, batch {args.batch}, drop path {args.drop_path}), {args.candidates} candidates "
        f"x {args.steps} profiled steps after {args.warmup} warm-up steps; per step:",
        "",
        f"| setting | wall ms | {unit}s | {unit} ms | busy | by kind (ms) |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        kinds = ", ".join(f"{k} {v:.2f}" for k, v in r["by_kind_ms"].items())
        lines.append(f"| {r['layout']} {r['precision']} | {r['wall_ms_per_step']:.1f} | {r['kernels_per_step']:.0f} | "
                     f"{r['kernel_ms_per_step']:.2f} | {100 * r['busy_fraction']:.0f} % | {kinds} |")
    for r in results:
        lines += ["", f"Most expensive {unit}s, {r['layout']} {r['precision']} (ms per step):", ""]
        lines += [f"- {v:.3f} `{n[:140]}`" for n, v in r["top"]]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda", choices=["cpu", "cuda"])
    p.add_argument("--settings", default="nchw-fp32,nhwc-fp32,nchw-bf16,nhwc-bf16",
                   help="comma list of <nchw|nhwc>-<fp32|bf16>")
    p.add_argument("--candidates", type=int, default=2)
    p.add_argument("--steps", type=int, default=3, help="profiled steps per candidate")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--C", type=int, default=16)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--drop-path", type=float, default=0.15)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--top", type=int, default=12)
    p.add_argument("--results", default=None, help="append the markdown table to this file")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device here; use --device cpu for a dry run")
    results = []
    for setting in args.settings.split(","):
        layout, _, precision = setting.strip().partition("-")
        if layout not in ("nchw", "nhwc") or precision not in ("fp32", "bf16"):
            p.error(f"--settings: '{setting}' is not <nchw|nhwc>-<fp32|bf16>")
        results.append(profile_setting(args, device, layout, precision))
        r = results[-1]
        print(f"{setting}: {r['wall_ms_per_step']:.1f} ms/step wall, {r['kernels_per_step']:.0f} kernels, "
              f"{r['kernel_ms_per_step']:.2f} ms kernels ({100 * r['busy_fraction']:.0f} % busy)", flush=True)
    text = markdown(results, args, device)
    print(text)
    if args.results:
        append_markdown(args.results, "Kernel profiles of the search step", text)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
