#!/usr/bin/env bash
# GPU check: one script for one device call (its stage timeouts add up to 500 s; with the package check
# and the summary the whole run stays under 8.5 minutes on one H200). Run from the repository root:
#     OUT=/some/dir bash experiments/gpu_check.sh          ($OUT is set already on the device machine)
#
# On the workplace's device tool (its image has torch, lightning, torchmetrics, pytest, matplotlib
# but not hydra-core/omegaconf), make the wheels here first, in an ignored folder:
#     pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl hydra-core==1.3.2 omegaconf==2.3.0
#     pip wheel --no-deps -w .whl antlr4-python3-runtime==4.9.3
# then the device command is (carry [".whl"], timeout_s 600):
#     python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl; export PYTHONPATH=/tmp/site:$(pwd); bash experiments/gpu_check.sh
#
# Stages, in order of what they decide (each under its own timeout, so a hang costs only its stage):
#   1. (140 s) one paper-size generation through `python -m relnas.search` on the GPU defaults
#      (20 candidates x 25K+25K synthetic CIFAR-shaped images, C=16, L=8, batch 256; CUDA graphs
#      on by default): seconds per candidate, the projected paper search (x1000) against 1.8 s
#      (30 min) and the authors' 13.9 s                                    -> $OUT/gen_default.txt
#   2. (100 s) the same generation with search.executor=concurrent_pair       -> $OUT/gen_pair.txt
#   3. (110 s) the GPU tests (pytest -m gpu: graphed vs eager under pinned numerics (both capture modes), under default
#      numerics with a measured tolerance, concurrent pair vs sequential, end to end; drop path
#      against the official formula bit for bit)
#                                                                          -> $OUT/gpu_tests.txt
#   4. (180 s) experiments/bench_search.py --device cuda: the real search path (run_search composed
#      from configs/search.yaml) for relnas (defaults), relnas-pair, relnas-bf16, relnas-bench, each
#      timed over a whole generation of $BENCH_CANDIDATES candidates after an untimed pair, and the
#      authors' loop (naive, run first) on $NAIVE_CANDIDATES of them -> $OUT/bench.txt, $OUT/bench.md
#      (a timeout keeps the variants finished so far: bench.txt lines, the summary's JSON)
#   5. the summary table, printed last                                     -> $OUT/summary.md
# STAGES (default "default pair tests bench") picks stages by name; "nhwc" and "torchcapture" (not in the
# default) are the generation of stage 1 on POP_AB (default 10) candidates, timeout 100 s each, with
# search.channels_last=true and with search.graph_capture=torch respectively.
# plus $OUT/env.txt (versions, GPU). Each stage gets SIGTERM at its timeout and SIGKILL 5 s later
# (Lightning turns SIGTERM into an exception only at its next check). Exit 3 when python3 lacks torch / lightning / hydra / CUDA.
# DEVICE=cpu (with small sizes, e.g. NUM_TRAIN=64 POP=2 C=4 LAYERS=3 BENCH_CANDIDATES=2, and
# TIMEOUT_SCALE=6 on a slow machine) runs the same stages on a CPU: a dry run of the script itself.
set -u
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
cd "$(dirname "$0")/.."
OUT="${OUT:-$(pwd)/gpu_check_out}"
mkdir -p "$OUT"
export PYTHONPATH="$(pwd)${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
ACCEL=$([ "$DEVICE" = cuda ] && echo gpu || echo cpu)
NUM_TRAIN=${NUM_TRAIN:-50000}        # search-train + search-valid (train_portion 0.5: 25K + 25K)
POP=${POP:-20}                       # candidates of the paper-size generation
C=${C:-16}
LAYERS=${LAYERS:-8}
BENCH_CANDIDATES=${BENCH_CANDIDATES:-4}
NAIVE_CANDIDATES=${NAIVE_CANDIDATES:-2}
BENCH_VARIANTS=${BENCH_VARIANTS:-relnas,relnas-pair,relnas-bf16,relnas-bench,naive}  # naive runs first
STAGES=" ${STAGES:-default pair tests bench} "
POP_AB=${POP_AB:-10}
want() { [[ "$STAGES" == *" $1 "* ]]; }
SCALE=${TIMEOUT_SCALE:-1}            # multiplies every stage timeout (a dry run on a slow CPU)
RUNS=${RUNS:-/tmp/relnas_gpu_check}  # search run directories (not under $OUT: only 8 files come back)
rm -rf "$RUNS"
mkdir -p "$RUNS"
T0=$(date +%s)
stamp() { echo "[gpu_check +$(( $(date +%s) - T0 ))s] $*"; }
STATUS="$RUNS/status.txt"
: > "$STATUS"

