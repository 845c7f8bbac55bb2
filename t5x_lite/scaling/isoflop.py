"""Chinchilla approach 2: IsoFLOP profiles.

Runs are grouped by compute budget; in each group the loss is fitted with a
parabola in log N near the profile's minimum (the sizes within a factor `window` of
the best run, as Chinchilla and Porian et al. 2024 fit it: a profile is a parabola only
near its minimum, and a wide, lopsided sweep's tails would pull an all-points
parabola's vertex towards the side sampled more) and its vertex taken as that budget's
optimal size N_opt(C); D_opt is read off the profile's own (N, D) relation (a line in
log-log through its runs), which is C / 6N_opt when the runs were planned
with C = 6ND and follows the exact FLOP count when they were not. Power laws N_opt = k_N C^a and
D_opt = k_D C^b are then fitted through the minima by least squares in log
space.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np

from t5x_lite.scaling.laws import PowerLawAllocation
from t5x_lite.scaling.runs import Runs, RunsError

# Runs whose budgets differ by less than this factor share an IsoFLOP profile.
BUDGET_TOLERANCE = 1.1
# The parabola is fitted to the sizes within this factor of the lowest-loss run (at
# least that run and its two neighbours). None: every size of the profile.
NEAR_MINIMUM = 4.0


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


@dataclasses.dataclass(frozen=True)
class Unbracketed:
  """A budget whose loss minimum the sweep did not bracket, and why."""
  flops: float
  reason: str        # "smallest", "largest" (the best run is that edge size) or "too few"
  params: np.ndarray  # the sizes tried

  def describe(self) -> str:
    if self.reason == "too few":
      return (f"budget {self.flops:.3g} FLOPs has {len(np.unique(self.params))} distinct "
              "sizes; a parabola needs three")
    edge = self.params.min() if self.reason == "smallest" else self.params.max()
    return (f"budget {self.flops:.3g} FLOPs: the lowest loss is at the {self.reason} size "
            f"tried ({edge:,.0f} params), so its optimum lies beyond the sweep")


def _near_minimum(x: np.ndarray, loss: np.ndarray, window: Optional[float]) -> np.ndarray:
  """Mask of the points the parabola is fitted to: within `window` of the best run in N,
  and at least the sizes either side of the best (runs may repeat a size)."""
  if window is None:
    return np.ones_like(x, bool)
  sizes = np.unique(x)
  best = x[np.argmin(loss)]
  index = int(np.searchsorted(sizes, best))  # never an edge: split_profiles checked
  return (np.abs(x - best) <= np.log(window)) | np.isin(x, sizes[index - 1:index + 2])


def split_profiles(runs: Runs, tolerance: float = BUDGET_TOLERANCE,
                   window: Optional[float] = NEAR_MINIMUM
                   ) -> tuple[list[Profile], list[Unbracketed]]:
  """A fitted parabola per budget whose minimum the sweep brackets, and the budgets it
  does not (too few sizes, or the lowest loss at the smallest or largest size)."""
  found, unbracketed = [], []
  for group in group_budgets(runs.flops, tolerance):
    flops = float(np.exp(np.mean(np.log(runs.flops[group]))))
    params, loss = runs.params[group], runs.loss[group]
    if len(np.unique(params)) < 3:
      unbracketed.append(Unbracketed(flops, "too few", params))
      continue
    best = params[np.argmin(loss)]
    if best in (params.min(), params.max()):
      unbracketed.append(Unbracketed(flops, "smallest" if best == params.min() else "largest",
                                     params))
      continue
    x = np.log(params)
    chosen = _near_minimum(x, loss, window)
    coefficients = np.polyfit(x[chosen], loss[chosen], 2)
    vertex = -coefficients[1] / (2 * coefficients[0]) if coefficients[0] > 0 else np.inf
    if not x[chosen].min() <= vertex <= x[chosen].max():  # noise bent it open or away
      unbracketed.append(Unbracketed(flops, "smallest" if vertex < x.min() else "largest",
                                     params))
      continue
    found.append(Profile(flops, params[chosen], runs.tokens[group][chosen], loss[chosen],
                         coefficients))
  return found, unbracketed


def profiles(runs: Runs, tolerance: float = BUDGET_TOLERANCE,
             window: Optional[float] = NEAR_MINIMUM) -> list[Profile]:
  """The fitted profiles of the budgets whose minimum the sweep brackets (split_profiles
  says which budgets are left out and why)."""
  return split_profiles(runs, tolerance, window)[0]


def fit_isoflop(runs: Runs, tolerance: float = BUDGET_TOLERANCE,
                window: Optional[float] = NEAR_MINIMUM
                ) -> tuple[PowerLawAllocation, list[Profile]]:
  """Approach 2: the allocation power laws through the IsoFLOP minima (each budget's
  parabola fitted within `window` of its best run; None: to all its runs)."""
  found = profiles(runs, tolerance, window)
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
