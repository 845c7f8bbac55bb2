"""`fit`: from a runs table to fitted law parameters and the compute-optimal model, with
bootstrap confidence intervals (runs resampled with replacement, the fit repeated)."""

from __future__ import annotations

import dataclasses
import sys
from typing import Callable, Optional, TextIO

import numpy as np

from t5x_lite.scaling import fitting, isoflop
from t5x_lite.scaling.runs import Runs, RunsError

METHODS = ("parametric", "isoflop")
MINIMUM_RUNS = {"parametric": 5, "isoflop": 6}


def _subset(runs: Runs, index: np.ndarray) -> Runs:
  return Runs(params=runs.params[index], tokens=runs.tokens[index], loss=runs.loss[index],
              flops=runs.flops[index])


def _parametric(runs: Runs, budget: float, start=None) -> tuple[dict, dict]:
  law = fitting.fit_parametric(runs.params, runs.tokens, runs.loss) if start is None else \
      fitting.refit_parametric(runs.params, runs.tokens, runs.loss, start)
  optimum = law.optimal(budget)
  parameters = {"E": law.E, "A": law.A, "B": law.B, "alpha": law.alpha, "beta": law.beta,
                "a": law.a, "b": law.b}
  return parameters, {"params": optimum.params, "tokens": optimum.tokens,
                      "tokens_per_param": optimum.tokens_per_param, "loss": optimum.loss}


def _isoflop(runs: Runs, budget: float, start=None) -> tuple[dict, dict]:
  allocation, _ = isoflop.fit_isoflop(runs)
  optimum = allocation.optimal(budget)
  parameters = {"k_N": allocation.k_N, "a": allocation.a, "k_D": allocation.k_D,
                "b": allocation.b}
  return parameters, {"params": optimum.params, "tokens": optimum.tokens,
                      "tokens_per_param": optimum.tokens_per_param}


FITTERS: dict[str, Callable] = {"parametric": _parametric, "isoflop": _isoflop}


@dataclasses.dataclass
class FitReport:
  method: str
  runs: int
  budget: float
  parameters: dict
  optimal: dict
  intervals: dict  # name -> (low, high), for parameters and optimal values
  bootstrap_samples: int

  def as_dict(self) -> dict:
    def entry(name, value):
      low_high = self.intervals.get(name)
      return {"value": value, **({"ci95": list(low_high)} if low_high else {})}
    return {"method": self.method, "runs": self.runs, "budget": self.budget,
            "bootstrap_samples": self.bootstrap_samples,
            "parameters": {k: entry(k, v) for k, v in self.parameters.items()},
            "optimal": {k: entry(k, v) for k, v in self.optimal.items()}}


def fit_runs(runs: Runs, method: str, budget: Optional[float] = None, bootstrap: int = 0,
             seed: int = 0, warn: Optional[TextIO] = None) -> FitReport:
  """Fits `runs` by `method` and reports the optimum at `budget` (default: the largest run)."""
  if method not in METHODS:
    raise RunsError(f"unknown method {method!r}; choose from {METHODS}.")
  runs.require(MINIMUM_RUNS[method], method)
  budget = float(runs.flops.max()) if budget is None else float(budget)
  if not np.isfinite(budget) or budget <= 0:
    raise RunsError(f"--budget must be a positive number of FLOPs, got {budget}.")
  if not runs.flops.min() <= budget <= runs.flops.max():
    print(f"warning: budget {budget:.3g} FLOPs is outside the runs' range "
          f"[{runs.flops.min():.3g}, {runs.flops.max():.3g}]: the optimum is an "
          "extrapolation.", file=warn or sys.stderr)
  fitter = FITTERS[method]
  parameters, optimal = fitter(runs, budget)
  samples = []
  rng = np.random.default_rng(seed)
  start = fitting.law_from(parameters) if method == "parametric" else None
  for _ in range(bootstrap):
    index = rng.integers(0, len(runs), len(runs))
    try:
      samples.append(fitter(_subset(runs, index), budget, start))
    except RunsError:  # A resample without enough budgets/sizes: skip it.
      continue
  intervals = {}
  if samples:
    for part, values in (("parameters", parameters), ("optimal", optimal)):
      for name in values:
        draws = [sample[0 if part == "parameters" else 1][name] for sample in samples]
        intervals[name] = fitting.percentile_interval(draws)
  return FitReport(method, len(runs), budget, parameters, optimal, intervals, len(samples))
