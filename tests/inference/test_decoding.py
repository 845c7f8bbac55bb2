"""Decoding: the cache reproduces the full forward pass, and every search method agrees
with its definition (greedy = repeated argmax, beam 1 = greedy, beams >= greedy)."""

import jax.numpy as jnp
import numpy as np
import pytest

from t5x_lite.inference import decoding
from t5x_lite.models.configs import TransformerConfig
from t5x_lite.models.transformer import create_model, forward

ARCHITECTURES = ["causal_decoder", "prefix_decoder", "encoder_decoder"]
NEW_TOKENS = 6


def tiny_model(architecture, position_encoding="rope", **overrides):
  config = TransformerConfig(
      architecture=architecture, vocab_size=64, d_model=32, num_decoder_layers=2,
      num_encoder_layers=2 if architecture == "encoder_decoder" else 0, num_heads=4,
      num_kv_heads=2, d_ff=64, position_encoding=position_encoding, max_length=64,
      embedding_init_std=1.0, **overrides)
  return create_model(config, seed=0)


def prompts(ragged: bool) -> np.ndarray:
  inputs = np.random.default_rng(0).integers(2, 64, (3, 7))
  if ragged:  # right-padded prompts of 7, 4 and 2 tokens
    inputs[1, 4:] = 0
    inputs[2, 2:] = 0
  return inputs


def full_forward_logits(model, prompt, continuation, padded_length=16):
  """Logits after the prompt and each continuation token, by one full forward pass.

  Sequences are right-padded to one length (later positions cannot change earlier
  logits in any decoder) so the forward pass compiles once.
  """
  def pad(tokens):
    return jnp.asarray([list(tokens) + [0] * (padded_length - len(tokens))])

  architecture = model.config.architecture
  if architecture == "encoder_decoder":
    batch = {"encoder_input_tokens": pad(prompt), "decoder_input_tokens": pad([0, *continuation])}
    return np.asarray(forward(model, batch))[0, :len(continuation) + 1]
  tokens = [0, *prompt, *continuation]
  batch = {"decoder_input_tokens": pad(tokens)}
  if architecture == "prefix_decoder":  # seqio marks the inputs and BOS as the prefix
    batch["decoder_causal_attention"] = pad([1] * (len(prompt) + 1))
  return np.asarray(forward(model, batch))[0, len(prompt):len(tokens)]


def greedy_reference(model, prompt, steps=NEW_TOKENS):
  generated = []
  for _ in range(steps):
    token = int(np.argmax(full_forward_logits(model, prompt, generated)[-1]))
    generated.append(token)
    if token == decoding.EOS_ID:
      break
  return generated + [0] * (steps - len(generated))


@pytest.mark.slow  # over 5 s on 2 cores: outside the quick loop
@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize("position_encoding", ["rope", "t5_relative", "learned"])
@pytest.mark.parametrize("ragged", [False, True], ids=["same_length", "right_padded"])
def test_cached_logits_equal_the_full_forward_at_every_step(architecture, position_encoding,
                                                           ragged):
  model = tiny_model(architecture, position_encoding)
  inputs = prompts(ragged)
  continuation = np.random.default_rng(1).integers(2, 64, (3, 5))
  cached = decoding.cached_logits(model, inputs, continuation)
  for row, prompt in enumerate(inputs):
    prompt = prompt[prompt > 0]
    expected = full_forward_logits(model, prompt, continuation[row])
    np.testing.assert_allclose(cached[row], expected, atol=1e-5, rtol=0)


def test_cache_works_with_scanned_layers():
  model = tiny_model("encoder_decoder", "t5_relative", scan_layers=True)
  inputs = prompts(ragged=True)
  continuation = np.full((3, 3), 5)
  cached = decoding.cached_logits(model, inputs, continuation)
  np.testing.assert_allclose(cached[1], full_forward_logits(model, inputs[1][:4], [5, 5, 5]),
                             atol=1e-5, rtol=0)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_greedy_is_repeated_argmax_of_the_full_forward(architecture):
  model = tiny_model(architecture, "t5_relative")
  inputs = prompts(ragged=True)
  decoded = decoding.generate(model, inputs, max_new_tokens=NEW_TOKENS)
  expected = [greedy_reference(model, prompt[prompt > 0]) for prompt in inputs]
  np.testing.assert_array_equal(decoded.tokens, expected)


@pytest.mark.slow  # over 5 s on 2 cores: outside the quick loop
def test_sampling_reduces_to_greedy_at_zero_temperature_top_k_1_or_tiny_top_p():
  model = tiny_model("prefix_decoder")
  inputs = prompts(ragged=True)
  greedy = decoding.generate(model, inputs, max_new_tokens=NEW_TOKENS)
  for kwargs in ({"temperature": 1e-4, "seed": 3}, {"temperature": 1.0, "top_k": 1},
                 {"temperature": 1.0, "top_p": 1e-6}):
    sampled = decoding.generate(model, inputs, max_new_tokens=NEW_TOKENS, **kwargs)
    np.testing.assert_array_equal(sampled.tokens, greedy.tokens, err_msg=str(kwargs))


