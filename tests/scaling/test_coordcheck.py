"""The coordinate check (`python -m t5x_lite.scaling coordcheck`): under μP every layer's
activation RMS stays flat as the model widens; under the standard parametrization with
the same learning rate some layer's grows with width."""

import json

import pytest

from t5x_lite import gin_utils
from t5x_lite.data.pipeline import get_batches
from t5x_lite.scaling import coordcheck
from t5x_lite.scaling.__main__ import main

# A flat profile: under μP the RMS may drift by finite-width effects, well under the
# growth the standard parametrization shows (slopes above 1: RMS x 2 per doubling).
FLAT, GROWING = 0.4, 1.0


@pytest.mark.slow  # over 5 s on 2 cores: outside the quick loop
def test_the_command_writes_the_plot_and_slopes_flat_under_mup_only(tmp_path, capsys):
  plot, slopes = tmp_path / "coordcheck.png", tmp_path / "slopes.json"
  main(["coordcheck", "--gin_file=models/tiny_causal_decoder.gin", "--widths", "64", "128",
        "256", "--steps", "4", "--output", str(plot), "--json", str(slopes)])
  out = capsys.readouterr().out
  assert "largest |log-log slope|" in out and plot.stat().st_size > 10_000
  result = json.loads(slopes.read_text())
  assert result["widths"] == [64, 128, 256]
  layers = set(result["slopes"]["mup"])
  assert {"embedding", "logits", "decoder/layer0/mlp", "decoder/layer1/self_attention",
          "decoder/layer1/output"} <= layers
  assert max(abs(s) for s in result["slopes"]["mup"].values()) < FLAT
  assert max(result["slopes"]["standard"].values()) > GROWING


@pytest.mark.slow  # over 5 s on 2 cores: outside the quick loop
@pytest.mark.parametrize("architecture", ["encoder_decoder", "prefix_decoder"])
def test_mup_keeps_every_layer_flat_for_the_other_architectures(architecture):
  base = gin_utils.model_config([f"models/tiny_{architecture}.gin"])
  task, lengths = coordcheck.DEFAULT_TASKS[architecture]
  batches = get_batches(task, lengths, "train", 8, architecture, seed=0)
  steps = [next(batches) for _ in range(4)]
  probe = next(get_batches(task, lengths, "validation", 8, architecture, seed=0))
  widths = [base.d_model, 2 * base.d_model, 4 * base.d_model]
  result = coordcheck.coordcheck(base, widths, steps, probe)
  if architecture == "encoder_decoder":
    assert any(name.startswith("encoder/") for name in result.slopes["mup"])
    assert any(name.endswith("cross_attention") for name in result.slopes["mup"])
  assert max(abs(s) for s in result.slopes["mup"].values()) < FLAT
  assert max(result.slopes["standard"].values()) > GROWING


def test_widths_the_family_cannot_reach_are_one_clear_error():
  base = gin_utils.model_config(["models/tiny_causal_decoder.gin"])
  with pytest.raises(coordcheck.ConfigError, match="not a multiple of head_dim=16"):
    coordcheck.widen(base, 72, "mup")
