"""Chinchilla approach 1: the lower envelope of training curves.

Every run contributes its training curve: validation loss against the FLOPs
spent so far (rows of one run id, e.g. the CURVES.csv of
tools/scaling_sweep.py). At each of a log-spaced grid of budgets C the
curves that reach C are interpolated (linearly in log C) and the lowest
one wins: its model size is N_opt(C) and its tokens at C are D_opt(C).
Power laws N_opt = k_N C^a and D_opt = k_D C^b are fitted through those
points by least squares in log space. As in the paper the winners are
whole runs, so N_opt moves in steps; a run's early points carry the high
learning rate of a cosine schedule planned for its whole length, which is
why Hoffmann et al. trained each size with several schedule lengths (a
sweep over budgets does the same).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from t5x_lite.scaling.laws import PowerLawAllocation
from t5x_lite.scaling.runs import Runs, RunsError

GRID_POINTS = 60


@dataclasses.dataclass(frozen=True)
class Envelope:
  """The winning run at each grid budget."""
  flops: np.ndarray
  loss: np.ndarray
  params: np.ndarray
  tokens: np.ndarray


def curves(runs: Runs) -> list[tuple[float, np.ndarray, np.ndarray, np.ndarray]]:
  """(params, flops, tokens, loss) of every run, sorted by flops."""
  if runs.run is None:
    raise RunsError("the envelope fit needs training curves: a `run` column and several rows "
                    "per run (tools/scaling_sweep.py writes them to CURVES.csv).")
  found = []
  for run_id in np.unique(runs.run):
    rows = np.flatnonzero(runs.run == run_id)
    rows = rows[np.argsort(runs.flops[rows])]
    found.append((float(runs.params[rows[0]]), runs.flops[rows], runs.tokens[rows],
                  runs.loss[rows]))
  return found


def lower_envelope(runs: Runs, points: int = GRID_POINTS) -> Envelope:
  """The lowest interpolated loss among the curves at `points` budgets."""
  found = [curve for curve in curves(runs) if len(curve[1]) >= 2]
  if len(found) < 2:
    raise RunsError(f"the envelope fit needs at least two runs with two or more rows each; "
                    f"found {len(found)}.")
  low = min(curve[1][0] for curve in found)
  high = max(curve[1][-1] for curve in found)
  rows = []
  for flops in np.exp(np.linspace(np.log(low), np.log(high), points)):
    best = None
    for params, curve_flops, curve_tokens, curve_loss in found:
      if not curve_flops[0] <= flops <= curve_flops[-1]:
        continue
      log_c = np.log(curve_flops)
      loss = float(np.interp(np.log(flops), log_c, curve_loss))
      if best is None or loss < best[1]:
        tokens = float(np.exp(np.interp(np.log(flops), log_c, np.log(curve_tokens))))
        best = (flops, loss, params, tokens)
    if best is not None:
      rows.append(best)
  flops, loss, params, tokens = (np.array(column) for column in zip(*rows))
  return Envelope(flops, loss, params, tokens)


def fit_envelope(runs: Runs, points: int = GRID_POINTS) -> tuple[PowerLawAllocation, Envelope]:
  """Approach 1: power laws through the envelope's winning sizes."""
  envelope = lower_envelope(runs, points)
  if len(np.unique(envelope.params)) < 2:
    raise RunsError("the envelope is won by one model size at every budget: there is no trend "
                    "to fit; add runs of other sizes.")
  log_c = np.log(envelope.flops)
  a, log_k_n = np.polyfit(log_c, np.log(envelope.params), 1)
  b, log_k_d = np.polyfit(log_c, np.log(envelope.tokens), 1)
  return PowerLawAllocation(float(np.exp(log_k_n)), float(a), float(np.exp(log_k_d)),
                            float(b)), envelope
