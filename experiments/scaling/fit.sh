#!/usr/bin/env bash
# Fits a study's RUNS.csv / CURVES.csv with every method and draws the figures, all in the
# study's folder (default experiments/scaling; run_mup.sh passes experiments/scaling/mup).
#   bash experiments/scaling/fit.sh [STUDY_DIR]    (after run.sh; ~2 minutes on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/../.."
HERE=${1:-experiments/scaling}
# The optimum is reported at 1e14 FLOPs for every study, so that they can be compared: 16x
# the first study's largest budget, 10x the μP study's (an extrapolation for both).
BUDGET=1e14

python -m t5x_lite.scaling fit $HERE/RUNS.csv --method isoflop --budget $BUDGET \
    --bootstrap 1000 --plot $HERE/isoflop.png --json > $HERE/fit_isoflop.json
python -m t5x_lite.scaling fit $HERE/RUNS.csv --method parametric --budget $BUDGET \
    --bootstrap 200 --plot $HERE/parametric.png --json > $HERE/fit_parametric.json
python -m t5x_lite.scaling fit $HERE/CURVES.csv --method envelope --budget $BUDGET \
    --bootstrap 1000 --plot $HERE/envelope.png --json > $HERE/fit_envelope.json
python -m t5x_lite.scaling fit $HERE/RUNS.csv --method kaplan --budget $BUDGET \
    --bootstrap 200 --json > $HERE/fit_kaplan.json
python -m t5x_lite.scaling plot $HERE/RUNS.csv --curves $HERE/CURVES.csv \
    --methods isoflop parametric envelope --budget $BUDGET --bootstrap 200 \
    --output $HERE/study.png
python - "$HERE" <<'SUMMARY'
import json
import sys
for method in ("isoflop", "parametric", "envelope", "kaplan"):
  fit = json.load(open(f"{sys.argv[1]}/fit_{method}.json"))
  def show(part, name):
    entry = fit[part][name]
    low_high = entry.get("ci95")
    return f"{name} {entry['value']:.3g}" + (f" [{low_high[0]:.3g}, {low_high[1]:.3g}]"
                                             if low_high else "")
  names = [n for n in ("a", "b", "alpha", "beta", "E", "alpha_N", "alpha_D") if n in
           fit["parameters"]]
  print(f"{method:10s}", ", ".join(show("parameters", n) for n in names), "|",
        ", ".join(show("optimal", n) for n in ("params", "tokens", "tokens_per_param")))
SUMMARY
