"""Plots of scaling fits (matplotlib, written to a file).

`plot_fit` (fit --plot): the method's own view of the data | N_opt(C), D_opt(C)
  isoflop:              loss vs N per budget with its parabola and minimum
  parametric, kaplan:   the fitted L(N, D) contours over the runs
  envelope:             the training curves and their lower envelope
`plot_study` (the plot command): a 2 x 2 overview of a sweep: IsoFLOP
profiles, the loss-compute frontier, N_opt and D_opt vs C of every fit
with bootstrap bands, and the parametric L(N, D) contours.
`plot_experts` (fit --method experts --plot): dense and MoE IsoFLOP profiles with the fitted
L(N, D, E) along each, the compute-optimal active size against compute for every expert
count (bootstrap bands), and the loss at that optimum.
`plot_downstream` (plot --downstream): one question set's metrics along a sweep, each
against compute and against validation loss, one row per metric: a discontinuous
metric (accuracy, exact match) beside a continuous one (answer log-likelihood, Brier)
shows whether an ability emerges or only its measurement does.
"""

from __future__ import annotations

from typing import Optional, Sequence

import matplotlib

matplotlib.use("Agg")  # Files only; no display needed.
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from t5x_lite.common.errors import file_errors
from t5x_lite.scaling import envelope, isoflop  # noqa: E402
from t5x_lite.scaling.report import FitReport  # noqa: E402
from t5x_lite.scaling.runs import Runs  # noqa: E402


def _colours(count: int):
  return plt.cm.viridis(np.linspace(0, 0.9, max(count, 1)))


def isoflop_panel(axis, runs: Runs) -> None:
  found = isoflop.profiles(runs)
  for colour, profile in zip(_colours(len(found)), found):
    axis.scatter(profile.params, profile.loss, color=colour, s=14,
                 label=f"C = {profile.flops:.2g}")
    grid = np.linspace(np.log(profile.params.min()), np.log(profile.params.max()), 100)
    axis.plot(np.exp(grid), np.polyval(profile.coefficients, grid), color=colour, lw=1)
    axis.scatter([profile.optimal_params], [profile.optimal_loss], color=colour, marker="*",
                 s=120, edgecolor="black", zorder=3)
  axis.set(xscale="log", xlabel="parameters N", ylabel="loss", title="IsoFLOP profiles")
  axis.legend(fontsize=7)


def contour_panel(axis, runs: Runs, law, title: str = "fitted L(N, D)") -> None:
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
  axis.set(xscale="log", yscale="log", xlabel="parameters N", ylabel="tokens D", title=title)
  axis.legend(fontsize=7)


def envelope_panel(axis, runs: Runs) -> None:
  found = envelope.curves(runs)
  sizes = np.log(np.array([curve[0] for curve in found]))
  span = max(np.ptp(sizes), 1e-9)
  for params, flops, _, loss in found:
    axis.plot(flops, loss, color=plt.cm.viridis(0.9 * (np.log(params) - sizes.min()) / span),
              lw=0.8, alpha=0.8)
  front = envelope.lower_envelope(runs)
  axis.plot(front.flops, front.loss, "k--", lw=1.5, label="lower envelope")
  axis.set(xscale="log", xlabel="training FLOPs C", ylabel="loss",
           title="training curves (colour: N)")
  axis.legend(fontsize=7)


def frontier_panel(axis, runs: Runs, curves: Optional[Runs], reports: Sequence[FitReport]) -> None:
  """Final loss of every run against its compute, and what the fits predict at the optimum."""
  if curves is not None:
    front = envelope.lower_envelope(curves)
    axis.plot(front.flops, front.loss, color="grey", lw=1, label="training-curve envelope")
  axis.scatter(runs.flops, runs.loss, c=np.log(runs.params), cmap="viridis", s=14,
               label="runs (colour: N)")
  budgets = np.logspace(np.log10(runs.flops.min()) - 0.3, np.log10(runs.flops.max()) + 0.5, 40)
  for report in reports:
    if report.law is not None and hasattr(report.law, "loss"):
      axis.plot(budgets, [report.law.optimal(c).loss for c in budgets],
                label=f"{report.method}: L at the optimum")
  axis.set(xscale="log", xlabel="training FLOPs C", ylabel="loss", title="loss-compute frontier")
  axis.legend(fontsize=7)


