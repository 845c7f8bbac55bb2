"""`python -m t5x_lite.scaling fit`: runs table in, fitted law and optimum (with CIs) out."""

import csv
import dataclasses
import json

import numpy as np
import pytest

from t5x_lite.scaling.__main__ import main
from t5x_lite.scaling.laws import ExpertsLaw, preset
from t5x_lite.scaling.runs import read_tables
from tests.scaling.test_isoflop import isoflop_runs


@pytest.fixture
def runs_csv(tmp_path):
  runs = isoflop_runs(preset("epoch-2024"), np.logspace(18, 21, 4), noise=0.003, seed=2)
  path = tmp_path / "runs.csv"
  with open(path, "w", newline="") as handle:
    writer = csv.writer(handle)
    writer.writerow(["params", "tokens", "flops", "loss"])
    writer.writerows(zip(runs.params, runs.tokens, runs.flops, runs.loss))
  return path


def test_isoflop_fit_reports_exponents_and_the_optimum_with_intervals(runs_csv, tmp_path, capsys):
  plot = tmp_path / "fit.png"
  main(["fit", str(runs_csv), "--method", "isoflop", "--bootstrap", "100", "--plot", str(plot),
        "--json"])
  report = json.loads(capsys.readouterr().out)
  truth = preset("epoch-2024")
  low, high = report["parameters"]["a"]["ci95"]
  assert low < truth.a < high
  optimum = report["optimal"]
  assert optimum["params"]["value"] == pytest.approx(truth.optimal(1e21).params, rel=0.1)
  assert optimum["tokens_per_param"]["ci95"][0] < optimum["tokens_per_param"]["value"]
  assert plot.stat().st_size > 10_000


@pytest.mark.slow  # over 5 s on 2 cores: outside the quick loop
def test_parametric_fit_recovers_the_law_and_warns_about_extrapolation(runs_csv, capsys):
  main(["fit", str(runs_csv), "--method", "parametric", "--budget", "1e23", "--json"])
  captured = capsys.readouterr()
  assert "extrapolation" in captured.err
  report = json.loads(captured.out)
  truth = preset("epoch-2024")
  assert report["parameters"]["alpha"]["value"] == pytest.approx(truth.alpha, abs=0.02)
  assert report["parameters"]["beta"]["value"] == pytest.approx(truth.beta, abs=0.02)
  assert report["budget"] == 1e23


def test_a_bad_runs_table_is_one_clear_error(tmp_path, capsys):
  path = tmp_path / "runs.csv"
  path.write_text("params,tokens\n1e8,2e9\n")
  with pytest.raises(SystemExit) as exit_info:
    main(["fit", str(path)])
  assert exit_info.value.code == 2
  assert "missing column(s) ['loss']" in capsys.readouterr().err


def test_plot_command_draws_the_sweep_overview_with_the_envelope(runs_csv, tmp_path, capsys):
  from tests.scaling.test_methods import training_curves

  curves = training_curves(preset("epoch-2024"), sizes=10)
  curves_csv = tmp_path / "curves.csv"
  with open(curves_csv, "w", newline="") as handle:
    writer = csv.writer(handle)
    writer.writerow(["run", "step", "params", "tokens", "flops", "loss"])
    writer.writerows(zip(curves.run, curves.step, curves.params, curves.tokens, curves.flops,
                         curves.loss))
  figure = tmp_path / "study.png"
  main(["plot", str(runs_csv), "--curves", str(curves_csv), "--methods", "isoflop", "envelope",
        "--bootstrap", "10", "--output", str(figure)])
  printed = capsys.readouterr().out
  assert "isoflop: a = " in printed and "envelope: a = " in printed
  assert figure.stat().st_size > 50_000


def test_envelope_without_training_curves_is_one_clear_error(runs_csv, capsys):
  with pytest.raises(SystemExit) as exit_info:
    main(["fit", str(runs_csv), "--method", "envelope"])
  assert exit_info.value.code == 2
  assert "training curves" in capsys.readouterr().err


def write_runs(path, runs) -> str:
  with open(path, "w", newline="") as handle:
    writer = csv.writer(handle)
    writer.writerow(["params", "tokens", "flops", "loss"])
    writer.writerows(zip(runs.params, runs.tokens, runs.flops, runs.loss))
  return str(path)


@pytest.mark.parametrize("method", ["parametric", "kaplan"])
def test_one_isoflop_budget_cannot_identify_a_law_of_n_and_d(method, tmp_path, capsys):
  # On one budget log N + log D is constant: alpha and beta are one number, not two.
  runs = isoflop_runs(preset("epoch-2024"), [1e20], noise=0.003, seed=2)
  path = write_runs(tmp_path / "runs.csv", runs)
  with pytest.raises(SystemExit) as exit_info:
    main(["fit", path, "--method", method])
  err = capsys.readouterr().err
  assert exit_info.value.code == 2 and "at least 2 distinct budgets" in err


def test_n_and_d_that_move_together_are_refused_naming_the_correlation(tmp_path, capsys):
  truth = preset("epoch-2024")
  params = np.logspace(7, 9, 8)
  tokens = 20 * params  # every run at 20 tokens per parameter
  path = tmp_path / "runs.csv"
  with open(path, "w", newline="") as handle:
    writer = csv.writer(handle)
    writer.writerow(["params", "tokens", "flops", "loss"])
    writer.writerows(zip(params, tokens, 6 * params * tokens, truth.loss(params, tokens)))
  with pytest.raises(SystemExit):
    main(["fit", str(path), "--method", "parametric"])
  assert "log N and log D are correlated 1.0000" in capsys.readouterr().err


