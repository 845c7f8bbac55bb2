"""`python -m t5x_lite.scaling fit`: runs table in, fitted law and optimum (with CIs) out."""

import csv
import dataclasses
import json

import numpy as np
import pytest

from t5x_lite.scaling.__main__ import main
from t5x_lite.scaling.laws import preset
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
