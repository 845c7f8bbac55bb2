"""experiments/architecture_objective/run.py: the grid is compute-matched. Its tiny mode
(all six models trained, evaluated, tabulated, plotted; resumable) runs end to end in
tests/colab/test_notebooks.py, through colab/02_architecture_ablation.ipynb."""

import pytest

from tests.scripts import load_script


@pytest.fixture(scope="module")
def runner():
  return load_script("experiments/architecture_objective/run.py")


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
