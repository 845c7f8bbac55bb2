"""Every attention implementation computes the same function: masked softmax attention
as a plain numpy reference writes it, for the masks each architecture builds (causal,
prefix, encoder padding, cross-attention, packed segments) with grouped key/value heads
and T5's relative bias, and the same model logits and gradients as jax's own path."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from t5x_lite.models import TransformerConfig, architectures, create_model, forward
from t5x_lite.models.layers import dot_product_attention

ATOL = 1e-5
BATCH, LENGTH, HEADS, KV_HEADS, HEAD_DIM = 2, 10, 4, 2, 8
# What runs on this backend: cuDNN only exists on NVIDIA GPUs.
IMPLEMENTATIONS = ["einsum", "xla"] + (["cudnn"] if jax.default_backend() == "gpu" else [])


def reference_attention(q, k, v, mask, bias, scale):
  """softmax(scale q k^T + bias) v over allowed keys, key/value heads repeated per group."""
  groups = q.shape[2] // k.shape[2]
  k, v = np.repeat(k, groups, axis=2), np.repeat(v, groups, axis=2)
  logits = np.einsum("btnh,bsnh->bnts", q, k).astype(np.float64) * scale
  if bias is not None:
    logits = logits + bias
  logits = np.where(mask, logits, -np.inf)
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  return np.einsum("bnts,bsnh->btnh", probs, v)


def segments_mask(q_segments, k_segments):
  return (q_segments[:, :, None] == k_segments[:, None, :])[:, None]


def causal():
  index = np.arange(LENGTH)
  return np.broadcast_to(index[:, None] >= index[None, :], (BATCH, 1, LENGTH, LENGTH))


def prefix():
  index = jnp.arange(LENGTH)[None]
  in_prefix = jnp.asarray([[1] * 4 + [0] * 6, [1] * 7 + [0] * 3], bool)
  mask = architectures.get("prefix_decoder").decoder_mask(index, index, in_prefix, in_prefix)
  return np.broadcast_to(np.asarray(mask), (BATCH, 1, LENGTH, LENGTH))


def padded_keys():
  """Encoder self-attention and cross-attention: padding keys masked for every query."""
  valid = np.arange(LENGTH)[None] < np.asarray([[LENGTH], [6]])
  return np.broadcast_to(valid[:, None, None, :], (BATCH, 1, LENGTH, LENGTH))


def packed():
  """Two segments and trailing padding (segment 0) in each row, causal within segments."""
  segments = np.asarray([[1] * 4 + [2] * 4 + [0] * 2, [1] * 7 + [2] * 3])
  return segments_mask(segments, segments) & causal()


MASKS = {"causal": causal, "prefix": prefix, "padded_keys": padded_keys, "packed": packed}


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("mask_name", list(MASKS))
@pytest.mark.parametrize("with_bias", [False, True])
def test_attention_equals_the_reference(implementation, mask_name, with_bias):
  rng = np.random.default_rng(0)
  q = rng.standard_normal((BATCH, LENGTH, HEADS, HEAD_DIM)).astype(np.float32)
  k, v = (rng.standard_normal((BATCH, LENGTH, KV_HEADS, HEAD_DIM)).astype(np.float32)
          for _ in range(2))
  bias = rng.standard_normal((1, HEADS, LENGTH, LENGTH)).astype(np.float32) if with_bias else None
  mask = MASKS[mask_name]()
  scale = HEAD_DIM ** -0.5
  expected = reference_attention(q, k, v, mask, bias, scale)
  got = dot_product_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v),
                              mask=jnp.asarray(mask), bias=None if bias is None else
                              jnp.asarray(bias), scale=scale, is_causal=False,
                              implementation=implementation)
  np.testing.assert_allclose(got, expected, atol=ATOL)
  if mask_name == "causal" and not with_bias:
    # The same mask given as is_causal, without an array.
    implicit = dot_product_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), mask=None,
                                     bias=None, scale=scale, is_causal=True,
                                     implementation=implementation)
    np.testing.assert_allclose(implicit, expected, atol=ATOL)


def _packed_batch(config: TransformerConfig) -> dict:
  """A packed row and a padded row, as seqio's converters write them."""
  rng = np.random.default_rng(1)
  segments = np.asarray([[1] * 5 + [2] * 5 + [3] * 3 + [0] * 3, [1] * 12 + [0] * 4])
  positions = np.asarray([list(range(5)) + list(range(5)) + list(range(3)) + [0] * 3,
                          list(range(12)) + [0] * 4])
  tokens = np.where(segments > 0, rng.integers(1, config.vocab_size, segments.shape), 0)
  batch = {"decoder_input_tokens": tokens, "decoder_target_tokens": tokens,
           "decoder_loss_weights": (segments > 0).astype(np.float32),
           "decoder_segment_ids": segments, "decoder_positions": positions}
  if config.architecture == "prefix_decoder":
    batch["decoder_causal_attention"] = (positions < 2) & (segments > 0)
  if config.is_encoder_decoder:
    batch.update(encoder_input_tokens=tokens[:, ::-1].copy(),
                 encoder_segment_ids=segments[:, ::-1].copy(),
                 encoder_positions=positions[:, ::-1].copy())
  return {name: jnp.asarray(value) for name, value in batch.items()}


@pytest.mark.slow  # over 5 s on 2 cores: outside the quick loop
@pytest.mark.parametrize("architecture", ["causal_decoder", "prefix_decoder", "encoder_decoder"])
@pytest.mark.parametrize("implementation", [i for i in IMPLEMENTATIONS if i != "xla"])
def test_model_logits_and_gradients_match_jax_attention(architecture, implementation):
  """Packed segments and padding through the whole model: logits and parameter
  gradients with each implementation equal those with jax.nn.dot_product_attention."""
  encoding = "t5_relative" if architecture == "encoder_decoder" else "rope"
  base = TransformerConfig(architecture=architecture, vocab_size=40, d_model=32, num_heads=4,
                           num_kv_heads=2, d_ff=48, num_decoder_layers=2, max_length=16,
                           num_encoder_layers=2 if architecture == "encoder_decoder" else 0,
                           position_encoding=encoding)
  batch = _packed_batch(base)
  results = []
  for impl in ("xla", implementation):
    model = create_model(base.replace(attention_impl=impl))

    def loss(model):
      return jnp.sum(forward(model, batch) ** 2 * batch["decoder_loss_weights"][..., None])

    results.append((forward(model, batch), jax.tree.leaves(nnx.grad(loss)(model))))
  (logits, grads), (other_logits, other_grads) = results
  np.testing.assert_allclose(other_logits, logits, atol=ATOL)
  for got, want in zip(other_grads, grads):
    np.testing.assert_allclose(got, want, atol=ATOL * max(1.0, float(jnp.abs(want).max())))