def allocation_panel(axis, runs: Runs, reports: Sequence[FitReport]) -> None:
  """N_opt(C) (solid) and D_opt(C) (dashed) of each fit with its bootstrap band."""
  low = min([runs.flops.min()] + [r.budget for r in reports]) / 3
  high = max([runs.flops.max()] + [r.budget for r in reports]) * 3
  budgets = np.logspace(np.log10(low), np.log10(high), 40)
  for colour, report in zip(plt.cm.tab10.colors, reports):
    optimal = [report.law.optimal(c) for c in budgets]
    axis.plot(budgets, [o.params for o in optimal], color=colour,
              label=f"{report.method} N_opt")
    axis.plot(budgets, [o.tokens for o in optimal], color=colour, ls="--",
              label=f"{report.method} D_opt")
    if report.samples:
      band = report.optimal_band(budgets)
      for name in ("params", "tokens"):
        axis.fill_between(budgets, *band[name], color=colour, alpha=0.15, lw=0)
  axis.axvspan(runs.flops.min(), runs.flops.max(), color="grey", alpha=0.08, label="runs' range")
  axis.set(xscale="log", yscale="log", xlabel="training FLOPs C",
           title="compute-optimal allocation (95% bootstrap bands)")
  axis.legend(fontsize=6)


def plot_fit(runs: Runs, report: FitReport, path: str) -> None:
  """Writes the two-panel figure of one fit to `path` (format from the suffix)."""
  figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
  if report.method == "isoflop":
    isoflop_panel(left, runs)
  elif report.method == "envelope":
    envelope_panel(left, runs)
  else:
    contour_panel(left, runs, report.law, f"fitted L(N, D) ({report.method})")
  allocation_panel(right, runs, [report])
  for name in ("params", "tokens"):
    interval = report.intervals.get(name)
    value = report.optimal[name]
    error = None if interval is None else [[value - interval[0]], [interval[1] - value]]
    right.errorbar([report.budget], [value], yerr=error, fmt="o", color="black", capsize=3)
  figure.tight_layout()
  with file_errors("the plot", path):
    figure.savefig(path, dpi=120)
  plt.close(figure)


EXPERT_MARKERS = ("o", "s", "^", "D", "v", "P")


def plot_experts(runs: Runs, report: FitReport, path: str) -> None:
  """Writes the three-panel figure of an experts fit (module docstring) to `path`."""
  fit = report.law  # report.ExpertsFit
  experts = fit.experts
  per_token = fit.flops_per_token or (lambda params: 6.0 * params)
  groups = isoflop.group_budgets(runs.flops)
  figure, (profiles, allocation, frontier) = plt.subplots(1, 3, figsize=(16, 4.8))
  for colour, group in zip(_colours(len(groups)), groups):
    budget = float(np.median(runs.flops[group]))
    for marker, count in zip(EXPERT_MARKERS, experts):
      chosen = group[runs.expert_counts[group] == count]
      if not len(chosen):
        continue
      profiles.scatter(runs.params[chosen], runs.loss[chosen], color=colour, marker=marker,
                       s=22, edgecolor="black", linewidth=0.3)
      grid = np.logspace(np.log10(runs.params[chosen].min()) - 0.1,
                         np.log10(runs.params[chosen].max()) + 0.1, 80)
      tokens = np.array([budget / per_token(n) for n in grid])
      profiles.plot(grid, fit.loss(grid, tokens, count), color=colour,
                    ls="-" if count == 1 else "--" if count == experts[1] else ":", lw=1)
  for marker, count in zip(EXPERT_MARKERS, experts):
    profiles.scatter([], [], color="grey", marker=marker, label=f"E = {count:g}")
  profiles.set(xscale="log", xlabel="active parameters N", ylabel="validation loss",
               title="IsoFLOP profiles and the fitted L(N, D, E)\n(colour: budget)")
  profiles.legend(fontsize=7)
  low = min(runs.flops.min(), report.budget) / 3
  high = max(runs.flops.max(), report.budget) * 3
  budgets = np.logspace(np.log10(low), np.log10(high), 30)
  for colour, count in zip(plt.cm.tab10.colors, experts):
    law = fit.at(count)
    optima = [law.optimal(c) for c in budgets]
    allocation.plot(budgets, [o.params for o in optima], color=colour, label=f"E = {count:g}")
    frontier.plot(budgets, [o.loss for o in optima], color=colour, label=f"E = {count:g}")
    if report.samples:
      band = report.optimal_band(budgets, experts=count)
      allocation.fill_between(budgets, *band["params"], color=colour, alpha=0.15, lw=0)
    # Each budget's best run of this expert count: the frontier the runs themselves show.
    best = [(float(np.median(runs.flops[group])), runs.loss[group][
        runs.expert_counts[group] == count].min()) for group in groups
        if np.any(runs.expert_counts[group] == count)]
    frontier.plot(*zip(*best), color=colour, marker="o", ls=":", lw=1)
  for axis in (allocation, frontier):
    axis.axvspan(runs.flops.min(), runs.flops.max(), color="grey", alpha=0.08,
                 label="runs' range")
    axis.legend(fontsize=7)
  allocation.set(xscale="log", yscale="log", xlabel="training FLOPs C",
                 ylabel="compute-optimal active parameters",
                 title="N_opt(C, E) (95% bootstrap bands)")
  frontier.set(xscale="log", xlabel="training FLOPs C", ylabel="loss",
               title="loss at the optimum (dots: each budget's best run)")
  figure.tight_layout()
  with file_errors("the plot", path):
    figure.savefig(path, dpi=120)
  plt.close(figure)


