"""The scaling loop's learning rates and bracketing: a vmapped learning-rate sweep is
the same as training at each rate alone; `plan` carries one peak rate (given or tuned)
that μP transfers to every shape; `plan --refine` adds sizes beyond every budget whose
lowest loss sits at the edge of the sizes tried."""

import csv
import json

import jax
import numpy as np
import optax
import pytest
from flax import nnx

from t5x_lite.gin_utils import model_config
from t5x_lite.models import TransformerConfig, create_model, losses
from t5x_lite.scaling import lr_sweep
from t5x_lite.scaling.__main__ import main
from t5x_lite.scaling.laws import preset
from t5x_lite.scaling.planning import Family, bracketing_problems, plan_sweep
from t5x_lite.training import optim

FAMILY_GIN = "experiments/scaling/family.gin"
MUP = ["--gin.TransformerConfig.parametrization='mup'",
       "--gin.TransformerConfig.mup_base_d_model=32"]
PLAN = ["plan", f"--gin_file={FAMILY_GIN}", "--batch_size", "4", "--targets_length", "64",
        "--head_dim", "32", "--aspect_ratio", "32"]


def tiny_batches(count: int, seed: int) -> list[dict]:
  rng = np.random.default_rng(seed)
  batches = []
  for _ in range(count):
    tokens = rng.integers(3, 100, (4, 16))
    batches.append({"decoder_input_tokens": np.pad(tokens[:, :-1], ((0, 0), (1, 0))),
                    "decoder_target_tokens": tokens,
                    "decoder_loss_weights": np.ones((4, 16), np.float32)})
  return batches


@pytest.mark.slow  # over 5 s on 2 cores: outside the quick loop
@pytest.mark.parametrize("parametrization", ["standard", "mup"])
def test_a_vmapped_sweep_equals_training_at_each_rate_alone(parametrization):
  config = TransformerConfig(vocab_size=128, d_model=64, num_heads=2, d_ff=128,
                             num_decoder_layers=2, parametrization=parametrization,
                             mup_base_d_model=32 if parametrization == "mup" else None)
  train, held_out = tiny_batches(4, 0), tiny_batches(2, 1)
  schedule = optim.ScheduleConfig(warmup_steps=1)
  result = lr_sweep.sweep_learning_rates(config, [1e-3, 1e-2], train, held_out,
                                         schedule=schedule)
  for rate, swept in zip(result.learning_rates, result.losses):
    # The trainer's recipe by hand: the model's optimizer at this peak rate, a step a batch.
    peak = optim.ScheduleConfig(warmup_steps=1, peak_learning_rate=rate)
    optimizer = optim.make_optimizer(optim.OptimizerConfig(),
                                     optim.make_schedule(peak, len(train)), config)
    graphdef, params = nnx.split(create_model(config), nnx.Param)
    state = optimizer.init(params)
    for batch in train:
      def loss(params, batch=batch):
        sums = losses.model_loss_sums(nnx.merge(graphdef, params), batch)
        return sums.loss / sums.tokens
      updates, state = optimizer.update(jax.grad(loss)(params), state, params)
      params = optax.apply_updates(params, updates)
    sums = [losses.model_loss_sums(nnx.merge(graphdef, params), b) for b in held_out]
    alone = sum(float(s.cross_entropy) for s in sums) / sum(float(s.tokens) for s in sums)
    assert swept == pytest.approx(alone, rel=1e-5)


def test_the_sweep_reports_whether_its_best_rate_is_bracketed():
  inside = lr_sweep.SweepResult([1e-3, 2e-3, 4e-3, 8e-3], [3.0, 2.5, 2.6, 2.9])
  assert inside.bracketed and inside.best == 2e-3
  assert 1e-3 < inside.vertex() < 4e-3
  edge = lr_sweep.SweepResult([1e-3, 2e-3, 4e-3], [3.0, 2.8, 2.7])
  assert not edge.bracketed and edge.vertex() == 4e-3


def test_a_mup_plan_gives_every_run_the_rate_and_the_base_width(tmp_path, capsys):
  output = tmp_path / "plan.json"
  main([*PLAN, "--budgets", "1e11", "3e11", *MUP, "--learning_rate", "0.02",
        "--output", str(output)])
  plan = json.loads(output.read_text())
  assert plan["parametrization"] == "mup" and plan["learning_rate"] == 0.02
  for run in plan["runs"]:
    assert "LEARNING_RATE = 0.02" in run["bindings"]
    assert "TransformerConfig.mup_base_d_model = 32" in run["bindings"]
  assert "warning" not in capsys.readouterr().err


