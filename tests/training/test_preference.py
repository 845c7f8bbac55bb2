"""Preference optimization on the trainer: DPO starts at log 2 with zero rewards on every
architecture, its reference log-probs are the starting model's, cached and checked, and
a resumed run equals an uninterrupted one."""

import io
import json
import os

import numpy as np
import pytest

from t5x_lite import gin_utils
from t5x_lite.alignment import policy_kl, rl_data
from t5x_lite.common.errors import ConfigError
from t5x_lite.data import preference, vocabularies
from t5x_lite.inference import alignment_eval
from t5x_lite.inference.reward import RewardScorer
from t5x_lite.models import alignment_losses
from t5x_lite.runs import loading
from t5x_lite.runs.spec import PreferenceConfig
from t5x_lite.training import reference, trainer
from tests import train_helpers as helpers

pytestmark = pytest.mark.slow  # end-to-end runs (see pytest.ini)

LENGTHS = {"inputs": 16, "targets": 8}


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
  """Sums, the correct answer chosen over one off by one; 3 rows that must be skipped."""
  path = tmp_path_factory.mktemp("pairs") / "pairs.jsonl"
  rows = [{"prompt": f"{a}+{b}=", "chosen": str(a + b), "rejected": str(a + b + 1)}
          for a in range(8) for b in range(5)]
  lines = [json.dumps(row) for row in rows] + [
      "{broken", json.dumps({"prompt": "1+1=", "chosen": "2", "rejected": "2"}),
      json.dumps({"prompt": "x" * 40, "chosen": "1", "rejected": "2"})]
  path.write_text("\n".join(lines) + "\n")
  return str(path)


def base_run(directory, architecture, steps=2):
  helpers.run_training(directory, architecture, steps=steps)
  return directory


def dpo_bindings(model_dir, base, pairs_file, steps, **extra) -> list[str]:
  values = {"MODEL_DIR": repr(str(model_dir)), "TRAIN_STEPS": steps,
            "MIXTURE_OR_TASK_NAME": "'preference.byte'", "TASK_FEATURE_LENGTHS": LENGTHS,
            "BATCH_SIZE": 4, "WARMUP_STEPS": 1, "LEARNING_RATE": 1e-3,
            "train.init_checkpoint": repr(str(base)), "train.log_every": 1,
            "train.eval_every": 1000, "train.eval_steps": 2, "train.checkpoint_every": 2,
            "train.peak_flops_per_device": 1e11, "preference.loss": "'sigmoid'",
            "preference.beta": 0.5, "preference_data.train": [pairs_file],
            "preference_data.validation_fraction": 0.2}
  values.update(extra)
  return [f"{key} = {value}" for key, value in values.items()]


def run_dpo(model_dir, base, pairs_file, architecture="causal_decoder", steps=3,
            mesh="single_device", **extra):
  gin_utils.parse(helpers.gin_files(architecture, mesh),
                  dpo_bindings(model_dir, base, pairs_file, steps, **extra))
  gin_utils.register_tasks()
  stream = io.StringIO()
  spec = gin_utils.resolve_train_spec()
  result = trainer.train(spec, gin_utils.resolve_mesh(), stream=stream,
                         evaluate_policy=policy_kl.evaluator(spec,
                                                             vocabularies.byte_vocabulary()))
  return result, stream.getvalue()


def records(model_dir, split="train"):
  with open(os.path.join(model_dir, "metrics.jsonl")) as handle:
    return [r for r in map(json.loads, handle) if r["split"] == split]


@pytest.mark.parametrize("architecture", list(helpers.TASKS))
def test_dpo_starts_at_log_2_with_zero_rewards_and_moves(tmp_path, pairs_file, architecture):
  base = base_run(tmp_path / "base", architecture)
  result, out = run_dpo(tmp_path / "dpo", base, pairs_file, architecture)
  first, last = records(tmp_path / "dpo")[0], records(tmp_path / "dpo")[-1]
  assert first["loss"] == pytest.approx(np.log(2), abs=1e-5)
  for name in ("rewards/chosen", "rewards/rejected", "rewards/margins"):
    assert first[name] == pytest.approx(0.0, abs=1e-5), name
  assert last["loss"] != first["loss"] and "rewards/accuracies" in last
  assert "logps/chosen" in last and "logps/rejected" in last
  assert "reward accuracy" in out and "reference log-probabilities of" in out
  assert "rewards/margins" in result


