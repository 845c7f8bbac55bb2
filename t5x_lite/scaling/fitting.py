"""Fitting the Chinchilla parametric law (Hoffmann et al. 2022, approach 3).

As in the paper: minimise sum_i Huber_delta(LSE(a - alpha log N_i, b - beta log D_i, e)
- log L_i) with delta = 1e-3 over (a, b, e, alpha, beta), A = e^a, B = e^b,
E = e^e, by L-BFGS from a grid of initialisations, keeping the best. The
objective and its gradient are vectorised numpy (analytic gradient). L-BFGS
runs from every one of the paper's 4,500 starts for a screening budget of
iterations, then the most promising starts are run to tight convergence:
on Epoch's 240 runs this lands on the same optimum as running every start
to convergence (objective equal to 1e-10) in ~18 s instead of ~50 s on one core.
`bootstrap_parametric` refits runs resampled with replacement, each from the
full-data optimum (as Epoch AI's replication does from one start), for
confidence intervals.

`fit_experts` fits laws.ExpertsLaw to dense and mixture-of-experts runs the same way:
the model term gains - gamma log E (theta has a sixth coordinate, the grid a gamma axis),
with `data_term` the data term + omega log E (a seventh, started from the best screened
gamma fits), and `bootstrap_experts` gives its intervals.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
from scipy import optimize

from t5x_lite.scaling.laws import ChinchillaLaw, ExpertsLaw
from t5x_lite.scaling.runs import FitError

HUBER_DELTA = 1e-3
# Bootstrap refits start at the full-data optimum; with delta = 1e-3 the
# objective is almost piecewise linear there and scipy's default tolerances
# stop L-BFGS at once, giving falsely narrow intervals.
REFIT_OPTIONS = {"ftol": 1e-15, "gtol": 1e-12, "maxiter": 5000}
# Screening: every grid start gets this many L-BFGS iterations; the best
# POLISHED_STARTS of them are then refined with REFIT_OPTIONS.
SCREEN_OPTIONS = {"maxiter": 20}
POLISHED_STARTS = 20
# Hoffmann et al.'s grid: alpha, beta in {0, 0.5, ..., 2}, e in {-1, -0.5, ..., 1},
# a, b in {0, 5, ..., 25}.
PAPER_GRID = tuple(itertools.product(np.arange(0, 30, 5), np.arange(0, 30, 5),
                                     np.arange(-1, 1.5, 0.5), np.arange(0, 2.5, 0.5),
                                     np.arange(0, 2.5, 0.5)))


def _objective(theta: np.ndarray, log_n: np.ndarray, log_d: np.ndarray, log_loss: np.ndarray,
               delta: float, log_experts: np.ndarray | None = None
               ) -> tuple[float, np.ndarray]:
  """The Huber objective and its gradient; with `log_experts` theta's sixth coordinate is
  gamma, the model term's - gamma log E, and a seventh, when there is one, omega, the
  data term's + omega log E (ExpertsLaw)."""
  a, b, e, alpha, beta = theta[:5]
  # log-sum-exp of the three terms, written out (scipy.special's call
  # overhead dominates at this size and the grid makes ~10^5 calls).
  model_term, data_term = a - alpha * log_n, b - beta * log_d
  if log_experts is not None:
    model_term = model_term - theta[5] * log_experts
    if len(theta) > 6:
      data_term = data_term + theta[6] * log_experts
  top = np.maximum(np.maximum(model_term, data_term), e)
  exp_model, exp_data, exp_e = np.exp(model_term - top), np.exp(data_term - top), np.exp(e - top)
  total = exp_model + exp_data + exp_e
  residual = top + np.log(total) - log_loss
  abs_residual = np.abs(residual)
  small = abs_residual <= delta
  value = np.where(small, 0.5 * residual * residual, delta * (abs_residual - 0.5 * delta)).sum()
  slope = np.where(small, residual, delta * np.sign(residual)) / total  # Huber' x softmax norm
  w_model, w_data = exp_model * slope, exp_data * slope
  gradient = [w_model.sum(), w_data.sum(), (exp_e * slope).sum(),
              -(w_model * log_n).sum(), -(w_data * log_d).sum()]
  if log_experts is not None:
    gradient.append(-(w_model * log_experts).sum())
    if len(theta) > 6:
      gradient.append((w_data * log_experts).sum())
  return float(value), np.array(gradient)


