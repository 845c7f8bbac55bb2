"""The loss: cross entropy over weighted tokens plus z-loss, and label smoothing."""


import jax
import jax.numpy as jnp
import optax
import pytest

from t5x_lite.models import losses


def test_loss_is_cross_entropy_over_weighted_tokens_plus_z_loss():
  logits = jax.random.normal(jax.random.key(0), (2, 5, 11))
  targets = jax.random.randint(jax.random.key(1), (2, 5), 0, 11)
  weights = jnp.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
  sums = losses.token_loss_sums(logits, targets, weights, z_loss=1e-2)
  reference = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
  assert float(sums.tokens) == 8
  assert float(sums.cross_entropy) == pytest.approx(float((reference * weights).sum()), rel=1e-6)
  log_z = jax.nn.logsumexp(logits, -1)
  assert float(sums.z_loss) == pytest.approx(float((1e-2 * log_z**2 * weights).sum()), rel=1e-6)
  assert float(sums.loss) == pytest.approx(float(sums.cross_entropy + sums.z_loss), rel=1e-6)


def test_label_smoothing_scores_the_best_possible_prediction_as_zero():
  vocab, smoothing = 7, 0.1
  targets = jnp.array([[2, 5]])
  best = jnp.log(optax.smooth_labels(jax.nn.one_hot(targets, vocab), smoothing))
  sums = losses.token_loss_sums(best, targets, jnp.ones((1, 2)), z_loss=0.0,
                                label_smoothing=smoothing)
  assert float(sums.loss) == pytest.approx(0.0, abs=1e-5)
