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
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from t5x_lite.common.errors import UserError
from t5x_lite.models import losses, transformer
from t5x_lite.models.architectures import BOS_ID
from t5x_lite.models.transformer import Transformer

EOS_ID = 1  # seqio/T5 vocabularies; callers with a vocabulary pass its eos_id
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


class Prefilled(NamedTuple):
  """The prompt run through the model once (B = batch, V = vocab, P = prompt length)."""
  logits_BxV: jax.Array        # next-token logits after each row's prompt
  cache: dict                  # keys/values [layers, B, kv heads, positions, head_dim]
  cross_mask: Optional[jax.Array]  # [B, 1, 1, P] encoder padding (encoder-decoder only)
  lengths_B: jax.Array         # decoder positions each prompt fills (BOS included)


def _prefill(model: Transformer, inputs_BxP: jax.Array, max_new_tokens: int) -> Prefilled:
  """Runs the prompts through the model once, filling a cache for max_new_tokens more."""
  spec = model.config.architecture_spec
  batch = inputs_BxP.shape[0]
  if spec.has_encoder:
    encoded = model.encode({"encoder_input_tokens": inputs_BxP})
    cross_mask = (inputs_BxP > 0)[:, None, None, :]
    tokens_BxT = jnp.full((batch, 1), BOS_ID, jnp.int32)
    lengths_B = jnp.ones((batch,), jnp.int32)
    cache = model.init_cache(batch, 1 + max_new_tokens, encoded)
  else:
    cross_mask = None
    tokens_BxT = jnp.concatenate([jnp.full((batch, 1), BOS_ID, inputs_BxP.dtype), inputs_BxP],
                                 axis=1)
    lengths_B = (inputs_BxP > 0).sum(axis=1).astype(jnp.int32) + 1
    cache = model.init_cache(batch, tokens_BxT.shape[1] + max_new_tokens)
  length, cache_length = tokens_BxT.shape[1], transformer.cache_length(cache)
  positions_BxT = jnp.broadcast_to(jnp.arange(length), (batch, length))
  slots_BxS = jnp.broadcast_to(jnp.arange(cache_length), (batch, cache_length))
  # The whole prompt (BOS and inputs) is the prefix, as PrefixLMFeatureConverter marks it;
  # padding slots past a row's prompt are never attended to.
  filled_BxS = slots_BxS < lengths_B[:, None]
  mask = spec.decoder_mask(positions_BxT, slots_BxS, positions_BxT < lengths_B[:, None],
                           filled_BxS)
  mask = mask & filled_BxS[:, None, None, :]
  logits_BxTxV, cache = model.decode_cached(
      tokens_BxT, positions_BxT, mask, cache,
      None if cross_mask is None else jnp.broadcast_to(
          cross_mask, (batch, 1, length, inputs_BxP.shape[1])))
  last_BxV = jnp.take_along_axis(logits_BxTxV, (lengths_B - 1)[:, None, None], axis=1)[:, 0]
  return Prefilled(last_BxV, cache, cross_mask, lengths_B)


def _step(model: Transformer, tokens_B: jax.Array, positions_B: jax.Array, cache: dict,
          cross_mask: Optional[jax.Array]) -> tuple[jax.Array, dict]:
  """One new token per row at its position: (next-token logits [B, V], updated cache)."""
  cache_length = transformer.cache_length(cache)
  mask = (jnp.arange(cache_length)[None, :] <= positions_B[:, None])[:, None, None, :]
  logits_Bx1xV, cache = model.decode_cached(tokens_B[:, None], positions_B[:, None], mask,
                                            cache, cross_mask)
  return logits_Bx1xV[:, 0], cache


@functools.partial(jax.jit, static_argnums=(0,))
def _teacher_forced(graphdef, state, inputs_BxP, continuation_BxN):
  model = nnx.merge(graphdef, state)
  prefilled = _prefill(model, inputs_BxP, continuation_BxN.shape[1])

  def step(carry, token_and_offset):
    logits_BxV, cache = carry
    token_B, offset = token_and_offset
    next_BxV, cache = _step(model, token_B, prefilled.lengths_B + offset, cache,
                            prefilled.cross_mask)
    return (next_BxV, cache), logits_BxV

  steps = (continuation_BxN.T, jnp.arange(continuation_BxN.shape[1]))
  (last_BxV, _), before_NxBxV = jax.lax.scan(step, (prefilled.logits_BxV, prefilled.cache),
                                             steps)
  return jnp.concatenate([jnp.swapaxes(before_NxBxV, 0, 1), last_BxV[:, None]], axis=1)