def _minimise_from(starts, log_n, log_d, log_loss, delta, options: dict | None = None,
                   log_experts: np.ndarray | None = None) -> list[tuple[float, np.ndarray]]:
  """L-BFGS from each start; (objective, theta) of the finite results, best first."""
  results = []
  for start in starts:
    result = optimize.minimize(_objective, np.asarray(start, float),
                               args=(log_n, log_d, log_loss, delta, log_experts), jac=True,
                               method="L-BFGS-B", options=options)
    if np.isfinite(result.fun):
      results.append((float(result.fun), result.x))
  return sorted(results, key=lambda item: item[0])


def _best_of(starts, log_n, log_d, log_loss, delta, options: dict | None = None,
             log_experts: np.ndarray | None = None) -> tuple[float, np.ndarray | None]:
  results = _minimise_from(starts, log_n, log_d, log_loss, delta, options, log_experts)
  return results[0] if results else (np.inf, None)


def fit_parametric(params, tokens, loss, *, grid=PAPER_GRID,
                   delta: float = HUBER_DELTA) -> ChinchillaLaw:
  """Best-of-grid L-BFGS fit of L(N, D) = E + A/N^alpha + B/D^beta."""
  log_n, log_d, log_loss = (np.log(np.asarray(x, float)) for x in (params, tokens, loss))
  screened = _minimise_from(grid, log_n, log_d, log_loss, delta, SCREEN_OPTIONS)
  _, best_theta = _best_of([theta for _, theta in screened[:POLISHED_STARTS]], log_n, log_d,
                           log_loss, delta, REFIT_OPTIONS)
  if best_theta is None:
    raise FitError("The parametric fit failed from every initialisation (non-finite loss).")
  return _law(best_theta)


def _theta(law: ChinchillaLaw) -> list[float]:
  """The fit's coordinates (a, b, e, alpha, beta) with A = e^a, B = e^b, E = e^e."""
  return np.log([law.A, law.B, law.E]).tolist() + [law.alpha, law.beta]


def _law(theta) -> ChinchillaLaw:
  a, b, e, alpha, beta = (float(x) for x in theta)
  return ChinchillaLaw(E=math.exp(e), A=math.exp(a), B=math.exp(b), alpha=alpha, beta=beta)


def law_from(parameters: dict) -> ChinchillaLaw:
  """A ChinchillaLaw from a dict holding at least E, A, B, alpha and beta."""
  return ChinchillaLaw(**{k: parameters[k] for k in ("E", "A", "B", "alpha", "beta")})


def refit_parametric(params, tokens, loss, start: ChinchillaLaw,
                     delta: float = HUBER_DELTA) -> ChinchillaLaw:
  """One tight L-BFGS fit from `start` (a bootstrap refit)."""
  log_n, log_d, log_loss = (np.log(np.asarray(x, float)) for x in (params, tokens, loss))
  _, theta = _best_of([_theta(start)], log_n, log_d, log_loss, delta, REFIT_OPTIONS)
  if theta is None:
    raise FitError("The parametric refit failed (non-finite loss).")
  return _law(theta)


def bootstrap_parametric(params, tokens, loss, *, samples: int = 1000, seed: int = 0,
                         start: ChinchillaLaw | None = None,
                         delta: float = HUBER_DELTA) -> list[ChinchillaLaw]:
  """Refits of the law on `samples` resamplings (with replacement) of the runs."""
  log_n, log_d, log_loss = (np.log(np.asarray(x, float)) for x in (params, tokens, loss))
  start = start or fit_parametric(params, tokens, loss, delta=delta)
  rng = np.random.default_rng(seed)
  laws = []
  for _ in range(samples):
    index = rng.integers(0, len(log_n), len(log_n))
    try:
      laws.append(refit_parametric(np.exp(log_n[index]), np.exp(log_d[index]),
                                   np.exp(log_loss[index]), start, delta))
    except FitError:
      continue
  return laws


