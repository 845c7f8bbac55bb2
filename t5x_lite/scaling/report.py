"""`fit`: from a runs table to fitted law parameters and the compute-optimal model, with
bootstrap confidence intervals (runs resampled with replacement, the fit repeated).

The experts methods fit laws.ExpertsLaw to dense and mixture-of-experts runs together (an
experts column; runs.py), `experts` with gamma alone and `experts_data` with omega too,
and report, at the budget, the compute-optimal active size, tokens and loss of every
expert count in the table, how far the optimal active size moves from the dense one
(shift_E<E> = N_opt(C, E) / N_opt(C, 1)) and the loss gained (gain_E<E>)."""

from __future__ import annotations

import dataclasses
import functools
import sys
from typing import Callable, Optional, TextIO

import numpy as np

from t5x_lite.scaling import envelope, fitting, isoflop, kaplan, noise
from t5x_lite.scaling.laws import ExpertsLaw, Law, optimal_numerically
from t5x_lite.scaling.runs import Runs, RunsError

METHODS = ("parametric", "isoflop", "envelope", "kaplan", "experts", "experts_data")
# The fits of ExpertsLaw: gamma only (Clark et al.'s effective parameters), and with
# the E-dependent data term omega as well.
EXPERTS_METHODS = ("experts", "experts_data")
MINIMUM_RUNS = {"parametric": 5, "isoflop": 6, "envelope": 4, "kaplan": 4, "experts": 7,
                "experts_data": 8}


def resample(runs: Runs, method: str, rng: np.random.Generator) -> Runs:
  """A bootstrap resample: with replicates, each point's losses redrawn from its own
  (scaling/noise.py); else runs drawn with replacement, within each budget for the
  isoflop fit and within each expert count for the experts fit; the envelope draws whole
  training curves."""
  if method != "envelope":
    redrawn = noise.resample_losses(runs, rng)
    if redrawn is not None:
      return redrawn
    if method == "isoflop":
      return runs.subset(noise.resample_within_budgets(runs, rng))
    if method in EXPERTS_METHODS:  # Within each expert count: every resample keeps every E.
      return runs.subset(noise.resample_within(
          [np.flatnonzero(runs.expert_counts == e) for e in np.unique(runs.expert_counts)],
          rng))
    return runs.subset(rng.integers(0, len(runs), len(runs)))
  ids = np.unique(runs.run)
  drawn = rng.choice(ids, len(ids))
  index = np.concatenate([np.flatnonzero(runs.run == run_id) for run_id in drawn])
  # A curve drawn twice must stay two curves, not one with doubled points.
  renamed = np.concatenate([[f"{run_id}#{k}"] * int(np.sum(runs.run == run_id))
                            for k, run_id in enumerate(drawn)])
  resampled = runs.subset(index)
  return dataclasses.replace(resampled, run=renamed)


@dataclasses.dataclass(frozen=True)
class ExactFlopsLaw:
  """A loss law L(N, D) whose optimum is taken under the runs' own FLOPs per token
  (C = flops_per_token(N) x D) instead of 6N: at small widths and long sequences
  attention and logits make the true cost several times 6ND, and the runs' flops
  column (and every budget) counts it."""
  law: Law
  flops_per_token: Callable[[float], float]

  def loss(self, params, tokens):
    return self.law.loss(params, tokens)

  def optimal(self, flops: float):
    return optimal_numerically(self.law.loss, flops, self.flops_per_token)


def runs_flops_per_token(runs: Runs, tolerance: float = 0.02) -> Optional[Callable]:
  """FLOPs per token as a smooth function of N fitted to the runs, or None when the
  table's flops are 6ND (the default, and Chinchilla's convention).

  The excess over 6N (attention over the sequence, logits) shrinks as models widen:
  flops / (6ND) is fitted as a power of N (a line in log-log, so the optimum moves
  smoothly with C) and never taken below 1.
  """
  ratio = runs.flops / (6.0 * runs.params * runs.tokens)
  if np.all(np.abs(ratio - 1.0) <= tolerance):
    return None
  slope, intercept = np.polyfit(np.log(runs.params), np.log(ratio), 1)

  def flops_per_token(params: float) -> float:
    return 6.0 * params * max(1.0, float(np.exp(slope * np.log(params) + intercept)))
  return flops_per_token


def _optimal(law: Law, budget: float) -> dict:
  optimum = law.optimal(budget)
  values = {"params": optimum.params, "tokens": optimum.tokens,
            "tokens_per_param": optimum.tokens_per_param}
  if optimum.loss is not None:
    values["loss"] = optimum.loss
  return values


