"""`scaling cost` and `scaling optimal --topology`: what a compute budget costs on a pod."""

import json

import pytest

from t5x_lite.pods import chips
from t5x_lite.scaling.__main__ import main


def run_json(capsys, *args) -> dict:
  main([*args, "--json"])
  return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_cost_reproduces_the_gpt3_back_of_envelope(capsys):
  """3.14e23 FLOPs at 28 TFLOP/s per V100 and $1.50 an hour: ~$4.6M."""
  result = run_json(capsys, "cost", "--flops", "3.14e23", "--flops_per_chip", "28e12",
                    "--price", "1.5", "--power", "300")
  assert result["cost"] == pytest.approx(4.67e6, rel=0.01)
  assert result["energy_kwh"] == pytest.approx(result["chip_hours"] * 0.3)


def test_optimal_on_a_pod_prices_the_compute_optimal_run(capsys):
  result = run_json(capsys, "optimal", "--law", "chinchilla-approach1", "--budget", "5.76e23",
                    "--topology", "h100:128x8", "--mfu", "0.5", "--price", "3")
  h100 = chips.get("h100")
  seconds = 5.76e23 / (1024 * h100.peak_flops * 0.5)
  assert result["chips"] == 1024 and result["seconds"] == pytest.approx(seconds)
  assert result["cost"] == pytest.approx(3 * 1024 * seconds / 3600)
  assert result["energy_kwh"] == pytest.approx(0.7 * 1024 * seconds / 3600)
  assert result["params"] == pytest.approx(67e9, rel=0.03)  # the allocation is unchanged


@pytest.mark.parametrize("args, message", [
    (["cost", "--flops", "1e20"], "--flops_per_chip"),
    (["cost", "--flops", "1e20", "--topology", "v5p:2x2x1", "--flops_per_chip", "1e12"],
     "not both"),
    (["cost", "--flops", "1e20", "--topology", "v5p:2x2x1", "--mfu", "1.5"], "at most 1"),
    (["optimal", "--law", "epoch-2024", "--budget", "1e22", "--topology", "v9:1"],
     "accepted forms"),
])
def test_bad_input_is_one_clear_error(capsys, args, message):
  with pytest.raises(SystemExit) as exit_:
    main(args)
  assert exit_.value.code == 2
  err = capsys.readouterr().err
  assert message in err and "Traceback" not in err
