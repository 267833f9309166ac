#!/usr/bin/env bash
# The next GPU call, in one script: what decides issues 14 and 15, in order of importance, with stage
# timeouts adding up to 555 s (about 9.5 minutes with the start-up) on one H200:
#   1. (140 s) the judged figure: one paper-size generation (20 candidates x 25K+25K, C=16, L=8, batch 256)
#      through `python -m relnas.search` on the GPU defaults (NCHW, fp32, CUDA graphs, lean capture)
#      (gpu_check.sh "default")                                          -> summary.md, gen_default.txt
#   2. (110 s) the GPU tests: graphs vs eager (both capture modes), concurrent pair, end to end, drop path
#      bit for bit (gpu_check.sh "tests")                                -> gpu_tests.txt
#   3. (100 s) the same generation on 10 candidates with search.graph_capture=torch (torch.cuda.graph: a device
#      sync and allocator-cache emptying before each capture, so the GPU idles while the host captures) against
#      the default lean capture (captured while the GPU still runs the queued steps): compare the summary's
#      "s/candidate after the first unit"; keep lean only if it is not slower (gpu_check.sh "torchcapture")
#   4. (75 s)  the kernel time of one search step by kind, NCHW/NHWC x fp32/bf16: the layout and precision
#      figures of the steady state (gpu_followup.sh "kernel")            -> kernel_profile.*
#   5. (130 s) the transfer recipes' time per GPU (gpu_followup.sh "transfer") -> transfer_speed.*
# The device returns at most 8 files, so every output lands in one archive, $OUT/gpu_next.tar.gz
# (rewritten after each stage: a cut run keeps what finished), with the summaries beside it:
# $OUT/summary.md (gpu_check's table), kernel_profile.md, transfer_speed.md.
# Device command (wheels as in gpu_check.sh's header; carry [".whl"], timeout_s 600):
#   python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl; export PYTHONPATH=/tmp/site:$(pwd); bash experiments/gpu_next.sh
# Dry run on a CPU: DEVICE=cpu TINY=1 NUM_TRAIN=64 POP=2 POP_AB=2 C=4 LAYERS=3 TIMEOUT_SCALE=6 OUT=/tmp/gn bash experiments/gpu_next.sh
set -u
cd "$(dirname "$0")/.."
FINAL="${OUT:-$(pwd)/gpu_next_out}"
WORK=${WORK:-/tmp/relnas_gpu_next}
rm -rf "$WORK"
mkdir -p "$FINAL" "$WORK"
export PYTHONPATH="$(pwd)${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 MPLBACKEND=Agg
pack() {
    tar czf "$FINAL/gpu_next.tar.gz" -C "$WORK" . 2>/dev/null
    for f in summary.md kernel_profile.md transfer_speed.md; do
        [ -f "$WORK/$f" ] && cp "$WORK/$f" "$FINAL/$f"
    done
    return 0
}
OUT="$WORK" STAGES="default tests torchcapture" bash experiments/gpu_check.sh
pack
OUT="$WORK" STAGES="kernel" bash experiments/gpu_followup.sh
pack
OUT="$WORK" STAGES="transfer" bash experiments/gpu_followup.sh
pack
echo "[gpu_next] done: $FINAL/gpu_next.tar.gz"
