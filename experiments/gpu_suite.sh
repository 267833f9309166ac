#!/usr/bin/env bash
# The GPU measurements of relnas, for one CUDA GPU, in one script. Run from a checkout with relnas
# installed (pip install -e ".[dev]"):
#
#     bash experiments/gpu_suite.sh                      # every stage, in the order below
#     bash experiments/gpu_suite.sh generation tests     # only the named stages
#     DEVICE=cpu TINY=1 bash experiments/gpu_suite.sh    # a dry run of the script on a CPU, tiny sizes
#
# Stages (the paper-size workload: 25K + 25K synthetic CIFAR-shaped images per candidate, C=16, L=8,
# batch 256, through `python -m relnas.search` unless said otherwise):
#   tests       pytest -m gpu: CUDA-graphed steps against eager ones (both capture modes, pinned and
#               default numerics), both members of a pair at once against one after the other, a
#               graphed search end to end, drop path against the official formula    -> gpu_tests.txt
#   generation  one generation of $POP (20) candidates on the GPU defaults: seconds per candidate,
#               the paper's 1000-candidate search projected from it                -> gen_default.txt
#   pair        the same generation with search.executor=concurrent_pair           -> gen_pair.txt
#   capture     a generation of $POP_AB (10) candidates with search.graph_capture=torch, to compare
#               with the default lean capture                                  -> gen_torchcapture.txt
#   variants    2 generations of $VARIANT_POP (6) for each search setting in $VARIANTS (defaults,
#               NHWC, bf16, NHWC + bf16, cuDNN autotuning); generation 2 is the steady state
#                                                                   -> variants.md, variant_<name>.log
#   bench       experiments/bench_search.py: the search path's variants against the authors'
#               per-candidate loop (naive)                        -> bench_search.{md,json,txt}
#   kernel      experiments/kernel_profile.py: a search step's GPU kernel time by kind, NCHW/NHWC x
#               fp32/bf16                                                 -> kernel_profile.{md,json,txt}
#   warmup      experiments/warmup_profile.py: a search process's start-up, step by step
#                                                                         -> warmup_profile.{md,json,txt}
#   transfer    experiments/transfer_speed.py: each transfer recipe's time per GPU
#                                                                         -> transfer_speed.{md,json,txt}
# Every run writes env.txt (date, host, commit, the command, versions, the GPU) and, last, summary.md
# (the generations' and variants' seconds per candidate, the benchmark's table) into
#     $OUT (default: experiments/results/gpu/<UTC date>-<host>/)
# with the search run directories under $OUT/runs/ (ignored by git). A stage that fails is recorded
# with its exit status and the next stage runs; the script exits 1 when a stage failed, 2 on an
# unknown stage name, 3 when python lacks a package or (DEVICE=cuda) a CUDA device.
#
# Settings (environment variables): DEVICE (cuda | cpu), TINY=1 (tiny sizes for a dry run), OUT,
# PYTHON (default python), NUM_TRAIN (search-train + search-valid images, 50000), POP (20),
# POP_AB (10), VARIANT_POP (6), C (16), LAYERS (8), VARIANTS ("name=override[,override...] ...").
set -u
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
ALL_STAGES="tests generation pair capture variants bench kernel warmup transfer"
cd "$(dirname "$0")/.."
ROOT=$(pwd)

STAGES=${*:-$ALL_STAGES}
for s in $STAGES; do
    if [[ " $ALL_STAGES " != *" $s "* ]]; then
        echo "error: unknown stage '$s': choose from $ALL_STAGES" >&2
        exit 2
    fi
done
want() { [[ " $STAGES " == *" $1 "* ]]; }

PY=${PYTHON:-python}
DEVICE=${DEVICE:-cuda}
ACCEL=$([ "$DEVICE" = cuda ] && echo gpu || echo cpu)
if [ -n "${TINY:-}" ]; then
    NUM_TRAIN=${NUM_TRAIN:-64} POP=${POP:-2} POP_AB=${POP_AB:-2} VARIANT_POP=${VARIANT_POP:-2} C=${C:-4} LAYERS=${LAYERS:-3}