@pytest.mark.slow  # over 5 s on 2 cores: outside the quick loop
@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_beam_search_of_one_beam_is_greedy(architecture):
  model = tiny_model(architecture)
  inputs = prompts(ragged=True)
  greedy = decoding.generate(model, inputs, max_new_tokens=NEW_TOKENS)
  beam = decoding.beam_search(model, inputs, max_new_tokens=NEW_TOKENS, beams=1, alpha=0.0)
  np.testing.assert_array_equal(beam.tokens[:, 0], greedy.tokens)
  np.testing.assert_allclose(beam.scores[:, 0], greedy.scores, atol=1e-5)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_beam_search_never_scores_below_greedy(architecture):
  model = tiny_model(architecture)
  inputs = prompts(ragged=True)
  greedy = decoding.generate(model, inputs, max_new_tokens=NEW_TOKENS)
  beam = decoding.beam_search(model, inputs, max_new_tokens=NEW_TOKENS, beams=4, alpha=0.0)
  assert np.all(beam.scores[:, 0] >= greedy.scores - 1e-5)
  assert np.all(np.diff(beam.scores, axis=1) <= 1e-6)  # best first


def test_sampling_is_seeded_and_respects_top_k():
  model = tiny_model("causal_decoder")
  inputs = prompts(ragged=False)
  first = decoding.generate(model, inputs, max_new_tokens=8, temperature=1.0, seed=7)
  again = decoding.generate(model, inputs, max_new_tokens=8, temperature=1.0, seed=7)
  other = decoding.generate(model, inputs, max_new_tokens=8, temperature=1.0, seed=8)
  np.testing.assert_array_equal(first.tokens, again.tokens)
  assert not np.array_equal(first.tokens, other.tokens)
  logits = jnp.asarray(np.random.default_rng(0).normal(size=(2, 64)))
  kept = np.isfinite(np.asarray(decoding.filter_logits(logits, 1.0, 5, 1.0)))
  assert kept.sum(axis=1).tolist() == [5, 5]
  nucleus = np.isfinite(np.asarray(decoding.filter_logits(logits, 1.0, 0, 0.5)))
  probabilities = np.asarray(jnp.exp(logits) / jnp.exp(logits).sum(-1, keepdims=True))
  for row in range(2):  # the smallest set of top tokens holding at least half the mass
    ranked = np.sort(probabilities[row])[::-1]
    assert nucleus[row].sum() == np.searchsorted(np.cumsum(ranked), 0.5) + 1


@pytest.mark.parametrize("inputs,message", [
    (np.zeros((2, 4), int), "empty inputs in rows \\[0, 1\\]"),
    (np.array([[0, 5, 6]]), "right-padded"),
    (np.ones((1, 60), int), "maximum length is 64"),
])
def test_bad_prompts_are_one_clear_error(inputs, message):
  with pytest.raises(decoding.DecodingError, match=message):
    decoding.generate(tiny_model("causal_decoder"), inputs, max_new_tokens=8)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_score_is_the_sum_of_target_log_probabilities(architecture):
  model = tiny_model(architecture)
  prompt, target = [5, 9, 12], [7, 3, 1]
  logits = full_forward_logits(model, prompt, target[:-1])
  log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  expected = sum(log_probs[i, token] for i, token in enumerate(target))
  scores, counts = decoding.score(model, [prompt, [4]], [target, [8, 8]])
  assert counts.tolist() == [3, 2]
  assert scores[0] == pytest.approx(expected, abs=1e-4)


@pytest.mark.slow  # over 5 s on 2 cores: outside the quick loop
def test_decoding_a_sharded_model_equals_one_device():
  """Params sharded over a (data 2, fsdp 2, tensor 2) mesh of 8 CPU devices decode the same."""
  import jax
  from flax import nnx

  from t5x_lite.common import partitioning

  model = tiny_model("encoder_decoder", "t5_relative")
  inputs = np.concatenate([prompts(ragged=True), prompts(ragged=False), prompts(ragged=True)])[:8]
  expected = decoding.beam_search(model, inputs, max_new_tokens=NEW_TOKENS, beams=2)
  mesh = partitioning.create_mesh((2, 2, 2))
  graphdef, state = nnx.split(model)
  sharded = nnx.merge(graphdef, jax.device_put(state, partitioning.state_shardings(state, mesh)))
  with partitioning.axis_rules(mesh):
    decoded = decoding.beam_search(sharded, inputs, max_new_tokens=NEW_TOKENS, beams=2)
  np.testing.assert_array_equal(decoded.tokens, expected.tokens)
  np.testing.assert_allclose(decoded.scores, expected.scores, atol=1e-4)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_a_batch_of_eight_decodes_as_eight_single_prompts(architecture):
  model = tiny_model(architecture)
  rng = np.random.default_rng(1)
  lengths = [7, 3, 5, 1, 7, 2, 6, 4]
  batch = np.zeros((8, 7), np.int64)
  for row, length in enumerate(lengths):  # ragged, right-padded prompts
    batch[row, :length] = rng.integers(2, 64, length)
  together = decoding.generate(model, batch, max_new_tokens=NEW_TOKENS)
  for row in range(len(lengths)):  # each row alone (same width: one compilation)
    alone = decoding.generate(model, batch[row:row + 1], max_new_tokens=NEW_TOKENS)
    np.testing.assert_array_equal(together.tokens[row], alone.tokens[0], err_msg=str(row))
    np.testing.assert_allclose(together.scores[row], alone.scores[0], rtol=1e-5)
