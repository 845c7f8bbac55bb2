"""Parameter and FLOP counts from a config alone (nothing is initialised).

Conventions:
  - params counts every weight the model creates; non_embedding_params leaves
    out the token embedding, an untied output projection and learned position
    tables (Kaplan et al.'s N).
  - FLOPs count multiply-adds as 2 FLOPs; training = 3 x forward (backward =
    2 x forward). The "matmul" convention (PaLM's MFU numerator) counts every
    dense projection, the output logits and both attention matmuls (QK^T and
    AV) over the full, unmasked length. The "chinchilla" convention adds
    Hoffmann et al.'s Appendix F terms for the embedding lookup and softmax.
  - Decoders run on inputs_length + targets_length tokens (seqio's decoder
    converters concatenate them). The encoder-decoder runs its encoder on the
    inputs and its decoder (with cross-attention) on the targets; its tokens
    per sequence are inputs + targets.
  - flops_per_token_6n is Chinchilla's C = 6 N D approximation with N = active_params
    (params for a dense model).
  - Mixture-of-experts: params counts every expert (the router, E routed and the shared
    ones); active_params what one token uses (the router, its k routed experts and the
    shared ones), the N of 6 N D for an MoE model. FLOPs are active FLOPs: the router
    and k experts per token (PaLM's MFU numerator, MaxText's convention); the slots
    capacity leaves empty, the dispatch/combine einsums and the dropped assignments are
    not counted, so MFU shows what the routing costs.
"""

from __future__ import annotations

import dataclasses

from t5x_lite.common.errors import ConfigError
from t5x_lite.models.configs import TransformerConfig

CONVENTIONS = ("matmul", "chinchilla")


@dataclasses.dataclass(frozen=True)
class Counts:
  params: int
  non_embedding_params: int
  tokens_per_sequence: int
  flops_per_sequence: float  # training FLOPs for one sequence (3 x forward)
  flops_per_token: float
  flops_per_token_6n: float
  active_params: int  # parameters one token uses (params for a dense model)

  def as_dict(self) -> dict:
    return dataclasses.asdict(self)

  def step_flops_per_token(self, frozen_base: bool = False) -> float:
    """Training FLOPs per token of a step: forward + backward = 3 forwards; over a frozen
    base (LoRA) the backward computes activation gradients but no weight gradients, so
    2 forwards (the adapters' own FLOPs are negligible at low rank)."""
    return self.flops_per_token * (2 / 3 if frozen_base else 1)


def _norm_params(config: TransformerConfig) -> int:
  return config.d_model * (2 if config.norm == "layer" and config.norm_bias else 1)


def attention_params(config: TransformerConfig) -> int:
  d, h, kv, hd = config.d_model, config.num_heads, config.kv_heads, config.resolved_head_dim
  weights = 2 * d * h * hd + 2 * d * kv * hd
  biases = h * hd + 2 * kv * hd + d if config.use_bias else 0
  return weights + biases


def mlp_params(config: TransformerConfig) -> int:
  inputs = 2 if config.gated else 1
  weights = (inputs + 1) * config.d_model * config.d_ff
  biases = inputs * config.d_ff + config.d_model if config.use_bias else 0
  return weights + biases


def moe_mlp_params(config: TransformerConfig, *, active: bool = False) -> int:
  """An MoE feed-forward block's parameters: the router, the routed experts (all of them,
  or with `active` the k a token goes to) and the shared experts."""
  inputs = 2 if config.gated else 1
  width = config.expert_d_ff
  expert = (inputs + 1) * config.d_model * width + (
      inputs * width + config.d_model if config.use_bias else 0)
  routed = config.experts_per_token if active else config.routed_experts
  shared = 0
  if config.moe_shared_experts:
    shared = mlp_params(config.replace(d_ff=config.moe_shared_experts * width, num_experts=0))
  return config.d_model * config.routed_experts + routed * expert + shared


def layer_params(config: TransformerConfig, *, cross_attention: bool,
                 moe_layer: bool = False, active: bool = False) -> int:
  attentions = 2 if cross_attention else 1
  feed_forward = moe_mlp_params(config, active=active) if moe_layer else mlp_params(config)
  return attentions * (attention_params(config) + _norm_params(config)) + (
      feed_forward + _norm_params(config))


def stack_params(config: TransformerConfig, num_layers: int, *, cross_attention: bool,
                 stack: str = "decoder", active: bool = False) -> int:
  """A stack's parameters excluding learned position tables (with `active`, those one
  token uses)."""
  moe_layers = config.moe_layers(stack)
  total = (num_layers - moe_layers) * layer_params(config, cross_attention=cross_attention)
  total += moe_layers * layer_params(config, cross_attention=cross_attention, moe_layer=True,
                                     active=active)
  if config.norm_position == "pre":
    total += _norm_params(config)
  if config.position_encoding == "t5_relative":
    total += config.relative_attention_num_buckets * config.num_heads
  return total


