"""`plan`: budgets and a size range become model shapes of one family, each costing its budget."""

import dataclasses
import json
import math

import pytest

from t5x_lite.gin_utils import model_config
from t5x_lite.models import counting
from t5x_lite.scaling import planning
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


def test_an_moe_family_is_sized_by_active_parameters_and_its_runs_name_their_experts(
    family):
  # 4 x the dense feed-forward weights, the same active ones: 8 experts of d_ff / 2, top-2.
  moe = Family(dataclasses.replace(family.base, num_experts=4, moe_top_k=1,
                                   moe_granularity=2), aspect_ratio=32, head_dim=32)
  dense_runs = plan_sweep(family, [1e12], sizes=4, batch_size=16, targets_length=256)
  moe_runs = plan_sweep(moe, [1e12], sizes=4, batch_size=16, targets_length=256)
  # The same shapes: only the router's few weights separate active from dense N.
  assert [(r.config.num_decoder_layers, r.config.d_model) for r in moe_runs] == \
      [(r.config.num_decoder_layers, r.config.d_model) for r in dense_runs]
  for dense, routed in zip(dense_runs, moe_runs):
    counts = counting.count(routed.config, targets_length=256)
    assert routed.params == counts.active_params < counts.params
    assert 0 < routed.params - dense.params <= 4 * 2 * routed.config.d_model * \
        routed.config.num_decoder_layers
    assert routed.id == dense.id + "-E4"
    assert routed.as_dict()["experts"] == 4.0 and dense.as_dict()["experts"] == 1.0


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


def test_a_wsd_family_shares_one_stable_run_per_shape_and_its_flops_are_exact(family):
  """Each shape is placed on every budget whose size range holds it; its stable run
  goes to the latest fork point, and each branch computes only its decay: the family's
  FLOPs are the stable steps plus the decay steps at batch x FLOPs per sequence."""
  runs = planning.plan_sweep(family, [1e12, 2.5e12, 6.25e12], sizes=5, batch_size=16,
                             targets_length=256, share_shapes=True)
  result = planning.wsd_family(runs, decay_fraction=0.2, warmup_fraction=0.05)
  stable = {r["id"]: r for r in result["runs"] if r["role"] == "stable"}
  branches = [r for r in result["runs"] if r["role"] == "branch"]
  assert len(branches) == len(runs) and len(stable) < len(runs)
  expected = 0.0
  for run in runs:
    branch = next(b for b in branches if b["id"] == run.id)
    per_step = 16 * counting.count(run.config, targets_length=256).flops_per_sequence
    decay = max(1, round(0.2 * run.steps))
    assert branch["fork_step"] == run.steps - decay
    assert branch["own_flops"] == pytest.approx(per_step * decay, rel=1e-12)
    assert branch["flops"] == run.flops  # the point it stands for: the whole run
    parent = stable[branch["parent"]]
    assert branch["fork_step"] in parent["keep_steps"]
    assert parent["steps"] == max(parent["keep_steps"])
    assert branch["warmup_steps"] == parent["warmup_steps"] <= branch["fork_step"]
    expected += per_step * decay
  for parent in stable.values():
    per_step = parent["flops"] / parent["steps"]
    expected += per_step * parent["steps"]
  assert result["flops"] == pytest.approx(expected, rel=1e-12)
  assert result["independent_flops"] == pytest.approx(sum(r.flops for r in runs), rel=1e-12)
  assert result["savings"] == pytest.approx(1 - expected / result["independent_flops"])
  assert result["savings"] > 0.2
  # Rows stay in dependency order: a stable run before each of its branches.
  order = [r["id"] for r in result["runs"]]
  assert all(order.index(b["parent"]) < order.index(b["id"]) for b in branches)


@pytest.mark.parametrize("settings, message", [
    ({"decay_fraction": 0.0}, "--decay_fraction must be in"),
    ({"decay_fraction": 1.2}, "--decay_fraction must be in"),
    ({"warmup_fraction": 0.9}, "too short for a WSD branch"),
])
def test_bad_wsd_family_settings_are_one_clear_error(family, settings, message):
  runs = planning.plan_sweep(family, [1e12], sizes=3, batch_size=16, targets_length=256)
  with pytest.raises(planning.PlanError, match=message):
    planning.wsd_family(runs, **{"decay_fraction": 0.2, "warmup_fraction": 0.05, **settings})


def test_seeds_repeat_every_run_and_each_branch_forks_its_own_seeds_stable_run(tmp_path,
                                                                               capsys):
  output = tmp_path / "plan.json"
  main(["plan", f"--gin_file={FAMILY_GIN}", "--budgets", "1e12", "3e12", "--batch_size", "16",
        "--targets_length", "256", "--aspect_ratio", "32", "--head_dim", "32", "--sizes", "3",
        "--wsd", "--seeds", "3", "--output", str(output)])
  assert "3 seeds" in capsys.readouterr().out
  plan = json.loads(output.read_text())
  one_seed = [r for r in plan["runs"] if r["id"].endswith("-s0")]
  assert len(plan["runs"]) == 3 * len(one_seed)
  for entry in plan["runs"]:
    seed = entry["seed"]
    assert entry["id"].endswith(f"-s{seed}") and f"train.seed = {seed}" in entry["bindings"]
    if entry["role"] == "branch":
      assert entry["parent"].endswith(f"-s{seed}")
  single = [r for r in one_seed if r["role"] != "stable"]
  assert plan["wsd"]["independent_flops"] == pytest.approx(3 * sum(r["flops"] for r in single))


def test_fewer_than_one_seed_is_one_clear_error(capsys):
  with pytest.raises(SystemExit) as exit_info:
    main(["plan", f"--gin_file={FAMILY_GIN}", "--budgets", "1e12", "--batch_size", "16",
          "--targets_length", "256", "--seeds", "0"])
  assert exit_info.value.code == 2 and "--seeds" in capsys.readouterr().err
  with pytest.raises(PlanError, match="--seeds must be at least 1"):
    planning.with_seeds([], 0)
