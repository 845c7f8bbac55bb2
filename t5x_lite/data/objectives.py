"""Pretraining objectives as seqio preprocessors: span corruption, full LM, prefix LM.

Each objective reads a stream of tokenized documents ("targets"), joins them
with EOS between documents, cuts the stream into fixed-size chunks and turns
each chunk into an example. Span corruption follows T5 exactly
(t5.data.preprocessors: random_spans_helper, random_spans_noise_mask,
noise_span_to_unique_sentinel); prefix LM splits each chunk at a uniformly
random point, as T5's decoder prefix-LM tasks do. Randomness comes from
seqio's per-preprocessor seeds, so a task seed fixes every mask.
"""

from __future__ import annotations

from typing import Mapping

import seqio
import tensorflow as tf

from t5x_lite.common.errors import UserError

NOISE_DENSITY = 0.15
MEAN_NOISE_SPAN_LENGTH = 3.0


class ObjectiveError(UserError, ValueError):
  """Feature lengths or a vocabulary that an objective cannot work with."""


def span_corruption_lengths(inputs_length: int, noise_density: float = NOISE_DENSITY,
                            mean_noise_span_length: float = MEAN_NOISE_SPAN_LENGTH
                            ) -> tuple[int, int]:
  """T5's random_spans_helper: raw tokens to read and targets length for `inputs_length`.

  Both lengths include one EOS; each noise span costs one sentinel in the
  inputs and one in the targets. For 512 inputs this gives (568, 114).
  """

  def lengths_for(tokens_length: int) -> tuple[int, int]:
    num_noise = int(round(tokens_length * noise_density))
    num_spans = int(round(num_noise / mean_noise_span_length))
    return tokens_length - num_noise + num_spans + 1, num_noise + num_spans + 1

  if inputs_length < 3:
    raise ObjectiveError(f"span corruption needs inputs of at least 3 tokens, got {inputs_length}.")
  tokens_length = inputs_length - 1
  while lengths_for(tokens_length + 1)[0] <= inputs_length:
    tokens_length += 1
  return tokens_length, lengths_for(tokens_length)[1]


def num_noise_spans(length: int, noise_density: float = NOISE_DENSITY,
                    mean_noise_span_length: float = MEAN_NOISE_SPAN_LENGTH) -> int:
  """How many sentinels a chunk of `length` tokens needs."""
  num_noise = min(max(int(round(length * noise_density)), 1), max(length - 1, 1))
  return max(int(round(num_noise / mean_noise_span_length)), 1)


def _random_segmentation(num_items: tf.Tensor, num_segments: tf.Tensor, seed) -> tf.Tensor:
  """Lengths of a uniformly random split of num_items into num_segments non-empty parts."""
  first_in_segment = tf.pad(
      seqio.utils.stateless_shuffle(
          tf.cast(tf.range(num_items - 1) < num_segments - 1, tf.int32), seed), [[1, 0]])
  segment_id = tf.cumsum(first_in_segment)
  return tf.math.segment_sum(tf.ones_like(segment_id), segment_id)


def random_spans_noise_mask(length: tf.Tensor, seeds, noise_density: float = NOISE_DENSITY,
                            mean_noise_span_length: float = MEAN_NOISE_SPAN_LENGTH) -> tf.Tensor:
  """T5's noise mask: alternating non-noise/noise spans, noise first never, exact density.

  The number of noise tokens is round(length * density) (at least 1, at most
  length - 1); they form round(noise / mean_span) spans of random lengths.
  """
  original_length = length
  length = tf.maximum(length, 2)  # A one-token chunk still needs a noise and a clean token.
  lengthf = tf.cast(length, tf.float32)
  num_noise = tf.cast(tf.round(lengthf * noise_density), tf.int32)
  num_noise = tf.minimum(tf.maximum(num_noise, 1), length - 1)
  num_spans = tf.cast(tf.round(tf.cast(num_noise, tf.float32) / mean_noise_span_length), tf.int32)
  num_spans = tf.maximum(num_spans, 1)
  noise_lengths = _random_segmentation(num_noise, num_spans, seeds[0])
  clean_lengths = _random_segmentation(length - num_noise, num_spans, seeds[1])
  interleaved = tf.reshape(tf.stack([clean_lengths, noise_lengths], axis=1), [num_spans * 2])
  span_starts = tf.cumsum(interleaved)[:-1]
  span_start_indicator = tf.math.unsorted_segment_sum(tf.ones_like(span_starts), span_starts,
                                                      length)
  is_noise = tf.equal(tf.cumsum(span_start_indicator) % 2, 1)
  return is_noise[:original_length]


def replace_spans_with_sentinels(tokens: tf.Tensor, mask: tf.Tensor, vocab_size: int) -> tf.Tensor:
  """Replaces each run of masked tokens by one sentinel, counting down from vocab_size - 1."""
  previous_masked = tf.pad(mask[:-1], [[1, 0]])
  first_masked = tf.logical_and(mask, tf.logical_not(previous_masked))
  later_masked = tf.logical_and(mask, previous_masked)
  sentinels = vocab_size - tf.cumsum(tf.cast(first_masked, tokens.dtype))
  tokens = tf.where(first_masked, sentinels, tokens)
  return tf.boolean_mask(tokens, tf.logical_not(later_masked))


