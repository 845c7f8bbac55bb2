#!/usr/bin/env bash
# Fits L(N, D, E) = E0 + A / (N E^delta)^alpha + B / D^beta (Clark et al.'s effective
# parameters; fit_experts.json, experts.png) and the same with B E^omega in the data term
# (fit_experts_data.json, experts_data.png) to the dense runs (E = 1,
# experiments/scaling/RUNS.csv) and the MoE sweep's (E = 4, 8), and writes results.md:
# every shape's loss side by side, each budget's IsoFLOP minimum per family (no law
# assumed) and both fits' compute-optimal active sizes with intervals.
#   bash experiments/moe/sweep/fit.sh     (after run.sh; ~2 minutes on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/../../.."
HERE=experiments/moe/sweep
DENSE=experiments/scaling/RUNS.csv
# Where experiments/scaling reports its optimum, so that the two can be compared.
BUDGET=1e14

for METHOD in experts experts_data; do
  python -m t5x_lite.scaling fit $DENSE $HERE/RUNS_e4.csv $HERE/RUNS_e8.csv --method $METHOD \
      --budget $BUDGET --bootstrap 200 --plot $HERE/$METHOD.png --json > $HERE/fit_$METHOD.json
done
python - "$HERE" "$DENSE" <<'SUMMARY'
import csv
import json
import sys

import numpy as np

from t5x_lite.scaling import isoflop
from t5x_lite.scaling.laws import ExpertsLaw
from t5x_lite.scaling.runs import read_runs, read_tables

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
for (budget, layers, d_model), found in sorted(
    by_shape.items(), key=lambda item: (item[0][0], int(next(iter(item[1].values()))["params"]))):
  losses = [f"{float(found[e]['loss']):.4f}" if e in found else "" for e in tables]
  params = int(found[1]["params"]) if 1 in found else ""
  lines.append(f"| {budget:.3g} | L{layers} d{d_model} | {params:,} | " + " | ".join(losses)
               + " |")
lines += ["", "Each budget's best run per family (N, loss), and where the runs bracket it, "
          "the minimum of a parabola in log N through them (no law assumed):", "",
          "| budget | E | best run N | best loss | parabola N_opt | parabola L_min |",
          "|---|---|---|---|---|---|"]
for budget in sorted({key[0] for key in by_shape}):
  for experts, path in tables.items():
    runs = read_runs(path)
    here_runs = np.flatnonzero(np.isclose(
        [float(row["budget"]) for row in rows[experts]], budget))
    if not len(here_runs):
      continue
    best = here_runs[np.argmin(runs.loss[here_runs])]
    profile = [p for p in isoflop.profiles(runs) if np.isclose(p.flops, budget, rtol=0.05)]
    parabola = "not bracketed | "
    if profile:
      optimum = profile[0].optimal_params
      minimum = float(np.polyval(profile[0].coefficients, np.log(optimum)))
      parabola = f"{optimum:,.0f} | {minimum:.4f}"
    lines.append(f"| {budget:.3g} | {experts} | {runs.params[best]:,.0f} | "
                 f"{runs.loss[best]:.4f} | {parabola} |")

def show(fit, part, name, digits=".3g"):
  entry = fit[part][name]
  low, high = entry.get("ci95", (np.nan, np.nan))
  return f"{entry['value']:{digits}} [{low:{digits}}, {high:{digits}}]"


for method, title in (("experts", "gamma only (Clark et al.'s effective parameters)"),
                      ("experts_data", "with the data term B E^omega / D^beta")):
  fit = json.load(open(f"{here}/fit_{method}.json"))
  lines += ["", f"## `--method {method}`: {title}", "",
            f"{fit['runs']} runs, {fit['bootstrap_samples']} bootstrap refits (within each "
            "expert count), 95% intervals:", "", "| parameter | value |", "|---|---|"]
  lines += [f"| {name} | {show(fit, 'parameters', name)} |" for name in fit["parameters"]]
  # How well the form describes the runs: RMS of log(loss / predicted), all and per E.
  law = ExpertsLaw(**{name: fit["parameters"][name]["value"] for name in
                      ("E0", "A", "B", "alpha", "beta", "gamma", "omega")
                      if name in fit["parameters"]})
  runs = read_tables(list(tables.values()))
  residual = np.log(runs.loss / law.loss(runs.params, runs.tokens, runs.expert_counts))
  per_count = ", ".join(f"E = {e:g}: {np.sqrt(np.mean(residual[runs.expert_counts == e] ** 2)):.4f}"
                        for e in np.unique(runs.expert_counts))
  lines += ["", f"RMS log residual: {np.sqrt(np.mean(residual ** 2)):.4f} ({per_count})."]
  lines += ["", f"At C = {fit['budget']:.3g} FLOPs:", "",
            "| E | N_opt (active) | D_opt | loss | N_opt / dense | loss below dense |",
            "|---|---|---|---|---|---|"]
  for experts in ("1", "4", "8"):
    shift = show(fit, "optimal", f"shift_E{experts}") if experts != "1" else "1"
    gain = show(fit, "optimal", f"gain_E{experts}", ".4f") if experts != "1" else "0"
    lines.append(f"| {experts} | {show(fit, 'optimal', f'params_E{experts}')} | "
                 f"{show(fit, 'optimal', f'tokens_E{experts}')} | "
                 f"{show(fit, 'optimal', f'loss_E{experts}', '.4f')} | {shift} | {gain} |")
  lines += [f"\nwarning: {warning}" for warning in fit["warnings"]]
open(f"{here}/results.md", "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
SUMMARY