def test_each_evaluation_logs_the_policys_kl_to_the_reference_on_its_own_samples(
    tmp_path, pairs_file):
  base = base_run(tmp_path / "base", "causal_decoder")
  result, out = run_dpo(tmp_path / "dpo", base, pairs_file, steps=3,
                        **{"train.eval_every": 3, "preference.kl_prompts": 5,
                           "preference.kl_max_new_tokens": 4, "LEARNING_RATE": 3e-2})
  # The logged KL is the saved policy's: the same estimate made from the two checkpoints.
  data = preference.PreferenceData(train=(pairs_file,), validation_fraction=0.2)
  pairs, _ = preference.read_pairs(data, "validation", vocabularies.byte_vocabulary(), LENGTHS)
  prompts = [list(p) for p in dict.fromkeys(pair.prompt for pair in pairs)][:5]
  expected = alignment_eval.policy_kl(
      loading.load_model(str(tmp_path / "dpo")), loading.load_model(str(base)), prompts,
      eos_id=vocabularies.byte_vocabulary().eos_id, max_new_tokens=4, seed=0)
  assert result["kl"] == pytest.approx(expected.kl, rel=1e-4, abs=1e-5)
  assert result["kl"] > 0 and result["kl_stderr"] > 0
  assert records(tmp_path / "dpo", "eval")[-1]["kl"] == result["kl"]
  assert "KL to the reference" in out
  # Off: no KL measured, and a reference-free loss never has one.
  result, _ = run_dpo(tmp_path / "off", base, pairs_file, steps=1,
                      **{"preference.kl_prompts": 0})
  assert "kl" not in result
  result, _ = run_dpo(tmp_path / "simpo", base, pairs_file, steps=1,
                      **{"preference.loss": "'simpo'"})
  assert "kl" not in result


def test_the_rpo_term_adds_the_weighted_chosen_nll_to_the_dpo_loss(tmp_path, pairs_file):
  base = base_run(tmp_path / "base", "causal_decoder")
  run_dpo(tmp_path / "rpo", base, pairs_file, steps=1, **{"preference.sft_weight": 0.5})
  first = records(tmp_path / "rpo")[0]
  assert first["nll/chosen"] > 0
  assert first["loss"] == pytest.approx(np.log(2) + 0.5 * first["nll/chosen"], rel=1e-5)


def test_dpo_on_a_sharded_mesh_equals_one_device(tmp_path, pairs_file):
  base = base_run(tmp_path / "base", "causal_decoder")
  run_dpo(tmp_path / "one", base, pairs_file, steps=3, **{"preference.kl_prompts": 0})
  # 8 devices: 4-way FSDP x 2-way tensor parallel.
  run_dpo(tmp_path / "sharded", base, pairs_file, steps=3, mesh="fsdp_tensor",
          **{"preference.kl_prompts": 0, "TENSOR_PARALLELISM": 2})
  for one, sharded in zip(records(tmp_path / "one"), records(tmp_path / "sharded")):
    for name in ("loss", "rewards/margins", "logps/chosen"):
      assert sharded[name] == pytest.approx(one[name], rel=1e-4, abs=1e-5), name


