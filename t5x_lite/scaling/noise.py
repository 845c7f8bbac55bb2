"""Replicates and run-to-run scatter: what the bootstrap resamples and what a fit can resolve.

Runs that repeat one point of the design (the same N and D, other seeds: initialisation
and data order) are replicates; their spread is the run-to-run scatter. Given
replicates, the bootstrap keeps the design (every budget and size stays) and redraws
each point's losses from its own replicates, their deviations from the point's mean
scaled by sqrt(n / (n - 1)) so the redrawn spread is unbiased (a plain redraw of n
values has (n - 1) / n of their variance). Without replicates it redraws runs within
each budget, so no budget drops out of a resample.

A budget is noise-limited when its fitted IsoFLOP parabola rises from its minimum to
the nearer end of the sizes it was fitted to by less than twice the scatter of a point
mean (scatter / sqrt(replicates)): a bottom that flat cannot say where the minimum
lies; more seeds, or sizes further out, would.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np

from t5x_lite.scaling import isoflop
from t5x_lite.scaling.runs import Runs

NOISE_LIMITED_FACTOR = 2.0


def replicate_groups(runs: Runs) -> list[np.ndarray]:
  """Indices of runs that share N, D (to 1 part in 1e6) and E, in first-seen order."""
  keys = np.round(np.log(runs.params) * 1e6).astype(np.int64), np.round(
      np.log(runs.tokens) * 1e6).astype(np.int64), runs.expert_counts
  groups: dict[tuple, list[int]] = {}
  for index, key in enumerate(zip(*keys)):
    groups.setdefault(key, []).append(index)
  return [np.array(group) for group in groups.values()]


def scatter(runs: Runs) -> Optional[float]:
  """The pooled standard deviation of the loss among replicates (None: no replicates)."""
  squares, degrees = 0.0, 0
  for group in replicate_groups(runs):
    if len(group) > 1:
      values = runs.loss[group]
      squares += float(np.sum((values - values.mean()) ** 2))
      degrees += len(group) - 1
  return float(np.sqrt(squares / degrees)) if degrees else None


def resample_losses(runs: Runs, rng: np.random.Generator) -> Optional[Runs]:
  """The runs with each replicated point's losses redrawn from its replicates (module
  docstring); None when no point is replicated."""
  groups = [group for group in replicate_groups(runs) if len(group) > 1]
  if not groups:
    return None
  loss = runs.loss.copy()
  for group in groups:
    values = runs.loss[group]
    mean, inflation = values.mean(), np.sqrt(len(group) / (len(group) - 1))
    loss[group] = mean + inflation * (rng.choice(values, len(group)) - mean)
  return dataclasses.replace(runs, loss=loss)


def resample_within(groups, rng: np.random.Generator) -> np.ndarray:
  """Indices drawn with replacement within each group of indices (no group drops out)."""
  return np.concatenate([rng.choice(group, len(group)) for group in groups])


def resample_within_budgets(runs: Runs, rng: np.random.Generator) -> np.ndarray:
  """Indices of runs drawn with replacement within each budget (no budget drops out)."""
  return resample_within(isoflop.group_budgets(runs.flops), rng)


@dataclasses.dataclass(frozen=True)
class BudgetNoise:
  """One IsoFLOP budget's profile depth near its minimum against the scatter."""
  flops: float
  depth: float            # the fitted parabola's rise to the nearer end of its sizes
  point_scatter: float    # scatter / sqrt(replicates per point)
  noise_limited: bool

  def describe(self) -> str:
    verdict = "noise-limited" if self.noise_limited else "resolved"
    return (f"budget {self.flops:.3g} FLOPs: the profile rises {self.depth:.4f} from its "
            f"minimum to the nearer end of its sizes, against a scatter of "
            f"{self.point_scatter:.4f} per point: {verdict}")


def budget_noise(runs: Runs, spread: float) -> list[BudgetNoise]:
  """Per bracketed budget, whether its profile is noise-limited, given the run-to-run
  scatter `spread` (from replicates)."""
  found = []
  for profile in isoflop.profiles(runs):
    sizes = np.unique(profile.params)
    replicates = len(profile.params) / len(sizes)
    point = spread / np.sqrt(replicates)
    ends = np.polyval(profile.coefficients, np.log([sizes.min(), sizes.max()]))
    depth = float(ends.min() - profile.optimal_loss)
    found.append(BudgetNoise(profile.flops, depth, float(point),
                             depth < NOISE_LIMITED_FACTOR * point))
  return found
