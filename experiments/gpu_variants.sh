#!/usr/bin/env bash
# Steady-state speed of GPU settings through the entry point: for each variant, one search of
# $GENERATIONS generations x $POP candidates (25K+25K synthetic CIFAR-shaped images, C=16, L=8,
# batch 256) through `python -m relnas.search`, and the seconds per candidate of each generation
# (generation 1 carries the process's one-time warm-up; later generations are what the other 49 of
# the paper's 50 generations cost). One device call (set up as in experiments/gpu_check.sh):
#     python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl
#     export PYTHONPATH=/tmp/site:$(pwd); bash experiments/gpu_variants.sh
# VARIANTS: name=override[,override...] separated by spaces; each run is cut at $LIMIT seconds.
set -u
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
cd "$(dirname "$0")/.."
OUT="${OUT:-$(pwd)/gpu_variants_out}"
mkdir -p "$OUT"
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
ACCEL=$([ "$DEVICE" = cuda ] && echo gpu || echo cpu)
NUM_TRAIN=${NUM_TRAIN:-50000}
POP=${POP:-6}
GENERATIONS=${GENERATIONS:-2}
C=${C:-16}
LAYERS=${LAYERS:-8}
LIMIT=${LIMIT:-75}
VARIANTS=${VARIANTS:-"default= bf16=trainer.precision=bf16-mixed nhwc=search.channels_last=true cudnn_bench=trainer.benchmark=true"}
RUNS=${RUNS:-/tmp/relnas_gpu_variants}
rm -rf "$RUNS"; mkdir -p "$RUNS"
echo "| variant | overrides | exit | process s | s/candidate by generation |" > "$OUT/variants.md"
echo "|---|---|---|---|---|" >> "$OUT/variants.md"
for v in $VARIANTS; do
    name=${v%%=*}; overrides=${v#*=}
    t1=$(date +%s)
    # shellcheck disable=SC2046
    timeout -k 5 "$LIMIT" $PY -m relnas.search data=synthetic data.num_train="$NUM_TRAIN" search.population_size="$POP" \
        search.generations="$GENERATIONS" supernet.C="$C" supernet.layers="$LAYERS" trainer.accelerator="$ACCEL" \
        logger=none search.plots=false search.progress=false "hydra.run.dir=$RUNS/$name" $(echo "$overrides" | tr ',' ' ') \
        > "$OUT/$name.log" 2>&1
    rc=$?
    per=$($PY - "$RUNS/$name/generations.csv" "$POP" <<'PYEOF'
import csv, os, sys
path, pop = sys.argv[1], int(sys.argv[2])
rows = list(csv.DictReader(open(path))) if os.path.exists(path) else []
print(" / ".join(f"{float(r['time_s']) / pop:.2f}" for r in rows) or "-")
PYEOF
)
    echo "| $name | ${overrides:-(none)} | $rc | $(( $(date +%s) - t1 )) | $per |" | tee -a "$OUT/variants.md"
done
