"""`plan`: budgets and a size range become model shapes of one family, each costing its budget."""

import json
import math

import pytest

from t5x_lite.gin_utils import model_config
from t5x_lite.models import counting
from t5x_lite.scaling.__main__ import main
from t5x_lite.scaling.planning import Family, PlanError, bracketing_problems, plan_sweep

FAMILY_GIN = "experiments/scaling/family.gin"


@pytest.fixture
def family():
  return Family(model_config([FAMILY_GIN]), aspect_ratio=32, head_dim=32)


def test_shapes_follow_the_family_rule(family):
  runs = plan_sweep(family, [1e12, 1e13], sizes=5, batch_size=16, targets_length=256)
  for run in runs:
    config = run.config
    assert config.num_heads * config.head_dim == config.d_model
    assert config.head_dim == 32
    assert 16 <= config.d_model / config.num_decoder_layers <= 64  # within 2x of the ratio
    assert config.d_ff == 32 * round(8 / 3 * config.d_model / 32)  # SwiGLU keeps the MLP's size
    assert run.params == counting.count_params(config)[0]


def test_every_run_of_a_budget_costs_the_budget(family):
  runs = plan_sweep(family, [1e12, 1e13], sizes=5, batch_size=16, targets_length=256)
  for run in runs:
    per_step = run.flops_per_token * 16 * 256
    assert abs(run.flops - run.budget) <= per_step / 2  # to the nearest whole step
    assert run.tokens == run.steps * 16 * 256
    assert run.flops == pytest.approx(run.tokens * run.flops_per_token)


def test_sizes_grow_across_each_profile_around_twenty_tokens_per_parameter(family):
  runs = plan_sweep(family, [1e13], sizes=5, spread=4, batch_size=16, targets_length=256)
  params = [run.params for run in runs]
  assert params == sorted(params) and len(set(params)) == len(params) >= 4
  ratios = [run.tokens_per_param for run in runs]
  assert min(ratios) < 20 < max(ratios)
  # The middle of the profile sits near the rule of thumb (the width grid is coarse).
  assert 20 / 4 < sorted(ratios)[len(ratios) // 2] < 20 * 4


def test_nearest_shape_tracks_large_targets_closely():
  base = model_config(["models/gpt3_125m.gin"])
  family = Family(base)  # head_dim 64, aspect ratio 64
  for target in (1e8, 1e9, 1e10):
    config = family.nearest(target)
    assert math.isclose(counting.count_params(config)[0], target, rel_tol=0.1)


def test_plan_command_writes_a_plan_the_sweep_can_read(tmp_path, capsys):
  output = tmp_path / "plan.json"
  main(["plan", f"--gin_file={FAMILY_GIN}", "--budgets", "1e12", "3e12", "--batch_size", "16",
        "--targets_length", "256", "--aspect_ratio", "32", "--head_dim", "32", "--sizes", "3",
        "--output", str(output)])
  assert "runs," in capsys.readouterr().out
  plan = json.loads(output.read_text())
  assert plan["gin_files"] == [FAMILY_GIN]
  assert len(plan["runs"]) == 6
  assert "TransformerConfig.d_model = " in " ".join(plan["runs"][0]["bindings"])


def test_impossible_plans_are_one_clear_error(family, capsys):
  with pytest.raises(PlanError, match="less than one step"):
    plan_sweep(family, [1e6], batch_size=16, targets_length=256)
  with pytest.raises(PlanError, match="min_params"):
    plan_sweep(family, [1e12], batch_size=16, targets_length=256, min_params=1e9)
  with pytest.raises(SystemExit) as exit_info:
    main(["plan", "--budgets", "1e12", "--batch_size", "16", "--targets_length", "256"])
  assert exit_info.value.code == 2
  assert "--gin_file" in capsys.readouterr().err


def test_a_budget_beyond_the_familys_largest_shape_names_the_layer_cap(family):
  small = Family(family.base, aspect_ratio=32, head_dim=32, max_layers=4)
  runs = plan_sweep(small, [1e20], batch_size=16, targets_length=256)
  (problem,) = bracketing_problems(runs, small)
  assert "the family's largest shape" in problem and "4 layers, the layer cap" in problem
  assert "--spread" not in problem
