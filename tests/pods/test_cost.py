"""The cost model: time, chip-hours, energy and money of a run from its FLOPs."""

import pytest

from t5x_lite.pods import chips, cost


def test_reproduces_the_published_gpt3_estimate():
  """GPT-3 175B: 3.14e23 FLOPs at an effective 28 TFLOP/s per V100 and $1.50 an hour is
  about 3.1 million V100-hours, ~$4.6M (the figure the course material quotes)."""
  run = cost.run_cost(3.14e23, 1, 28e12, price_per_chip_hour=1.50)
  assert run.chip_hours == pytest.approx(3.14e23 / 28e12 / 3600)
  assert 3.1e6 < run.chip_hours < 3.12e6
  assert run.cost == pytest.approx(4.67e6, rel=0.01)
  # More chips: the same chip-hours and money in proportionally less time.
  fleet = cost.run_cost(3.14e23, 1024, 28e12, price_per_chip_hour=1.50)
  assert fleet.chip_hours == pytest.approx(run.chip_hours)
  assert fleet.days == pytest.approx(run.days / 1024)
  assert run.days / 365.25 == pytest.approx(355, abs=1)  # "355 years on one V100" (Lambda)


def test_energy_is_chip_hours_times_board_power():
  h100 = chips.get("h100")
  run = cost.run_cost(1e21, 8, h100.peak_flops * 0.5, h100.power_watts, 3.0)
  hours = 1e21 / (8 * h100.peak_flops * 0.5) / 3600
  assert run.chip_hours == pytest.approx(8 * hours)
  assert run.energy_kwh == pytest.approx(8 * hours * 0.7)
  assert run.cost == pytest.approx(8 * hours * 3.0)
  assert "kWh" in cost.describe(run) and "$" in cost.describe(run)


def test_unknown_power_is_said_not_guessed():
  run = cost.run_cost(1e20, 4, 1e14)
  assert run.energy_kwh is None and run.cost is None
  assert "energy unknown" in cost.describe(run)


@pytest.mark.parametrize("args", [(-1.0, 1, 1e12), (1.0, 0, 1e12), (1.0, 1, 0.0)])
def test_refuses_impossible_inputs(args):
  with pytest.raises(ValueError):
    cost.run_cost(*args)
