#!/usr/bin/env bash
# The next GPU call, in one script: what decides issues 14 and 15, in order of importance, with stage
# timeouts adding up to 525 s (about 9 minutes with the start-up) on one H200:
#   1. (140 s) the judged figure: one paper-size generation (20 candidates x 25K+25K, C=16, L=8, batch 256)
#      through `python -m relnas.search` on the GPU defaults (NCHW, fp32, CUDA graphs) (gpu_check.sh "default")
#   2. (80 s)  the GPU tests: graphs vs eager, concurrent pair, end to end, drop path bit for bit (gpu_check.sh "tests")
#   3. (100 s) the same generation in NHWC on 10 candidates: the layout decision (gpu_check.sh "nhwc")
#   4. (75 s)  the kernel time of one search step by kind, NCHW/NHWC x fp32/bf16 (gpu_followup.sh "kernel")
#   5. (130 s) the transfer recipes' time per GPU (gpu_followup.sh "transfer")
# The device returns at most 8 files, so every output lands in one archive, $OUT/gpu_next.tar.gz
# (rewritten after each stage: a cut run keeps what finished), with the summaries beside it:
# $OUT/summary.md (gpu_check's table), $OUT/kernel_profile.md, $OUT/transfer_speed.md.
# Device command (wheels as in gpu_check.sh's header; carry [".whl"], timeout_s 600):
#   python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl; export PYTHONPATH=/tmp/site:$(pwd); bash experiments/gpu_next.sh
# Dry run on a CPU: DEVICE=cpu TINY=1 NUM_TRAIN=64 POP=2 POP_NHWC=2 C=4 LAYERS=3 TIMEOUT_SCALE=6 OUT=/tmp/gn bash experiments/gpu_next.sh
set -u
cd "$(dirname "$0")/.."
FINAL="${OUT:-$(pwd)/gpu_next_out}"
WORK=${WORK:-/tmp/relnas_gpu_next}
rm -rf "$WORK"
mkdir -p "$FINAL" "$WORK"
pack() {
    tar czf "$FINAL/gpu_next.tar.gz" -C "$WORK" . 2>/dev/null
    for f in summary.md kernel_profile.md transfer_speed.md; do
        [ -f "$WORK/$f" ] && cp "$WORK/$f" "$FINAL/$f"
    done
    return 0
}
OUT="$WORK" STAGES="default tests nhwc" bash experiments/gpu_check.sh
pack
OUT="$WORK" STAGES="kernel" bash experiments/gpu_followup.sh
pack
OUT="$WORK" STAGES="transfer" bash experiments/gpu_followup.sh
pack
echo "[gpu_next] done: $FINAL/gpu_next.tar.gz"
