"""Cooldown branches: a WSD run forked from another run's stable phase is the run its own
schedule would have trained from scratch, bit for bit; a parent that is not the same
run up to the fork is refused by name."""

import numpy as np
import pytest

from t5x_lite.runs import run_dir
from t5x_lite.runs.checkpoints import CheckpointError
from t5x_lite.runs.spec import ConfigError
from tests import train_helpers

# 16 steps of WSD: warmup 2, constant to step 12, a linear decay over the last 4.
WSD = {"make_schedule.name": "'wsd'", "make_schedule.decay_fraction": 0.25,
       "make_schedule.final_fraction": 0.0}
STEPS, FORK = 16, 12


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """A from-scratch WSD run; a stable run (constant schedule) that keeps its step-12
  checkpoint; a branch of it."""
  root = tmp_path_factory.mktemp("forking")
  train_helpers.run_training(root / "scratch", steps=STEPS, **WSD)
  train_helpers.run_training(root / "stable", steps=FORK + 2,
                             **{"make_schedule.name": "'constant'",
                                "train.keep_steps": [FORK], "train.keep_checkpoints": 1})
  train_helpers.run_training(root / "branch", steps=STEPS, **WSD,
                             **{"train.fork_from": repr(str(root / "stable")),
                                "train.fork_step": FORK})
  return root


def test_a_branch_equals_the_from_scratch_run_bit_for_bit(runs):
  scratch = train_helpers.saved_state(runs / "scratch")
  branch = train_helpers.saved_state(runs / "branch")
  assert scratch.keys() == branch.keys()
  for name in scratch:
    np.testing.assert_array_equal(branch[name], scratch[name], err_msg=name)
  # The branch trained only the steps after the fork, with the same losses.
  scratch_losses = train_helpers.train_losses(runs / "scratch")
  branch_losses = train_helpers.train_losses(runs / "branch")
  assert sorted(branch_losses) == list(range(FORK + 1, STEPS + 1))
  assert all(branch_losses[step] == scratch_losses[step] for step in branch_losses)


def test_the_stable_run_keeps_its_fork_point_and_the_branch_records_its_parent(runs):
  stable = train_helpers.saved_state(runs / "stable", step=FORK)
  assert int(stable["step"]) == FORK
  record = run_dir.read_record(str(runs / "branch"))["spec"]["train"]
  assert record["fork_from"] == str(runs / "stable") and record["fork_step"] == FORK


def test_a_parent_with_other_settings_is_refused(runs, tmp_path):
  with pytest.raises(run_dir.RunDirError, match="learning rate differs .* step 1"):
    train_helpers.run_training(tmp_path / "b", steps=STEPS, LEARNING_RATE=2e-3, **WSD,
                               **{"train.fork_from": repr(str(runs / "stable")),
                                  "train.fork_step": FORK})
  with pytest.raises(run_dir.RunDirError, match="train.seed"):
    train_helpers.run_training(tmp_path / "c", steps=STEPS, **WSD,
                               **{"train.seed": 7, "train.fork_from": repr(str(runs / "stable")),
                                  "train.fork_step": FORK})


def test_a_fork_step_the_parent_did_not_keep_is_refused_naming_keep_steps(runs, tmp_path):
  with pytest.raises(CheckpointError, match="keep_steps"):
    train_helpers.run_training(tmp_path / "b", steps=STEPS, **WSD,
                               **{"train.fork_from": repr(str(runs / "stable")),
                                  "train.fork_step": FORK - 2})


@pytest.mark.parametrize("settings, message", [
    ({"make_schedule.name": "'warmup_cosine'"}, "needs make_schedule.name='wsd'"),
    ({**WSD, "train.fork_step": 14}, "outside this run's stable phase"),
    ({**WSD, "train.fork_step": 1}, "outside this run's stable phase"),
])
def test_branch_points_outside_the_stable_phase_are_one_clear_error(tmp_path, settings,
                                                                     message):
  settings = {"train.fork_from": "'/elsewhere'", "train.fork_step": FORK, **settings}
  with pytest.raises(ConfigError, match=message):
    train_helpers.run_training(tmp_path / "b", steps=STEPS, **settings)