@dataclasses.dataclass(frozen=True)
class ExpertsFit:
  """A fitted ExpertsLaw and the expert counts it reports, optima under the runs' FLOPs
  per token (ExactFlopsLaw) when they are not 6N. `optimal` is the dense model's."""
  law: ExpertsLaw
  experts: tuple[float, ...]
  flops_per_token: Optional[Callable[[float], float]] = None

  def at(self, experts: float) -> Law:
    """The L(N, D) law of models with `experts` experts."""
    law = self.law.at(experts)
    return law if self.flops_per_token is None else ExactFlopsLaw(law, self.flops_per_token)

  def loss(self, params, tokens, experts):
    return self.law.loss(params, tokens, experts)

  def optimal(self, flops: float):
    return self.at(1.0).optimal(flops)

  def optimal_values(self, flops: float) -> dict:
    """params_E<E>, tokens_E<E>, loss_E<E> at every expert count; for E > 1 also shift_E<E>
    (its optimal active size over the dense one) and gain_E<E> (the dense optimum's loss
    minus its own)."""
    values = {}
    dense = self.at(1.0).optimal(flops)
    for experts in self.experts:
      optimum = self.at(experts).optimal(flops)
      label = f"E{experts:g}"
      values.update({f"params_{label}": optimum.params, f"tokens_{label}": optimum.tokens,
                     f"loss_{label}": optimum.loss})
      if experts != 1:
        values[f"shift_{label}"] = optimum.params / dense.params
        values[f"gain_{label}"] = dense.loss - optimum.loss
    return values


def _parametric(runs: Runs, start=None) -> tuple[Law, dict]:
  law = fitting.fit_parametric(runs.params, runs.tokens, runs.loss) if start is None else \
      fitting.refit_parametric(runs.params, runs.tokens, runs.loss, start)
  return law, {"E": law.E, "A": law.A, "B": law.B, "alpha": law.alpha, "beta": law.beta,
               "a": law.a, "b": law.b}


def _power_law(allocation) -> dict:
  return {"k_N": allocation.k_N, "a": allocation.a, "k_D": allocation.k_D, "b": allocation.b}


def _isoflop(runs: Runs, start=None) -> tuple[Law, dict]:
  allocation, _ = isoflop.fit_isoflop(runs)
  return allocation, _power_law(allocation)


def _envelope(runs: Runs, start=None) -> tuple[Law, dict]:
  allocation, _ = envelope.fit_envelope(runs)
  return allocation, _power_law(allocation)


def _kaplan(runs: Runs, start=None) -> tuple[Law, dict]:
  law = kaplan.fit_kaplan(runs.params, runs.tokens, runs.loss) if start is None else \
      kaplan.refit_kaplan(runs.params, runs.tokens, runs.loss, start)
  return law, {"N_c": law.N_c, "D_c": law.D_c, "alpha_N": law.alpha_N, "alpha_D": law.alpha_D}


def _experts(runs: Runs, start=None, data_term: bool = False) -> tuple[ExpertsLaw, dict]:
  columns = (runs.params, runs.tokens, runs.loss, runs.expert_counts)
  law = fitting.fit_experts(*columns, data_term=data_term) if start is None else \
      fitting.refit_experts(*columns, start, data_term=data_term)
  return law, {"E0": law.E0, "A": law.A, "B": law.B, "alpha": law.alpha, "beta": law.beta,
               "gamma": law.gamma, "delta": law.delta,
               **({"omega": law.omega} if data_term else {})}


# Each returns (the fitted law, its named parameters); `start` seeds a bootstrap refit.
FITTERS: dict[str, Callable] = {
    "parametric": _parametric, "isoflop": _isoflop, "envelope": _envelope, "kaplan": _kaplan,
    "experts": _experts, "experts_data": functools.partial(_experts, data_term=True)}
# Methods whose bootstrap refits start from the full-data fit.
WARM_STARTED = ("parametric", "kaplan", *EXPERTS_METHODS)


