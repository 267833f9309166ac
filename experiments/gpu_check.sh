#!/usr/bin/env bash
# GPU check (one script, < 8 min on an H100/H200): run from the repository root as
#     OUT=/some/dir bash experiments/gpu_check.sh
# (on the device machine $OUT is set already). Writes $OUT/bench_gpu.txt, $OUT/bench_gpu.md and
# $OUT/search (+ $OUT/search.txt). Exit 3 when python3 lacks torch / lightning / hydra / CUDA.
#   1. experiments/bench_search.py --device cuda: relnas (bf16-mixed and fp32) vs naive, full
#      25K+25K images per candidate, 4 timed candidates each after a 1-pair warm-up, projection
#      of the paper's search time (~4 min);
#   2. a short real search end to end (python -m relnas.search, synthetic data, bf16-mixed).
set -u
export PYTHONUNBUFFERED=1
OUT="${OUT:-$(pwd)/gpu_check_out}"
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
export PYTHONPATH="$(pwd)${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}
T0=$(date +%s)
stamp() { echo "[gpu_check +$(( $(date +%s) - T0 ))s] $*"; }

stamp "checking python packages"
if ! $PY - <<'EOF'
import importlib, sys
missing = []
for m in ("torch", "lightning", "hydra", "omegaconf", "torchvision", "PIL", "numpy", "matplotlib"):
    try:
        importlib.import_module(m)
    except Exception as e:  # noqa: BLE001
        missing.append(f"{m} ({type(e).__name__}: {e})")
if missing:
    print("MISSING: " + "; ".join(missing))
    sys.exit(3)
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if not torch.cuda.is_available():
    print("MISSING: a CUDA device visible to torch")
    sys.exit(3)
print("gpu", torch.cuda.get_device_name(0))
EOF
then
    stamp "missing packages (see above): exit 3"
    exit 3
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || true

stamp "1/2 benchmark (timeout 330s)"
timeout 330 $PY experiments/bench_search.py --device cuda --candidates ${CANDIDATES:-4} --warmup-pairs 1 \
    --variants relnas-bf16,relnas,naive --overhead-candidates ${OVERHEAD:-4} --results "$OUT/bench_gpu.md" \
    --note "gpu_check.sh" 2>&1 | grep -v -E "^(GPU available|TPU available|HPU available|LOCAL_RANK|.*litlogger|.*Tip:)" \
    | tee "$OUT/bench_gpu.txt"
stamp "benchmark exit ${PIPESTATUS[0]}"

stamp "2/2 short real search (timeout 120s)"
timeout 120 $PY -m relnas.search data=synthetic search.population_size=4 search.generations=2 \
    supernet.C=8 supernet.layers=5 trainer.accelerator=gpu trainer.precision=bf16-mixed trainer.benchmark=true \
    "hydra.run.dir=$OUT/search" logger=csv > "$OUT/search.txt" 2>&1
rc=$?
tail -n 25 "$OUT/search.txt"
ls "$OUT/search" 2>/dev/null | head -30
stamp "search exit $rc"
stamp "done"