def test_a_standard_plan_with_one_rate_warns_that_it_will_not_transfer(capsys):
  main([*PLAN, "--budgets", "1e11", "3e11", "--learning_rate", "0.02"])
  assert "set TransformerConfig.parametrization = 'mup'" in capsys.readouterr().err


def test_a_mup_plan_never_uses_a_shape_narrower_than_its_base_width(tmp_path):
  output = tmp_path / "plan.json"
  main([*PLAN, "--budgets", "1e11", "1e12", "--gin.TransformerConfig.parametrization='mup'",
        "--gin.TransformerConfig.mup_base_d_model=64", "--output", str(output)])
  widths = [run["d_model"] for run in json.loads(output.read_text())["runs"]]
  assert min(widths) == 64


@pytest.mark.slow  # over 5 s on 2 cores: outside the quick loop
def test_plan_tunes_the_rate_at_its_narrowest_shape(tmp_path):
  output = tmp_path / "plan.json"
  main([*PLAN, "--budgets", "1e11", "3e11", *MUP, "--tune_learning_rate", "--tune_steps", "3",
        "--learning_rates", "1e-3", "1e-1", "3", "--output", str(output)])
  plan = json.loads(output.read_text())
  sweep = plan["learning_rate_sweep"]
  assert sweep["d_model"] == 32 and len(sweep["losses"]) == 3
  assert plan["learning_rate"] == sweep["learning_rate"]
  assert all(f"LEARNING_RATE = {plan['learning_rate']!r}" in run["bindings"]
             for run in plan["runs"])


def test_budgets_the_family_cannot_bracket_are_named():
  family = Family(model_config([FAMILY_GIN]), aspect_ratio=32, head_dim=32)
  runs = plan_sweep(family, [1e11], sizes=5, spread=1.2, batch_size=4, targets_length=64)
  problems = bracketing_problems(runs)
  assert len(problems) == 1 and "an IsoFLOP parabola needs three" in problems[0]
  assert "--spread" in problems[0]


def test_refine_adds_sizes_beyond_the_edge_where_a_budgets_minimum_lies(tmp_path, capsys):
  # A finished sweep whose middle budget bottoms out at its largest size.
  family = Family(model_config([FAMILY_GIN]), aspect_ratio=32, head_dim=32)
  runs = plan_sweep(family, [1e11, 3e11, 1e12], sizes=5, batch_size=4, targets_length=64)
  law = preset("epoch-2024")
  path = tmp_path / "RUNS.csv"
  with open(path, "w", newline="") as handle:
    writer = csv.writer(handle)
    writer.writerow(["run", "params", "tokens", "flops", "loss"])
    for run in runs:
      # Losses of a law whose optimum sits 4x above the plan's rule-of-thumb centre.
      loss = law.loss(run.params * 2e3, run.tokens * 2e3)
      if run.budget == 3e11:
        loss = 3.0 - 0.1 * np.log(run.params)  # falling all the way: unbracketed
      writer.writerow([run.id, run.params, run.tokens, run.flops, loss])
  output = tmp_path / "refined.json"
  main([*PLAN, "--refine", str(path), "--output", str(output)])
  out = capsys.readouterr().out
  assert "budget 3e+11 FLOPs: the lowest loss is at the largest size tried" in out
  added = json.loads(output.read_text())["runs"]
  largest = max(run.params for run in runs if run.budget == 3e11)
  # (a budget is its runs' mean FLOPs, which whole steps put within 0.1% of the plan's)
  assert added and all(run["budget"] == pytest.approx(3e11, rel=1e-3) for run in added)
  assert all(run["params"] > largest for run in added)
  assert len(added) == 2  # two sizes beyond the edge unless told otherwise
  main([*PLAN, "--refine", str(path), "--sizes", "1", "--output", str(output)])
  assert len(json.loads(output.read_text())["runs"]) == 1


def test_plan_without_budgets_or_refine_is_one_clear_error(capsys):
  with pytest.raises(SystemExit) as exit_info:
    main([*PLAN])
  assert exit_info.value.code == 2 and "--budgets" in capsys.readouterr().err


def test_plan_refuses_a_missing_refine_table(tmp_path, capsys):
  with pytest.raises(SystemExit) as exit_info:
    main([*PLAN, "--refine", str(tmp_path / "missing.csv")])
  assert exit_info.value.code == 2 and "does not exist" in capsys.readouterr().err