def plot_study(runs: Runs, reports: Sequence[FitReport], path: str,
               curves: Optional[Runs] = None) -> None:
  """The 2 x 2 overview of a sweep (see the module docstring)."""
  figure, axes = plt.subplots(2, 2, figsize=(12, 9))
  isoflop_panel(axes[0, 0], runs)
  frontier_panel(axes[0, 1], runs, curves, reports)
  allocation_panel(axes[1, 0], runs, reports)
  parametric = [r for r in reports if r.method == "parametric"]
  if parametric:
    contour_panel(axes[1, 1], runs, parametric[0].law)
  else:
    axes[1, 1].set_axis_off()
  figure.tight_layout()
  with file_errors("the plot", path):
    figure.savefig(path, dpi=120)
  plt.close(figure)


DOWNSTREAM_LABELS = {"accuracy": "accuracy", "exact_match": "exact match (greedy)",
                     "answer_logprob_per_token": "answer log-likelihood / token",
                     "brier": "Brier score (lower is better)"}


def plot_downstream(rows: Sequence[dict], question_set: str, metrics: Sequence[str],
                    path: str) -> None:
  """Each metric of `question_set` against compute (left) and loss (right), one point per
  run, coloured by parameters; accuracy with the set's chance level."""
  flops = np.array([float(row["flops"]) for row in rows])
  loss = np.array([float(row["loss"]) for row in rows])
  params = np.array([float(row["params"]) for row in rows])
  figure, axes = plt.subplots(len(metrics), 2, figsize=(10, 3.2 * len(metrics)),
                              squeeze=False)
  colour = np.log10(params)
  for row_axes, metric in zip(axes, metrics):
    values = np.array([float(row[f"{question_set}/{metric}"]) for row in rows])
    for axis, x, label in ((row_axes[0], flops, "training FLOPs"),
                           (row_axes[1], loss, "validation loss")):
      points = axis.scatter(x, values, c=colour, cmap="viridis", s=22)
      if metric == "accuracy":
        chance = float(rows[0][f"{question_set}/chance"])
        axis.axhline(chance, color="grey", ls=":", lw=1, label="chance")
        axis.legend(fontsize=7)
      axis.set_xlabel(label)
      axis.set_ylabel(DOWNSTREAM_LABELS.get(metric, metric))
    row_axes[0].set_xscale("log")
    row_axes[1].invert_xaxis()  # better models to the right in both columns
  figure.colorbar(points, ax=axes, label="log10 parameters", shrink=0.6)
  figure.suptitle(f"{question_set} along the sweep: {len(rows)} runs")
  with file_errors("the figure", path):
    figure.savefig(path, dpi=120, bbox_inches="tight")
  plt.close(figure)