def embedding_params(config: TransformerConfig) -> int:
  """Token embedding, untied output projection and learned position tables."""
  total = config.vocab_size * config.d_model * (1 if config.tie_embeddings else 2)
  if config.position_encoding == "learned":
    stacks = 2 if config.is_encoder_decoder else 1
    total += stacks * config.max_length * config.d_model
  return total


def count_params(config: TransformerConfig, *, active: bool = False) -> tuple[int, int]:
  """(params, non_embedding_params); with `active`, of the parameters one token uses
  (an MoE model's k routed experts per layer, not all E)."""
  non_embedding = stack_params(config, config.num_decoder_layers,
                               cross_attention=config.is_encoder_decoder, active=active)
  if config.is_encoder_decoder:
    non_embedding += stack_params(config, config.num_encoder_layers, cross_attention=False,
                                  stack="encoder", active=active)
  if config.head in ("reward", "value"):
    non_embedding += config.d_model + 1  # the scalar head's kernel and bias
  return non_embedding + embedding_params(config), non_embedding


def _attention_forward_flops(config: TransformerConfig, q_len: int, kv_len: int,
                             convention: str) -> float:
  d, h, kv, hd = config.d_model, config.num_heads, config.kv_heads, config.resolved_head_dim
  projections = 2 * q_len * (2 * d * h * hd) + 2 * kv_len * (2 * d * kv * hd)
  scores_and_values = 2 * 2 * q_len * kv_len * h * hd
  softmax = 3 * h * q_len * kv_len if convention == "chinchilla" else 0
  return projections + scores_and_values + softmax


def _stack_forward_flops(config: TransformerConfig, num_layers: int, length: int,
                         cross_length: int, convention: str, stack: str) -> float:
  per_layer = _attention_forward_flops(config, length, length, convention)
  if cross_length:
    per_layer += _attention_forward_flops(config, length, cross_length, convention)
  moe_layers = config.moe_layers(stack)
  dense_mlp = 2 * length * (3 if config.gated else 2) * config.d_model * config.d_ff
  # A token's MoE block: the router, its k experts and the shared ones (weights only).
  expert_matmuls = (3 if config.gated else 2) * config.d_model * config.expert_d_ff
  moe_mlp = 2 * length * (config.d_model * config.routed_experts + expert_matmuls * (
      config.experts_per_token + config.moe_shared_experts))
  embeddings = 2 * length * config.vocab_size * config.d_model if convention == "chinchilla" else 0
  return (num_layers * per_layer + (num_layers - moe_layers) * dense_mlp
          + moe_layers * moe_mlp + embeddings)


def count(config: TransformerConfig, *, targets_length: int | None = None,
          inputs_length: int | None = None, convention: str = "matmul") -> Counts:
  """Parameters and training FLOPs of `config` on sequences of the given lengths.

  Defaults: targets_length = config.max_length; inputs_length = max_length for
  the encoder-decoder and 0 for decoders.
  """
  if convention not in CONVENTIONS:
    raise ConfigError(f"convention={convention!r}; choose one of {CONVENTIONS}.")
  targets_length = config.max_length if targets_length is None else targets_length
  if inputs_length is None:
    inputs_length = config.max_length if config.is_encoder_decoder else 0
  if targets_length <= 0 or inputs_length < 0:
    raise ConfigError(f"Feature lengths must be positive, got inputs={inputs_length}, "
                     f"targets={targets_length}.")
  params, non_embedding = count_params(config)
  active = count_params(config, active=True)[0]
  if config.is_encoder_decoder:
    if inputs_length <= 0:
      raise ConfigError("An encoder-decoder needs a positive inputs_length.")
    decoder_length = targets_length
    forward = _stack_forward_flops(config, config.num_encoder_layers, inputs_length, 0,
                                   convention, "encoder")
    forward += _stack_forward_flops(config, config.num_decoder_layers, decoder_length,
                                    inputs_length, convention, "decoder")
  else:
    decoder_length = inputs_length + targets_length
    forward = _stack_forward_flops(config, config.num_decoder_layers, decoder_length, 0,
                                   convention, "decoder")
  forward += 2 * decoder_length * config.d_model * config.vocab_size  # output logits
  tokens = inputs_length + targets_length
  training = 3.0 * forward
  return Counts(params=params, non_embedding_params=non_embedding, tokens_per_sequence=tokens,
                flops_per_sequence=training, flops_per_token=training / tokens,
                flops_per_token_6n=6.0 * active, active_params=active)
