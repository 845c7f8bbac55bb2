"""Cooldown branches: a WSD run that starts from another run's stable phase.

A branch (train.fork_from, train.fork_step; runs/spec.py) is a run directory of its
own: locked, recorded, resumed and checked for drift as any run. When it has no
checkpoint yet it starts from the parent's checkpoint at the fork step (parameters,
optimizer state, data position: runs/checkpoints.restore_step) instead of from
scratch. For that to equal a from-scratch run of the branch's own schedule, the
parent must have been the same run up to the fork, which `check_parent` asks of its
record before anything is read: the same settings except those a resume may change
(length, schedule, cadence, layout: spec.MAY_CHANGE_ON_RESUME), the same vocabulary
and corpus content, and the same learning rate at every step before the fork (a
"constant" parent, or a longer WSD run whose decay starts later, has it).
"""

from __future__ import annotations

import numpy as np

from t5x_lite.runs import run_dir
from t5x_lite.runs.spec import TrainSpec, differences, refused_changes
from t5x_lite.training import optim

FORK_KNOBS = ("train.fork_from", "train.fork_step")


def check_parent(spec: TrainSpec, vocabulary: dict, data: dict) -> None:
  """RunDirError naming what differs when `spec`'s parent run is not the same run as
  this branch up to the fork step."""
  parent, fork = spec.run.fork_from, spec.run.fork_step
  record = run_dir.read_record(parent)
  if record is None:
    raise run_dir.RunDirError(
        f"train.fork_from={parent!r} is not a run directory with a recorded configuration "
        f"({run_dir.SPEC_FILE}); point it at the MODEL_DIR of the run to branch from.")
  changed = {knob: values for knob, values in differences(record["spec"], spec.to_json()).items()
             if knob not in FORK_KNOBS}
  refused = refused_changes(changed, spec.run.allow_changes)
  if refused:
    raise run_dir.RunDirError(
        f"{parent} is not the run this branch continues: {run_dir.format_changes(refused)} "
        "differ. Branch with the parent's settings (only length, schedule, cadence and "
        "layout may differ).")
  if record.get("vocabulary") not in (None, vocabulary) or (
      record.get("data") not in (None, data) and "data" not in spec.run.allow_changes):
    raise run_dir.RunDirError(f"{parent} was trained on other data (vocabulary or corpus "
                              "content); a branch must continue on the parent's data.")
  parent_spec = TrainSpec.from_json(record["spec"])
  steps = np.arange(fork)
  ours = np.asarray(optim.make_schedule(spec.schedule, spec.run.train_steps)(steps))
  theirs = np.asarray(optim.make_schedule(parent_spec.schedule,
                                          parent_spec.run.train_steps)(steps))
  mismatched = np.flatnonzero(ours != theirs)
  if mismatched.size:
    step = int(mismatched[0])
    raise run_dir.RunDirError(
        f"{parent}'s learning rate differs from this branch's before the fork at step "
        f"{fork} (step {step}: {theirs[step]:.6g} there, {ours[step]:.6g} here); fork from a "
        "run whose schedule has the same warmup and peak and is constant up to the fork.")
