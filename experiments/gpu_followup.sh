#!/usr/bin/env bash
# The GPU measurements still open after experiments/gpu_check.sh (one device call, under 9.5 minutes (75 + 45 + 4 x 80
# + 130 s at most) on one H200; set up the wheels and PYTHONPATH as in gpu_check.sh's header):
#   0. (<= 75 s) where a candidate's step spends its GPU time: kernels by kind for NCHW/NHWC x fp32/bf16
#      (experiments/kernel_profile.py)                             -> $OUT/kernel_profile.md, .json, .txt
#      (<= 45 s) where a process's first candidates spend their time: CUDA start-up, eager warm-up
#      steps, captures, replays (experiments/warmup_profile.py)  -> $OUT/warmup_profile.md, .json, .txt
#   1. (<= 4 x 80 s) steady-state search speed by setting through `python -m relnas.search`:
#      experiments/gpu_variants.sh with POP=6 GENERATIONS=2 for the defaults (search.channels_last=auto:
#      NCHW on a GPU; fp32), NHWC, bf16 and NHWC + bf16; generation 2 is the like-for-like figure (about 20 s each on an
#      H200; generation 1 carries the ~16 s process warm-up)        -> $OUT/variants.md, $OUT/<name>.log
#   2. (130 s) the transfer recipes' training speed and projected recipe time per GPU for the
#      RelativeNAS backbone (experiments/transfer_speed.py)        -> $OUT/transfer_speed.md
# DEVICE=cpu TINY=1 runs both stages with small sizes (a dry run of the script). STAGES (default
# "kernel warmup variants transfer") picks stages by name.
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-$(pwd)/gpu_followup_out}"
mkdir -p "$OUT"
export PYTHONPATH="$(pwd)${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 MPLBACKEND=Agg
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
STAGES=" ${STAGES:-kernel warmup variants transfer} "
want() { [[ "$STAGES" == *" $1 "* ]]; }
T0=$(date +%s)
stamp() { echo "[gpu_followup +$(( $(date +%s) - T0 ))s] $*"; }

# profile NAME TIMEOUT "TINY ARGS" "GREP PATTERN": experiments/NAME.py on $DEVICE -> $OUT/NAME.{md,json,txt}
profile() {
    local name=$1 limit=$2 tiny=$3 pattern=$4
    timeout -k 5 "$limit" $PY "experiments/$name.py" --device "$DEVICE" ${TINY:+$tiny} \
        --results "$OUT/$name.md" --json "$OUT/$name.json" > "$OUT/$name.txt" 2>&1
    echo "exit $?" >> "$OUT/$name.txt"
    grep -E "$pattern|exit|Error" "$OUT/$name.txt" | tail -n 8
}

stamp "0/2 kernel profile of one training step per setting; the start-up of a search process"
want kernel && profile kernel_profile 75 "--batch 16 --C 4 --layers 3 --steps 1 --warmup 1 --candidates 1" "ms/step"
want warmup && profile warmup_profile 45 "--C 4 --layers 3 --batch 16 --eval-batch 32 --candidates 2 --steps 3 --val-steps 2" \
    "CUDA context|candidate 1|\| 1 \||\| 2 \|"
if want variants; then
stamp "1/2 search settings, 2 generations each"
if [ -n "${TINY:-}" ]; then
    small="NUM_TRAIN=64 POP=2 C=4 LAYERS=3"
else
    small="POP=6"
fi
env $small GENERATIONS=2 LIMIT=${LIMIT:-80} DEVICE="$DEVICE" OUT="$OUT" \
    VARIANTS="default= nhwc=search.channels_last=true bf16=trainer.precision=bf16-mixed nhwc_bf16=search.channels_last=true,trainer.precision=bf16-mixed" \
    bash experiments/gpu_variants.sh
fi
if want transfer; then
stamp "2/2 transfer recipe speed"
timeout -k 5 130 $PY experiments/transfer_speed.py --device "$DEVICE" --steps 10 --warmup 3 ${TINY:+--tiny} \
    --results "$OUT/transfer_speed.md" --json "$OUT/transfer_speed.json" > "$OUT/transfer_speed.txt" 2>&1
echo "exit $?" >> "$OUT/transfer_speed.txt"
grep -E "s/iter|exit|Error" "$OUT/transfer_speed.txt" | tail -n 6
fi
stamp "done"
