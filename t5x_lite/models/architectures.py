"""One spec per architecture: every rule that differs between them outside the layers.

Data (which seqio converter, which features), the trainer and counting (the model's
sequence lengths for task feature lengths), the model (which stacks, which mask),
decoding (how a prompt is laid out, how long it may be) and scoring (the feature dicts
it builds) all read the spec of `TransformerConfig.architecture` here instead of
switching on its name. A fourth architecture is a new spec and, if it needs new
layers, a change to the model.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Optional, Sequence

import jax.numpy as jnp
import numpy as np
import seqio

BOS_ID = 0  # decoders start from token 0, as seqio's converters shift targets right


@dataclasses.dataclass(frozen=True)
class Architecture:
  """The rules of one architecture.

  Attributes:
    name: the value of TransformerConfig.architecture.
    has_encoder: an encoder reads the inputs and the decoder cross-attends to it;
      otherwise the decoder reads [inputs, targets] as one sequence.
    bidirectional_prefix: the decoder attends bidirectionally among the positions that
      `decoder_causal_attention` marks (the prefix), causally elsewhere.
  """
  name: str
  has_encoder: bool
  bidirectional_prefix: bool

  def feature_converter(self, pack: bool = True,
                        passthrough: Optional[Mapping[str, object]] = None
                        ) -> seqio.FeatureConverter:
    """seqio's converter (decoders take LM and prefix-LM tasks alike). `passthrough`
    ({feature: dtype}, unpacked only) keeps per-example features of rank 1 as they are."""
    kept = ({name: seqio.FeatureConverter.FeatureSpec(dtype=dtype)
             for name, dtype in passthrough.items()} if passthrough else None)
    if self.has_encoder:
      return seqio.EncDecFeatureConverter(pack=pack, passthrough_features=kept)
    return seqio.DecoderFeatureConverter(pack=pack, passthrough_features=kept)

  @property
  def features(self) -> tuple[str, ...]:
    """The features the model reads (packed batches add *_segment_ids, *_positions)."""
    decoder = ("decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights")
    if self.has_encoder:
      return ("encoder_input_tokens", *decoder)
    return decoder + (("decoder_causal_attention",) if self.bidirectional_prefix else ())

  def model_lengths(self, feature_lengths: Mapping[str, int]) -> tuple[int, int]:
    """(encoder length, decoder length) the model runs over for task feature lengths."""
    inputs, targets = feature_lengths.get("inputs", 0), feature_lengths["targets"]
    return (inputs, targets) if self.has_encoder else (0, inputs + targets)

  def decode_lengths(self, prompt_length: int, max_new_tokens: int) -> dict[str, int]:
    """Positions each stack runs over to continue a prompt: the decoder starts with BOS
    (then the prompt, for decoders) and generates max_new_tokens."""
    if self.has_encoder:
      return {"encoder": prompt_length, "decoder": 1 + max_new_tokens}
    return {"decoder": 1 + prompt_length + max_new_tokens}

  def scoring_context(self, context: Sequence[int], continuation_length: int,
                      max_length: int) -> list[int]:
    """The one truncation rule for scoring a continuation after a context (evaluate's
    multiple choice, the lm-eval model): the context keeps its last tokens, as many as
    fit beside the continuation in the model's `max_length` positions (decoders read
    [context, continuation]; the encoder-decoder's encoder reads the context alone)."""
    room = max_length if self.has_encoder else max_length - continuation_length
    return list(context[max(0, len(context) - max(room, 0)):])

  def prompt_limit(self, max_length: int, max_new_tokens: int) -> int:
    """The longest prompt that fits a model of `max_length` positions."""
    return max_length if self.has_encoder else max_length - 1 - max_new_tokens

  def decoder_mask(self, query_positions: jnp.ndarray, key_positions: jnp.ndarray,
                   query_in_prefix: Optional[jnp.ndarray] = None,
                   key_in_prefix: Optional[jnp.ndarray] = None) -> jnp.ndarray:
    """Decoder self-attention [b, 1, t, s]: a query sees the keys at or before its position,
    and, with a bidirectional prefix, every key of the prefix when it is in the prefix.

    positions: [b|1, t] and [b|1, s]; in_prefix: bool, same shapes (None: no prefix).
    Segment and padding masks are the caller's to combine.
    """
    mask = key_positions[:, None, :] <= query_positions[:, :, None]
    if self.bidirectional_prefix and query_in_prefix is not None:
      mask = mask | (query_in_prefix[:, :, None] & key_in_prefix[:, None, :])
    return mask[:, None]

  def score_features(self, inputs: Sequence[Sequence[int]], targets: Sequence[Sequence[int]],
                     length: int, encoder_length: int = 0) -> dict[str, np.ndarray]:
    """The feature dict seqio's converter would build for (inputs, targets) pairs, with
    loss weights on the targets only: what teacher-forced scoring feeds the model.

    length: decoder positions (>= the longest target, or inputs + targets for decoders);
    encoder_length: encoder positions (>= the longest input; encoder-decoder only).
    """
    count = len(targets)
    decoder_targets = np.zeros((count, length), np.int32)
    weights = np.zeros((count, length), np.float32)
    batch = {}
    if self.has_encoder:
      encoder = np.zeros((count, encoder_length), np.int32)
      for row, tokens in enumerate(inputs):
        encoder[row, :len(tokens)] = tokens
      batch["encoder_input_tokens"] = encoder
      sequences, starts = targets, [0] * count
    else:
      sequences = [list(i) + list(t) for i, t in zip(inputs, targets)]
      starts = [len(i) for i in inputs]
    prefix = np.zeros((count, length), np.int32)
    for row, (tokens, start) in enumerate(zip(sequences, starts)):
      decoder_targets[row, :len(tokens)] = tokens
      weights[row, start:len(tokens)] = 1.0
      prefix[row, :start + 1] = 1  # the inputs and BOS, as PrefixLMFeatureConverter marks
    batch.update(decoder_target_tokens=decoder_targets, decoder_loss_weights=weights,
                 decoder_input_tokens=np.pad(decoder_targets[:, :-1], ((0, 0), (1, 0)),
                                             constant_values=BOS_ID))
    if self.bidirectional_prefix:
      batch["decoder_causal_attention"] = prefix
    return batch


ARCHITECTURES: dict[str, Architecture] = {spec.name: spec for spec in (
    Architecture("encoder_decoder", has_encoder=True, bidirectional_prefix=False),
    Architecture("causal_decoder", has_encoder=False, bidirectional_prefix=False),
    Architecture("prefix_decoder", has_encoder=False, bidirectional_prefix=True),
)}


def get(name: str) -> Architecture:
  """The spec of an architecture name (TransformerConfig validates names against these)."""
  return ARCHITECTURES[name]