def test_the_cached_reference_is_the_starting_models_log_probs(tmp_path, pairs_file):
  base = base_run(tmp_path / "base", "causal_decoder")
  run_dpo(tmp_path / "dpo", base, pairs_file, steps=1)
  with np.load(tmp_path / "dpo" / reference.FILE) as cache:
    cached = cache["logps/train"]
  data = preference.PreferenceData(train=(pairs_file,), validation_fraction=0.2)
  pairs, report = preference.read_pairs(data, "train", vocabularies.byte_vocabulary(), LENGTHS)
  assert len(report.skipped) == 3 and len(pairs) == len(cached)
  model = loading.load_model(str(base))
  batches = preference.get_pair_batches(pairs, LENGTHS, "train", len(pairs), "causal_decoder",
                                        shuffle=False)
  batch = next(batches)
  index = batch.pop(preference.PAIR_INDEX)
  logps = alignment_losses.sequence_logps(model(batch), batch["decoder_target_tokens"],
                                          batch["decoder_loss_weights"]).logps
  half = len(pairs)
  np.testing.assert_allclose(cached[index[:half], 0], logps[:half], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(cached[index[half:], 1], logps[half:], rtol=1e-5, atol=1e-5)


def test_a_resumed_dpo_run_equals_the_uninterrupted_one_and_a_changed_reference_is_refused(
    tmp_path, pairs_file):
  base = base_run(tmp_path / "base", "causal_decoder")
  run_dpo(tmp_path / "straight", base, pairs_file, steps=4)
  run_dpo(tmp_path / "resumed", base, pairs_file, steps=2)
  run_dpo(tmp_path / "resumed", base, pairs_file, steps=4)
  straight = {r["step"]: r["loss"] for r in records(tmp_path / "straight")}
  resumed = {r["step"]: r["loss"] for r in records(tmp_path / "resumed")}
  assert resumed == straight
  base_run(base, "causal_decoder", steps=4)  # the reference trained further
  with pytest.raises(reference.ReferenceChanged, match="another reference"):
    run_dpo(tmp_path / "resumed", base, pairs_file, steps=6)


@pytest.mark.parametrize("bad, says", [
    (dict(sft_weight=-1.0), "sft_weight must be >= 0"),
    (dict(loss="bradley_terry", sft_weight=0.5), "a reward model"),
    (dict(kl_prompts=-1), "kl_prompts"), (dict(kl_max_new_tokens=0), "kl_max_new_tokens")])
def test_bad_preference_knobs_are_refused_naming_the_knob(bad, says):
  with pytest.raises(ConfigError, match=says):
    PreferenceConfig(**bad)


def test_simpo_needs_no_reference_and_dpo_without_one_is_refused(tmp_path, pairs_file):
  with pytest.raises(ConfigError, match="CHECKPOINT_PATH"):
    gin_utils.parse(helpers.gin_files("causal_decoder"),
                    dpo_bindings(tmp_path / "dpo", "", pairs_file, 1,
                                 **{"train.init_checkpoint": None}))
    gin_utils.resolve_train_spec()
  result, _ = run_dpo(tmp_path / "simpo", tmp_path / "none", pairs_file, steps=2,
                      **{"train.init_checkpoint": None, "preference.loss": "'simpo'"})
  assert not os.path.exists(tmp_path / "simpo" / reference.FILE)
  assert np.isfinite(result["loss"])


def test_a_lora_policys_reference_is_its_base_with_the_adapters_off(tmp_path, pairs_file):
  base = base_run(tmp_path / "base", "causal_decoder")
  run_dpo(tmp_path / "lora", base, pairs_file, steps=2,
          **{"lora.rank": 4, "TransformerConfig.scan_layers": False})
  run_dpo(tmp_path / "full", base, pairs_file, steps=1)  # the base itself as reference
  with np.load(tmp_path / "lora" / reference.FILE) as lora, \
       np.load(tmp_path / "full" / reference.FILE) as full:
    for split in ("train", "validation"):
      np.testing.assert_allclose(lora[f"logps/{split}"], full[f"logps/{split}"], rtol=1e-5,
                                 atol=1e-5)
  assert records(tmp_path / "lora")[0]["loss"] == pytest.approx(np.log(2), abs=1e-5)


def test_a_reward_model_starts_at_log_2_learns_a_preference_and_scores_as_it_trained(
    tmp_path):
  # Chosen completions praise, rejected ones complain: a property a function can judge.
  path = tmp_path / "tone.jsonl"
  words = ["good", "fine", "great", "nice"], ["bad", "poor", "awful", "sad"]
  path.write_text("\n".join(json.dumps({"prompt": f"item {i}:", "chosen": words[0][i % 4],
                                        "rejected": words[1][(i // 4) % 4]})
                            for i in range(64)) + "\n")
  base = base_run(tmp_path / "base", "causal_decoder")
  result, out = run_dpo(tmp_path / "rm", base, str(path), steps=30,
                        **{"preference.loss": "'bradley_terry'",
                           "TransformerConfig.head": "'reward'", "LEARNING_RATE": 3e-3,
                           "train.allow_changes": ["TransformerConfig.head"],
                           "train.eval_steps": 1})
  first = records(tmp_path / "rm")[0]
  assert first["loss"] == pytest.approx(np.log(2), abs=1e-6)  # a zero head: equal rewards
  assert result["accuracy"] >= 0.9 and "pairwise accuracy" in out
  assert not os.path.exists(tmp_path / "rm" / reference.FILE)
  scorer = RewardScorer(str(tmp_path / "rm"))
  rewards = scorer.score(["item 70:"] * 8, words[0] + words[1])
  assert rewards[:4].min() > rewards[4:].max()
  # An RL run names the reward model's MODEL_DIR as its reward (rl.reward).
  judge = rl_data.judge_of(str(tmp_path / "rm"))
  np.testing.assert_array_equal(judge(["item 70:"] * 8, words[0] + words[1], [""] * 8), rewards)


def test_a_reward_head_needs_the_bradley_terry_loss_and_back(tmp_path, pairs_file):
  base = base_run(tmp_path / "base", "causal_decoder")
  with pytest.raises(ConfigError, match="bradley_terry"):
    run_dpo(tmp_path / "rm", base, pairs_file, **{"TransformerConfig.head": "'reward'",
                                                  "train.allow_changes":
                                                      ["TransformerConfig.head"]})
  with pytest.raises(ConfigError, match="head='reward'"):
    run_dpo(tmp_path / "rm", base, pairs_file, **{"preference.loss": "'bradley_terry'"})