def cached_logits(model: Transformer, inputs, continuation) -> np.ndarray:
  """Logits [b, n + 1, V] computed through the cache: the prompt's next-token logits,
  then those after each of the n `continuation` tokens [b, n] fed one at a time."""
  continuation = np.asarray(continuation)
  inputs = _check_inputs(model, inputs, max(continuation.shape[1], 1))
  graphdef, state = nnx.split(model)
  return np.asarray(_teacher_forced(graphdef, state, jnp.asarray(inputs, jnp.int32),
                                    jnp.asarray(continuation, jnp.int32)))


def greedy_choice(logits_BxV: jax.Array) -> jax.Array:
  """argmax over the vocabulary (the first of tied maxima) [B] as two plain reductions:
  XLA:CPU's argmax is a variadic reduce that cost 0.7 ms a token at batch 32."""
  vocab = logits_BxV.shape[-1]
  is_max_BxV = logits_BxV == jnp.max(logits_BxV, axis=-1, keepdims=True)
  return jnp.min(jnp.where(is_max_BxV, jnp.arange(vocab, dtype=jnp.int32), vocab), axis=-1)


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


class SamplingState(NamedTuple):
  """The carry of the sampling loop (B = batch, V = vocab, N = max_new_tokens)."""
  step: jax.Array           # tokens generated so far (the loop index)
  logits_BxV: jax.Array     # next-token logits
  cache: dict
  tokens_BxN: jax.Array     # generated ids, 0 after EOS
  done_B: jax.Array         # the row has produced EOS
  scores_B: jax.Array       # log-likelihood of the tokens so far (untempered)
  rng: jax.Array


@functools.partial(jax.jit, static_argnums=(0,),
                   static_argnames=("max_new_tokens", "temperature", "top_k", "top_p", "eos_id"))
def _sample(graphdef, state, inputs_BxP, rng, *, max_new_tokens: int, temperature: float,
            top_k: int, top_p: float, eos_id: int):
  model = nnx.merge(graphdef, state)
  prefilled = _prefill(model, inputs_BxP, max_new_tokens)
  batch = inputs_BxP.shape[0]

  def choose(logits_BxV, rng):
    if temperature == 0.0:
      return greedy_choice(logits_BxV)
    return jax.random.categorical(rng, filter_logits(logits_BxV, temperature, top_k, top_p)
                                  ).astype(jnp.int32)

  def body(s: SamplingState) -> SamplingState:
    rng, step_rng = jax.random.split(s.rng)
    token_B = jnp.where(s.done_B, 0, choose(s.logits_BxV, step_rng))
    log_probs_BxV = jax.nn.log_softmax(s.logits_BxV, axis=-1)
    picked_B = jnp.take_along_axis(log_probs_BxV, token_B[:, None], axis=1)[:, 0]
    logits_BxV, cache = _step(model, token_B, prefilled.lengths_B + s.step, s.cache,
                              prefilled.cross_mask)
    return SamplingState(step=s.step + 1, logits_BxV=logits_BxV, cache=cache,
                         tokens_BxN=s.tokens_BxN.at[:, s.step].set(token_B),
                         done_B=s.done_B | (token_B == eos_id),
                         scores_B=s.scores_B + jnp.where(s.done_B, 0.0, picked_B), rng=rng)

  def cond(s: SamplingState) -> jax.Array:
    return (s.step < max_new_tokens) & ~jnp.all(s.done_B)

  start = SamplingState(step=jnp.zeros((), jnp.int32), logits_BxV=prefilled.logits_BxV,
                        cache=prefilled.cache,
                        tokens_BxN=jnp.zeros((batch, max_new_tokens), jnp.int32),
                        done_B=jnp.zeros((batch,), bool),
                        scores_B=jnp.zeros((batch,), jnp.float32), rng=rng)
  end = jax.lax.while_loop(cond, body, start)
  return end.tokens_BxN, end.scores_B


