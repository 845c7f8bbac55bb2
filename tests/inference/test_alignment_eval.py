"""compare_policies: KL to the reference on the policy's samples and the judged win rate."""

import numpy as np
import pytest

from t5x_lite import gin_utils
from t5x_lite.data import vocabularies
from t5x_lite.inference import decoding
from t5x_lite.inference.alignment_eval import compare_policies
from t5x_lite.models import create_model

BYTES = vocabularies.byte_vocabulary()
PROMPTS = ["2+2=", "hello", "one two", "abc"] * 4


def tiny(seed):
  return create_model(gin_utils.model_config(["models/tiny_causal_decoder.gin"]), seed=seed)


def by_length(prompts, completions):
  return np.array([len(c) for c in completions], float)


def test_a_policy_equal_to_its_reference_has_zero_kl_and_wins_half():
  model = tiny(0)
  result = compare_policies(model, model, PROMPTS, by_length, BYTES, max_new_tokens=6, seed=1)
  assert result.kl == 0.0 and result.win_rate == 0.5
  assert result.policy_completions == result.reference_completions


def test_kl_is_the_mean_log_ratio_on_the_policys_samples_and_the_judge_decides_wins():
  policy, reference = tiny(0), tiny(1)
  result = compare_policies(policy, reference, PROMPTS, by_length, BYTES, max_new_tokens=6,
                            seed=1)
  # By hand: the policy's samples scored under both models.
  inputs = [list(BYTES.encode(p)) + [BYTES.eos_id] for p in PROMPTS]
  width = max(map(len, inputs))
  padded = np.array([row + [0] * (width - len(row)) for row in inputs], np.int32)
  samples = decoding.generate(policy, padded, max_new_tokens=6, temperature=1.0, seed=1,
                              eos_id=BYTES.eos_id).tokens
  targets = [row[:row.index(BYTES.eos_id) + 1] if BYTES.eos_id in row else row
             for row in samples.tolist()]
  ratio = (decoding.score(policy, inputs, targets)[0]
           - decoding.score(reference, inputs, targets)[0])
  assert result.kl == pytest.approx(float(np.mean(ratio)), rel=1e-5)
  assert result.kl_stderr > 0
  longer = [len(p) > len(r) for p, r in zip(result.policy_completions,
                                             result.reference_completions)]
  ties = [len(p) == len(r) for p, r in zip(result.policy_completions,
                                            result.reference_completions)]
  assert result.win_rate == pytest.approx((sum(longer) + 0.5 * sum(ties)) / len(PROMPTS))
