"""Replicates: the run-to-run scatter they measure, a bootstrap that keeps the design and
redraws each point from its replicates (95% intervals that cover the truth about 95% of
the time), and budgets whose profile is too flat for the scatter named as noise-limited."""

import io
import math

import numpy as np
import pytest

from t5x_lite.scaling import noise, report
from t5x_lite.scaling.runs import Runs

TRUE_A = 0.5


def synthetic_sweep(rng, sigma=0.01, seeds=3, curvature=0.05, budgets=4):
  """IsoFLOP profiles exactly parabolic in ln N around N_opt = 0.1 C^0.5, each point
  trained `seeds` times with Gaussian run-to-run noise `sigma`."""
  params, tokens, loss, flops = [], [], [], []
  for budget in np.geomspace(1e12, 1e15, budgets):
    optimum = 0.1 * budget ** TRUE_A
    for size in optimum * np.geomspace(1 / 3, 3, 7):
      for _ in range(seeds):
        params.append(size)
        tokens.append(budget / (6 * size))
        flops.append(budget)
        loss.append(3.0 - 0.1 * math.log10(budget) + curvature * math.log(size / optimum) ** 2
                    + sigma * rng.standard_normal())
  return Runs(*map(np.array, (params, tokens, loss, flops)))


def test_the_scatter_is_the_pooled_spread_of_replicates():
  runs = synthetic_sweep(np.random.default_rng(0), sigma=0.02, seeds=4)
  assert len(noise.replicate_groups(runs)) == 4 * 7
  assert noise.scatter(runs) == pytest.approx(0.02, rel=0.15)
  single = synthetic_sweep(np.random.default_rng(0), seeds=1)
  assert noise.scatter(single) is None and noise.resample_losses(single, None) is None


def test_a_resample_keeps_the_design_and_redraws_each_point_from_its_replicates():
  runs = synthetic_sweep(np.random.default_rng(1))
  redrawn = report.resample(runs, "isoflop", np.random.default_rng(2))
  np.testing.assert_array_equal(redrawn.params, runs.params)
  np.testing.assert_array_equal(redrawn.tokens, runs.tokens)
  assert not np.array_equal(redrawn.loss, runs.loss)
  for group in noise.replicate_groups(runs):  # redrawn around the point's own mean
    spread = np.ptp(runs.loss[group]) * math.sqrt(3 / 2)
    assert np.all(np.abs(redrawn.loss[group] - runs.loss[group].mean()) <= spread + 1e-12)


def test_without_replicates_no_budget_drops_out_of_a_resample():
  runs = synthetic_sweep(np.random.default_rng(3), seeds=1)
  for seed in range(20):
    redrawn = report.resample(runs, "isoflop", np.random.default_rng(seed))
    assert sorted(set(redrawn.flops)) == sorted(set(runs.flops))


def test_95_percent_intervals_cover_the_true_exponent_about_95_percent_of_the_time():
  """150 synthetic sweeps (4 budgets x 7 sizes x 3 seeds), 100 bootstrap refits each:
  the interval for a covers 0.5 in 95% of them, within three binomial standard errors."""
  rng = np.random.default_rng(0)
  sweeps = 150
  covered = 0
  for index in range(sweeps):
    fitted = report.fit_runs(synthetic_sweep(rng), "isoflop", bootstrap=100, seed=index)
    low, high = fitted.intervals["a"]
    covered += low <= TRUE_A <= high
  error = math.sqrt(0.95 * 0.05 / sweeps)
  assert 0.95 - 3 * error <= covered / sweeps <= min(1.0, 0.95 + 3 * error)


def test_budgets_flatter_than_the_scatter_are_noise_limited():
  rng = np.random.default_rng(4)
  runs = synthetic_sweep(rng, sigma=0.01, seeds=3)
  flat = synthetic_sweep(rng, sigma=0.01, seeds=3, curvature=0.002)
  fitted = report.fit_runs(runs, "isoflop")
  assert fitted.scatter == pytest.approx(0.01, rel=0.3)
  assert fitted.budget_noise and not any(b.noise_limited for b in fitted.budget_noise)
  flat_fit = report.fit_runs(flat, "isoflop", warn=io.StringIO())
  assert all(b.noise_limited for b in flat_fit.budget_noise)
  assert "noise-limited" in flat_fit.budget_noise[0].describe()
  assert fitted.as_dict()["noise_limited_budgets"] == []