def concatenate_and_chunk(dataset: tf.data.Dataset, vocabulary: seqio.Vocabulary,
                          chunk_length: int) -> tf.data.Dataset:
  """{"targets": document tokens} -> {"targets": chunk} with EOS after every document.

  The last chunk of the stream may be shorter; nothing is dropped, so the
  chunks concatenate back to the documents exactly.
  """
  if chunk_length < 1:
    raise ObjectiveError(f"chunk length must be positive, got {chunk_length}.")
  eos = tf.constant([vocabulary.eos_id], tf.int32)
  tokens = dataset.map(lambda ex: tf.concat([tf.cast(ex["targets"], tf.int32), eos], 0),
                       num_parallel_calls=tf.data.AUTOTUNE)
  return tokens.rebatch(chunk_length).map(lambda chunk: {"targets": chunk})


def _require(sequence_length: Mapping[str, int] | None, *keys: str) -> dict[str, int]:
  missing = [k for k in keys if not sequence_length or not sequence_length.get(k)]
  if missing:
    raise ObjectiveError(f"this objective needs feature lengths for {keys} "
                         f"(TASK_FEATURE_LENGTHS), got {dict(sequence_length or {})}.")
  return {k: int(sequence_length[k]) for k in keys}


def full_lm(dataset: tf.data.Dataset, sequence_length: Mapping[str, int],
            output_features: Mapping[str, seqio.Feature]) -> tf.data.Dataset:
  """Full language modelling: fixed-length chunks of the document stream as targets."""
  lengths = _require(sequence_length, "targets")
  return concatenate_and_chunk(dataset, output_features["targets"].vocabulary, lengths["targets"])


def prefix_lm(dataset: tf.data.Dataset, sequence_length: Mapping[str, int],
              output_features: Mapping[str, seqio.Feature]) -> tf.data.Dataset:
  """Prefix LM: chunks of inputs_length - 2 tokens split at a uniformly random point.

  The prefix (inputs) has 1..n-1 tokens and the rest are the targets; each
  gets an EOS afterwards (seqio's append_eos_after_trim), as in T5. With both
  EOS an example is exactly inputs_length tokens, so a decoder row of
  inputs + targets positions packs two whole examples (chunks one token
  longer would leave every such row half empty).
  """
  lengths = _require(sequence_length, "inputs", "targets")
  if lengths["inputs"] < 3:
    raise ObjectiveError(f"prefix LM needs inputs of at least 3 tokens, got {lengths['inputs']}.")
  if lengths["targets"] < lengths["inputs"] - 1:
    raise ObjectiveError(
        f"prefix LM targets length {lengths['targets']} is shorter than the longest suffix "
        f"({lengths['inputs'] - 1} tokens with EOS for inputs {lengths['inputs']}); "
        "set targets >= inputs.")
  chunk_length = lengths["inputs"] - 2
  chunks = concatenate_and_chunk(dataset, output_features["targets"].vocabulary, chunk_length)

  @seqio.map_over_dataset(num_seeds=1)
  def split(example, seed):
    tokens = example["targets"]
    size = tf.size(tokens)
    # Split points 1..size-1 keep both halves non-empty (a 1-token chunk is all target).
    point = tf.random.stateless_uniform([], seed, minval=1, maxval=tf.maximum(size, 2),
                                        dtype=tf.int32)
    point = tf.minimum(point, size - 1)
    return {"inputs": tokens[:point], "targets": tokens[point:]}

  return split(chunks)


def span_corruption(dataset: tf.data.Dataset, sequence_length: Mapping[str, int],
                    output_features: Mapping[str, seqio.Feature],
                    noise_density: float = NOISE_DENSITY,
                    mean_noise_span_length: float = MEAN_NOISE_SPAN_LENGTH) -> tf.data.Dataset:
  """T5 span corruption: noise spans become sentinels in the inputs, targets list them.

  Chunks hold exactly as many raw tokens as fill `inputs` after corruption
  (span_corruption_lengths); `targets` must fit what that produces.
  """
  lengths = _require(sequence_length, "inputs", "targets")
  tokens_length, targets_length = span_corruption_lengths(
      lengths["inputs"], noise_density, mean_noise_span_length)
  if lengths["targets"] < targets_length:
    raise ObjectiveError(
        f"span corruption with inputs {lengths['inputs']} produces targets of {targets_length} "
        f"tokens but the targets length is {lengths['targets']}; set it to {targets_length}.")
  vocabulary = output_features["targets"].vocabulary
  spans = num_noise_spans(tokens_length, noise_density, mean_noise_span_length)
  if vocabulary.extra_ids < spans:
    raise ObjectiveError(
        f"span corruption of {tokens_length}-token chunks needs {spans} sentinels but the "
        f"vocabulary has {vocabulary.extra_ids} extra ids; use a vocabulary with >= {spans}.")
  chunks = concatenate_and_chunk(dataset, vocabulary, tokens_length)
  vocab_size = vocabulary.vocab_size

  @seqio.map_over_dataset(num_seeds=2)
  def corrupt(example, seeds):
    tokens = example["targets"]
    mask = random_spans_noise_mask(tf.size(tokens), seeds, noise_density,
                                   mean_noise_span_length)
    return {"inputs": replace_spans_with_sentinels(tokens, mask, vocab_size),
            "targets": replace_spans_with_sentinels(tokens, tf.logical_not(mask), vocab_size)}

  return corrupt(chunks)
