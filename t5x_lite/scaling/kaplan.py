"""Fitting Kaplan et al.'s (2020) joint law L(N, D) = ((N_c/N)^(alpha_N/alpha_D) + D_c/D)^alpha_D.

Least squares on log-loss residuals over (log N_c, log D_c, alpha_N,
alpha_D) with scipy's trust-region solver from a small grid of starts
(Kaplan's published alpha ~0.08-0.1 and N_c, D_c far above the data), best
kept. Kaplan counted non-embedding parameters as N; the fit uses whatever
the runs table calls params.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
from scipy import optimize

from t5x_lite.scaling.laws import KaplanLaw
from t5x_lite.scaling.runs import FitError

EXPONENT_STARTS = (0.05, 0.1, 0.3)
SCALE_OFFSETS = (2.0, 8.0, 20.0)  # log N_c - log max(N), log D_c - log max(D)


def _residuals(theta, log_n, log_d, log_loss):
  log_nc, log_dc, alpha_n, alpha_d = theta
  inner = np.logaddexp(alpha_n / alpha_d * (log_nc - log_n), log_dc - log_d)
  return alpha_d * inner - log_loss


def _law(theta) -> KaplanLaw:
  log_nc, log_dc, alpha_n, alpha_d = (float(x) for x in theta)
  return KaplanLaw(N_c=math.exp(log_nc), D_c=math.exp(log_dc), alpha_N=alpha_n, alpha_D=alpha_d)


def _solve(starts, log_n, log_d, log_loss):
  best = None
  for start in starts:
    result = optimize.least_squares(_residuals, start, args=(log_n, log_d, log_loss),
                                    bounds=([-np.inf, -np.inf, 1e-4, 1e-4], np.inf),
                                    x_scale="jac")
    if np.isfinite(result.cost) and (best is None or result.cost < best.cost):
      best = result
  if best is None:
    raise FitError("The Kaplan fit failed from every start (non-finite residuals).")
  return _law(best.x)


def fit_kaplan(params, tokens, loss) -> KaplanLaw:
  """Best-of-grid least-squares fit of Kaplan's L(N, D)."""
  log_n, log_d, log_loss = (np.log(np.asarray(x, float)) for x in (params, tokens, loss))
  starts = [(log_n.max() + n_offset, log_d.max() + d_offset, alpha_n, alpha_d)
            for n_offset, d_offset, alpha_n, alpha_d in itertools.product(
                SCALE_OFFSETS, SCALE_OFFSETS, EXPONENT_STARTS, EXPONENT_STARTS)]
  return _solve(starts, log_n, log_d, log_loss)


def refit_kaplan(params, tokens, loss, start: KaplanLaw) -> KaplanLaw:
  """One fit from `start` (a bootstrap refit)."""
  log_n, log_d, log_loss = (np.log(np.asarray(x, float)) for x in (params, tokens, loss))
  theta = (math.log(start.N_c), math.log(start.D_c), start.alpha_N, start.alpha_D)
  return _solve([theta], log_n, log_d, log_loss)
