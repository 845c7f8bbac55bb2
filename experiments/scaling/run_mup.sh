#!/usr/bin/env bash
# The IsoFLOP study redone with μP (one learning rate, tuned at the base width and
# transferred to every shape) over two orders of magnitude of compute (1e11-1e13 FLOPs),
# then `plan --refine` for every budget whose minimum the first pass did not bracket, the
# fits of fit.sh on both passes together, and a figure setting them beside the first study.
# About 2 hours on 2 CPU cores (7e13 FLOPs); re-running skips finished runs.
#   bash experiments/scaling/run_mup.sh [SWEEP_DIR]    (default /tmp/t5x_lite_scaling_mup)
set -euo pipefail
cd "$(dirname "$0")/../.."
HERE=experiments/scaling
OUT=$HERE/mup
SWEEP_DIR=${1:-/tmp/t5x_lite_scaling_mup}
mkdir -p $OUT
# The family and batch shape that the plan and its refinement share.
FAMILY=(--gin_file=$HERE/family.gin --gin.TransformerConfig.parametrization="'mup'"
        --gin.TransformerConfig.mup_base_d_model=16 --batch_size 16 --targets_length 256
        --aspect_ratio 32 --head_dim 16)

if [ ! -f $OUT/plan.json ]; then
  python -m t5x_lite.scaling plan "${FAMILY[@]}" \
      --budgets 1e11 3e11 1e12 3e12 1e13 --sizes 5 --spread 4 \
      --tune_learning_rate --learning_rates 1e-2 3e-1 8 --output $OUT/plan.json
fi
python tools/scaling_sweep.py $OUT/plan.json --sweep_dir "$SWEEP_DIR" \
    --gin_file=$HERE/sweep.gin --runs_csv $OUT/RUNS_plan.csv --curves_csv $OUT/CURVES_plan.csv

# The refined runs train at the plan's tuned rate; one size beyond each unbracketed edge
# (these budgets bottom out at their smallest size, where a run costs the most time per FLOP).
LEARNING_RATE=$(python - $OUT/plan.json <<'RATE'
import json
import sys
print(json.load(open(sys.argv[1]))["learning_rate"])
RATE
)
python -m t5x_lite.scaling plan "${FAMILY[@]}" --refine $OUT/RUNS_plan.csv \
    --learning_rate "$LEARNING_RATE" --sizes 1 --output $OUT/refine.json
python tools/scaling_sweep.py $OUT/refine.json --sweep_dir "$SWEEP_DIR" \
    --gin_file=$HERE/sweep.gin --runs_csv $OUT/RUNS_refine.csv \
    --curves_csv $OUT/CURVES_refine.csv

# Both passes are one study: RUNS.csv / CURVES.csv hold every run, fit.sh fits them.
for table in RUNS CURVES; do
  { cat $OUT/${table}_plan.csv; tail -n +2 $OUT/${table}_refine.csv; } > $OUT/$table.csv
done
bash $HERE/fit.sh $OUT

# The two studies side by side: compare.md (table) and compare.png (intervals).
python $HERE/compare.py --output $OUT \
    "first study (standard, 3e-3, 1e12-6.25e12)=$HERE" "μP study (tuned rate, 1e11-1e13)=$OUT"
