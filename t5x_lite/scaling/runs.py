"""RUNS.csv: the table of training runs that every fitter reads.

Columns (header names, any order, extra columns ignored):
  params  model parameters N (counted by t5x_lite.models.counting)
  tokens  training tokens D seen by the run (or at `step`, for training curves)
  loss    final (or at `step`) validation loss
  flops   training FLOPs C; optional, 6 N D when absent
  run     optional run id (training curves: several rows per run)
  step    optional step of the row within its run
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
from typing import Optional

import numpy as np

from t5x_lite.common.errors import UserError

REQUIRED = ("params", "tokens", "loss")


class FitError(UserError, ValueError):
  """A fit that cannot be made from these runs (no finite solution from any start)."""


class RunsError(UserError, ValueError):
  """A runs table that cannot be fitted; the message names the file, row and column."""


@dataclasses.dataclass(frozen=True)
class Runs:
  params: np.ndarray
  tokens: np.ndarray
  loss: np.ndarray
  flops: np.ndarray
  run: Optional[np.ndarray] = None
  step: Optional[np.ndarray] = None

  def __len__(self) -> int:
    return len(self.params)

  def require(self, count: int, method: str) -> None:
    if len(self) < count:
      raise RunsError(f"the {method} fit needs at least {count} runs; the table has {len(self)}.")


def _number(value: str, path: str, row: int, column: str) -> float:
  try:
    number = float(value)
  except (TypeError, ValueError):
    raise RunsError(f"{path}, row {row}: {column}={value!r} is not a number.") from None
  if not math.isfinite(number) or number <= 0:
    raise RunsError(f"{path}, row {row}: {column}={value!r} must be positive and finite.")
  return number


def read_runs(path: str) -> Runs:
  """Reads and validates a runs table (see the module docstring for its columns)."""
  if not os.path.isfile(path):
    raise RunsError(f"runs table {path!r} does not exist; check the path.")
  with open(path, newline="") as handle:
    reader = csv.DictReader(handle)
    header = [name.strip() for name in (reader.fieldnames or [])]
    missing = [name for name in REQUIRED if name not in header]
    if missing:
      raise RunsError(f"{path}: missing column(s) {missing}; the header has {header}. Required: "
                      f"{list(REQUIRED)}; optional: flops, run, step.")
    rows = [{key.strip(): value for key, value in row.items() if key} for row in reader]
  if not rows:
    raise RunsError(f"{path} has a header but no runs.")
  columns = {name: [] for name in ("params", "tokens", "loss", "flops", "step")}
  runs = []
  for number, row in enumerate(rows, start=2):  # Row 1 is the header.
    for name in REQUIRED:
      columns[name].append(_number(row.get(name), path, number, name))
    flops = row.get("flops")
    columns["flops"].append(_number(flops, path, number, "flops") if flops not in (None, "")
                            else 6 * columns["params"][-1] * columns["tokens"][-1])
    if "step" in header:
      columns["step"].append(_number(row.get("step"), path, number, "step"))
    runs.append(row.get("run", ""))
  return Runs(params=np.array(columns["params"]), tokens=np.array(columns["tokens"]),
              loss=np.array(columns["loss"]), flops=np.array(columns["flops"]),
              run=np.array(runs) if "run" in header else None,
              step=np.array(columns["step"]) if "step" in header else None)
