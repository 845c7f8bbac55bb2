"""The training loss: token cross-entropy with z-loss and label smoothing.

Sums are returned alongside the token count so callers can normalise by the
number of target tokens across microbatches and hosts (a mean of per-batch
means would weight short batches wrongly).
"""

from __future__ import annotations

import math
from typing import Mapping, NamedTuple

import jax
import jax.numpy as jnp
import optax


class LossSums(NamedTuple):
  """Weighted sums over target tokens; divide by `tokens` for per-token values."""
  loss: jax.Array           # cross-entropy (with label smoothing) + z-loss, summed
  cross_entropy: jax.Array  # plain cross-entropy, summed (what perplexity is made of)
  z_loss: jax.Array
  correct: jax.Array        # argmax hits
  tokens: jax.Array         # sum of loss weights


def token_loss_sums(logits: jax.Array, targets: jax.Array, weights: jax.Array,
                    z_loss: float = 1e-4, label_smoothing: float = 0.0) -> LossSums:
  """Loss sums over the tokens with non-zero weight (padding has weight 0).

  z-loss (PaLM) adds z_loss * log(Z)^2 per token to keep the softmax
  normaliser near 1; label smoothing mixes the one-hot target with the
  uniform distribution (optax.smooth_labels).
  """
  logits = logits.astype(jnp.float32)
  weights = weights.astype(jnp.float32)
  vocab = logits.shape[-1]
  log_z = jax.nn.logsumexp(logits, axis=-1)
  cross_entropy = log_z - jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  if label_smoothing:
    soft = optax.smooth_labels(jax.nn.one_hot(targets, vocab), label_smoothing)
    # Subtract the smoothed targets' own entropy (the best achievable value) so a
    # perfect model scores 0 whatever the smoothing, as T5X does.
    high = 1.0 - label_smoothing + label_smoothing / vocab
    low = label_smoothing / vocab
    entropy = -(high * jnp.log(high) + (vocab - 1) * low * jnp.log(low))
    training = optax.softmax_cross_entropy(logits, soft) - entropy
  else:
    training = cross_entropy
  z = z_loss * jnp.square(log_z)
  correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
  return LossSums(loss=jnp.sum((training + z) * weights),
                  cross_entropy=jnp.sum(cross_entropy * weights),
                  z_loss=jnp.sum(z * weights), correct=jnp.sum(correct * weights),
                  tokens=jnp.sum(weights))


def eval_metrics(totals: Mapping[str, float]) -> dict[str, float]:
  """Loss, token accuracy and perplexity from cross_entropy / correct / tokens summed
  over evaluation batches (perplexity capped at e^50 for a diverged model)."""
  tokens = max(totals["tokens"], 1.0)
  loss = totals["cross_entropy"] / tokens
  return {"loss": loss, "accuracy": totals["correct"] / tokens,
          "perplexity": math.exp(min(loss, 50.0)), "tokens": totals["tokens"]}
