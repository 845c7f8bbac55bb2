"""The loss: token cross-entropy with z-loss and label smoothing, and the one
forward+loss path that training, evaluation and scoring share (`model_loss_sums`).

Sums are returned alongside the token count so callers can normalise by the
number of target tokens across microbatches and hosts (a mean of per-batch
means would weight short batches wrongly); scoring asks for sums per example.
"""

from __future__ import annotations

import functools
import math
from typing import Mapping, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax
from flax import nnx


class LossSums(NamedTuple):
  """Weighted sums over target tokens; divide by `tokens` for per-token values."""
  loss: jax.Array           # cross-entropy (with label smoothing) + z-loss, summed
  cross_entropy: jax.Array  # plain cross-entropy, summed (what perplexity is made of)
  z_loss: jax.Array
  correct: jax.Array        # tokens whose target has the largest logit
  tokens: jax.Array         # sum of loss weights


def token_loss_sums(logits: jax.Array, targets: jax.Array, weights: jax.Array,
                    z_loss: float = 1e-4, label_smoothing: float = 0.0,
                    per_example: bool = False) -> LossSums:
  """Loss sums over the tokens with non-zero weight (padding has weight 0): scalars, or
  [batch] sums over each row with per_example=True.

  z-loss (PaLM) adds z_loss * log(Z)^2 per token to keep the softmax
  normaliser near 1; label smoothing mixes the one-hot target with the
  uniform distribution (optax.smooth_labels).
  """
  logits = logits.astype(jnp.float32)
  weights = weights.astype(jnp.float32)
  vocab = logits.shape[-1]
  log_z = jax.nn.logsumexp(logits, axis=-1)
  target_logits = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  cross_entropy = log_z - target_logits
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
  # "The target has the largest logit" rather than argmax == target: the same up to
  # exact ties, and a max reduction where XLA:CPU's argmax (a variadic reduce over the
  # vocabulary) cost 3% of a training step.
  correct = (target_logits >= jnp.max(logits, axis=-1)).astype(jnp.float32)
  total = functools.partial(jnp.sum, axis=-1 if per_example else None)
  return LossSums(loss=total((training + z) * weights),
                  cross_entropy=total(cross_entropy * weights),
                  z_loss=total(z * weights), correct=total(correct * weights),
                  tokens=total(weights))


def model_loss_sums(model, batch: Mapping[str, jax.Array], *, z_loss: float = 0.0,
                    label_smoothing: float = 0.0, dropout_rng: Optional[jax.Array] = None,
                    per_example: bool = False) -> LossSums:
  """The model's loss sums on a seqio feature dict: the one forward+loss path of
  training (with dropout_rng), evaluation and scoring (per_example: a target's
  log-likelihood is minus its cross_entropy sum)."""
  logits = model(batch, dropout_rng=dropout_rng)
  return token_loss_sums(logits, batch["decoder_target_tokens"], batch["decoder_loss_weights"],
                         z_loss, label_smoothing, per_example)


@functools.partial(jax.jit, static_argnums=0, static_argnames="per_example")
def evaluate_batch(graphdef: nnx.GraphDef, state: nnx.State, batch: Mapping[str, jax.Array],
                   per_example: bool = False) -> LossSums:
  """model_loss_sums in evaluation mode, jitted over the split model (compiled once per
  model structure and batch shape)."""
  return model_loss_sums(nnx.merge(graphdef, state), batch, per_example=per_example)


def eval_metrics(totals: Mapping[str, float]) -> dict[str, float]:
  """Loss, token accuracy and perplexity from cross_entropy / correct / tokens summed
  over evaluation batches (perplexity capped at e^50 for a diverged model)."""
  tokens = max(totals["tokens"], 1.0)
  loss = totals["cross_entropy"] / tokens
  return {"loss": loss, "accuracy": totals["correct"] / tokens,
          "perplexity": math.exp(min(loss, 50.0)), "tokens": totals["tokens"]}