def prefill_and_step(graphdef: nnx.GraphDef, state: nnx.State, inputs_BxP: jax.Array, *,
                     max_new_tokens: int) -> tuple[jax.Array, dict]:
  """The prompt's prefill, then one greedy token over the cache sized for
  max_new_tokens: (logits [B, V] after it, the cache). The unit of decoding work whose
  memory compile_check reports (the sampling loop repeats the second half)."""
  model = nnx.merge(graphdef, state)
  prefilled = _prefill(model, inputs_BxP, max_new_tokens)
  token_B = greedy_choice(prefilled.logits_BxV)
  return _step(model, token_B, prefilled.lengths_B, prefilled.cache, prefilled.cross_mask)


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


def _flatten_beams(x_BxKx: jax.Array) -> jax.Array:
  """[B, K, ...] -> [B*K, ...]: beams as rows, batch-major (what the model decodes)."""
  return x_BxKx.reshape((-1,) + x_BxKx.shape[2:])


def _gather_cache_beams(cache: dict, beam_BxK: jax.Array, beams: int) -> dict:
  """The cache rows of the chosen source beams: cache arrays are [layers, B*K, ...]."""
  def gather(array_LxBKx):
    grouped = array_LxBKx.reshape((array_LxBKx.shape[0], -1, beams) + array_LxBKx.shape[2:])
    index = beam_BxK.reshape((1,) + beam_BxK.shape + (1,) * (grouped.ndim - 3))
    return jnp.take_along_axis(grouped, index, axis=2).reshape(array_LxBKx.shape)
  return jax.tree.map(gather, cache)


class BeamState(NamedTuple):
  """The carry of beam search (B = batch, K = beams, V = vocab, N = max_new_tokens)."""
  step: jax.Array
  logits_BKxV: jax.Array          # next-token logits of every live beam
  cache: dict                     # rows are the B*K live beams
  alive_BxKxN: jax.Array          # live (unfinished) sequences, best first
  alive_scores_BxK: jax.Array     # their log-likelihoods (NEG_INF: no such beam)
  finished_BxKxN: jax.Array       # the best finished sequences so far
  finished_scores_BxK: jax.Array  # their length-penalised scores


@functools.partial(jax.jit, static_argnums=(0,),
                   static_argnames=("max_new_tokens", "beams", "alpha", "eos_id"))
