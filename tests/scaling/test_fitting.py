"""The approach-3 fitter recovers known laws and reproduces Epoch AI's refit."""

import csv
import os

import numpy as np
import pytest

from t5x_lite.scaling.fitting import (
  PAPER_GRID,
  bootstrap_experts,
  bootstrap_parametric,
  fit_experts,
  fit_parametric,
  percentile_interval,
)
from t5x_lite.scaling.laws import ChinchillaLaw, ExpertsLaw
from t5x_lite.scaling.runs import FitError

# tests/testdata/chinchilla_epoch_digitized.csv: Besiroglu et al. 2024, "Chinchilla
# Scaling: A replication attempt", repository epoch-research/analyzing-chinchilla,
# data/svg_extracted_data.csv (245 runs digitised from Hoffmann et al. Fig. 4).
EPOCH_CSV = os.path.join(os.path.dirname(__file__), "..", "testdata",
                         "chinchilla_epoch_digitized.csv")
# Epoch's percentile 95% bootstrap intervals for the same fit.
EPOCH_INTERVALS = {"A": (285.2, 743.6), "B": (1042, 5810), "E": (1.769, 1.871),
                   "alpha": (0.317, 0.373), "beta": (0.331, 0.415)}


def epoch_runs():
  with open(EPOCH_CSV) as f:
    rows = list(csv.DictReader(f))
  params = np.array([float(r["Model Size"]) for r in rows])
  flops = np.array([float(r["Training FLOP"]) for r in rows])
  loss = np.array([float(r["loss"]) for r in rows])
  keep = np.argsort(loss)[:-5]  # as Epoch: drop the 5 highest-loss runs
  return params[keep], flops[keep] / (6 * params[keep]), loss[keep]


@pytest.mark.slow  # over 5 s on 2 cores: outside the quick loop
def test_epoch_data_fit_lands_inside_epochs_intervals():
  params, tokens, loss = epoch_runs()
  assert len(params) == 240
  law = fit_parametric(params, tokens, loss)
  for name, (low, high) in EPOCH_INTERVALS.items():
    assert low < getattr(law, name) < high, (name, getattr(law, name))
  # The plain L-BFGS-B grid fit noted in shared/data/README.md.
  assert law.E == pytest.approx(1.8172, abs=1e-3)
  assert law.alpha == pytest.approx(0.3473, abs=2e-3)


def noisy_runs(truth: ChinchillaLaw, count: int, noise: float):
  """Runs of 1e7-1e10 parameters on 1e9-1e12 tokens, losses with log-normal noise."""
  rng = np.random.default_rng(0)
  params = 10 ** rng.uniform(7, 10, count)
  tokens = 10 ** rng.uniform(9, 12, count)
  return params, tokens, truth.loss(params, tokens) * np.exp(rng.normal(0, noise, count))


@pytest.mark.slow  # over 5 s on 2 cores: outside the quick loop
def test_recovers_a_known_law_from_noisy_runs():
  truth = ChinchillaLaw(E=1.9, A=300.0, B=900.0, alpha=0.32, beta=0.30)
  params, tokens, loss = noisy_runs(truth, count=120, noise=0.005)
  # A coarser grid keeps this fast; the Epoch test above runs the paper's grid.
  law = fit_parametric(params, tokens, loss, grid=PAPER_GRID[::7])
  assert law.alpha == pytest.approx(truth.alpha, abs=0.03)
  assert law.beta == pytest.approx(truth.beta, abs=0.03)
  assert law.E == pytest.approx(truth.E, abs=0.05)
  assert law.a == pytest.approx(truth.a, abs=0.03)


@pytest.mark.slow  # over 5 s on 2 cores: outside the quick loop
def test_bootstrap_intervals_cover_the_true_parameters():
  truth = ChinchillaLaw(E=2.0, A=500.0, B=1500.0, alpha=0.35, beta=0.33)
  params, tokens, loss = noisy_runs(truth, count=200, noise=0.01)
  fit = fit_parametric(params, tokens, loss, grid=PAPER_GRID[::7])
  refits = bootstrap_parametric(params, tokens, loss, samples=200, seed=0, start=fit)
  assert len(refits) == 200
  for name in ("E", "alpha", "beta", "a"):
    low, high = percentile_interval([getattr(law, name) for law in refits])
    assert low < getattr(truth, name) < high, (name, low, high)
  flops = 1e22
  low, high = percentile_interval([law.optimal(flops).params for law in refits])
  assert low < truth.optimal(flops).params < high


