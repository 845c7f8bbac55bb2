"""Plots of a fit (matplotlib, written to a file): what the data and the law look like.

isoflop:    loss vs N for each budget with its parabola and minimum | N_opt(C), D_opt(C)
parametric: the fitted L(N, D) contours over the runs              | N_opt(C), D_opt(C)
The right panel marks the requested budget with its bootstrap interval.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # Files only; no display needed.
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from t5x_lite.scaling import fitting, isoflop  # noqa: E402
from t5x_lite.scaling.laws import PowerLawAllocation  # noqa: E402
from t5x_lite.scaling.report import FitReport  # noqa: E402
from t5x_lite.scaling.runs import Runs  # noqa: E402


def _isoflop_panel(axis, runs: Runs) -> None:
  colours = plt.cm.viridis(np.linspace(0, 0.9, 8))
  for i, profile in enumerate(isoflop.profiles(runs)):
    colour = colours[i % len(colours)]
    axis.scatter(profile.params, profile.loss, color=colour, s=14,
                 label=f"C = {profile.flops:.2g}")
    grid = np.linspace(np.log(profile.params.min()), np.log(profile.params.max()), 100)
    axis.plot(np.exp(grid), np.polyval(profile.coefficients, grid), color=colour, lw=1)
    axis.scatter([profile.optimal_params], [profile.optimal_loss], color=colour, marker="*",
                 s=120, edgecolor="black", zorder=3)
  axis.set(xscale="log", xlabel="parameters N", ylabel="loss", title="IsoFLOP profiles")
  axis.legend(fontsize=7)


def _contour_panel(axis, runs: Runs, report: FitReport) -> None:
  law = fitting.law_from(report.parameters)
  n = np.logspace(np.log10(runs.params.min()) - 0.3, np.log10(runs.params.max()) + 0.3, 120)
  d = np.logspace(np.log10(runs.tokens.min()) - 0.3, np.log10(runs.tokens.max()) + 0.3, 120)
  grid_n, grid_d = np.meshgrid(n, d)
  contours = axis.contour(grid_n, grid_d, law.loss(grid_n, grid_d), levels=12, cmap="viridis")
  axis.clabel(contours, fontsize=6)
  axis.scatter(runs.params, runs.tokens, c=runs.loss, cmap="viridis", s=10, edgecolor="black",
               linewidth=0.3)
  budgets = np.logspace(np.log10(runs.flops.min()), np.log10(runs.flops.max()), 20)
  optimal = [law.optimal(c) for c in budgets]
  axis.plot([o.params for o in optimal], [o.tokens for o in optimal], "r--", label="optimum")
  axis.set(xscale="log", yscale="log", xlabel="parameters N", ylabel="tokens D",
           title="fitted L(N, D)")
  axis.legend(fontsize=7)


def _allocation_panel(axis, runs: Runs, report: FitReport) -> None:
  if report.method == "parametric":
    allocate = fitting.law_from(report.parameters).optimal
  else:
    p = report.parameters
    allocate = PowerLawAllocation(p["k_N"], p["a"], p["k_D"], p["b"]).optimal
  low = min(runs.flops.min(), report.budget) / 3
  high = max(runs.flops.max(), report.budget) * 3
  budgets = np.logspace(np.log10(low), np.log10(high), 50)
  optimal = [allocate(c) for c in budgets]
  axis.plot(budgets, [o.params for o in optimal], label="N_opt")
  axis.plot(budgets, [o.tokens for o in optimal], label="D_opt")
  for name in ("params", "tokens"):
    value = report.optimal[name]
    interval = report.intervals.get(name)
    error = None if interval is None else [[value - interval[0]], [interval[1] - value]]
    axis.errorbar([report.budget], [value], yerr=error, fmt="o", color="black", capsize=3)
  axis.set(xscale="log", yscale="log", xlabel="training FLOPs C",
           title=f"compute-optimal allocation ({report.method})")
  axis.legend(fontsize=7)


def plot_fit(runs: Runs, report: FitReport, path: str) -> None:
  """Writes the two-panel figure of a fit to `path` (format from the suffix)."""
  figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
  if report.method == "isoflop":
    _isoflop_panel(left, runs)
  else:
    _contour_panel(left, runs, report)
  _allocation_panel(right, runs, report)
  figure.tight_layout()
  figure.savefig(path, dpi=120)
  plt.close(figure)
