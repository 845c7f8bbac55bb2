"""Rollouts: G completions per prompt judged, their group advantages, rows laid out with
the loss on the completion, and the log-probs the policy-gradient step needs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from t5x_lite import gin_utils
from t5x_lite.alignment import rewards
from t5x_lite.alignment.rollouts import rollout, token_logps
from t5x_lite.common.errors import ConfigError
from t5x_lite.data import vocabularies
from t5x_lite.models import alignment_losses, create_model
from t5x_lite.runs.spec import RLConfig
from t5x_lite.training import objectives

BYTES = vocabularies.byte_vocabulary()
LENGTHS = {"inputs": 8, "targets": 8}
PROMPTS, ANSWERS = ["1+1=", "2+2=", "3+4="], ["2", "4", "7"]


def tiny(seed=0):
  return create_model(gin_utils.model_config(["models/tiny_causal_decoder.gin"]), seed=seed)


def test_a_rollout_groups_judges_and_lays_out_completions():
  policy, reference = tiny(0), tiny(1)
  config = RLConfig(group_size=4, max_new_tokens=6)
  out = rollout(policy, reference, PROMPTS, ANSWERS, rewards.get("length"), BYTES, LENGTHS,
                config, seed=3)
  assert out.rewards.shape == (3, 4) and len(out.completions) == 12
  np.testing.assert_allclose(out.rewards.ravel(), [-len(c) / 100 for c in out.completions],
                             rtol=1e-6)
  np.testing.assert_allclose(out.features[objectives.ADVANTAGES],
                             np.asarray(alignment_losses.group_advantages(out.rewards))
                             .ravel(), rtol=1e-6)
  weights = out.features["decoder_loss_weights"]
  for row in range(12):
    prompt = list(BYTES.encode(PROMPTS[row // 4])) + [BYTES.eos_id]
    targets = out.features["decoder_target_tokens"][row]
    assert list(targets[:len(prompt)]) == prompt and not weights[row, :len(prompt)].any()
    assert 1 <= weights[row].sum() <= 6
  old = out.features[objectives.OLD_LOGPS]
  np.testing.assert_allclose(old, token_logps(policy, out.features), rtol=1e-6)
  assert not old[weights == 0].any() and (old[weights == 1] < 0).all()
  np.testing.assert_allclose(out.features[objectives.REFERENCE_LOGPS],
                             token_logps(reference, out.features), rtol=1e-6)
  assert out.stats["sampling_tokens_per_second"] > 0 and "reward_std_within_groups" in out.stats
  # The same seed samples the same completions.
  again = rollout(policy, None, PROMPTS, ANSWERS, rewards.get("length"), BYTES, LENGTHS,
                  config, seed=3)
  assert again.completions == out.completions and objectives.REFERENCE_LOGPS not in \
      again.features


def loss_and_grads(model, features, objective):
  graphdef, params = nnx.split(model, nnx.Param)
  batch = {k: jnp.asarray(v) for k, v in features.items()}

  def loss(params):
    sums = objective.sums(nnx.merge(graphdef, params), batch, None)
    return sums["loss"] / objective.normaliser(batch), sums
  return jax.value_and_grad(loss, has_aux=True)(params)


def test_the_first_policy_gradient_step_is_minus_the_advantage_per_token():
  policy = tiny(0)
  out = rollout(policy, policy, PROMPTS, ANSWERS, rewards.get("length"), BYTES, LENGTHS,
                RLConfig(group_size=4, max_new_tokens=6), seed=3)
  (loss, sums), _ = loss_and_grads(policy, out.features, objectives.PolicyGradient())
  weights = out.features["decoder_loss_weights"]
  tokens = weights.sum(axis=1)
  # Ratio 1 (the sampling policy is the policy) and KL 0 (the reference is the policy).
  expected = -(out.features[objectives.ADVANTAGES] * tokens).sum() / tokens.sum()
  assert float(loss) == pytest.approx(float(expected), abs=1e-5)
  assert float(sums["kl"]) == pytest.approx(0.0, abs=1e-5)
  assert float(sums["clip_fraction"]) == 0.0


def test_groups_whose_completions_all_score_the_same_teach_nothing():
  policy = tiny(0)
  same = lambda prompts, completions, answers: np.ones(len(completions))  # noqa: E731
  out = rollout(policy, None, PROMPTS, ANSWERS, same, BYTES, LENGTHS,
                RLConfig(group_size=3, max_new_tokens=4), seed=0)
  _, grads = loss_and_grads(policy, out.features, objectives.PolicyGradient(kl_beta=0.0))
  assert all(not np.any(np.asarray(g)) for g in jax.tree.leaves(grads))


@pytest.mark.parametrize("bad, says", [
    (dict(group_size=1), "group_size"), (dict(temperature=0.0), "temperature"),
    (dict(baseline="nope"), "baseline"),
])
def test_bad_rollout_settings_are_refused(bad, says):
  with pytest.raises(ConfigError, match=says):
    RLConfig(**bad)


def test_the_generation_budget_must_fit_the_targets_length():
  with pytest.raises(ConfigError, match="must hold rl.max_new_tokens"):
    rollout(tiny(), None, PROMPTS, ANSWERS, rewards.get("length"), BYTES, {"inputs": 8,
                                                                           "targets": 4},
            RLConfig(max_new_tokens=6), seed=0)


def critic(seed=0):
  config = gin_utils.model_config(["models/tiny_causal_decoder.gin"]).replace(head="value")
  return create_model(config, seed=seed)


def test_ppo_rollouts_carry_gae_advantages_returns_and_the_rollouts_values():
  policy = critic()
  config = RLConfig(algorithm="ppo", group_size=2, max_new_tokens=5, gamma=1.0, lam=0.9)
  out = rollout(policy, None, PROMPTS, ANSWERS, rewards.get("length"), BYTES, LENGTHS,
                config, seed=2)
  mask = out.features["decoder_loss_weights"] > 0
  # A zero-initialised value head: V = 0, so with gamma 1 GAE gives each completion token
  # lam^(tokens after it) x the sequence's reward, and the returns A + V are the same.
  assert not out.features[objectives.OLD_VALUES].any()
  raw = np.zeros(mask.shape)
  for row in range(mask.shape[0]):
    positions = np.flatnonzero(mask[row])
    raw[row, positions] = 0.9 ** (positions[-1] - positions) * out.rewards.reshape(-1)[row]
  np.testing.assert_allclose(out.features[objectives.RETURNS], raw, rtol=1e-5, atol=1e-7)
  whitened = (raw - raw[mask].mean()) / (raw[mask].std() + 1e-6) * mask
  np.testing.assert_allclose(out.features[objectives.ADVANTAGES], whitened, rtol=1e-4,
                             atol=1e-5)
  (loss, sums), _ = loss_and_grads(policy, out.features,
                                   objectives.PolicyGradient(kl_beta=0.0, value_coef=0.5))
  # First step: ratio 1 and V = V_old = 0, so the loss per token is -A + 0.5 x 0.5 R^2.
  returns = out.features[objectives.RETURNS]
  expected = (-(out.features[objectives.ADVANTAGES] * mask).sum()
              + 0.25 * (returns ** 2 * mask).sum()) / mask.sum()
  assert float(loss) == pytest.approx(float(expected), abs=1e-5)
  assert float(sums["value_loss"]) == pytest.approx(float(0.5 * (returns ** 2).sum()), rel=1e-5)
