#!/usr/bin/env bash
# Two small fixed CPU searches whose history.csv must not change when the code is reorganised:
# RelativeNAS (4 individuals x 3 generations) and regularized evolution at 12 estimations, on
# synthetic data, seed 7. Run it before a change and after, and compare:
#
#     bash experiments/fixed_search.sh /tmp/before            # on the old commit
#     bash experiments/fixed_search.sh /tmp/after /tmp/before  # on the new one: compares both history.csv
#
# With no second argument the histories are compared with the ones recorded in
# experiments/results/fixed_search/ (same CPU kind: the float results depend on the CPU's kernels).
# Identical means: the same rows, and every column of the reference file holds the same text in the
# new file (columns the reference lacks are allowed).
# Exit status: 0 identical, 1 different, 2 a search failed.
set -u
cd "$(dirname "$0")/.."
OUT=${1:?usage: bash experiments/fixed_search.sh OUT_DIR [REFERENCE_DIR]}
REF=${2:-experiments/results/fixed_search}
PY=${PYTHON:-python}
COMMON=(data=synthetic data.num_train=256 data.num_test=16 data.image_size=16 data.batch_size=32
        data.eval_batch_size=64 supernet.C=4 supernet.layers=3 search.population_size=4 search.generations=3
        search.progress=false search.plots=false trainer.accelerator=cpu logger=none seed=7)
mkdir -p "$OUT"
status=0
for run in relativenas evolution; do
    extra=()
    [ "$run" = evolution ] && extra=(strategy=evolution search.budget=12)
    if ! WANDB_MODE=offline "$PY" -m relnas.search "${COMMON[@]}" "${extra[@]}" hydra.run.dir="$OUT/$run" \
            > "$OUT/$run.log" 2>&1; then
        echo "error: the $run search failed; see $OUT/$run.log" >&2
        exit 2
    fi
    if [ -f "$REF/$run/history.csv" ] || [ -f "$REF/${run}_history.csv" ]; then
        ref=$([ -f "$REF/$run/history.csv" ] && echo "$REF/$run/history.csv" || echo "$REF/${run}_history.csv")
        if "$PY" - "$ref" "$OUT/$run/history.csv" <<'EOF'
import csv
import sys



def read(path):
    with open(path, newline="") as f:
        rows = csv.DictReader(f)
        return rows.fieldnames or [], list(rows)


(columns, ref), (new_columns, new) = read(sys.argv[1]), read(sys.argv[2])
missing = [c for c in columns if c not in new_columns]
differ = [c for c in columns if c in new_columns and [r[c] for r in ref] != [r[c] for r in new]]
if len(ref) != len(new) or missing or differ:
    print(f"  rows {len(ref)} -> {len(new)}; missing columns: {missing or 'none'}; "
          f"columns that differ: {differ or 'none'}")
    sys.exit(1)
EOF
        then
            echo "$run: history.csv identical to $ref in its columns"
        else
            echo "$run: history.csv differs from $ref"
            status=1
        fi
    else
        echo "$run: $OUT/$run/history.csv (no reference in $REF)"
    fi
done
exit $status
