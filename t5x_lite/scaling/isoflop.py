"""Chinchilla approach 2: IsoFLOP profiles.

Runs are grouped by compute budget; in each group the loss is fitted with a
parabola in log N and its minimum taken as that budget's optimal size
N_opt(C); D_opt is read off the profile's own (N, D) relation (a line in
log-log through its runs), which is C / 6N_opt when the runs were planned
with C = 6ND and follows the exact FLOP count when they were not. Power laws N_opt = k_N C^a and
D_opt = k_D C^b are then fitted through the minima by least squares in log
space.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from t5x_lite.scaling.laws import PowerLawAllocation
from t5x_lite.scaling.runs import Runs, RunsError

# Runs whose budgets differ by less than this factor share an IsoFLOP profile.
BUDGET_TOLERANCE = 1.1


@dataclasses.dataclass(frozen=True)
class Profile:
  """One budget's runs and the fitted parabola loss = c2 x^2 + c1 x + c0, x = ln N."""
  flops: float
  params: np.ndarray
  tokens: np.ndarray
  loss: np.ndarray
  coefficients: np.ndarray

  @property
  def optimal_params(self) -> float:
    c2, c1, _ = self.coefficients
    return float(np.exp(-c1 / (2 * c2)))

  @property
  def optimal_tokens(self) -> float:
    slope, intercept = np.polyfit(np.log(self.params), np.log(self.tokens), 1)
    return float(np.exp(slope * np.log(self.optimal_params) + intercept))

  @property
  def optimal_loss(self) -> float:
    return float(np.polyval(self.coefficients, np.log(self.optimal_params)))


def group_budgets(flops: np.ndarray, tolerance: float = BUDGET_TOLERANCE) -> list[np.ndarray]:
  """Indices of runs grouped by budget (sorted by flops, a new group after each gap)."""
  order = np.argsort(flops)
  groups, current = [], [order[0]]
  for index in order[1:]:
    if flops[index] <= flops[current[0]] * tolerance:
      current.append(index)
    else:
      groups.append(np.array(current))
      current = [index]
  groups.append(np.array(current))
  return groups


def profiles(runs: Runs, tolerance: float = BUDGET_TOLERANCE) -> list[Profile]:
  """A fitted parabola per budget with at least three distinct sizes and its minimum
  inside the sizes tried (a vertex beyond them is an extrapolation the sweep did not
  bracket; such budgets are left out)."""
  found = []
  for group in group_budgets(runs.flops, tolerance):
    if len(np.unique(runs.params[group])) < 3:
      continue
    x = np.log(runs.params[group])
    coefficients = np.polyfit(x, runs.loss[group], 2)
    if coefficients[0] <= 0:  # Opens downwards: no minimum inside this profile.
      continue
    vertex = -coefficients[1] / (2 * coefficients[0])
    if not x.min() <= vertex <= x.max():
      continue
    found.append(Profile(float(np.exp(np.mean(np.log(runs.flops[group])))), runs.params[group],
                         runs.tokens[group], runs.loss[group], coefficients))
  return found


def fit_isoflop(runs: Runs, tolerance: float = BUDGET_TOLERANCE
                ) -> tuple[PowerLawAllocation, list[Profile]]:
  """Approach 2: the allocation power laws through the IsoFLOP minima."""
  found = profiles(runs, tolerance)
  if len(found) < 2:
    raise RunsError(f"the isoflop fit needs at least two budgets with three or more model sizes "
                    f"and a loss minimum; found {len(found)}. Group runs by equal flops.")
  flops = np.array([p.flops for p in found])
  params = np.array([p.optimal_params for p in found])
  tokens = np.array([p.optimal_tokens for p in found])
  a, log_k_n = np.polyfit(np.log(flops), np.log(params), 1)
  b, log_k_d = np.polyfit(np.log(flops), np.log(tokens), 1)
  return PowerLawAllocation(float(np.exp(log_k_n)), float(a), float(np.exp(log_k_d)),
                            float(b)), found
