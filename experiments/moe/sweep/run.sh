#!/usr/bin/env bash
# The IsoFLOP sweep of mixture-of-experts families against the dense family of
# experiments/scaling: the same byte-level decoder shapes, data, optimizer and budgets
# (1e12, 2.5e12, 6.25e12 FLOPs, 5 sizes each), with every feed-forward layer an MoE layer
# of E times the dense layer's weights and the same active ones (E = 4 and 8: 2E experts
# of d_ff / 2, each token routed to 2 of them by Mixtral's gates, capacity factor 1.25,
# balance loss 0.01, router z-loss 0.001). The dense runs (E = 1) are
# experiments/scaling/RUNS.csv's. Then fit.sh fits L(N, D, E).
# ~1.5 hours on 2 CPU cores. Re-running skips finished runs and resumes an interrupted one.
#   bash experiments/moe/sweep/run.sh [SWEEP_DIR]     (default /tmp/t5x_lite_moe_sweep)
set -euo pipefail
cd "$(dirname "$0")/../../.."
HERE=experiments/moe/sweep
FAMILY=experiments/scaling
SWEEP_DIR=${1:-/tmp/t5x_lite_moe_sweep}

for EXPERTS in 4 8; do
  # num_experts E at top-1 and granularity 2 is 2E experts of d_ff / 2 at top-2.
  python -m t5x_lite.scaling plan --gin_file=$FAMILY/family.gin \
      --gin.TransformerConfig.num_experts=$EXPERTS --gin.TransformerConfig.moe_top_k=1 \
      --gin.TransformerConfig.moe_granularity=2 "--gin.TransformerConfig.moe_router='mixtral'" \
      --gin.TransformerConfig.moe_capacity_factor=1.25 \
      --budgets 1e12 2.5e12 6.25e12 --sizes 5 --spread 4 \
      --batch_size 16 --targets_length 256 --aspect_ratio 32 --head_dim 32 \
      --output $HERE/plan_e$EXPERTS.json
done
for EXPERTS in 8 4; do
  python tools/scaling_sweep.py $HERE/plan_e$EXPERTS.json --sweep_dir "$SWEEP_DIR/e$EXPERTS" \
      --gin_file=$FAMILY/sweep.gin --runs_csv $HERE/RUNS_e$EXPERTS.csv \
      --curves_csv $HERE/CURVES_e$EXPERTS.csv
done
bash $HERE/fit.sh
