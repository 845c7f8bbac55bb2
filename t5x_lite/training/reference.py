"""A preference run's reference log-probabilities: computed once, kept in MODEL_DIR.

DPO compares the policy's log-probability of each completion with the reference model's
(the model the run started from). The reference never changes, so its log-probabilities
of every pair are computed once, before the first step (when the policy still equals
the reference: for a LoRA policy, the base with the adapters at zero), and stored with
the fingerprints of the reference's parameters and of the pairs, as Levanter does: the
reference model need not stay in memory, and no step pays for its forward pass. A
resumed run reads them back and refuses them if the reference or the pairs changed.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Iterator, Mapping, Optional

import numpy as np

from t5x_lite.common.errors import ConfigError, file_errors
from t5x_lite.data import preference
from t5x_lite.training.objectives import REFERENCE_FEATURE

FILE = "reference_logps.npz"


class ReferenceChanged(ConfigError):
  """The cached reference log-probabilities belong to another reference or other pairs."""


@dataclasses.dataclass(frozen=True)
class ReferenceCache:
  """{split: [pairs, 2] (chosen, rejected) log-probabilities} and what they were of."""
  logps: Mapping[str, np.ndarray]
  identity: Mapping[str, str]


def identity(reference_fingerprint: str, pairs: Mapping[str, list], feature_lengths,
             architecture: str) -> dict[str, str]:
  """What the log-probabilities depend on, as strings compared on resume."""
  return {"reference": reference_fingerprint, "architecture": architecture,
          "feature_lengths": repr(sorted(dict(feature_lengths).items())),
          **{f"pairs/{split}": preference.fingerprint(rows) for split, rows in pairs.items()}}


def compute(score: Callable[[Mapping[str, np.ndarray]], np.ndarray],
            batches: Mapping[str, Iterator[dict]], counts: Mapping[str, int]
            ) -> dict[str, np.ndarray]:
  """Every pair's (chosen, rejected) log-probabilities by `score` (a batch -> per-row
  log-probabilities), reading each split's unshuffled batches until every pair is seen."""
  out = {}
  for split, iterator in batches.items():
    logps = np.full((counts[split], 2), np.nan, np.float32)
    seen = np.zeros(counts[split], bool)
    while not seen.all():
      batch = next(iterator)
      index = batch.pop(preference.PAIR_INDEX)
      rows = np.asarray(score(batch), np.float32)
      half = len(rows) // 2
      logps[index[:half], 0], logps[index[half:], 1] = rows[:half], rows[half:]
      seen[index[:half]] = True
    out[split] = logps
  return out


def load_or_compute(model_dir: str, expected: Mapping[str, str],
                    compute_logps: Callable[[], Mapping[str, np.ndarray]], resuming: bool,
                    write: bool = True) -> ReferenceCache:
  """The cache of MODEL_DIR if it is of `expected`; computed and written when the run is
  new. A resumed run without its cache, or with one of another reference or other
  pairs, is refused: its first steps were taken against those log-probabilities."""
  path = os.path.join(model_dir, FILE)
  if os.path.exists(path):
    with np.load(path) as stored:
      recorded = {key.removeprefix("identity/"): str(stored[key]) for key in stored.files
                  if key.startswith("identity/")}
      logps = {key.removeprefix("logps/"): stored[key] for key in stored.files
               if key.startswith("logps/")}
    changed = sorted(key for key in set(recorded) | set(expected)
                     if recorded.get(key) != expected.get(key))
    if not changed:
      return ReferenceCache(logps, recorded)
    if resuming:
      raise ReferenceChanged(
          f"{path} holds the log-probabilities of another "
          f"{' and '.join(sorted({key.split('/')[0] for key in changed}))} ({changed}): "
          "this run trained against them. Resume with the same train.init_checkpoint and "
          "preference data, or start a new MODEL_DIR.")
  elif resuming:
    raise ReferenceChanged(f"{model_dir} has checkpoints of a preference run but no {FILE}; "
                           "restore it, or start a new MODEL_DIR.")
  logps = dict(compute_logps())
  if write:
    arrays: dict[str, Any] = {f"logps/{split}": value for split, value in logps.items()}
    arrays.update({f"identity/{key}": np.asarray(value) for key, value in expected.items()})
    temporary = f"{path}.{os.getpid()}.tmp"
    with file_errors("file", path), open(temporary, "wb") as handle:
      np.savez(handle, **arrays)
    os.replace(temporary, path)  # a reader sees the whole file or none
  return ReferenceCache(logps, dict(expected))


class WithReference:
  """Pair batches with each row's reference log-probability added (REFERENCE_FEATURE;
  none for a reference-free loss, logps None) and the pair index taken out; saves and
  restores its position as the batches do."""

  def __init__(self, batches, logps: Optional[np.ndarray]):
    self._batches, self._logps = batches, logps

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    batch = dict(next(self._batches))
    index = batch.pop(preference.PAIR_INDEX)
    if self._logps is None:
      return batch
    half = len(index) // 2
    batch[REFERENCE_FEATURE] = np.concatenate([self._logps[index[:half], 0],
                                               self._logps[index[half:], 1]])
    return batch

  @property
  def position(self) -> int:
    return self._batches.position

  def save(self, directory: str) -> None:
    self._batches.save(directory)

  def restore(self, directory: str) -> None:
    self._batches.restore(directory)