else
    NUM_TRAIN=${NUM_TRAIN:-50000} POP=${POP:-20} POP_AB=${POP_AB:-10} VARIANT_POP=${VARIANT_POP:-6} C=${C:-16} LAYERS=${LAYERS:-8}
fi
VARIANTS=${VARIANTS:-"default= nhwc=search.channels_last=true bf16=trainer.precision=bf16-mixed nhwc_bf16=search.channels_last=true,trainer.precision=bf16-mixed cudnn_bench=trainer.benchmark=true"}
HOST=$(hostname -s 2>/dev/null || hostname)
OUT=${OUT:-$ROOT/experiments/results/gpu/$(date -u +%Y-%m-%d)-$HOST}
RUNS=$OUT/runs
mkdir -p "$OUT" "$RUNS"
STATUS=$RUNS/status.txt
: > "$STATUS"
FAILED=0
T0=$(date +%s)
stamp() { echo "[gpu_suite +$(( $(date +%s) - T0 ))s] $*"; }
# record NAME RC T1: one line of the status file, and a failed stage counted
record() {
    echo "$1 $2 $(( $(date +%s) - $3 ))" >> "$STATUS"
    [ "$2" = 0 ] || FAILED=1
    stamp "$1: exit $2"
}

{
    echo "date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "host: $HOST"
    echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    echo "command: DEVICE=$DEVICE${TINY:+ TINY=$TINY} bash experiments/gpu_suite.sh $STAGES"
    echo "sizes: NUM_TRAIN=$NUM_TRAIN POP=$POP POP_AB=$POP_AB VARIANT_POP=$VARIANT_POP C=$C LAYERS=$LAYERS"
} > "$OUT/env.txt"
if ! DEVICE=$DEVICE $PY - >> "$OUT/env.txt" 2>&1 <<'EOF'
import importlib, os, platform, sys
missing = []
for m in ("torch", "lightning", "hydra", "omegaconf", "torchvision", "PIL", "numpy", "relnas"):
    try:
        importlib.import_module(m)
    except Exception as e:  # noqa: BLE001
        missing.append(f"{m} ({type(e).__name__}: {e})")
if missing:
    print("MISSING: " + "; ".join(missing))
    sys.exit(3)
import lightning, torch
cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
           platform.processor() or platform.machine()) if os.path.exists("/proc/cpuinfo") else platform.machine()
print(f"cpu: {cpu} ({os.cpu_count()} cores)")
print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda,
      "lightning", lightning.__version__)
if os.environ["DEVICE"] == "cuda":
    if not torch.cuda.is_available():
        print("MISSING: a CUDA device visible to torch")
        sys.exit(3)
    p = torch.cuda.get_device_properties(0)
    print(f"gpu: {p.name}, {p.total_memory / 2**30:.0f} GiB")
EOF
then
    cat "$OUT/env.txt"
    stamp "python lacks a package or a CUDA device (see above): exit 3"
    exit 3
fi
cat "$OUT/env.txt"

# search NAME POPULATION GENERATIONS LOG [OVERRIDES...]: one search through the entry point
search() {
    local name=$1 pop=$2 gens=$3 log=$4 t1 rc
    shift 4
    t1=$(date +%s)
    $PY -m relnas.search data=synthetic data.num_train="$NUM_TRAIN" search.population_size="$pop" \
        search.generations="$gens" supernet.C="$C" supernet.layers="$LAYERS" trainer.accelerator="$ACCEL" \
        logger=none search.plots=false "hydra.run.dir=$RUNS/$name" "$@" > "$log" 2>&1
    rc=$?
    echo "exit $rc, process wall $(( $(date +%s) - t1 )) s, overrides: $*" >> "$log"
    grep -oE "generation [0-9]+/[0-9]+:.*|error: .*|Traceback.*" "$log" | tail -n 4
    record "$name" "$rc" "$t1"
}