stamp "checking python packages" | tee "$OUT/env.txt"
if ! DEVICE=$DEVICE $PY - <<'EOF' 2>&1 | tee -a "$OUT/env.txt"
import importlib, os, sys
missing = []
for m in ("torch", "lightning", "hydra", "omegaconf", "torchvision", "PIL", "numpy"):
    try:
        importlib.import_module(m)
    except Exception as e:  # noqa: BLE001
        missing.append(f"{m} ({type(e).__name__}: {e})")
if missing:
    print("MISSING: " + "; ".join(missing))
    sys.exit(3)
import lightning, torch
print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda,
      "lightning", lightning.__version__, "available", torch.cuda.is_available())
print("register_generator_state:", hasattr(torch.cuda.CUDAGraph, "register_generator_state"))
if os.environ.get("DEVICE") == "cuda":
    if not torch.cuda.is_available():
        print("MISSING: a CUDA device visible to torch")
        sys.exit(3)
    print("gpu", torch.cuda.get_device_name(0))
EOF
then
    stamp "missing packages (see above): exit 3"
    exit 3
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null | tee -a "$OUT/env.txt" || true

# one generation through the entry point; $1 = name, $2 = timeout, rest = extra overrides
generation() {
    local name=$1 limit=$2
    shift 2
    local log="$OUT/gen_$name.txt" t1 rc
    t1=$(date +%s)
    timeout -k 5 $(( limit * SCALE )) $PY -m relnas.search data=synthetic data.num_train="$NUM_TRAIN" search.population_size="$POP" \
        search.generations=1 supernet.C="$C" supernet.layers="$LAYERS" trainer.accelerator="$ACCEL" logger=none \
        search.plots=false "hydra.run.dir=$RUNS/$name" "$@" > "$log" 2>&1
    rc=$?
    echo "exit $rc, process wall $(( $(date +%s) - t1 )) s, overrides: $*" >> "$log"
    if [ -f "$RUNS/$name/generations.csv" ]; then
        echo "--- generations.csv" >> "$log"
        cat "$RUNS/$name/generations.csv" >> "$log"
        echo "--- history.csv (first 6 rows)" >> "$log"
        head -n 7 "$RUNS/$name/history.csv" >> "$log"
    fi
    grep -E "generation 1/1|Error|error|CUDA graph|Traceback" "$log" | tail -n 8
    echo "gen_$name $rc $(( $(date +%s) - t1 ))" >> "$STATUS"
    stamp "generation $name exit $rc"
}

if want default; then
    stamp "1/4 one paper-size generation, GPU defaults (timeout 140s)"
    generation default 140
fi
if want pair; then
    stamp "2/4 the same generation, both members of each pair at once (timeout 100s)"
    generation pair 100 search.executor=concurrent_pair
fi

if want tests; then
stamp "3/4 GPU tests (timeout 110s)"
t1=$(date +%s)
if [ "$DEVICE" = cuda ] && $PY -c "import pytest" 2>/dev/null; then
    timeout -k 5 $(( 110 * SCALE )) $PY -m pytest -q -m gpu tests/test_step_graph.py tests/test_networks.py -p no:cacheprovider -rs -s 2>&1 | tail -n 40 > "$OUT/gpu_tests.txt"
    rc=${PIPESTATUS[0]}
else
    echo "GPU tests skipped (DEVICE=$DEVICE or no pytest)" > "$OUT/gpu_tests.txt"
    rc=0
fi
tail -n 3 "$OUT/gpu_tests.txt"
echo "gpu_tests $rc $(( $(date +%s) - t1 ))" >> "$STATUS"
stamp "GPU tests exit $rc"
fi

if want nhwc; then
    stamp "the generation in NHWC (search.channels_last=true), $POP_AB candidates (timeout 100s)"
    POP=$POP_AB generation nhwc 100 search.channels_last=true
fi
if want torchcapture; then
    stamp "the generation with search.graph_capture=torch, $POP_AB candidates (timeout 100s)"
    POP=$POP_AB generation torchcapture 100 search.graph_capture=torch
fi

