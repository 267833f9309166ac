"""Time of counting a candidate's size at the evaluation size (the sizes a search records for every
candidate and checks against search.constraints), whole network against cached parts.

    python experiments/size_count.py                 # ~1 min on a 2-core CPU
    python experiments/size_count.py --genotypes 500 --network imagenet --C 48 --layers 14

For random cells of the paper's space it times (1) the whole count: the network built on the meta
device and counted by PyTorch's FLOP counter (``count_params``, ``count_mult_adds``), and (2)
``relnas.nas.profile.network_size``: the first cell of the layout counted whole, every other one
from cached parts; it checks that both give the same numbers on the cells timed whole.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from relnas.nas.arch import ArchSpec  # noqa: E402
from relnas.nas.profile import count_mult_adds, count_params, network_size  # noqa: E402
from relnas.nas.spaces import DARTS  # noqa: E402
from relnas.search.encoding import decode  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--genotypes", type=int, default=1000, help="random cells counted from parts")
    ap.add_argument("--whole", type=int, default=20, help="of them, counted whole as well")
    ap.add_argument("--network", default="cifar")
    ap.add_argument("--C", type=int, default=36)
    ap.add_argument("--layers", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    rng = np.random.default_rng(args.seed)
    lo, hi = DARTS.bounds()
    archs = [ArchSpec(network=args.network, genotype=decode(rng.uniform(lo, hi), space=DARTS), C=args.C,
                      layers=args.layers) for _ in range(args.genotypes)]

    start = time.perf_counter()
    network_size(archs[0])
    first = time.perf_counter() - start
    start = time.perf_counter()
    parts = [network_size(a) for a in archs[1:]]
    per_parts = (time.perf_counter() - start) / max(len(archs) - 1, 1)

    whole = []
    start = time.perf_counter()
    for a in archs[1:1 + args.whole]:
        with torch.device("meta"):
            net = a.build()
        whole.append((count_params(net), count_mult_adds(net, a.image_size, a.in_channels)))
    per_whole = (time.perf_counter() - start) / max(len(whole), 1)
    print(json.dumps({
        "network": f"{args.network} C={args.C} L={args.layers}", "torch": torch.__version__,
        "first_cell_s": round(first, 3), "per_cell_from_parts_ms": round(per_parts * 1e3, 3),
        "per_cell_whole_ms": round(per_whole * 1e3, 1), "speedup": round(per_whole / per_parts),
        "equal_on_the_cells_counted_whole": whole == parts[:len(whole)],
    }, indent=1))


if __name__ == "__main__":
    main()
