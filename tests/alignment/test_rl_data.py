"""GRPO on the trainer: rollouts of the current policy each step, the RL metrics logged,
validation by greedy reward, and a resumed run (inside a reused rollout too) equal to the
uninterrupted one."""

import io
import json
import os

import pytest

from t5x_lite import gin_utils
from t5x_lite.alignment import rl_data
from t5x_lite.common.errors import ConfigError
from t5x_lite.data import get_task
from t5x_lite.training import trainer
from tests import train_helpers as helpers

pytestmark = pytest.mark.slow  # end-to-end runs (see pytest.ini)


@pytest.fixture(scope="module")
def sums_file(tmp_path_factory):
  path = tmp_path_factory.mktemp("rows") / "sums.jsonl"
  path.write_text("\n".join(json.dumps({"inputs": f"{a}+{b}=", "targets": str(a + b)})
                            for a in range(6) for b in range(6)) + "\n")
  return str(path)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
  directory = tmp_path_factory.mktemp("base")
  helpers.run_training(directory, steps=2)
  return directory


def run_grpo(model_dir, base, rows, steps, mesh="single_device", **extra):
  values = {"MODEL_DIR": repr(str(model_dir)), "TRAIN_STEPS": steps,
            "MIXTURE_OR_TASK_NAME": "'supervised.byte'",
            "TASK_FEATURE_LENGTHS": {"inputs": 8, "targets": 6}, "BATCH_SIZE": 2,
            "WARMUP_STEPS": 1, "LEARNING_RATE": 1e-3, "train.init_checkpoint": repr(str(base)),
            "train.log_every": 1, "train.eval_every": 1000, "train.checkpoint_every": 2,
            "train.peak_flops_per_device": 1e11, "rl.reward": "'length'",
            "rl.group_size": 3, "rl.max_new_tokens": 5, "rl.eval_prompts": 4,
            "rl.updates_per_batch": 2, "supervised_data.train": [rows],
            # One rate throughout, so a run stopped early trains its steps as a longer one.
            "make_schedule.name": "'constant'",
            "supervised_data.validation_fraction": 0.25}
  values.update(extra)
  gin_utils.parse(helpers.gin_files("causal_decoder", mesh),
                  [f"{key} = {value}" for key, value in values.items()])
  gin_utils.register_tasks()
  spec = gin_utils.resolve_train_spec()
  vocabulary = get_task(spec.run.task).output_features["targets"].vocabulary
  stream = io.StringIO()
  result = trainer.train(spec, gin_utils.resolve_mesh(), stream=stream,
                         batches_factory=rl_data.factory(spec, vocabulary))
  return result, stream.getvalue()


def train_records(model_dir):
  with open(os.path.join(model_dir, "metrics.jsonl")) as handle:
    return [r for r in map(json.loads, handle) if r["split"] == "train"]


def test_a_grpo_run_logs_its_rollouts_and_resumes_exactly(tmp_path, base, sums_file):
  result, out = run_grpo(tmp_path / "straight", base, sums_file, steps=4)
  records = train_records(tmp_path / "straight")
  for name in ("loss", "kl", "clip_fraction", "ratio", "reward", "reward_std_within_groups",
               "response_length", "sampling_tokens_per_second", "tokens_per_second"):
    assert name in records[-1], name
  assert records[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # the policy is the reference
  assert records[0]["clip_fraction"] == 0.0
  # Step 4 reuses step 3's rollout after step 3's update (step 1's rate is 0, warming
  # up): the ratio to the sampling policy leaves 1.
  assert records[3]["reward"] == records[2]["reward"] and records[3]["ratio"] != 1.0
  assert set(result) >= {"reward", "solved"} and "eval at step 4: reward" in out
  # Stopped at step 3, inside the second rollout's reuse, and resumed.
  run_grpo(tmp_path / "resumed", base, sums_file, steps=3, **{"train.checkpoint_every": 1})
  run_grpo(tmp_path / "resumed", base, sums_file, steps=4, **{"train.checkpoint_every": 1})
  straight = {r["step"]: (r["loss"], r["reward"]) for r in records}
  resumed = {r["step"]: (r["loss"], r["reward"]) for r in train_records(tmp_path / "resumed")}
  assert resumed == straight


def test_an_rl_run_needs_supervised_prompts_and_a_starting_checkpoint(tmp_path, base):
  with pytest.raises(ConfigError, match="supervised rows"):
    run_grpo(tmp_path / "rl", base, "unused.jsonl", steps=1,
             **{"MIXTURE_OR_TASK_NAME": "'pydocs.full_lm.byte'",
                "TASK_FEATURE_LENGTHS": {"inputs": 8, "targets": 6}})
  with pytest.raises(ConfigError, match="CHECKPOINT_PATH"):
    run_grpo(tmp_path / "rl", "", "unused.jsonl", steps=1, **{"train.init_checkpoint": None})


def test_ppo_trains_a_value_head_on_the_policys_trunk(tmp_path, base, sums_file):
  result, _ = run_grpo(tmp_path / "ppo", base, sums_file, steps=2,
                       **{"rl.algorithm": "'ppo'", "TransformerConfig.head": "'value'",
                          "train.allow_changes": ["TransformerConfig.head"]})
  records = train_records(tmp_path / "ppo")
  assert "value_loss" in records[-1] and records[0]["kl"] == pytest.approx(0.0, abs=1e-6)
  with pytest.raises(ConfigError, match="PPO trains a value head"):
    run_grpo(tmp_path / "bad", base, sums_file, steps=1, **{"rl.algorithm": "'ppo'"})
  with pytest.raises(ConfigError, match="rl.algorithm='grpo' trains a language-model head"):
    run_grpo(tmp_path / "bad", base, sums_file, steps=1,
             **{"TransformerConfig.head": "'value'",
                "train.allow_changes": ["TransformerConfig.head"]})


def test_grpo_on_a_sharded_mesh_equals_one_device(tmp_path, base, sums_file):
  # 8 devices: 4-way FSDP x 2-way tensor parallel (rollouts decode the sharded policy).
  run_grpo(tmp_path / "sharded", base, sums_file, steps=3, mesh="fsdp_tensor",
           **{"TENSOR_PARALLELISM": 2, "BATCH_SIZE": 4})
  run_grpo(tmp_path / "one4", base, sums_file, steps=3, **{"BATCH_SIZE": 4})
  for one, sharded in zip(train_records(tmp_path / "one4"), train_records(tmp_path / "sharded")):
    assert sharded["reward"] == one["reward"] and sharded["response_length"] == one[
        "response_length"]
    for name in ("loss", "kl"):
      assert sharded[name] == pytest.approx(one[name], rel=1e-4, abs=1e-5), name
