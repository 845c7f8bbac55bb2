"""Approach 2 (IsoFLOP profiles) and the runs table it reads."""

import numpy as np
import pytest

from t5x_lite.scaling.fitting import fit_parametric
from t5x_lite.scaling.isoflop import fit_isoflop
from t5x_lite.scaling.laws import preset
from t5x_lite.scaling.runs import Runs, RunsError, read_runs


def isoflop_runs(law, budgets, sizes_per_budget=9, noise=0.0, seed=0) -> Runs:
  rng = np.random.default_rng(seed)
  rows = []
  for flops in budgets:
    center = law.optimal(flops).params
    for params in center * np.logspace(-1, 1, sizes_per_budget):
      tokens = flops / (6 * params)
      rows.append((params, tokens, law.loss(params, tokens) * np.exp(rng.normal(0, noise)), flops))
  params, tokens, loss, flops = (np.array(c, float) for c in zip(*rows))
  return Runs(params=params, tokens=tokens, loss=loss, flops=flops)


def test_isoflop_minima_recover_the_laws_allocation_exponents():
  law = preset("epoch-2024")
  allocation, profiles = fit_isoflop(isoflop_runs(law, np.logspace(18, 22, 5)))
  assert len(profiles) == 5
  assert allocation.a == pytest.approx(law.a, abs=0.01)
  assert allocation.b == pytest.approx(law.b, abs=0.01)
  assert allocation.optimal(1e21).params == pytest.approx(law.optimal(1e21).params, rel=0.05)


@pytest.mark.slow  # over 5 s on 2 cores: outside the quick loop
def test_approaches_2_and_3_agree_on_exponents_for_noisy_data():
  law = preset("epoch-2024")
  runs = isoflop_runs(law, np.logspace(18, 22, 5), noise=0.003, seed=1)
  allocation, _ = fit_isoflop(runs)
  fitted = fit_parametric(runs.params, runs.tokens, runs.loss)
  assert allocation.a == pytest.approx(fitted.a, abs=0.03)
  assert allocation.b == pytest.approx(fitted.b, abs=0.03)


def test_isoflop_needs_two_budgets_with_three_sizes():
  law = preset("epoch-2024")
  with pytest.raises(RunsError, match="at least two budgets"):
    fit_isoflop(isoflop_runs(law, [1e20], sizes_per_budget=5))


def test_runs_table_reads_columns_in_any_order_and_defaults_flops_to_6nd(tmp_path):
  path = tmp_path / "runs.csv"
  path.write_text("loss,tokens,params,run\n3.1,2e9,1e8,a\n2.9,4e9,2e8,b\n")
  runs = read_runs(str(path))
  np.testing.assert_allclose(runs.flops, [1.2e18, 4.8e18])
  assert list(runs.run) == ["a", "b"]


@pytest.mark.parametrize("content, message", [
    ("params,loss\n1e8,3\n", r"missing column\(s\) \['tokens'\]"),
    ("params,tokens,loss\n1e8,2e9,nan\n", "row 2: loss='nan' must be positive and finite"),
    ("params,tokens,loss\n1e8,-2e9,3\n", "row 2: tokens='-2e9' must be positive"),
    ("params,tokens,loss\n1e8,2e9,abc\n", "row 2: loss='abc' is not a number"),
    ("params,tokens,loss\n", "no runs"),
])
def test_bad_runs_tables_are_one_clear_error(tmp_path, content, message):
  path = tmp_path / "runs.csv"
  path.write_text(content)
  with pytest.raises(RunsError, match=message):
    read_runs(str(path))
  with pytest.raises(RunsError, match="does not exist"):
    read_runs(str(tmp_path / "missing.csv"))


def test_a_budget_whose_minimum_lies_beyond_the_sizes_tried_is_left_out(capsys):
  from t5x_lite.scaling.report import fit_runs

  law = preset("epoch-2024")
  runs = isoflop_runs(law, [1e19, 1e20, 1e21], sizes_per_budget=7)
  # Make the smallest budget's loss fall with N all the way: no interior minimum.
  first = runs.flops == 1e19
  loss = runs.loss.copy()
  loss[first] = 5.0 - 0.1 * np.log(runs.params[first])
  bent = Runs(params=runs.params, tokens=runs.tokens, loss=loss, flops=runs.flops)
  allocation, found = fit_isoflop(bent)
  assert sorted(p.flops for p in found) == pytest.approx([1e20, 1e21])
  assert allocation.a == pytest.approx(law.a, abs=0.02)
  fit_runs(bent, "isoflop")
  assert "1 of 3 budgets left out" in capsys.readouterr().err


def test_a_near_minimum_fit_recovers_the_exponent_where_an_all_points_parabola_does_not():
  # The usual sweep: one grid of sizes for every budget (3e6 ... 1e10 params), so the
  # small budgets are sampled mostly above their optimum and the large ones mostly
  # below; a profile is a parabola in log N only near its minimum, so the lopsided
  # tails pull each all-points vertex towards the side sampled more.
  law = preset("epoch-2024")
  rows = [(params, flops / (6 * params), flops) for flops in np.logspace(18, 22, 5)
          for params in np.geomspace(1e7, 3e10, 15)]
  params, tokens, flops = (np.array(column) for column in zip(*rows))
  runs = Runs(params=params, tokens=tokens, loss=law.loss(params, tokens), flops=flops)
  near, _ = fit_isoflop(runs)
  everything, _ = fit_isoflop(runs, window=None)
  assert near.a == pytest.approx(law.a, abs=0.02)
  assert abs(everything.a - law.a) > 0.05


def test_every_unbracketed_budget_is_named_with_the_edge_its_minimum_lies_beyond(capsys):
  from t5x_lite.scaling.isoflop import split_profiles
  from t5x_lite.scaling.report import fit_runs

  law = preset("epoch-2024")
  sizes = np.geomspace(3e7, 3e9, 9)  # optima: 8.1e7 ... 2.8e10 across the budgets
  rows = [(p, f / (6 * p), f) for f in np.logspace(18, 22, 5) for p in sizes]
  params, tokens, flops = (np.array(column) for column in zip(*rows))
  runs = Runs(params=params, tokens=tokens, loss=law.loss(params, tokens), flops=flops)
  found, unbracketed = split_profiles(runs)
  assert [u.reason for u in unbracketed] == ["largest", "largest"]
  assert [u.flops for u in unbracketed] == pytest.approx([1e21, 1e22])
  assert len(found) == 3
  fit_runs(runs, "isoflop")
  err = capsys.readouterr().err
  assert "2 of 5 budgets left out" in err and "plan --refine" in err
  assert "budget 1e+22 FLOPs: the lowest loss is at the largest size tried (3,000,000,000" in err