def test_losses_too_flat_to_fit_are_warned_about_never_reported_silently(tmp_path, capsys):
  runs = isoflop_runs(preset("epoch-2024"), np.logspace(18, 21, 4), noise=0.0, seed=2)
  flat = dataclasses.replace(runs, loss=np.full(len(runs.loss), 3.0) + 1e-4 * np.sin(
      np.arange(len(runs.loss))))
  main(["fit", write_runs(tmp_path / "runs.csv", flat), "--method", "parametric", "--json"])
  captured = capsys.readouterr()
  report = json.loads(captured.out)
  assert report["warnings"] and "warning:" in captured.err
  assert any("do not show how loss falls" in w for w in report["warnings"])


def write_experts_tables(tmp_path, truth, noise=0.002, seed=3) -> tuple[str, str]:
  """IsoFLOP profiles of dense runs (a table without an experts column, as a dense sweep
  writes it) and of 4- and 8-expert runs (a second table with one), losses from `truth`."""
  rng = np.random.default_rng(seed)
  tables = {}
  for experts in (1, 4, 8):
    law = truth.at(experts)
    rows = []
    for flops in np.logspace(18, 20, 3):
      for params in law.optimal(flops).params * np.logspace(-0.8, 0.8, 5):
        tokens = flops / (6 * params)
        loss = truth.loss(params, tokens, experts) * np.exp(rng.normal(0, noise))
        rows.append((params, tokens, flops, loss, experts))
    tables.setdefault("dense" if experts == 1 else "moe", []).extend(rows)
  dense, moe = tmp_path / "dense.csv", tmp_path / "moe.csv"
  with open(dense, "w", newline="") as handle:
    writer = csv.writer(handle)
    writer.writerow(["params", "tokens", "flops", "loss"])
    writer.writerows(row[:4] for row in tables["dense"])
  with open(moe, "w", newline="") as handle:
    writer = csv.writer(handle)
    writer.writerow(["params", "tokens", "flops", "loss", "experts"])
    writer.writerows(tables["moe"])
  return str(dense), str(moe)


@pytest.mark.slow  # over 5 s on 2 cores: outside the quick loop
def test_experts_fit_of_dense_and_moe_tables_recovers_how_experts_move_the_optimum(
    tmp_path, capsys):
  truth = ExpertsLaw(E0=1.8, A=400.0, B=1500.0, alpha=0.34, beta=0.29, gamma=0.06)
  dense, moe = write_experts_tables(tmp_path, truth)
  plot = tmp_path / "experts.png"
  main(["fit", dense, moe, "--method", "experts", "--budget", "1e21", "--bootstrap", "40",
        "--plot", str(plot), "--json"])
  captured = capsys.readouterr()
  assert "extrapolation" in captured.err
  report = json.loads(captured.out)
  assert report["runs"] == 45
  gamma = report["parameters"]["gamma"]
  assert gamma["value"] == pytest.approx(truth.gamma, abs=0.02)
  assert gamma["ci95"][0] < truth.gamma < gamma["ci95"][1]
  optimal = report["optimal"]
  # Every expert count in the tables gets its optimum; the dense one is the reference.
  for experts in (1, 4, 8):
    assert optimal[f"params_E{experts}"]["value"] == pytest.approx(
        truth.at(experts).optimal(1e21).params, rel=0.25)
  shift = optimal["shift_E8"]
  assert shift["value"] == pytest.approx(truth.optimal_shift(8), rel=0.05)
  assert shift["ci95"][0] < truth.optimal_shift(8) < shift["ci95"][1]
  assert optimal["gain_E8"]["value"] > optimal["gain_E4"]["value"] > 0
  assert plot.stat().st_size > 10_000


def test_experts_fit_needs_runs_with_more_than_one_expert_count(tmp_path, capsys):
  truth = ExpertsLaw(E0=1.8, A=400.0, B=1500.0, alpha=0.34, beta=0.29, gamma=0.06)
  dense, _ = write_experts_tables(tmp_path, truth)
  with pytest.raises(SystemExit) as exit_info:
    main(["fit", dense, "--method", "experts"])
  assert exit_info.value.code == 2
  assert "at least 2 distinct expert counts" in capsys.readouterr().err


def test_several_tables_are_one_table_and_bad_expert_counts_are_refused(tmp_path, capsys):
  truth = ExpertsLaw(E0=1.8, A=400.0, B=1500.0, alpha=0.34, beta=0.29, gamma=0.06)
  dense, moe = write_experts_tables(tmp_path, truth)
  runs = read_tables([dense, moe])
  assert len(runs) == 45
  # The dense table has no experts column: its runs are E = 1.
  np.testing.assert_array_equal(runs.expert_counts, [1.0] * 15 + [4.0] * 15 + [8.0] * 15)
  bad = tmp_path / "bad.csv"
  bad.write_text("params,tokens,loss,experts\n1e8,2e9,3.0,0.5\n")
  with pytest.raises(SystemExit) as exit_info:
    main(["fit", dense, str(bad), "--method", "experts"])
  assert exit_info.value.code == 2
  assert "experts=0.5 must be at least 1" in capsys.readouterr().err
  curves = tmp_path / "curves.csv"
  curves.write_text("run,step,params,tokens,loss\na,1,1e8,2e9,3.0\n")
  with pytest.raises(SystemExit) as exit_info:
    main(["fit", dense, str(curves)])
  assert exit_info.value.code == 2
  assert "fit curves and final runs separately" in capsys.readouterr().err
