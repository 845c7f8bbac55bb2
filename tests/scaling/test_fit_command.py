"""`python -m t5x_lite.scaling fit`: runs table in, fitted law and optimum (with CIs) out."""

import csv
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