def experts_runs(truth: ExpertsLaw, seed: int, count: int = 160):
  """(params, tokens, loss, experts) of `count` runs of dense (E = 1) and 4, 8 and
  16-expert models at random N and D, losses from `truth` with 0.3% noise."""
  rng = np.random.default_rng(seed)
  params = 10 ** rng.uniform(7, 10, count)
  tokens = 10 ** rng.uniform(9, 12, count)
  experts = rng.choice([1, 4, 8, 16], count)
  loss = truth.loss(params, tokens, experts) * np.exp(rng.normal(0, 0.003, count))
  return params, tokens, loss, experts


@pytest.mark.slow  # over 5 s on 2 cores: outside the quick loop
def test_the_experts_law_is_recovered_with_intervals_covering_the_truth():
  # Runs of dense (E = 1) and 4, 8 and 16-expert models: the fit recovers gamma, and
  # with it how far the compute-optimal active size shrinks with the experts.
  truth = ExpertsLaw(E0=1.9, A=300.0, B=900.0, alpha=0.32, beta=0.30, gamma=0.08)
  params, tokens, loss, experts = experts_runs(truth, seed=0)
  count = len(params)
  law = fit_experts(params, tokens, loss, experts, grid=PAPER_GRID[::7])
  assert law.gamma == pytest.approx(truth.gamma, abs=0.02)
  assert law.alpha == pytest.approx(truth.alpha, abs=0.03)
  assert law.optimal_shift(8) == pytest.approx(truth.optimal_shift(8), rel=0.1)
  refits = bootstrap_experts(params, tokens, loss, experts, samples=100, start=law)
  low, high = percentile_interval([refit.gamma for refit in refits])
  assert low < truth.gamma < high and high - low < 0.05
  # At one expert it is the dense law; at E it is the dense law of A E^-gamma.
  np.testing.assert_allclose(truth.loss(params, tokens, 1), truth.at(1).loss(params, tokens))
  assert truth.at(8).optimal(1e21).params == pytest.approx(
      truth.at(1).optimal(1e21).params * truth.optimal_shift(8))
  with pytest.raises(FitError, match="same number of experts"):
    fit_experts(params, tokens, loss, np.ones(count))


@pytest.mark.slow  # over 5 s on 2 cores: outside the quick loop
def test_experts_that_need_more_data_are_recovered_by_the_data_term():
  # Experts that add effective parameters (gamma > 0) but each need more tokens
  # (omega > 0): the optimum moves to fewer active parameters than gamma alone says.
  truth = ExpertsLaw(E0=1.9, A=300.0, B=900.0, alpha=0.32, beta=0.30, gamma=0.06,
                     omega=0.08)
  params, tokens, loss, experts = experts_runs(truth, seed=1)
  law = fit_experts(params, tokens, loss, experts, grid=PAPER_GRID[::7], data_term=True)
  assert law.gamma == pytest.approx(truth.gamma, abs=0.02)
  assert law.omega == pytest.approx(truth.omega, abs=0.02)
  assert law.optimal_shift(8) == pytest.approx(truth.optimal_shift(8), rel=0.1)
  assert truth.optimal_shift(8) < ExpertsLaw(**{**truth.__dict__, "omega": 0.0}
                                             ).optimal_shift(8)
  refits = bootstrap_experts(params, tokens, loss, experts, samples=50, start=law,
                             data_term=True)
  low, high = percentile_interval([refit.omega for refit in refits])
  assert low < truth.omega < high
  # The law at E is the dense law with A E^-gamma and B E^omega.
  np.testing.assert_allclose(truth.loss(params, tokens, 8), truth.at(8).loss(params, tokens))
