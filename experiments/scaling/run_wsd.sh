#!/usr/bin/env bash
# The IsoFLOP study redone a third time, for exponents known to +-0.15: the μP family and
# rate of run_mup.sh, warmup-stable-decay runs (one stable phase per shape, each IsoFLOP
# point a cooldown branch of it: `plan --wsd`), 2 seeds per point, 7 budgets over two
# decades (3e10-3e12 FLOPs) at about the μP study's total compute (6.9e13 FLOPs of
# training against its 7e13), on Python's docs and Shakespeare as one byte corpus
# (gin/mixtures/pydocs_shakespeare_byte.gin, mixed by size: 6.8M bytes, 1.07 epochs at the
# largest budget). Then the fits of fit.sh, the three studies in one table and figure
# (compare.md / compare.png), and every run scored on the cloze set and the addition set
# along the sweep (DOWNSTREAM.csv, emergence.png). Re-running skips finished runs.
#   bash experiments/scaling/run_wsd.sh [SWEEP_DIR]    (default /tmp/t5x_lite_scaling_wsd)
set -euo pipefail
cd "$(dirname "$0")/../.."
HERE=experiments/scaling
OUT=$HERE/wsd
SWEEP_DIR=${1:-/tmp/t5x_lite_scaling_wsd}
mkdir -p $OUT
# The μP study's tuned peak rate, transferred (μP) rather than tuned again.
LEARNING_RATE=$(python - $HERE/mup/plan.json <<'RATE'
import json
import sys
print(json.load(open(sys.argv[1]))["learning_rate"])
RATE
)

if [ ! -f $OUT/plan.json ]; then
  python -m t5x_lite.scaling plan --gin_file=$HERE/family.gin \
      --gin.TransformerConfig.parametrization="'mup'" \
      --gin.TransformerConfig.mup_base_d_model=16 --batch_size 16 --targets_length 256 \
      --aspect_ratio 32 --head_dim 16 \
      --budgets 3e10 6e10 1e11 2e11 5e11 1e12 3e12 --sizes 5 --spread 4 \
      --learning_rate "$LEARNING_RATE" --wsd --seeds 2 --output $OUT/plan.json
fi
# The two sources mixed in proportion to their sizes (2.08M and 4.70M bytes an epoch),
# so the largest run (7.3M tokens) repeats neither more than 1.07 times; the mixture
# file's 0.7 / 0.3 would repeat Python's docs 2.4 times there.
python tools/scaling_sweep.py $OUT/plan.json --sweep_dir "$SWEEP_DIR" \
    --gin_file=$HERE/sweep.gin --gin_file=mixtures/pydocs_shakespeare_byte.gin \
    "--gin.mixture.sources={'pydocs.full_lm.byte': 0.307, 'shakespeare.full_lm.byte': 0.693}" \
    --runs_csv $OUT/RUNS.csv --curves_csv $OUT/CURVES.csv \
    --downstream pydocs_cloze addition --downstream_limit 200 \
    --downstream_csv $OUT/DOWNSTREAM.csv
bash $HERE/fit.sh $OUT

# The three studies side by side.
python $HERE/compare.py --output $OUT \
    "first study (standard, 3e-3, 1e12-6.25e12)=$HERE" "μP study (tuned rate, 1e11-1e13)=$HERE/mup" \
    "WSD + 2 seeds (μP, 3e10-3e12)=$OUT"
# Emergence: accuracy against compute under each metric, side by side.
python -m t5x_lite.scaling plot $OUT/DOWNSTREAM.csv --downstream pydocs_cloze \
    --output $OUT/emergence_cloze.png
python -m t5x_lite.scaling plot $OUT/DOWNSTREAM.csv --downstream addition \
    --output $OUT/emergence_addition.png
