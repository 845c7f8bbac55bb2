#!/usr/bin/env bash
# The IsoFLOP study on the embedded corpus: plan -> sweep -> RUNS.csv -> fits and plots.
# ~40 minutes on 2 CPU cores. Re-running skips finished runs and resumes an interrupted one.
#   bash experiments/scaling/run.sh [SWEEP_DIR]     (default /tmp/t5x_lite_scaling_sweep)
set -euo pipefail
cd "$(dirname "$0")/../.."
HERE=experiments/scaling
SWEEP_DIR=${1:-/tmp/t5x_lite_scaling_sweep}

python -m t5x_lite.scaling plan --gin_file=$HERE/family.gin \
    --budgets 1e12 2.5e12 6.25e12 --sizes 5 --spread 4 \
    --batch_size 16 --targets_length 256 --aspect_ratio 32 --head_dim 32 \
    --output $HERE/plan.json
python tools/scaling_sweep.py $HERE/plan.json --sweep_dir "$SWEEP_DIR" \
    --gin_file=$HERE/sweep.gin --runs_csv $HERE/RUNS.csv --curves_csv $HERE/CURVES.csv
bash $HERE/fit.sh