# gamma's starts: E experts worth E^0 (nothing), E^0.25 or E^0.5 of a dense model's A.
GAMMA_STARTS = (0.0, 0.1, 0.2)
# omega's, from each of the best gamma-only fits: experts needing no more data, or
# E^0.1 or E^0.2 times the dense data term (or a little less).
OMEGA_STARTS = (-0.1, 0.0, 0.1, 0.2)


def _experts_law(theta) -> ExpertsLaw:
  law = _law(theta[:5])
  return ExpertsLaw(E0=law.E, A=law.A, B=law.B, alpha=law.alpha, beta=law.beta,
                    gamma=float(theta[5]), omega=float(theta[6]) if len(theta) > 6 else 0.0)


def _experts_theta(law: ExpertsLaw, data_term: bool) -> list[float]:
  return [*_theta(law.at(1)), law.gamma, *([law.omega] if data_term else [])]


def fit_experts(params, tokens, loss, experts, *, grid=PAPER_GRID,
                delta: float = HUBER_DELTA, data_term: bool = False) -> ExpertsLaw:
  """Best-of-grid fit of ExpertsLaw to runs of N active parameters, D tokens and E
  experts (1 for a dense model): the approach-3 fit with gamma as a sixth coordinate.
  With `data_term`, omega is a seventh, fitted from the best gamma-only screens."""
  log_n, log_d, log_loss, log_e = (np.log(np.asarray(x, float))
                                   for x in (params, tokens, loss, experts))
  if np.all(log_e == log_e[0]):
    raise FitError("Every run has the same number of experts; gamma (how experts add "
                   "effective parameters) needs runs with different ones.")
  starts = [(*start, gamma) for start in grid for gamma in GAMMA_STARTS]
  screened = [theta for _, theta in _minimise_from(starts, log_n, log_d, log_loss, delta,
                                                   SCREEN_OPTIONS, log_e)[:POLISHED_STARTS]]
  if data_term:
    screened = [(*theta, omega) for theta in screened for omega in OMEGA_STARTS]
  _, best = _best_of(screened, log_n, log_d, log_loss, delta, REFIT_OPTIONS, log_e)
  if best is None:
    raise FitError("The experts fit failed from every initialisation (non-finite loss).")
  return _experts_law(best)


def refit_experts(params, tokens, loss, experts, start: ExpertsLaw,
                  delta: float = HUBER_DELTA, data_term: bool = False) -> ExpertsLaw:
  """One tight L-BFGS fit of ExpertsLaw from `start` (a bootstrap refit)."""
  log_n, log_d, log_loss, log_e = (np.log(np.asarray(x, float))
                                   for x in (params, tokens, loss, experts))
  _, theta = _best_of([_experts_theta(start, data_term)], log_n, log_d, log_loss, delta,
                      REFIT_OPTIONS, log_e)
  if theta is None:
    raise FitError("The experts refit failed (non-finite loss).")
  return _experts_law(theta)


def bootstrap_experts(params, tokens, loss, experts, *, samples: int = 1000, seed: int = 0,
                      start: ExpertsLaw | None = None, delta: float = HUBER_DELTA,
                      data_term: bool = False) -> list[ExpertsLaw]:
  """Refits of ExpertsLaw (with omega when `data_term`) on `samples` resamplings (with
  replacement) of the runs, each from the full-data optimum."""
  columns = [np.asarray(x, float) for x in (params, tokens, loss, experts)]
  start = start or fit_experts(*columns, delta=delta, data_term=data_term)
  rng = np.random.default_rng(seed)
  laws = []
  for _ in range(samples):
    index = rng.integers(0, len(columns[0]), len(columns[0]))
    try:
      laws.append(refit_experts(*(column[index] for column in columns), start, delta,
                                data_term))
    except FitError:
      continue
  return laws


def percentile_interval(values, level: float = 0.95) -> tuple[float, float]:
  """Central percentile interval of bootstrap values."""
  tail = 100 * (1 - level) / 2
  low, high = np.percentile(np.asarray(values, float), [tail, 100 - tail])
  return float(low), float(high)
