#!/usr/bin/env bash
# The IsoFLOP study redone with μP (one learning rate, tuned at the base width and
# transferred to every shape) over two orders of magnitude of compute (1e11-1e13 FLOPs),
# then `plan --refine` for every budget whose minimum the first pass did not bracket.
# About 1.5 hours on 2 CPU cores (7e13 FLOPs); re-running skips finished runs.
#   bash experiments/scaling/run_mup.sh [SWEEP_DIR]    (default /tmp/t5x_lite_scaling_mup)
set -euo pipefail
cd "$(dirname "$0")/../.."
HERE=experiments/scaling
OUT=$HERE/mup
SWEEP_DIR=${1:-/tmp/t5x_lite_scaling_mup}
mkdir -p $OUT

if [ ! -f $OUT/plan.json ]; then
  python -m t5x_lite.scaling plan --gin_file=$HERE/family.gin \
      --gin.TransformerConfig.parametrization="'mup'" \
      --gin.TransformerConfig.mup_base_d_model=16 \
      --budgets 1e11 3e11 1e12 3e12 1e13 --sizes 5 --spread 4 \
      --batch_size 16 --targets_length 256 --aspect_ratio 32 --head_dim 16 \
      --tune_learning_rate --learning_rates 1e-2 3e-1 8 --output $OUT/plan.json
fi
python tools/scaling_sweep.py $OUT/plan.json --sweep_dir "$SWEEP_DIR" \
    --gin_file=$HERE/sweep.gin --runs_csv $OUT/RUNS.csv --curves_csv $OUT/CURVES.csv
python -m t5x_lite.scaling plan --gin_file=$HERE/family.gin \
    --gin.TransformerConfig.parametrization="'mup'" \
    --gin.TransformerConfig.mup_base_d_model=16 \
    --refine $OUT/RUNS.csv --batch_size 16 --targets_length 256 --aspect_ratio 32 \
    --head_dim 16 --learning_rate "$(python -c "import json; print(json.load(open('$OUT/plan.json'))['learning_rate'])")" \
    --output $OUT/refine.json
python tools/scaling_sweep.py $OUT/refine.json --sweep_dir "$SWEEP_DIR" \
    --gin_file=$HERE/sweep.gin --runs_csv $OUT/RUNS_refined.csv \
    --curves_csv $OUT/CURVES_refined.csv
python -m t5x_lite.scaling fit $OUT/RUNS.csv --method isoflop --budget 1e14 \
    --bootstrap 1000 --plot $OUT/isoflop.png --json > $OUT/fit_isoflop.json