@dataclasses.dataclass
class FitReport:
  method: str
  runs: int
  budget: float
  parameters: dict
  optimal: dict
  intervals: dict  # name -> (low, high), for parameters and optimal values
  bootstrap_samples: int
  law: Optional[Law] = None  # the full-data fit (anything with .optimal(C))
  samples: tuple = ()  # the bootstrap refits' laws
  warnings: tuple = ()  # parameters the data do not constrain (boundary_warnings)
  scatter: Optional[float] = None  # run-to-run loss scatter among replicates
  budget_noise: tuple = ()  # isoflop: noise.BudgetNoise per bracketed budget

  def optimal_band(self, budgets, level: float = 0.95,
                   experts: Optional[float] = None) -> dict:
    """{"params": (low, high), "tokens": (low, high)} arrays of the bootstrap at `budgets`
    (of models with `experts` experts, for the experts method)."""
    laws = [law if experts is None else law.at(experts) for law in self.samples]
    band = {}
    for name in ("params", "tokens"):
      draws = np.array([[getattr(law.optimal(c), name) for c in budgets] for law in laws])
      tail = 100 * (1 - level) / 2
      band[name] = tuple(np.percentile(draws, [tail, 100 - tail], axis=0))
    return band

  def as_dict(self) -> dict:
    def entry(name, value):
      low_high = self.intervals.get(name)
      return {"value": value, **({"ci95": list(low_high)} if low_high else {})}
    return {"method": self.method, "runs": self.runs, "budget": self.budget,
            "bootstrap_samples": self.bootstrap_samples, "warnings": list(self.warnings),
            "scatter": self.scatter,
            "noise_limited_budgets": [b.flops for b in self.budget_noise if b.noise_limited],
            "parameters": {k: entry(k, v) for k, v in self.parameters.items()},
            "optimal": {k: entry(k, v) for k, v in self.optimal.items()}}


# What each method needs to identify its parameters (besides MINIMUM_RUNS): distinct
# model sizes, distinct token counts and FLOP budgets in the table.
MINIMUM_DATA = {"parametric": {"sizes": 3, "token counts": 3, "budgets": 2},
                "kaplan": {"sizes": 3, "token counts": 3, "budgets": 2},
                "isoflop": {"budgets": 2}, "envelope": {"sizes": 2},
                **{method: {"sizes": 3, "token counts": 3, "budgets": 2, "expert counts": 2}
                   for method in EXPERTS_METHODS}}
# log N and log D that move together this closely cannot separate the two power laws.
COLLINEAR = 0.999


def check_identifiable(runs: Runs, method: str) -> None:
  """Raises RunsError when the table cannot identify `method`'s parameters: fewer distinct
  sizes, token counts or budgets than MINIMUM_DATA states, or (for L(N, D) laws) log N and
  log D so correlated (one IsoFLOP budget; tokens proportional to parameters) that the
  N and D terms are one term."""
  have = {"sizes": len(np.unique(runs.params)), "token counts": len(np.unique(runs.tokens)),
          "budgets": len(isoflop.group_budgets(runs.flops)),
          "expert counts": len(np.unique(runs.expert_counts))}
  for what, needed in MINIMUM_DATA[method].items():
    if have[what] < needed:
      counts = ", ".join(f"{have[name]} {name}" for name in MINIMUM_DATA[method])
      raise RunsError(f"the {method} fit needs at least {needed} distinct {what}; the table "
                      f"has {have[what]} ({counts}). Add runs.")
  if method in ("parametric", "kaplan", *EXPERTS_METHODS):
    correlation = abs(np.corrcoef(np.log(runs.params), np.log(runs.tokens))[0, 1])
    if correlation > COLLINEAR:
      raise RunsError(f"the {method} fit cannot separate the parameters' and the data's "
                      f"terms: log N and log D are correlated {correlation:.4f} across the "
                      "runs (one IsoFLOP budget, or tokens in proportion to parameters). Add "
                      "runs that vary N and D independently (other budgets).")


