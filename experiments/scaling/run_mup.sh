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
python - $HERE $OUT <<'COMPARE'
import json
import math
import sys

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt

studies = {"first study (standard, 3e-3, 1e12-6.25e12)": sys.argv[1],
           "μP study (tuned rate, 1e11-1e13)": sys.argv[2]}
methods = ("isoflop", "parametric", "envelope")
quantities = (("parameters", "a", "a (N_opt ∝ C^a)"), ("parameters", "b", "b (D_opt ∝ C^b)"),
              ("optimal", "tokens_per_param", "tokens per parameter at 1e14 FLOPs"))
fits = {study: {m: json.load(open(f"{folder}/fit_{m}.json")) for m in methods}
        for study, folder in studies.items()}

def cell(entry):
  low, high = entry["ci95"]
  return f"{entry['value']:.3g} [{low:.3g}, {high:.3g}]"


def width(entry, name):
  # tokens per parameter spans orders of magnitude: its intervals compare in log space
  low, high = entry["ci95"]
  return math.log(high / low) if name == "tokens_per_param" else high - low

# the last column: the μP study's interval width over the first study's (log width for
# tokens per parameter); below 1 means narrower
lines = ["| method | quantity | " + " | ".join(studies) + " | interval width ratio |",
         "|---|---|" + "---|" * (len(studies) + 1)]
for method in methods:
  for part, name, label in quantities:
    entries = [fits[study][method][part][name] for study in studies]
    widths = [width(entry, name) for entry in entries]
    lines.append(f"| {method} | {label} | " + " | ".join(cell(e) for e in entries)
                 + f" | {widths[1] / widths[0]:.2f} |")
with open(f"{sys.argv[2]}/compare.md", "w") as handle:
  handle.write("\n".join(lines) + "\n")
print("\n".join(lines))

figure, axes = plt.subplots(1, len(quantities), figsize=(13, 3.6))
for axis, (part, name, label) in zip(axes, quantities):
  for offset, (study, color) in enumerate(zip(studies, ("tab:gray", "tab:blue"))):
    for row, method in enumerate(methods):
      entry = fits[study][method][part][name]
      low, high = entry["ci95"]
      y = row + 0.15 * (1 - 2 * offset)
      axis.plot([low, high], [y, y], color=color, lw=2)
      axis.plot(entry["value"], y, "o", color=color, label=study if row == 0 else None)
  axis.set_yticks(range(len(methods)), methods)
  axis.set_title(label)
  if name == "tokens_per_param":
    axis.set_xscale("log")
    axis.axvline(20, color="k", ls=":", lw=1)
  else:
    axis.axvline(0.5, color="k", ls=":", lw=1)
figure.legend(*axes[0].get_legend_handles_labels(), loc="lower center", ncol=2)
figure.suptitle("Compute-optimal scaling, 95% bootstrap intervals (dotted: Chinchilla)")
figure.tight_layout(rect=(0, 0.08, 1, 1))
figure.savefig(f"{sys.argv[2]}/compare.png", dpi=120)
COMPARE
