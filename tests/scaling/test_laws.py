"""Published laws reproduce the papers' compute-optimal tables."""

import json
import math
import subprocess
import sys

import pytest

from t5x_lite.scaling import laws

# Hoffmann et al. 2022, Table 3 (approach 1): FLOPs -> (params, tokens).
TABLE3 = [(1.92e19, 400e6, 8.0e9), (1.21e20, 1e9, 20.2e9), (1.23e22, 10e9, 205.1e9),
          (5.76e23, 67e9, 1.5e12), (3.85e24, 175e9, 3.7e12), (1.27e26, 1e12, 21.2e12)]


@pytest.mark.parametrize("flops,params,tokens", TABLE3)
def test_approach1_reproduces_chinchilla_table3(flops, params, tokens):
  allocation = laws.preset("chinchilla-approach1").optimal(flops)
  assert allocation.params == pytest.approx(params, rel=0.03)
  # The published rows are rounded: 6 N D differs from their FLOPs by up to 4.7%.
  assert allocation.tokens == pytest.approx(tokens, rel=0.06)


@pytest.mark.parametrize("name", ["chinchilla-approach3", "epoch-2024"])
@pytest.mark.parametrize("flops", [1e19, 5.76e23, 1e26])
def test_closed_form_optimum_equals_numerical_minimum(name, flops):
  law = laws.preset(name)
  closed, numerical = law.optimal(flops), laws.optimal_numerically(law.loss, flops)
  assert closed.params == pytest.approx(numerical.params, rel=1e-4)
  assert closed.tokens == pytest.approx(numerical.tokens, rel=1e-4)
  assert closed.params * closed.tokens * 6 == pytest.approx(flops)


def test_epoch_law_gives_about_20_tokens_per_parameter_at_gopher_budget():
  # shared/data/README.md: N_opt = 72B, D_opt = 1.33T, 18.3 tokens/param.
  allocation = laws.preset("epoch-2024").optimal(5.76e23)
  assert allocation.params == pytest.approx(72e9, rel=0.02)
  assert allocation.tokens == pytest.approx(1.33e12, rel=0.02)
  assert allocation.tokens_per_param == pytest.approx(18.3, abs=0.2)


def test_unrounded_hoffmann_values_match_table_a3_budgets():
  # README check: (a, b, e, alpha, beta) unrounded -> N = 400M needs C = 2.35e19.
  law = laws.ChinchillaLaw(E=1.6934, A=406.4, B=410.7, alpha=0.33917084, beta=0.2849083)
  flops = (400e6 / law.G) ** (1 / law.a) * 6
  assert flops == pytest.approx(2.35e19, rel=0.01)


def test_kaplan_numerical_optimum_follows_its_analytic_exponent():
  # Under 6ND = C, Kaplan's L(N, D) is minimised at N ~ C^(alpha_D / (alpha_N + alpha_D))
  # (0.556; their 0.73 comes from early-stopped L(N, S), a different question).
  law = laws.preset("kaplan-2020")
  small, large = law.optimal(1e19), law.optimal(1e23)
  exponent = math.log10(large.params / small.params) / 4  # four decades of compute
  assert exponent == pytest.approx(law.alpha_D / (law.alpha_N + law.alpha_D), abs=1e-3)


@pytest.mark.slow  # over 5 s on 2 cores: outside the quick loop
def test_optimal_cli_json():
  out = subprocess.run([sys.executable, "-m", "t5x_lite.scaling", "optimal", "--law",
                        "chinchilla-approach1", "--budget", "5.76e23", "--json"],
                       capture_output=True, text=True, check=True)
  result = json.loads(out.stdout.strip().splitlines()[-1])
  assert result["params"] == pytest.approx(67e9, rel=0.03)


@pytest.mark.slow  # over 5 s on 2 cores: outside the quick loop
def test_optimal_cli_rejects_bad_budget():
  out = subprocess.run([sys.executable, "-m", "t5x_lite.scaling", "optimal", "--law",
                        "epoch-2024", "--budget", "-1"], capture_output=True, text=True)
  assert out.returncode != 0 and "--budget" in out.stderr and "Traceback" not in out.stderr
