#!/usr/bin/env bash
# Fits L(N, D, E) = E0 + A / (N E^delta)^alpha + B / D^beta to the dense runs (E = 1,
# experiments/scaling/RUNS.csv) and the MoE sweep's (E = 4, 8), draws experts.png and
# writes results.md: every shape's loss side by side, each budget's IsoFLOP minimum per
# family (no law assumed) and the fit's compute-optimal active sizes with intervals.
#   bash experiments/moe/sweep/fit.sh     (after run.sh; ~2 minutes on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/../../.."
HERE=experiments/moe/sweep
DENSE=experiments/scaling/RUNS.csv
# Where experiments/scaling reports its optimum, so that the two can be compared.
BUDGET=1e14

python -m t5x_lite.scaling fit $DENSE $HERE/RUNS_e4.csv $HERE/RUNS_e8.csv --method experts \
    --budget $BUDGET --bootstrap 200 --plot $HERE/experts.png --json > $HERE/fit_experts.json
python - "$HERE" "$DENSE" <<'SUMMARY'
import csv
import json
import sys

import numpy as np

from t5x_lite.scaling import isoflop
from t5x_lite.scaling.runs import read_runs

here, dense = sys.argv[1:]
tables = {1: dense, 4: f"{here}/RUNS_e4.csv", 8: f"{here}/RUNS_e8.csv"}
rows = {experts: list(csv.DictReader(open(path))) for experts, path in tables.items()}
lines = ["# IsoFLOP sweep: dense vs mixture-of-experts", "",
         "Validation loss (nats per byte) of each shape at each budget; N is active parameters "
         "(the dense model's and the MoE model's differ only by the router).", "",
         "| budget | shape | N (dense) | dense | E = 4 | E = 8 |", "|---|---|---|---|---|---|"]
by_shape = {}
for experts, table in rows.items():
  for row in table:
    key = (float(row["budget"]), int(row["num_layers"]), int(row["d_model"]))
    by_shape.setdefault(key, {})[experts] = row
for (budget, layers, d_model), found in sorted(by_shape.items()):
  losses = [f"{float(found[e]['loss']):.4f}" if e in found else "" for e in tables]
  params = int(found[1]["params"]) if 1 in found else ""
  lines.append(f"| {budget:.3g} | L{layers} d{d_model} | {params:,} | " + " | ".join(losses)
               + " |")
lines += ["", "Each budget's IsoFLOP minimum (a parabola in log N through its runs), per family:",
          "", "| budget | dense N_opt | E = 4 N_opt | E = 8 N_opt | dense L_min | E = 4 L_min "
          "| E = 8 L_min |", "|---|---|---|---|---|---|---|"]
minima = {}
for experts, path in tables.items():
  for profile in isoflop.profiles(read_runs(path)):
    budget = float(f"{profile.flops:.2g}")
    minimum = float(np.polyval(profile.coefficients, np.log(profile.optimal_params)))
    minima.setdefault(budget, {})[experts] = (profile.optimal_params, minimum)
for budget, found in sorted(minima.items()):
  cells = [f"{found[e][0]:,.0f}" if e in found else "" for e in tables]
  cells += [f"{found[e][1]:.4f}" if e in found else "" for e in tables]
  lines.append(f"| {budget:.3g} | " + " | ".join(cells) + " |")
fit = json.load(open(f"{here}/fit_experts.json"))


def show(part, name, digits=".3g"):
  entry = fit[part][name]
  low, high = entry.get("ci95", (np.nan, np.nan))
  return f"{entry['value']:{digits}} [{low:{digits}}, {high:{digits}}]"


lines += ["", f"The fit of L(N, D, E) to all {fit['runs']} runs "
          f"({fit['bootstrap_samples']} bootstrap refits, 95% intervals):", "",
          "| parameter | value |", "|---|---|"]
lines += [f"| {name} | {show('parameters', name)} |" for name in fit["parameters"]]
lines += ["", f"At C = {fit['budget']:.3g} FLOPs:", "",
          "| E | N_opt (active) | D_opt | loss | N_opt / dense | loss below dense |",
          "|---|---|---|---|---|---|"]
for experts in ("1", "4", "8"):
  shift = show("optimal", f"shift_E{experts}") if experts != "1" else "1"
  gain = show("optimal", f"gain_E{experts}", ".4f") if experts != "1" else "0"
  lines.append(f"| {experts} | {show('optimal', f'params_E{experts}')} | "
               f"{show('optimal', f'tokens_E{experts}')} | "
               f"{show('optimal', f'loss_E{experts}', '.4f')} | {shift} | {gain} |")
for warning in fit["warnings"]:
  lines.append(f"\nwarning: {warning}")
open(f"{here}/results.md", "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
SUMMARY