def _beam_search(graphdef, state, inputs_BxP, *, max_new_tokens: int, beams: int, alpha: float,
                 eos_id: int):
  model = nnx.merge(graphdef, state)
  prefilled = _prefill(model, inputs_BxP, max_new_tokens)
  batch = inputs_BxP.shape[0]
  # Every beam starts as a copy of its row's prompt; only beam 0 is live at first.
  copies = lambda array, axis: jnp.repeat(array, beams, axis=axis)  # noqa: E731
  lengths_BK = copies(prefilled.lengths_B, 0)
  cross_mask = None if prefilled.cross_mask is None else copies(prefilled.cross_mask, 0)
  vocab = prefilled.logits_BxV.shape[-1]

  def body(s: BeamState) -> BeamState:
    log_probs_BxKxV = jax.nn.log_softmax(s.logits_BKxV, axis=-1).reshape(batch, beams, vocab)
    candidates_BxKV = (s.alive_scores_BxK[:, :, None] + log_probs_BxKxV).reshape(
        batch, beams * vocab)
    top_scores_Bx2K, top_index_Bx2K = jax.lax.top_k(candidates_BxKV, 2 * beams)
    source_Bx2K = top_index_Bx2K // vocab
    token_Bx2K = (top_index_Bx2K % vocab).astype(jnp.int32)
    sequences_Bx2KxN = jnp.take_along_axis(s.alive_BxKxN, source_Bx2K[:, :, None], axis=1
                                           ).at[:, :, s.step].set(token_Bx2K)
    # Sequences that reach max_new_tokens are finished too (truncated), so a full-length
    # beam competes with shorter ones instead of losing to any that ended.
    ended_Bx2K = (token_Bx2K == eos_id) | (s.step + 1 == max_new_tokens)
    # Alive: the best candidates that did not just end.
    open_scores_Bx2K = jnp.where(ended_Bx2K, NEG_INF, top_scores_Bx2K)
    alive_scores_BxK, rank_BxK = jax.lax.top_k(open_scores_Bx2K, beams)
    alive_BxKxN = jnp.take_along_axis(sequences_Bx2KxN, rank_BxK[:, :, None], axis=1)
    alive_tokens_BxK = jnp.take_along_axis(token_Bx2K, rank_BxK, axis=1)
    cache = _gather_cache_beams(s.cache, jnp.take_along_axis(source_Bx2K, rank_BxK, axis=1),
                                beams)
    # Finished: merge the candidates that just ended (length-penalised) into the pool.
    ended_scores_Bx2K = jnp.where(ended_Bx2K,
                                  top_scores_Bx2K / length_penalty(s.step + 1, alpha), NEG_INF)
    pool_Bx3KxN = jnp.concatenate([s.finished_BxKxN, sequences_Bx2KxN], axis=1)
    pool_scores_Bx3K = jnp.concatenate([s.finished_scores_BxK, ended_scores_Bx2K], axis=1)
    finished_scores_BxK, keep_BxK = jax.lax.top_k(pool_scores_Bx3K, beams)
    logits_BKxV, cache = _step(model, _flatten_beams(alive_tokens_BxK), lengths_BK + s.step,
                               cache, cross_mask)
    return BeamState(step=s.step + 1, logits_BKxV=logits_BKxV, cache=cache,
                     alive_BxKxN=alive_BxKxN, alive_scores_BxK=alive_scores_BxK,
                     finished_BxKxN=jnp.take_along_axis(pool_Bx3KxN, keep_BxK[:, :, None],
                                                        axis=1),
                     finished_scores_BxK=finished_scores_BxK)

  def cond(s: BeamState) -> jax.Array:
    # Stop once no live beam can still beat the worst kept finished sequence: scores
    # only fall, so a live beam's best is its score under the largest penalty.
    best_alive_B = s.alive_scores_BxK[:, 0] / length_penalty(max_new_tokens, alpha)
    improvable = jnp.any(best_alive_B > jnp.min(s.finished_scores_BxK, axis=1))
    return (s.step < max_new_tokens) & improvable

  empty_BxKxN = jnp.zeros((batch, beams, max_new_tokens), jnp.int32)
  start = BeamState(
      step=jnp.zeros((), jnp.int32), logits_BKxV=copies(prefilled.logits_BxV, 0),
      cache=jax.tree.map(lambda array: copies(array, 1), prefilled.cache),
      alive_BxKxN=empty_BxKxN,
      alive_scores_BxK=jnp.tile(jnp.array([0.0] + [NEG_INF] * (beams - 1)), (batch, 1)),
      finished_BxKxN=empty_BxKxN, finished_scores_BxK=jnp.full((batch, beams), NEG_INF))
  end = jax.lax.while_loop(cond, body, start)
  # Rows where nothing ended keep their live beams, scored at their length.
  none_finished_B = jnp.all(end.finished_scores_BxK <= NEG_INF / 2, axis=1)
  finished_BxKxN = jnp.where(none_finished_B[:, None, None], end.alive_BxKxN,
                             end.finished_BxKxN)
  finished_scores_BxK = jnp.where(none_finished_B[:, None],
                                  end.alive_scores_BxK / length_penalty(end.step, alpha),
                                  end.finished_scores_BxK)
  return finished_BxKxN, finished_scores_BxK


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


def score(model: Transformer, inputs: list, targets: list, *, greedy: bool = False
          ) -> tuple[np.ndarray, ...]:
  """Log-likelihood of each target token list given its inputs (teacher forcing).

  inputs, targets: lists of token-id lists (an input may be empty for decoders).
  Returns (sum of target log-probabilities [n], number of target tokens [n]), and with
  `greedy` a third [n] bool array: whether every target token is the model's argmax
  there (the target is what greedy decoding would produce). The
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
  tokens = batch["decoder_loss_weights"].sum(axis=1)
  if greedy:
    return -np.asarray(sums.cross_entropy), tokens, np.asarray(sums.correct) == tokens
  return -np.asarray(sums.cross_entropy), tokens
