"""What users rely on from the models: masks leak nothing, packing isolates
segments, scan_layers is only a layout, and every knob builds."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t5x_lite.models import TransformerConfig, create_model, forward
from t5x_lite.models.counting import count_params
from t5x_lite.models.params import count_initialized_params, flat_params, model_from_params

VOCAB = 50
ATOL = 1e-5


@pytest.fixture(autouse=True)
def no_implicit_rank_promotion():
  """Model code must say how arrays of different ranks combine (no silent broadcasting)."""
  with jax.numpy_rank_promotion("raise"):
    yield


def tiny(architecture="causal_decoder", **overrides) -> TransformerConfig:
  fields = dict(architecture=architecture, vocab_size=VOCAB, d_model=32, num_heads=4,
                num_kv_heads=2, d_ff=48, num_decoder_layers=2, max_length=32,
                num_encoder_layers=2 if architecture == "encoder_decoder" else 0)
  fields.update(overrides)
  return TransformerConfig(**fields)


def tokens(*shape, seed=0):
  return jnp.asarray(np.random.default_rng(seed).integers(1, VOCAB, size=shape))


POSITION_ENCODINGS = ["rope", "t5_relative", "learned", "sinusoidal", "none"]


@pytest.mark.parametrize("position_encoding", POSITION_ENCODINGS)
def test_causal_decoder_never_sees_future_tokens(position_encoding):
  model = create_model(tiny(position_encoding=position_encoding))
  original = tokens(2, 12)
  changed = original.at[:, 7:].set(tokens(2, 5, seed=1))
  before = forward(model, {"decoder_input_tokens": original})
  after = forward(model, {"decoder_input_tokens": changed})
  np.testing.assert_allclose(before[:, :7], after[:, :7], atol=ATOL)
  assert not np.allclose(before[:, 7:], after[:, 7:], atol=1e-3)


@pytest.mark.parametrize("position_encoding", ["rope", "t5_relative"])
def test_prefix_decoder_prefix_sees_whole_prefix_and_nothing_after(position_encoding):
  model = create_model(tiny("prefix_decoder", position_encoding=position_encoding))
  prefix_length = 5
  causal_attention = jnp.asarray([[1] * prefix_length + [0] * 7] * 2)
  original = tokens(2, 12)

  def logits(x):
    return forward(model, {"decoder_input_tokens": x,
                           "decoder_causal_attention": causal_attention})

  after_prefix = original.at[:, prefix_length:].set(tokens(2, 7, seed=1))
  np.testing.assert_allclose(logits(original)[:, :prefix_length],
                             logits(after_prefix)[:, :prefix_length], atol=ATOL)
  # The last prefix token is visible to the first prefix position (bidirectional).
  last_prefix_changed = original.at[:, prefix_length - 1].set((original[:, 4] % (VOCAB - 1)) + 1)
  assert not np.allclose(logits(original)[:, 0], logits(last_prefix_changed)[:, 0], atol=1e-3)
  # ...while target positions stay causal among themselves.
  late_target = original.at[:, 10:].set(tokens(2, 2, seed=2))
  np.testing.assert_allclose(logits(original)[:, :10], logits(late_target)[:, :10], atol=ATOL)


@pytest.mark.slow  # over 5 s on 2 cores: outside the quick loop
@pytest.mark.parametrize("position_encoding", ["t5_relative", "rope", "learned"])
def test_encoder_padding_does_not_change_outputs(position_encoding):
  model = create_model(tiny("encoder_decoder", position_encoding=position_encoding))
  encoder, decoder = tokens(2, 6), tokens(2, 5, seed=1)
  padded = jnp.pad(encoder, [(0, 0), (0, 4)])
  np.testing.assert_allclose(
      forward(model, {"encoder_input_tokens": encoder, "decoder_input_tokens": decoder}),
      forward(model, {"encoder_input_tokens": padded, "decoder_input_tokens": decoder}),
      atol=ATOL)


def _pack(first: dict, second: dict) -> dict:
  """Two single examples packed into one row, seqio-style (segment ids from 1,
  positions restarting at 0 in each segment)."""
  packed = {}
  for name in first:
    if name.endswith("tokens") or name == "decoder_causal_attention":
      packed[name] = jnp.concatenate([first[name], second[name]], axis=1)
      prefix = name.split("_")[0]
      lengths = (first[name].shape[1], second[name].shape[1])
      packed[f"{prefix}_segment_ids"] = jnp.asarray([[1] * lengths[0] + [2] * lengths[1]])
      packed[f"{prefix}_positions"] = jnp.asarray([list(range(lengths[0])) +
                                                   list(range(lengths[1]))])
  return packed


@pytest.mark.slow  # over 5 s on 2 cores: outside the quick loop
@pytest.mark.parametrize("architecture", ["causal_decoder", "prefix_decoder", "encoder_decoder"])
@pytest.mark.parametrize("position_encoding", ["rope", "t5_relative", "learned"])
def test_packed_sequences_match_each_run_alone(architecture, position_encoding):
  model = create_model(tiny(architecture, position_encoding=position_encoding))

  def example(length, seed, prefix=3):
    features = {"decoder_input_tokens": tokens(1, length, seed=seed)}
    if architecture == "encoder_decoder":
      features["encoder_input_tokens"] = tokens(1, length + 2, seed=seed + 10)
    if architecture == "prefix_decoder":
      features["decoder_causal_attention"] = jnp.asarray([[1] * prefix + [0] * (length - prefix)])
    return features

  first, second = example(7, seed=1), example(5, seed=2)
  packed = forward(model, _pack(first, second))
  np.testing.assert_allclose(packed[:, :7], forward(model, first), atol=ATOL)
  np.testing.assert_allclose(packed[:, 7:], forward(model, second), atol=ATOL)


@pytest.mark.slow  # over 5 s on 2 cores: outside the quick loop
@pytest.mark.parametrize("architecture", ["causal_decoder", "encoder_decoder"])
def test_scan_layers_is_only_a_parameter_layout(architecture):
  config = tiny(architecture, num_decoder_layers=3, position_encoding="t5_relative")
  scanned = create_model(dataclasses.replace(config, scan_layers=True, remat_policy="full"))
  looped = model_from_params(config, flat_params(scanned))
  batch = {"decoder_input_tokens": tokens(2, 9), "encoder_input_tokens": tokens(2, 7, seed=3)}
  np.testing.assert_allclose(forward(scanned, batch), forward(looped, batch), atol=ATOL)
  # And back: the looped model's parameters rebuild the same scanned model.
  rescanned = model_from_params(scanned.config, flat_params(looped))
  np.testing.assert_allclose(forward(rescanned, batch), forward(scanned, batch), atol=0)


KNOB_VARIANTS = [
    dict(),
    dict(num_kv_heads=None),
    dict(num_kv_heads=1),
    dict(head_dim=12),
    dict(activation="relu", gated=False),
    dict(activation="gelu", gated=True),
    dict(norm="layer", norm_bias=True, use_bias=True),
    dict(norm_position="post"),
    dict(tie_embeddings=True),
    dict(position_encoding="learned", tie_embeddings=True, scale_decoder_outputs=False),
    dict(position_encoding="t5_relative", scan_layers=True),
]


@pytest.mark.slow  # over 5 s on 2 cores: outside the quick loop
@pytest.mark.parametrize("architecture", ["causal_decoder", "prefix_decoder", "encoder_decoder"])
@pytest.mark.parametrize("overrides", KNOB_VARIANTS, ids=lambda o: ",".join(o) or "default")
def test_analytic_parameter_count_equals_initialized(architecture, overrides):
  config = tiny(architecture, **overrides)
  model = create_model(config)
  assert count_params(config)[0] == count_initialized_params(model)


@pytest.mark.slow  # over 5 s on 2 cores: outside the quick loop
def test_dropout_is_active_only_with_an_rng():
  model = create_model(tiny(dropout_rate=0.5))
  batch = {"decoder_input_tokens": tokens(2, 8)}
  np.testing.assert_array_equal(forward(model, batch), forward(model, batch))
  trained = model(batch, dropout_rng=jax.random.key(0))
  assert not np.allclose(trained, forward(model, batch))
  np.testing.assert_array_equal(trained, model(batch, dropout_rng=jax.random.key(0)))


def test_bfloat16_compute_keeps_float32_params_and_logits():
  config = tiny(dtype="bfloat16")
  model = create_model(config)
  logits = forward(model, {"decoder_input_tokens": tokens(2, 8)})
  assert logits.dtype == jnp.float32
  assert all(v.dtype == jnp.float32 for v in flat_params(model).values())
  reference = model_from_params(dataclasses.replace(config, dtype="float32"), flat_params(model))
  expected = np.asarray(forward(reference, {"decoder_input_tokens": tokens(2, 8)}))
  error = np.abs(np.asarray(logits) - expected).max()
  # bfloat16 keeps 8 significant bits (relative rounding 2^-8 = 0.4%); two layers of
  # rounded matmuls, norms and softmax stay within a few such roundings of the largest
  # logit (measured: 1.5-2.5). Zero error would mean bfloat16 was never used.
  assert 1e-4 < error <= 4 * 2.0**-8 * np.abs(expected).max()


@pytest.mark.parametrize("bad,message", [
    (dict(architecture="decoder"), "architecture"),
    (dict(num_kv_heads=3), "num_kv_heads"),
    (dict(d_model=30, num_heads=4), "head_dim"),
    (dict(activation="tanh"), "activation"),
    (dict(num_encoder_layers=2), "num_encoder_layers"),
])
def test_invalid_knobs_raise_one_clear_error(bad, message):
  with pytest.raises(ValueError, match=message):
    tiny(**bad)


def test_prefix_decoder_requires_its_feature():
  model = create_model(tiny("prefix_decoder"))
  with pytest.raises(ValueError, match="decoder_causal_attention"):
    forward(model, {"decoder_input_tokens": tokens(1, 4)})
