#!/usr/bin/env bash
# GPU check (one script; its timeouts add up to 570 s, under one 600 s device call): run from the repository root as
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
#   3b. (MEMBERS=1, the default) the same generation in 2 processes sharing the GPU, the two
#      members of each pair at once (the paper's order kept);
#   4. a short real search end to end (synthetic data, bf16-mixed, CUDA graphs).
#
# On the workplace's device tool (its image has torch and lightning but not hydra-core/omegaconf),
# make the wheels here first, in an ignored folder:
#     pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl hydra-core==1.3.2 omegaconf==2.3.0
#     pip wheel --no-deps -w .whl antlr4-python3-runtime==4.9.3
# then run (carry [".whl"], timeout_s 600):
#     python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl;
#     export PYTHONPATH=/tmp/site:$(pwd); bash experiments/gpu_check.sh
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

stamp "1/4 GPU tests (timeout 90s)"
if $PY -c "import pytest" 2>/dev/null; then
    timeout 90 $PY -m pytest -q -m gpu tests -p no:cacheprovider 2>&1 | tail -n 30 | tee "$OUT/gpu_tests.txt"
else  # no pytest on the machine: call the GPU test functions directly
    (cd tests && timeout 90 $PY -c "import test_step_graph as t; [t.test_cuda_graph_candidates_match_eager_on_gpu(p) for p in (0.0, 0.2)]; print('gpu tests passed')") 2>&1 | tail -n 30 | tee "$OUT/gpu_tests.txt"
fi
stamp "GPU tests exit ${PIPESTATUS[0]}"

stamp "2/4 benchmark (timeout 240s)"
timeout 240 $PY experiments/bench_search.py --device cuda --candidates ${CANDIDATES:-2} --warmup-pairs 1 \
    --variants ${VARIANTS:-relnas-graphs,relnas,naive} --overhead-candidates ${OVERHEAD:-2} --results "$OUT/bench_gpu.md" \
    --note "gpu_check.sh" 2>&1 | grep -v -E "^(GPU available|TPU available|HPU available|LOCAL_RANK|.*litlogger|.*Tip:)" \
    | tee "$OUT/bench_gpu.txt"
stamp "benchmark exit ${PIPESTATUS[0]}"

stamp "3/4 one paper-size generation through python -m relnas.search (timeout 100s)"
timeout 100 $PY -m relnas.search data=synthetic data.num_train=50000 search.population_size=10 search.generations=1 \
    trainer.accelerator=gpu search.cuda_graphs=true search.plots=false logger=none "hydra.run.dir=$OUT/paper_generation" \
    > "$OUT/paper_generation.txt" 2>&1
rc=$?
grep -E "generation 1/1|Error|error|CUDA graph" "$OUT/paper_generation.txt" | tail -n 10
stamp "paper generation exit $rc"

if [ "${MEMBERS:-1}" = "1" ]; then
    stamp "3b/4 the same generation in 2 processes sharing the GPU (member-parallel, sequential order; timeout 90s)"
    timeout 90 $PY -m torch.distributed.run --nproc_per_node=2 --master_addr=127.0.0.1 --master_port=29561 \
        -m relnas.search data=synthetic data.num_train=50000 search.population_size=10 search.generations=1 \
        trainer.accelerator=gpu search.cuda_graphs=true search.plots=false logger=none \
        "hydra.run.dir=$OUT/paper_generation_members" > "$OUT/paper_generation_members.txt" 2>&1
    rc=$?
    grep -E "generation 1/1|Error|error|CUDA graph" "$OUT/paper_generation_members.txt" | tail -n 10
    stamp "member-parallel generation exit $rc"
fi

stamp "4/4 short real search (timeout 60s)"
timeout 60 $PY -m relnas.search data=synthetic search.population_size=4 search.generations=2 \
    supernet.C=8 supernet.layers=5 trainer.accelerator=gpu trainer.precision=bf16-mixed trainer.benchmark=true \
    search.cuda_graphs=true "hydra.run.dir=$OUT/search" logger=csv > "$OUT/search.txt" 2>&1
rc=$?
tail -n 25 "$OUT/search.txt"
ls "$OUT/search" 2>/dev/null | head -30
stamp "search exit $rc"
stamp "done"
