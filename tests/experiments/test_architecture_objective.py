"""experiments/architecture_objective/run.py: the grid is compute-matched. Its tiny mode
(all six models trained, evaluated, tabulated, plotted; resumable) runs end to end in
tests/colab/test_notebooks.py, through colab/02_architecture_ablation.ipynb."""

import importlib.util
import os
import sys

import pytest

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