if want bench; then
stamp "4/4 benchmark: $BENCH_VARIANTS (timeout 180s)"
t1=$(date +%s)
timeout -k 5 $(( 180 * SCALE )) $PY experiments/bench_search.py --device "$DEVICE" --candidates "$BENCH_CANDIDATES" \
    --naive-candidates "$NAIVE_CANDIDATES" --warmup-pairs 1 --variants "$BENCH_VARIANTS" --ops-candidates 0 \
    --num-train $(( NUM_TRAIN / 2 )) --num-val $(( NUM_TRAIN / 2 )) --C "$C" --layers "$LAYERS" \
    --results "$OUT/bench.md" --json "$RUNS/bench.json" --note "gpu_check.sh" > "$OUT/bench.txt" 2>&1
rc=$?
tail -n 25 "$OUT/bench.txt"
echo "bench $rc $(( $(date +%s) - t1 ))" >> "$STATUS"
stamp "benchmark exit $rc"
fi

stamp "summary"
OUT=$OUT RUNS=$RUNS POP=$POP STATUS=$STATUS $PY - <<'EOF' 2>&1 | tee "$OUT/summary.md"
import csv, json, os, re
runs = os.environ["RUNS"]
out = os.environ["OUT"]
TARGET, OFFICIAL = 1.8, 13.9
print("| stage | exit | wall s | s/candidate | paper search (x1000) | vs 1.8 s target | authors' 13.9 s / this | s/candidate after the first unit |")
print("|---|---|---|---|---|---|---|---|")


def after_first(log_path, total_s):
    """Seconds per candidate after the first unit (candidate or pair: the process's warm-up), from
    the progress bar's first count and the generation's total time."""
    bars = re.findall(r"(\d+)/(\d+) \[(\d+):(\d+)", open(log_path, errors="replace").read())
    first = next(((int(c), int(n), int(m) * 60 + int(s)) for c, n, m, s in bars if int(c) > 0), None)
    if first is None or first[0] >= first[1]:
        return "-"
    return f"{(total_s - first[2]) / (first[1] - first[0]):.2f}"


status = {}
for line in open(os.environ["STATUS"]):
    name, rc, wall = line.split()
    status[name] = (rc, wall)
for name in ("default", "pair", "nhwc", "torchcapture"):
    if f"gen_{name}" not in status:
        continue
    rc, wall = status[f"gen_{name}"]
    path = os.path.join(runs, name, "generations.csv")
    if os.path.exists(path):
        t = sum(float(r["time_s"]) for r in csv.DictReader(open(path)))
        pop = sum(1 for _ in csv.DictReader(open(os.path.join(runs, name, "history.csv"))))  # candidates run
        per = t / pop
        print(f"| generation {name} ({pop} candidates) | {rc} | {wall} | **{per:.2f}** | {per * 1000 / 60:.1f} min | "
              f"{'met' if per <= TARGET else 'not met'} ({per / TARGET:.2f}x) | {OFFICIAL / per:.2f}x | "
              f"{after_first(os.path.join(out, f'gen_{name}.txt'), t)} |")
    else:  # cut short: the progress bar's last count and elapsed time
        log = open(os.path.join(out, f"gen_{name}.txt"), errors="replace").read()
        bars = re.findall(r"(\d+)/(\d+) \[(\d+):(\d+)", log)
        done = f"{bars[-1][0]}/{bars[-1][1]} candidates in {int(bars[-1][2]) * 60 + int(bars[-1][3])} s" if bars else "-"
        print(f"| generation {name} (no generations.csv: {done}) | {rc} | {wall} | - | - | - | - | - |")
if "gpu_tests" in status:
    rc, wall = status["gpu_tests"]
    print(f"| GPU tests | {rc} | {wall} | | | | | |")
rc, wall = status.get("bench", ("-", "-"))
path = os.path.join(runs, "bench.json")
if "bench" not in status:
    pass
elif os.path.exists(path):
    b = json.load(open(path))
    naive = b["paper_s_per_candidate"].get("naive")
    for n, per in b["paper_s_per_candidate"].items():
        extra = f"; naive / this {naive / per:.2f}x" if naive and n != "naive" else ""
        print(f"| bench {n} ({b['candidates'][n]} cand.) | {rc} | {wall} | {per:.2f}{extra} | {per * 1000 / 60:.1f} min | "
              f"{per / TARGET:.2f}x | {OFFICIAL / per:.2f}x | |")
else:
    print(f"| bench | {rc} | {wall} | - | | | | |")
EOF

stamp "done"
