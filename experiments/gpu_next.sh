#!/usr/bin/env bash
# The next GPU call, in one script: what decides issues 14 and 15, in order of importance, with stage
# timeouts adding up to 545 s (about 9.5 minutes with the start-up) on one H200:
#   1. (140 s) the judged figure: one paper-size generation (20 candidates x 25K+25K, C=16, L=8, batch 256)
#      through `python -m relnas.search` on the GPU defaults (NCHW, fp32, CUDA graphs, lean capture)
#      (gpu_check.sh "default")                                          -> summary.md, gen_default.txt
#   2. (110 s) the GPU tests: graphs vs eager (both capture modes), concurrent pair, end to end, drop path
#      bit for bit (gpu_check.sh "tests")                                -> gpu_tests.txt
#   3. (2 x 45 s) a search process's start-up and first candidates step by step, with search.graph_capture
#      lean (the default: no device sync or allocator-cache emptying per capture) and torch (torch.cuda.graph):
#      keep lean only if it is not slower (experiments/warmup_profile.py) -> warmup_lean.*, warmup_torch.*
#   4. (75 s)  the kernel time of one search step by kind, NCHW/NHWC x fp32/bf16: the layout and precision
#      figures of the steady state (gpu_followup.sh "kernel")            -> kernel_profile.*
#   5. (130 s) the transfer recipes' time per GPU (gpu_followup.sh "transfer") -> transfer_speed.*
# The device returns at most 8 files, so every output lands in one archive, $OUT/gpu_next.tar.gz
# (rewritten after each stage: a cut run keeps what finished), with the summaries beside it:
# $OUT/summary.md (gpu_check's table), warmup_lean.md, warmup_torch.md, kernel_profile.md, transfer_speed.md.
# Device command (wheels as in gpu_check.sh's header; carry [".whl"], timeout_s 600):
#   python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl; export PYTHONPATH=/tmp/site:$(pwd); bash experiments/gpu_next.sh
# Dry run on a CPU: DEVICE=cpu TINY=1 NUM_TRAIN=64 POP=2 C=4 LAYERS=3 TIMEOUT_SCALE=6 OUT=/tmp/gn bash experiments/gpu_next.sh
set -u
cd "$(dirname "$0")/.."
FINAL="${OUT:-$(pwd)/gpu_next_out}"
WORK=${WORK:-/tmp/relnas_gpu_next}
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
rm -rf "$WORK"
mkdir -p "$FINAL" "$WORK"
export PYTHONPATH="$(pwd)${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 MPLBACKEND=Agg
pack() {
    tar czf "$FINAL/gpu_next.tar.gz" -C "$WORK" . 2>/dev/null
    for f in summary.md warmup_lean.md warmup_torch.md kernel_profile.md transfer_speed.md; do
        [ -f "$WORK/$f" ] && cp "$WORK/$f" "$FINAL/$f"
    done
    return 0
}
OUT="$WORK" STAGES="default tests" bash experiments/gpu_check.sh
pack
for capture in lean torch; do
    echo "[gpu_next] warm-up profile, capture $capture"
    timeout -k 5 45 $PY experiments/warmup_profile.py --device "$DEVICE" --capture "$capture" --candidates 4 \
        ${TINY:+--C 4 --layers 3 --batch 16 --eval-batch 32 --steps 3 --val-steps 2} \
        --results "$WORK/warmup_$capture.md" --json "$WORK/warmup_$capture.json" > "$WORK/warmup_$capture.txt" 2>&1
    echo "exit $?" >> "$WORK/warmup_$capture.txt"
    grep -E "CUDA context|\| [1-4] \||exit|Error" "$WORK/warmup_$capture.txt" | tail -n 8
done
pack
OUT="$WORK" STAGES="kernel" bash experiments/gpu_followup.sh
pack
OUT="$WORK" STAGES="transfer" bash experiments/gpu_followup.sh
pack
echo "[gpu_next] done: $FINAL/gpu_next.tar.gz"
