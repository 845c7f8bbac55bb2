"""The objectives of preference and reward learning, each against a hand computation."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t5x_lite.models import alignment_losses as al


def sigmoid(x):
  return 1 / (1 + math.exp(-x))


def logps(values, tokens=None):
  values = jnp.asarray(values, jnp.float32)
  return al.SequenceLogps(values, jnp.asarray(tokens if tokens is not None
                                              else [1.0] * len(values), jnp.float32))


def test_sequence_logps_sum_log_softmax_over_the_completion_tokens_only():
  logits = jax.random.normal(jax.random.key(0), (2, 4, 7))
  targets = jnp.array([[1, 2, 3, 4], [5, 6, 0, 0]])
  weights = jnp.array([[0, 1, 1, 1], [0, 0, 1, 0]])  # prompt, completion, padding
  out = al.sequence_logps(logits, targets, weights)
  log_softmax = np.asarray(jax.nn.log_softmax(logits))
  expected = [sum(log_softmax[0, t, targets[0, t]] for t in (1, 2, 3)),
              log_softmax[1, 2, targets[1, 2]]]
  np.testing.assert_allclose(out.logps, expected, rtol=1e-6)
  np.testing.assert_array_equal(out.tokens, [3, 1])


# Two pairs: policy and reference log-probs of [chosen 0, chosen 1; rejected 0, rejected 1].
POLICY = [-3.0, -5.0, -4.0, -4.5]
REFERENCE = [-3.5, -4.0, -3.8, -4.2]
H = [(-3.0 + 4.0) - (-3.5 + 3.8), (-5.0 + 4.5) - (-4.0 + 4.2)]  # [0.7, -0.7]


@pytest.mark.parametrize("loss, smoothing, by_hand", [
    ("sigmoid", 0.0, lambda h, b, e: -math.log(sigmoid(b * h))),
    ("sigmoid", 0.2, lambda h, b, e: -(1 - e) * math.log(sigmoid(b * h))
                                     - e * math.log(sigmoid(-b * h))),
    ("robust", 0.2, lambda h, b, e: (-(1 - e) * math.log(sigmoid(b * h))
                                     + e * math.log(sigmoid(-b * h))) / (1 - 2 * e)),
    ("hinge", 0.0, lambda h, b, e: max(0.0, 1 - b * h)),
    ("ipo", 0.0, lambda h, b, e: (h - 1 / (2 * b)) ** 2),
])
def test_preference_losses_and_rewards_equal_the_formulas(loss, smoothing, by_hand):
  beta = 0.5
  terms = al.preference_loss(logps(POLICY), logps(REFERENCE), loss=loss, beta=beta,
                             label_smoothing=smoothing)
  np.testing.assert_allclose(terms.loss, [by_hand(h, beta, smoothing) for h in H], rtol=1e-5)
  np.testing.assert_allclose(terms.chosen_rewards, [beta * 0.5, beta * -1.0], rtol=1e-6)
  np.testing.assert_allclose(terms.rejected_rewards, [beta * -0.2, beta * -0.3], rtol=1e-5)
  metrics = al.preference_metrics(terms, logps(POLICY))
  assert float(metrics["rewards/accuracies"]) == 0.5
  np.testing.assert_allclose(metrics["rewards/margins"], beta * np.mean(H), atol=1e-6)
  np.testing.assert_allclose(metrics["logps/chosen"], -4.0)
  np.testing.assert_allclose(metrics["logps/rejected"], -4.25)


def test_at_the_start_policy_equals_reference_dpo_is_log_2_and_every_reward_zero():
  terms = al.preference_loss(logps(POLICY), logps(POLICY), beta=0.1)
  np.testing.assert_allclose(terms.loss, [math.log(2)] * 2, rtol=1e-6)
  assert not np.any(terms.chosen_rewards) and not np.any(terms.rejected_rewards)


def test_the_rpo_term_is_the_chosen_completions_mean_nll_per_token():
  policy = al.SequenceLogps(jnp.array([-3.0, -8.0, -5.0, -2.0]), jnp.array([3, 2, 5, 1]))
  np.testing.assert_allclose(al.chosen_nll(policy), [3.0 / 3, 8.0 / 2])


def test_simpo_needs_no_reference_and_uses_length_normalised_log_probs():
  tokens = [2.0, 4.0, 1.0, 3.0]
  beta, gamma = 2.0, 0.5
  terms = al.preference_loss(logps(POLICY, tokens), None, loss="simpo", beta=beta,
                             simpo_gamma=gamma)
  for pair in range(2):
    z = beta * POLICY[pair] / tokens[pair] - beta * POLICY[2 + pair] / tokens[2 + pair] - gamma
    assert float(terms.loss[pair]) == pytest.approx(-math.log(sigmoid(z)), rel=1e-5)


@pytest.mark.parametrize("bad, says", [
    (dict(loss="nope"), "unknown preference loss"), (dict(beta=0.0), "beta must be positive"),
    (dict(label_smoothing=0.5), "label_smoothing"),
])
def test_bad_preference_settings_are_refused(bad, says):
  with pytest.raises(ValueError, match=says):
    al.preference_loss(logps(POLICY), logps(REFERENCE), **bad)
  with pytest.raises(ValueError, match="needs reference"):
    al.preference_loss(logps(POLICY), None, loss="sigmoid")


def test_bradley_terry_loss_and_accuracy_by_hand():
  rewards = jnp.array([1.0, -0.5, 0.25, 0.5])  # pairs (1.0 vs 0.25), (-0.5 vs 0.5)
  loss, correct = al.bradley_terry_loss(rewards)
  np.testing.assert_allclose(loss, [-math.log(sigmoid(0.75)), -math.log(sigmoid(-1.0))],
                             rtol=1e-6)
  np.testing.assert_array_equal(correct, [1.0, 0.0])
  loss, _ = al.bradley_terry_loss(rewards, margin=jnp.array([0.5, 0.0]))
  assert float(loss[0]) == pytest.approx(-math.log(sigmoid(0.25)), rel=1e-6)


def test_kl_estimators_equal_their_definitions_and_the_true_kl_in_expectation():
  policy = np.array([0.5, 0.3, 0.15, 0.05])
  reference = np.array([0.25, 0.25, 0.25, 0.25])
  true_kl = float(np.sum(policy * np.log(policy / reference)))
  log_p, log_q = jnp.log(policy), jnp.log(reference)
  log_r = np.log(reference / policy)
  np.testing.assert_allclose(al.kl_estimate(log_p, log_q, "k1"), -log_r, rtol=1e-6)
  np.testing.assert_allclose(al.kl_estimate(log_p, log_q, "k2"), log_r ** 2 / 2, rtol=1e-5)
  np.testing.assert_allclose(al.kl_estimate(log_p, log_q, "k3"), np.exp(log_r) - 1 - log_r,
                             rtol=1e-5, atol=1e-7)
  # Exact expectations under the policy: k1 and k3 are unbiased.
  for estimator in ("k1", "k3"):
    expectation = float(np.sum(policy * np.asarray(al.kl_estimate(log_p, log_q, estimator))))
    assert expectation == pytest.approx(true_kl, rel=1e-5)
  # And from samples, within sampling error.
  samples = jax.random.categorical(jax.random.key(0), log_p, shape=(200_000,))
  k3 = np.asarray(al.kl_estimate(log_p[samples], log_q[samples], "k3"))
  assert abs(k3.mean() - true_kl) < 4 * k3.std() / math.sqrt(len(k3))
  assert float(al.kl_estimate(jnp.array(0.0), jnp.array(-30.0), "k3", clamp=10.0)) == 10.0


def test_group_advantages_equal_the_formula_for_each_baseline():
  rewards = np.array([[1.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 1.0], [2.0, 2.0, 2.0, 2.0]])
  mean = rewards.mean(axis=1, keepdims=True)
  np.testing.assert_allclose(al.group_advantages(rewards, "mean"), rewards - mean)
  np.testing.assert_allclose(al.group_advantages(rewards, "grpo"),
                             (rewards - mean) / (rewards.std(axis=1, keepdims=True) + 1e-6),
                             rtol=1e-5)
  leave_one_out = np.array([[r - (row.sum() - r) / 3 for r in row] for row in rewards])
  np.testing.assert_allclose(al.group_advantages(rewards, "rloo"), leave_one_out, rtol=1e-6)
  for baseline in ("grpo", "rloo", "mean"):
    assert not np.any(al.group_advantages(rewards, baseline)[2])  # equal rewards


def test_a_group_with_equal_rewards_contributes_no_gradient():
  def loss(logps):
    advantages = al.group_advantages(jnp.array([[1.0, 1.0, 1.0]]))
    return jnp.sum(al.clipped_policy_loss(logps, jax.lax.stop_gradient(logps),
                                          advantages[0]).loss)
  assert not np.any(jax.grad(loss)(jnp.array([-1.0, -2.0, -0.5])))


def test_gae_equals_a_hand_rolled_loop():
  rng = np.random.default_rng(0)
  rewards, values = rng.normal(size=(3, 6)), rng.normal(size=(3, 6))
  mask = np.array([[1] * 6, [1, 1, 1, 1, 0, 0], [1, 0, 0, 0, 0, 0]], np.float32)
  gamma, lam = 0.9, 0.8
  expected = np.zeros_like(rewards)
  for row in range(3):
    length = int(mask[row].sum())
    following = 0.0
    for t in reversed(range(length)):
      next_value = values[row, t + 1] if t + 1 < length else 0.0
      delta = rewards[row, t] + gamma * next_value - values[row, t]
      following = delta + gamma * lam * following
      expected[row, t] = following
  advantages, returns = al.gae(rewards, values, mask, gamma, lam)
  np.testing.assert_allclose(advantages, expected, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(returns, (expected + values) * mask, rtol=1e-5, atol=1e-6)


def test_the_clipped_objective_has_zero_gradient_outside_the_clip_range():
  old = jnp.zeros(4)
  advantages = jnp.array([1.0, 1.0, -1.0, -1.0])
  # ratios e^0.5 (> 1.2, A > 0: clipped), e^0.1 (inside), e^-0.5 (< 0.8, A < 0: clipped),
  # e^-0.1 (inside)
  new = jnp.array([0.5, 0.1, -0.5, -0.1])
  grads = jax.grad(lambda x: jnp.sum(al.clipped_policy_loss(x, old, advantages).loss))(new)
  np.testing.assert_allclose(grads, [0.0, -math.exp(0.1), 0.0, math.exp(-0.1)], rtol=1e-6)
  np.testing.assert_array_equal(al.clipped_policy_loss(new, old, advantages).clipped,
                                [True, False, True, False])
