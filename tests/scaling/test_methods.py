"""Approach 1 (training-curve envelope) and Kaplan's law recover the laws that made the data."""

import numpy as np
import pytest

from t5x_lite.scaling import envelope, kaplan, report
from t5x_lite.scaling.laws import KaplanLaw, preset
from t5x_lite.scaling.runs import Runs, RunsError


def training_curves(law, sizes=25) -> Runs:
  """Curves of `sizes` models, each evaluated at 30 token counts (no schedule effects)."""
  rows = []
  for run, params in enumerate(np.logspace(7, 10, sizes)):
    for tokens in np.logspace(8, 12, 30):
      if 0.5 < tokens / params < 2000:
        rows.append((params, tokens, law.loss(params, tokens), 6 * params * tokens, f"r{run}"))
  params, tokens, loss, flops, runs = (np.array(column) for column in zip(*rows))
  return Runs(params=params.astype(float), tokens=tokens.astype(float),
              loss=loss.astype(float), flops=flops.astype(float), run=runs,
              step=tokens.astype(float))


def test_envelope_of_training_curves_recovers_the_allocation_exponents():
  law = preset("epoch-2024")
  allocation, front = envelope.fit_envelope(training_curves(law))
  assert allocation.a == pytest.approx(law.a, abs=0.03)
  assert allocation.b == pytest.approx(law.b, abs=0.03)
  # Each envelope point is the best run at that budget.
  assert np.all(np.diff(front.loss) < 0)
  assert allocation.optimal(1e21).params == pytest.approx(law.optimal(1e21).params, rel=0.3)


def test_envelope_needs_training_curves():
  law = preset("epoch-2024")
  curves = training_curves(law)
  finals = Runs(params=curves.params, tokens=curves.tokens, loss=curves.loss, flops=curves.flops)
  with pytest.raises(RunsError, match="training curves"):
    envelope.fit_envelope(finals)


def test_envelope_bootstrap_resamples_whole_curves():
  fitted = report.fit_runs(training_curves(preset("epoch-2024"), sizes=12), "envelope",
                           budget=1e20, bootstrap=20)
  assert fitted.bootstrap_samples == 20
  low, high = fitted.intervals["a"]
  assert low <= fitted.parameters["a"] <= high


def test_kaplan_fit_recovers_its_exponents_with_intervals():
  truth = KaplanLaw()
  rng = np.random.default_rng(0)
  params = np.exp(rng.uniform(np.log(1e7), np.log(1e10), 80))
  tokens = np.exp(rng.uniform(np.log(1e8), np.log(1e11), 80))
  loss = truth.loss(params, tokens) * np.exp(rng.normal(0, 0.005, 80))
  fitted = kaplan.fit_kaplan(params, tokens, loss)
  assert fitted.alpha_N == pytest.approx(truth.alpha_N, abs=0.005)
  assert fitted.alpha_D == pytest.approx(truth.alpha_D, abs=0.005)
  runs = Runs(params=params, tokens=tokens, loss=loss, flops=6 * params * tokens)
  fitted_report = report.fit_runs(runs, "kaplan", budget=1e20, bootstrap=30)
  low, high = fitted_report.intervals["alpha_N"]
  assert low < truth.alpha_N < high
  assert fitted_report.optimal["params"] == pytest.approx(truth.optimal(1e20).params, rel=0.15)


def test_optima_follow_the_runs_own_flop_count_when_it_is_not_6nd():
  """Runs costing 12ND (twice 6ND): the optimum at C is the 6ND optimum at C / 2."""
  truth = KaplanLaw()
  rng = np.random.default_rng(1)
  params = np.exp(rng.uniform(np.log(1e7), np.log(1e10), 60))
  tokens = np.exp(rng.uniform(np.log(1e8), np.log(1e11), 60))
  runs = Runs(params=params, tokens=tokens, loss=truth.loss(params, tokens),
              flops=12 * params * tokens)
  fitted = report.fit_runs(runs, "kaplan", budget=1e20)
  assert fitted.optimal["params"] == pytest.approx(truth.optimal(5e19).params, rel=0.05)
  assert fitted.optimal["tokens"] == pytest.approx(truth.optimal(5e19).tokens, rel=0.05)
