"""experiments/architecture_objective/run.py: the grid is compute-matched, and its tiny
mode trains, evaluates and tabulates all six models end to end."""

import importlib.util
import io
import os
import sys

import pytest

from t5x_lite import train
from t5x_lite.scaling import sweep

RUNNER = os.path.join(os.path.dirname(__file__), "..", "..", "experiments",
                      "architecture_objective", "run.py")


@pytest.fixture(scope="module")
def runner():
  spec = importlib.util.spec_from_file_location("architecture_objective_run", RUNNER)
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module  # dataclasses look their module up there
  spec.loader.exec_module(module)
  return module


def test_the_grid_is_compute_and_parameter_matched(runner):
  plan = runner.plan(runner.MODES["full"], seeds=[0])
  assert [(r["architecture"], r["objective"]) for r in plan["runs"]] == list(runner.GRID)
  budget = runner.MODES["full"].budget
  for run in plan["runs"]:
    assert run["flops"] == pytest.approx(budget, rel=0.01)  # to the nearest step
  params = [run["params"] for run in plan["runs"]]
  assert max(params) / min(params) < 1.2  # the encoder-decoder adds cross-attention only
  decoder_rows = {(r["architecture"], r["objective"]): sum(r["feature_lengths"].values())
                  for r in plan["runs"]}
  assert all(length <= runner.MODES["full"].length for length in decoder_rows.values())


def test_tiny_mode_runs_every_model_end_to_end(runner, tmp_path):
  def in_process(args, log_path, stream):
    return train.main(args)

  output = io.StringIO()
  rows = runner.run("tiny", [0], str(tmp_path / "runs"), str(tmp_path), train=in_process,
                    stream=output)
  assert len(rows) == 6
  for row in rows:
    assert 0 < row["heldout_loss"] < 10
    assert 0 <= row["cloze_accuracy"] <= 1
  table = (tmp_path / "results.md").read_text()
  assert table.count("\n") == 2 + 6
  assert (tmp_path / "results.png").stat().st_size > 10_000
  # Resumable: a second run finds every model finished (tools' sweep engine skips those).
  for planned in runner.plan(runner.MODES["tiny"], [0])["runs"]:
    assert sweep.is_finished(planned, str(tmp_path / "runs"))
