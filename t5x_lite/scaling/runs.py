"""RUNS.csv: the table of training runs that every fitter reads.

Columns (header names, any order, extra columns ignored):
  params  model parameters N (counted by t5x_lite.models.counting)
  tokens  training tokens D seen by the run (or at `step`, for training curves)
  loss    final (or at `step`) validation loss
  flops   training FLOPs C; optional, 6 N D when absent
  run     optional run id (training curves: several rows per run)
  step    optional step of the row within its run
  experts optional: E of a mixture-of-experts run, its routed expert weights over those a
          token uses (num_experts / moe_top_k); 1 (dense) when absent. params is then the
          active parameters.

Several tables (a dense sweep's and an MoE sweep's) are read as one with `read_tables`.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
from typing import Optional, Sequence

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
  experts: Optional[np.ndarray] = None  # None: every run is dense (E = 1)

  def __len__(self) -> int:
    return len(self.params)

  def subset(self, index: np.ndarray) -> "Runs":
    """The runs at `index` (every column, optional ones included)."""
    return Runs(**{field.name: None if getattr(self, field.name) is None
                   else getattr(self, field.name)[index] for field in dataclasses.fields(self)})

  @property
  def expert_counts(self) -> np.ndarray:
    """Each run's E (1 for a dense run)."""
    return np.ones_like(self.params) if self.experts is None else self.experts

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
                      f"{list(REQUIRED)}; optional: flops, run, step, experts.")
    rows = [{key.strip(): value for key, value in row.items() if key} for row in reader]
  if not rows:
    raise RunsError(f"{path} has a header but no runs.")
  columns = {name: [] for name in ("params", "tokens", "loss", "flops", "step", "experts")}
  runs = []
  for number, row in enumerate(rows, start=2):  # Row 1 is the header.
    for name in REQUIRED:
      columns[name].append(_number(row.get(name), path, number, name))
    flops = row.get("flops")
    columns["flops"].append(_number(flops, path, number, "flops") if flops not in (None, "")
                            else 6 * columns["params"][-1] * columns["tokens"][-1])
    if "step" in header:
      columns["step"].append(_number(row.get("step"), path, number, "step"))
    if "experts" in header:
      experts = _number(row.get("experts"), path, number, "experts")
      if experts < 1:
        raise RunsError(f"{path}, row {number}: experts={experts:g} must be at least 1 "
                        "(num_experts / moe_top_k; 1 for a dense run).")
      columns["experts"].append(experts)
    runs.append(row.get("run", ""))
  return Runs(params=np.array(columns["params"]), tokens=np.array(columns["tokens"]),
              loss=np.array(columns["loss"]), flops=np.array(columns["flops"]),
              run=np.array(runs) if "run" in header else None,
              step=np.array(columns["step"]) if "step" in header else None,
              experts=np.array(columns["experts"]) if "experts" in header else None)


def read_tables(paths: Sequence[str]) -> Runs:
  """Several runs tables read as one (read_runs each): a missing experts column is dense
  runs, a missing run column empty ids; curves (a step column) and final runs do not mix."""
  tables = [read_runs(path) for path in paths]
  if len(tables) == 1:
    return tables[0]
  with_steps = [table.step is not None for table in tables]
  if any(with_steps) and not all(with_steps):
    named = [path for path, steps in zip(paths, with_steps) if steps]
    raise RunsError(f"{', '.join(named)} hold training curves (a step column) and the other "
                    "tables final runs; fit curves and final runs separately.")

  def joined(name: str, missing) -> Optional[np.ndarray]:
    if all(getattr(table, name) is None for table in tables):
      return None
    return np.concatenate([getattr(table, name) if getattr(table, name) is not None
                           else np.full(len(table), missing) for table in tables])

  return Runs(**{name: np.concatenate([getattr(table, name) for table in tables])
                 for name in ("params", "tokens", "loss", "flops")},
              run=joined("run", ""), step=joined("step", np.nan),
              experts=joined("experts", 1.0))