def boundary_warnings(method: str, parameters: dict, law, runs: Runs) -> list[str]:
  """Fitted parameters at the edge of what the data can say: a fit that put them there
  found no interior optimum, and its compute-optimal figures are not to be trusted."""
  warnings = []
  if method in ("parametric", *EXPERTS_METHODS):
    irreducible = "E" if method == "parametric" else "E0"
    predicted = law.loss(runs.params, runs.tokens) if method == "parametric" else \
        law.loss(runs.params, runs.tokens, runs.expert_counts)
    reducible = np.mean(predicted - parameters[irreducible])
    if reducible < 1e-3 * np.mean(runs.loss):
      warnings.append(f"the fit attributes {reducible / np.mean(runs.loss):.1e} of the loss to "
                      "model size and data: the runs' losses do not show how loss falls with "
                      "N and D (too flat or too noisy), so the optimum is not determined.")
    if parameters[irreducible] < 1e-3:
      warnings.append(f"{irreducible} = {parameters[irreducible]:.3g} is at its lower bound "
                      "(0): the runs show no irreducible loss; the losses may be too flat or "
                      "too few to fit.")
    for name in ("alpha", "beta"):
      if not 0.01 < parameters[name] < 2.5:
        warnings.append(f"{name} = {parameters[name]:.3g} is outside every published fit "
                        "(0.01-2.5): the data do not constrain it.")
  if method == "kaplan":
    for name in ("alpha_N", "alpha_D"):
      if not 0.01 < parameters[name] < 2.5:
        warnings.append(f"{name} = {parameters[name]:.3g} is outside every published fit "
                        "(0.01-2.5): the data do not constrain it.")
  return warnings


def fit_runs(runs: Runs, method: str, budget: Optional[float] = None, bootstrap: int = 0,
             seed: int = 0, warn: Optional[TextIO] = None) -> FitReport:
  """Fits `runs` by `method` and reports the optimum at `budget` (default: the largest run)."""
  if method not in METHODS:
    raise RunsError(f"unknown method {method!r}; choose from {METHODS}.")
  runs.require(MINIMUM_RUNS[method], method)
  check_identifiable(runs, method)
  budget = float(runs.flops.max()) if budget is None else float(budget)
  if not np.isfinite(budget) or budget <= 0:
    raise RunsError(f"--budget must be a positive number of FLOPs, got {budget}.")
  if not runs.flops.min() <= budget <= runs.flops.max():
    print(f"warning: budget {budget:.3g} FLOPs is outside the runs' range "
          f"[{runs.flops.min():.3g}, {runs.flops.max():.3g}]: the optimum is an "
          "extrapolation.", file=warn or sys.stderr)
  fitter = FITTERS[method]
  if method == "isoflop":
    _, unbracketed = isoflop.split_profiles(runs)
    if unbracketed:
      budgets = len(isoflop.group_budgets(runs.flops))
      print(f"note: {len(unbracketed)} of {budgets} budgets left out of the isoflop fit ("
            "`python -m t5x_lite.scaling plan --refine RUNS.csv` adds sizes beyond them):\n"
            + "\n".join(f"  {problem.describe()}" for problem in unbracketed),
            file=warn or sys.stderr)
  per_token = runs_flops_per_token(runs)
  # The dense optimum is the reference of every shift, so E = 1 is always reported.
  expert_counts = tuple(sorted({1.0, *(float(e) for e in np.unique(runs.expert_counts))}))

  def exact(fitted):
    if method in EXPERTS_METHODS:
      return ExpertsFit(fitted, expert_counts, per_token)
    return ExactFlopsLaw(fitted, per_token) if per_token and method in WARM_STARTED else fitted

  def optimal_of(fitted) -> dict:
    return fitted.optimal_values(budget) if method in EXPERTS_METHODS else \
        _optimal(fitted, budget)

  law, parameters = fitter(runs)
  law = exact(law)
  warnings = boundary_warnings(method, parameters, getattr(law, "law", law), runs)
  for warning in warnings:
    print(f"warning: {warning}", file=warn or sys.stderr)
  optimal = optimal_of(law)
  rng = np.random.default_rng(seed)
  start = getattr(law, "law", law) if method in WARM_STARTED else None
  samples = []
  for _ in range(bootstrap):
    try:
      sample_law, sample_parameters = fitter(resample(runs, method, rng), start)
      sample_law = exact(sample_law)
      sample_optimal = optimal_of(sample_law)
    except (RunsError, ValueError):  # A resample without enough budgets/sizes: skip it.
      continue
    if all(np.isfinite(v) for v in (*sample_parameters.values(), *sample_optimal.values())):
      samples.append((sample_law, sample_parameters, sample_optimal))
  intervals = {}
  if samples:
    for values, position in ((parameters, 1), (optimal, 2)):
      for name in values:
        intervals[name] = fitting.percentile_interval([sample[position][name]
                                                       for sample in samples])
  spread = noise.scatter(runs)
  budgets = tuple(noise.budget_noise(runs, spread)) if (
      spread is not None and method == "isoflop") else ()
  return FitReport(method, len(runs), budget, parameters, optimal, intervals, len(samples),
                   law, tuple(sample[0] for sample in samples), tuple(warnings), spread,
                   budgets)
