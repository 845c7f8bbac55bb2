"""Incremental decoding with a key/value cache: greedy, sampling (temperature, top-k,
top-p), beam search with T5X's length penalty, and teacher-forced scoring.

Prompts are `inputs` [batch, P] token ids, right-padded with 0 (every real token
id is positive). How each architecture continues them:
  - causal_decoder: the decoder reads [BOS=0, inputs...] causally, as seqio's
    LM converter feeds it in training, and continues after the last input;
  - prefix_decoder: the same tokens, all of them one bidirectional prefix
    (seqio's PrefixLMFeatureConverter marks inputs + 1 positions), then causal;
  - encoder_decoder: the encoder reads the inputs once; its cross-attention keys
    and values are cached; the decoder starts from BOS = 0.
The prompt is processed in one forward pass (prefill) that fills the cache;
each new token is then one decoder step at its position, attending to the
cache under a mask, inside `jax.lax.while_loop` that stops when every row has
produced EOS. Everything runs in jitted pure functions of the split model
state, so sharded params and batches decode under the same mesh as training.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from t5x_lite import losses
from t5x_lite.errors import UserError
from t5x_lite.models.transformer import Transformer

EOS_ID = 1
NEG_INF = -1.0e7


@dataclasses.dataclass(frozen=True)
class Decoded:
  """tokens: [batch, max_new_tokens] (greedy/sampling) or [batch, beams, max_new_tokens]
  (beam search, best first), 0 after EOS; scores: log-likelihood of each sequence under
  the model (beam search: length-penalised, as ranked)."""
  tokens: np.ndarray
  scores: np.ndarray


class DecodingError(UserError, ValueError):
  """A decoding request that cannot be run; the message says what to change."""


def _check_inputs(model: Transformer, inputs: np.ndarray, max_new_tokens: int) -> np.ndarray:
  inputs = np.asarray(inputs)
  if inputs.ndim != 2 or inputs.shape[0] == 0:
    raise DecodingError(f"inputs must be [batch, length] token ids, got shape {inputs.shape}.")
  lengths = (inputs > 0).sum(axis=1)
  if np.any(lengths == 0):
    raise DecodingError(f"empty inputs in rows {np.flatnonzero(lengths == 0).tolist()}: every "
                        "prompt needs at least one token.")
  if np.any((inputs[:, 1:] > 0) & (inputs[:, :-1] == 0)):
    raise DecodingError("inputs must be right-padded with 0 (no padding before a token).")
  if max_new_tokens < 1:
    raise DecodingError(f"max_new_tokens must be positive, got {max_new_tokens}.")
  config = model.config
  needed = config.architecture_spec.decode_lengths(inputs.shape[1], max_new_tokens)
  for stack, length in needed.items():
    if length > config.max_length:
      raise DecodingError(
          f"the {stack} would run over {length} positions (prompt of {inputs.shape[1]} tokens, "
          f"{max_new_tokens} new) but the model's maximum length is {config.max_length}; "
          "shorten the prompts or max_new_tokens.")
  return inputs


def _prefill(model: Transformer, inputs: jax.Array, max_new_tokens: int):
  """Runs the prompt through the model once. Returns (logits of the next token [b, V],
  cache, cross_mask, prompt lengths in decoder positions [b])."""
  spec = model.config.architecture_spec
  batch = inputs.shape[0]
  if spec.has_encoder:
    encoded = model.encode({"encoder_input_tokens": inputs})
    cross_mask = (inputs > 0)[:, None, None, :]
    tokens = jnp.zeros((batch, 1), jnp.int32)
    lengths = jnp.ones((batch,), jnp.int32)
    cache = model.init_cache(batch, 1 + max_new_tokens, encoded)
  else:
    cross_mask = None
    tokens = jnp.concatenate([jnp.zeros((batch, 1), inputs.dtype), inputs], axis=1)
    lengths = (inputs > 0).sum(axis=1).astype(jnp.int32) + 1
    cache = model.init_cache(batch, tokens.shape[1] + max_new_tokens)
  length, cache_length = tokens.shape[1], cache["key"].shape[2]
  positions = jnp.broadcast_to(jnp.arange(length), (batch, length))
  slots = jnp.broadcast_to(jnp.arange(cache_length), (batch, cache_length))
  # The whole prompt (BOS and inputs) is the prefix, as PrefixLMFeatureConverter marks it;
  # padding slots past a row's prompt are never attended to.
  mask = spec.decoder_mask(positions, slots, positions < lengths[:, None],
                           slots < lengths[:, None])
  mask = mask & (slots < lengths[:, None])[:, None, None, :]
  logits, cache = model.decode_cached(tokens, positions, mask, cache,
                                      None if cross_mask is None else
                                      jnp.broadcast_to(cross_mask, (batch, 1, length,
                                                                    inputs.shape[1])))
  last = jnp.take_along_axis(logits, (lengths - 1)[:, None, None], axis=1)[:, 0]
  return last, cache, cross_mask, lengths


def _step(model: Transformer, tokens: jax.Array, positions: jax.Array, cache: dict,
          cross_mask: Optional[jax.Array]):
  """One new token per row at `positions` [b]: (logits [b, V], cache)."""
  cache_length = cache["key"].shape[2]
  mask = (jnp.arange(cache_length)[None, :] <= positions[:, None])[:, None, None, :]
  logits, cache = model.decode_cached(tokens[:, None], positions[:, None], mask, cache,
                                      cross_mask)
  return logits[:, 0], cache


@functools.partial(jax.jit, static_argnums=(0,))
def _teacher_forced(graphdef, state, inputs, continuation):
  model = nnx.merge(graphdef, state)
  logits, cache, cross_mask, lengths = _prefill(model, inputs, continuation.shape[1])

  def step(carry, token_and_offset):
    logits, cache = carry
    token, offset = token_and_offset
    next_logits, cache = _step(model, token, lengths + offset, cache, cross_mask)
    return (next_logits, cache), logits

  steps = (continuation.T, jnp.arange(continuation.shape[1]))
  (last, _), before = jax.lax.scan(step, (logits, cache), steps)
  return jnp.concatenate([jnp.swapaxes(before, 0, 1), last[:, None]], axis=1)


def cached_logits(model: Transformer, inputs, continuation) -> np.ndarray:
  """Logits [b, n + 1, V] computed through the cache: the prompt's next-token logits,
  then those after each of the n `continuation` tokens [b, n] fed one at a time."""
  continuation = np.asarray(continuation)
  inputs = _check_inputs(model, inputs, max(continuation.shape[1], 1))
  graphdef, state = nnx.split(model)
  return np.asarray(_teacher_forced(graphdef, state, jnp.asarray(inputs, jnp.int32),
                                    jnp.asarray(continuation, jnp.int32)))


def filter_logits(logits: jax.Array, temperature: float, top_k: int, top_p: float) -> jax.Array:
  """Tempered logits with everything outside the top-k / nucleus (top-p) set to -inf."""
  logits = logits / temperature
  if top_k:
    kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  if top_p < 1.0:
    ordered = jnp.sort(logits, axis=-1)[:, ::-1]
    probabilities = jax.nn.softmax(ordered, axis=-1)
    before = jnp.cumsum(probabilities, axis=-1) - probabilities  # mass ranked above each
    # The smallest logit still inside the nucleus (the top token always is).
    cutoff = jnp.min(jnp.where(before < top_p, ordered, jnp.inf), axis=-1, keepdims=True)
    logits = jnp.where(logits < cutoff, -jnp.inf, logits)
  return logits


@functools.partial(jax.jit, static_argnums=(0,),
                   static_argnames=("max_new_tokens", "temperature", "top_k", "top_p", "eos_id"))
def _sample(graphdef, state, inputs, rng, *, max_new_tokens: int, temperature: float,
            top_k: int, top_p: float, eos_id: int):
  model = nnx.merge(graphdef, state)
  logits, cache, cross_mask, lengths = _prefill(model, inputs, max_new_tokens)
  batch = inputs.shape[0]

  def choose(logits, rng):
    if temperature == 0.0:
      return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    return jax.random.categorical(rng, filter_logits(logits, temperature, top_k, top_p)
                                  ).astype(jnp.int32)

  def body(carry):
    n, logits, cache, output, done, scores, rng = carry
    rng, step_rng = jax.random.split(rng)
    token = jnp.where(done, 0, choose(logits, step_rng))
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    scores = scores + jnp.where(done, 0.0, jnp.take_along_axis(log_probs, token[:, None],
                                                                axis=1)[:, 0])
    output = output.at[:, n].set(token)
    done = done | (token == eos_id)
    logits, cache = _step(model, token, lengths + n, cache, cross_mask)
    return n + 1, logits, cache, output, done, scores, rng

  def cond(carry):
    n, done = carry[0], carry[4]
    return (n < max_new_tokens) & ~jnp.all(done)

  carry = (0, logits, cache, jnp.zeros((batch, max_new_tokens), jnp.int32),
           jnp.zeros((batch,), bool), jnp.zeros((batch,), jnp.float32), rng)
  _, _, _, output, _, scores, _ = jax.lax.while_loop(cond, body, carry)
  return output, scores


def generate(model: Transformer, inputs, *, max_new_tokens: int, temperature: float = 0.0,
             top_k: int = 0, top_p: float = 1.0, seed: int = 0, eos_id: int = EOS_ID) -> Decoded:
  """Greedy decoding (temperature 0) or sampling from the tempered, top-k and top-p
  filtered distribution. Scores are log-likelihoods under the untempered model."""
  if temperature < 0 or top_k < 0 or not 0.0 < top_p <= 1.0:
    raise DecodingError(f"need temperature >= 0, top_k >= 0 and 0 < top_p <= 1; got "
                        f"{temperature}, {top_k}, {top_p}.")
  inputs = _check_inputs(model, inputs, max_new_tokens)
  graphdef, state = nnx.split(model)
  tokens, scores = _sample(graphdef, state, jnp.asarray(inputs, jnp.int32),
                           jax.random.key(seed), max_new_tokens=max_new_tokens,
                           temperature=float(temperature), top_k=int(top_k),
                           top_p=float(top_p), eos_id=eos_id)
  return Decoded(np.asarray(tokens), np.asarray(scores))


def length_penalty(length, alpha: float):
  """T5X / GNMT brevity penalty ((5 + length) / 6) ** alpha."""
  return ((5.0 + length) / 6.0) ** alpha


def _gather_beams(tree, beam_index: jax.Array, batch: int, beams: int, axis: int = 0):
  """Selects beams [batch, beams] along `axis` (which holds batch x beams rows)."""
  def gather(array):
    shape = array.shape
    grouped = array.reshape(shape[:axis] + (batch, beams) + shape[axis + 1:])
    index = beam_index.reshape((1,) * axis + (batch, beams) + (1,) * (len(shape) - axis - 1))
    picked = jnp.take_along_axis(grouped, index, axis=axis + 1)
    return picked.reshape(shape)
  return jax.tree.map(gather, tree)


@functools.partial(jax.jit, static_argnums=(0,),
                   static_argnames=("max_new_tokens", "beams", "alpha", "eos_id"))
def _beam_search(graphdef, state, inputs, *, max_new_tokens: int, beams: int, alpha: float,
                 eos_id: int):
  model = nnx.merge(graphdef, state)
  logits, cache, cross_mask, lengths = _prefill(model, inputs, max_new_tokens)
  batch = inputs.shape[0]
  # Every beam starts as a copy of its row's prompt; only beam 0 is live at first.
  repeat = lambda array, axis: jnp.repeat(array, beams, axis=axis)  # noqa: E731
  logits, lengths = repeat(logits, 0), repeat(lengths, 0)
  cache = jax.tree.map(lambda array: repeat(array, 1), cache)
  cross_mask = None if cross_mask is None else repeat(cross_mask, 0)
  vocab = logits.shape[-1]

  def body(carry):
    n, logits, cache, alive, alive_scores, finished, finished_scores = carry
    log_probs = jax.nn.log_softmax(logits, axis=-1).reshape(batch, beams, vocab)
    candidates = (alive_scores[:, :, None] + log_probs).reshape(batch, beams * vocab)
    top_scores, top_index = jax.lax.top_k(candidates, 2 * beams)
    source, token = top_index // vocab, (top_index % vocab).astype(jnp.int32)
    sequences = jnp.take_along_axis(alive, source[:, :, None], axis=1).at[:, :, n].set(token)
    # Sequences that reach max_new_tokens are finished too (truncated), so a full-length
    # beam competes with shorter ones instead of losing to any that ended.
    ended = (token == eos_id) | (n + 1 == max_new_tokens)
    # Alive: the best candidates that did not just end.
    alive_rank = jax.lax.top_k(jnp.where(ended, NEG_INF, top_scores), beams)[1]
    alive = jnp.take_along_axis(sequences, alive_rank[:, :, None], axis=1)
    alive_scores = jnp.take_along_axis(jnp.where(ended, NEG_INF, top_scores), alive_rank, axis=1)
    alive_tokens = jnp.take_along_axis(token, alive_rank, axis=1)
    cache = _gather_beams(cache, jnp.take_along_axis(source, alive_rank, axis=1), batch, beams,
                          axis=1)
    # Finished: merge the candidates that just ended (length-penalised) into the pool.
    ended_scores = jnp.where(ended, top_scores / length_penalty(n + 1, alpha), NEG_INF)
    pool = jnp.concatenate([finished, sequences], axis=1)
    pool_scores = jnp.concatenate([finished_scores, ended_scores], axis=1)
    finished_scores, keep = jax.lax.top_k(pool_scores, beams)
    finished = jnp.take_along_axis(pool, keep[:, :, None], axis=1)
    logits, cache = _step(model, alive_tokens.reshape(-1), lengths + n, cache, cross_mask)
    return n + 1, logits, cache, alive, alive_scores, finished, finished_scores

  def cond(carry):
    n, alive_scores, finished_scores = carry[0], carry[4], carry[6]
    # Stop once no live beam can still beat the worst kept finished sequence: scores
    # only fall, so a live beam's best is its score under the largest penalty.
    best_alive = alive_scores[:, 0] / length_penalty(max_new_tokens, alpha)
    improvable = jnp.any(best_alive > jnp.min(finished_scores, axis=1))
    return (n < max_new_tokens) & improvable

  alive_scores = jnp.tile(jnp.array([0.0] + [NEG_INF] * (beams - 1)), (batch, 1))
  empty = jnp.zeros((batch, beams, max_new_tokens), jnp.int32)
  carry = (0, logits, cache, empty, alive_scores, empty, jnp.full((batch, beams), NEG_INF))
  n, _, _, alive, alive_scores, finished, finished_scores = jax.lax.while_loop(cond, body,
                                                                              carry)
  # Rows where nothing ended keep their live beams, scored at their length.
  none_finished = jnp.all(finished_scores <= NEG_INF / 2, axis=1)
  finished = jnp.where(none_finished[:, None, None], alive, finished)
  finished_scores = jnp.where(none_finished[:, None],
                              alive_scores / length_penalty(n, alpha), finished_scores)
  return finished, finished_scores


def beam_search(model: Transformer, inputs, *, max_new_tokens: int, beams: int = 4,
                alpha: float = 0.6, eos_id: int = EOS_ID) -> Decoded:
  """Beam search as in T5X: 2 x beams candidates per step, finished sequences ranked by
  log-likelihood / ((5 + length) / 6) ** alpha, early stop once no live beam can win.
  Unlike T5X, beams still live at max_new_tokens are ranked with the finished ones."""
  if beams < 1 or alpha < 0:
    raise DecodingError(f"need beams >= 1 and alpha >= 0, got {beams} and {alpha}.")
  inputs = _check_inputs(model, inputs, max_new_tokens)
  graphdef, state = nnx.split(model)
  tokens, scores = _beam_search(graphdef, state, jnp.asarray(inputs, jnp.int32),
                                max_new_tokens=max_new_tokens, beams=int(beams),
                                alpha=float(alpha), eos_id=eos_id)
  return Decoded(np.asarray(tokens), np.asarray(scores))


def _bucket(length: int, multiple: int = 32) -> int:
  """Pads lengths up to a multiple so nearby batch shapes share one compilation."""
  return max(multiple, -(-length // multiple) * multiple)


def score(model: Transformer, inputs: list, targets: list) -> tuple[np.ndarray, np.ndarray]:
  """Log-likelihood of each target token list given its inputs (teacher forcing).

  inputs, targets: lists of token-id lists (an input may be empty for decoders).
  Returns (sum of target log-probabilities [n], number of target tokens [n]). The
  feature dicts are laid out as seqio's converters would: the encoder-decoder
  reads inputs in the encoder; decoders read [inputs, targets] shifted right, the
  prefix decoder with inputs + BOS bidirectional.
  """
  if len(inputs) != len(targets) or any(len(t) == 0 for t in targets):
    raise DecodingError("score needs one non-empty target per input.")
  spec = model.config.architecture_spec
  if spec.has_encoder:
    if any(len(i) == 0 for i in inputs):
      raise DecodingError("the encoder-decoder needs non-empty inputs to score targets.")
    longest = max(map(len, targets))
  else:
    longest = max(len(i) + len(t) for i, t in zip(inputs, targets))
  if longest > model.config.max_length and model.config.position_encoding == "learned":
    raise DecodingError(f"a sequence of {longest} tokens exceeds the model's maximum length "
                        f"{model.config.max_length}.")
  batch = spec.score_features(inputs, targets, _bucket(longest),
                              _bucket(max(map(len, inputs))) if spec.has_encoder else 0)
  graphdef, state = nnx.split(model)
  sums = losses.evaluate_batch(graphdef, state, {k: jnp.asarray(v) for k, v in batch.items()},
                               per_example=True)
  return -np.asarray(sums.cross_entropy), batch["decoder_loss_weights"].sum(axis=1)
