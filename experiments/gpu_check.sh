#!/usr/bin/env bash
# GPU check (one script, < 9 min on an H100/H200): run from the repository root as
#     OUT=/some/dir bash experiments/gpu_check.sh
# (on the device machine $OUT is set already). Writes $OUT/gpu_tests.txt, $OUT/bench_gpu.txt,
# $OUT/bench_gpu.md, $OUT/paper_generation.txt and $OUT/search (+ $OUT/search.txt).
# Exit 3 when python3 lacks torch / lightning / hydra / CUDA.
#   1. the GPU tests (pytest -m gpu: a real CUDA-graph capture against eager training);
#   2. experiments/bench_search.py --device cuda: relnas with CUDA graphs, relnas eager (fp32) and
#      naive, full 25K+25K images per candidate, $CANDIDATES timed candidates each after a 1-pair
#      warm-up, projection of the paper's search time;
#   3. the real entry point on one paper-size generation (10 candidates x 25K+25K, C=16, L=8,
#      batch 256) with search.cuda_graphs=true: seconds per candidate -> the paper's 1000;
#   4. a short real search end to end (synthetic data, bf16-mixed, CUDA graphs).
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

stamp "1/4 GPU tests (timeout 120s)"
if $PY -c "import pytest" 2>/dev/null; then
    timeout 120 $PY -m pytest -q -m gpu tests -p no:cacheprovider 2>&1 | tail -n 30 | tee "$OUT/gpu_tests.txt"
else  # no pytest on the machine: call the GPU test functions directly
    (cd tests && timeout 120 $PY -c "import test_step_graph as t; t.test_cuda_graph_training_matches_eager_on_gpu(); print('gpu test passed')") 2>&1 | tail -n 30 | tee "$OUT/gpu_tests.txt"
fi
stamp "GPU tests exit ${PIPESTATUS[0]}"

stamp "2/4 benchmark (timeout 300s)"
timeout 300 $PY experiments/bench_search.py --device cuda --candidates ${CANDIDATES:-2} --warmup-pairs 1 \
    --variants ${VARIANTS:-relnas-graphs,relnas,naive} --overhead-candidates ${OVERHEAD:-2} --results "$OUT/bench_gpu.md" \
    --note "gpu_check.sh" 2>&1 | grep -v -E "^(GPU available|TPU available|HPU available|LOCAL_RANK|.*litlogger|.*Tip:)" \
    | tee "$OUT/bench_gpu.txt"
stamp "benchmark exit ${PIPESTATUS[0]}"

stamp "3/4 one paper-size generation through python -m relnas.search (timeout 150s)"
timeout 150 $PY -m relnas.search data=synthetic data.num_train=50000 search.population_size=10 search.generations=1 \
    trainer.accelerator=gpu search.cuda_graphs=true search.plots=false logger=none "hydra.run.dir=$OUT/paper_generation" \
    > "$OUT/paper_generation.txt" 2>&1
rc=$?
grep -E "generation 1/1|Error|error|CUDA graph" "$OUT/paper_generation.txt" | tail -n 10
stamp "paper generation exit $rc"

stamp "4/4 short real search (timeout 90s)"
timeout 90 $PY -m relnas.search data=synthetic search.population_size=4 search.generations=2 \
    supernet.C=8 supernet.layers=5 trainer.accelerator=gpu trainer.precision=bf16-mixed trainer.benchmark=true \
    search.cuda_graphs=true "hydra.run.dir=$OUT/search" logger=csv > "$OUT/search.txt" 2>&1
rc=$?
tail -n 25 "$OUT/search.txt"
ls "$OUT/search" 2>/dev/null | head -30
stamp "search exit $rc"
stamp "done"