if want tests; then
    stamp "tests: pytest -m gpu"
    t1=$(date +%s)
    if [ "$DEVICE" = cuda ]; then
        $PY -m pytest -q -m gpu tests -p no:cacheprovider -rs > "$OUT/gpu_tests.txt" 2>&1
        rc=$?
    else
        echo "skipped: the GPU tests need DEVICE=cuda" > "$OUT/gpu_tests.txt"
        rc=0
    fi
    tail -n 2 "$OUT/gpu_tests.txt"
    record tests "$rc" "$t1"
fi
if want generation; then
    stamp "generation: $POP candidates, GPU defaults"
    search gen_default "$POP" 1 "$OUT/gen_default.txt"
fi
if want pair; then
    stamp "pair: $POP candidates, search.executor=concurrent_pair"
    search gen_pair "$POP" 1 "$OUT/gen_pair.txt" search.executor=concurrent_pair
fi
if want capture; then
    stamp "capture: $POP_AB candidates, search.graph_capture=torch"
    search gen_torchcapture "$POP_AB" 1 "$OUT/gen_torchcapture.txt" search.graph_capture=torch
fi
if want variants; then
    for v in $VARIANTS; do
        name=${v%%=*} overrides=${v#*=}
        stamp "variants: $name (${overrides:-defaults}), 2 generations of $VARIANT_POP"
        # shellcheck disable=SC2046
        search "variant_$name" "$VARIANT_POP" 2 "$OUT/variant_$name.log" search.progress=false \
            $(echo "$overrides" | tr ',' ' ')
    done
fi

# profile NAME "TINY ARGS" [ARGS...]: experiments/NAME.py ARGS (then TINY ARGS when TINY is set)
# -> $OUT/NAME.{md,json,txt}
profile() {
    local name=$1 tiny=$2 t1 rc
    shift 2
    t1=$(date +%s)
    # shellcheck disable=SC2086
    $PY "experiments/$name.py" --device "$DEVICE" "$@" ${TINY:+$tiny} \
        --results "$OUT/$name.md" --json "$OUT/$name.json" > "$OUT/$name.txt" 2>&1
    rc=$?
    tail -n 3 "$OUT/$name.txt"
    record "$name" "$rc" "$t1"
}
if want bench; then
    stamp "bench: experiments/bench_search.py"
    profile bench_search "--candidates 2 --naive-candidates 2 --variants relnas,naive" \
        --candidates 4 --naive-candidates 2 --warmup-pairs 1 --ops-candidates 0 \
        --variants relnas,relnas-pair,relnas-bf16,relnas-bench,naive --num-train $(( NUM_TRAIN / 2 )) --num-val $(( NUM_TRAIN / 2 )) --C "$C" --layers "$LAYERS" \
        --note "bash experiments/gpu_suite.sh"
fi
if want kernel; then
    stamp "kernel: experiments/kernel_profile.py"
    profile kernel_profile "--batch 16 --C 4 --layers 3 --steps 1 --warmup 1 --candidates 1"
fi
if want warmup; then
    stamp "warmup: experiments/warmup_profile.py"
    profile warmup_profile "--C 4 --layers 3 --batch 16 --eval-batch 32 --candidates 2 --steps 3 --val-steps 2"
fi
if want transfer; then
    stamp "transfer: experiments/transfer_speed.py"
    profile transfer_speed "--tiny --steps 1 --warmup 1"
fi

stamp "summary"
PAPER=$([ "$NUM_TRAIN/$C/$LAYERS" = 50000/16/8 ] && echo 1) OUT=$OUT RUNS=$RUNS STATUS=$STATUS VARIANTS=$VARIANTS \
    $PY - > "$OUT/summary.md" <<'EOF'
"""summary.md: seconds per candidate of each search run (generations.csv time over history.csv rows)."""
import csv, json, os, re
from pathlib import Path

out, runs = Path(os.environ["OUT"]), Path(os.environ["RUNS"])
OFFICIAL = 13.9  # the authors' code, seconds per paper-size candidate on an H200 (experiments/results/bench.md)
status = {}
for line in open(os.environ["STATUS"]):
    name, rc, wall = line.split()
    status[name] = (rc, wall)


def per_generation(name):
    """Seconds per candidate of each generation of the run, or None when it wrote no generations.csv."""
    gens, hist = runs / name / "generations.csv", runs / name / "history.csv"
    if not gens.is_file():
        return None
    counts = {}
    for r in csv.DictReader(open(hist)):
        counts[r["generation"]] = counts.get(r["generation"], 0) + 1
    return [float(r["time_s"]) / counts[r["generation"]] for r in csv.DictReader(open(gens))]


def after_first(name, log):
    """Seconds per candidate after the first unit (a candidate, or a pair at once: the process's warm-up),
    from the progress bar's first count and time in the log and the generation's time; '-' without them."""
    per = per_generation(name)
    bars = re.findall(r"(\d+)/(\d+) \[(\d+):(\d+)", (out / log).read_text(errors="replace"))
    first = next(((int(c), int(n), int(m) * 60 + int(s)) for c, n, m, s in bars if int(c) > 0), None)
    if not per or first is None or first[0] >= first[1]:
        return "-"
    return f"{(per[0] * first[1] - first[2]) / (first[1] - first[0]):.2f}"


print("# GPU suite\n")
print("```")
print((out / "env.txt").read_text().strip())
print("```\n")
print("| stage | exit | wall s |")
print("|---|---|---|")
for name, (rc, wall) in status.items():
    print(f"| {name} | {rc} | {wall} |")

paper = bool(os.environ.get("PAPER"))  # the paper's sizes: the projection and the authors' ratio apply
gens = [n for n in ("gen_default", "gen_pair", "gen_torchcapture") if n in status]
if gens:
    print("\n| search (one generation) | s/candidate | after the first candidate or pair | 1000 candidates |"
          + (" authors' 13.9 s / this |" if paper else ""))
    print("|---|---|---|---|" + ("---|" if paper else ""))
    for name in gens:
        per = per_generation(name)
        if per is None:
            print(f"| {name} | - (no generations.csv) | | |" + (" |" if paper else ""))
        else:
            print(f"| {name} | **{per[0]:.2f}** | {after_first(name, name + '.txt')} | {per[0] * 1000 / 60:.1f} min |"
                  + (f" {OFFICIAL / per[0]:.2f}x |" if paper else ""))

variants = [v.split("=", 1) for v in os.environ["VARIANTS"].split()]
variants = [(n, o) for n, o in variants if f"variant_{n}" in status]
if variants:
    print("\n| variant | overrides | s/candidate, generation 1 (with the process warm-up) | generation 2 |")
    print("|---|---|---|---|")
    for name, overrides in variants:
        per = per_generation(f"variant_{name}") or []
        cells = [f"{p:.2f}" for p in per] + ["-"] * (2 - len(per))
        print(f"| {name} | {overrides or '(defaults)'} | {cells[0]} | {cells[1]} |")

bench = out / "bench_search.json"
if bench.is_file():
    b = json.loads(bench.read_text())
    naive = b["paper_s_per_candidate"].get("naive")
    print("\n| bench variant | candidates | s/paper-size candidate | naive / this |")
    print("|---|---|---|---|")
    for n, per in b["paper_s_per_candidate"].items():
        ratio = f"{naive / per:.2f}x" if naive and n != "naive" else ""
        print(f"| {n} | {b['candidates'][n]} | {per:.2f} | {ratio} |")

for name in ("kernel_profile", "warmup_profile", "transfer_speed"):
    if (out / f"{name}.md").is_file():
        print(f"\n{name}: [{name}.md]({name}.md)")
EOF
rc=$?
cat "$OUT/summary.md"
[ "$rc" = 0 ] || FAILED=1
stamp "done: $OUT"
exit $FAILED
