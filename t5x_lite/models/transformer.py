"""The three architectures behind one forward path over seqio feature dicts.

`Transformer(config)(batch)` returns float32 logits [batch, length, vocab] for
  - encoder_decoder: encoder_input_tokens -> encoder; decoder_input_tokens ->
    decoder with cross-attention;
  - causal_decoder: decoder_input_tokens, causal self-attention;
  - prefix_decoder: as causal, plus bidirectional attention among the
    positions where decoder_causal_attention is 1 (the prefix).
Packed batches carry *_segment_ids and *_positions: attention never crosses a
segment boundary, and positions restart in every segment.

Incremental decoding (t5x_lite/decoding.py) runs the same blocks over a key/value
cache: `init_cache` allocates it (with the encoder's cross-attention keys and
values computed once), `decode_cached` writes the new tokens' keys and values at
their positions and attends over the whole cache under a caller-built mask.
The cache is one array per kind for the whole stack, [layers, batch, kv_heads,
positions, head_dim]: every layer writes its new keys into it in place (no per-layer
copies restacked each token), and heads come before positions because that is the
layout the attention matmuls read without a transpose.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Iterator, Mapping, Optional

import jax
import jax.numpy as jnp
from flax import nnx

from t5x_lite.common.partitioning import constrain
from t5x_lite.models import layers, moe, mup, pipeline_parallel
from t5x_lite.models.configs import TransformerConfig

Array = jax.Array
Batch = Mapping[str, Array]
HIDDEN_AXES = ("activation_batch", "activation_length", "activation_embed")

REMAT_POLICIES = {
    "full": None,  # save nothing: recompute the whole block in the backward pass
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


@dataclasses.dataclass(frozen=True)
class AttentionContext:
  """What every block of a stack needs besides its input: masks, bias, positions."""
  self_mask: Optional[Array]          # [b|1, 1, t, t] bool, None with is_causal
  is_causal: bool = False
  self_bias: Optional[Array] = None   # [1, heads, t, t] T5 relative bias
  positions: Optional[Array] = None   # [b, t] for RoPE
  encoded: Optional[Array] = None     # [b, s, d] encoder output (cross-attention)
  cross_mask: Optional[Array] = None  # [b, 1, t, s] bool
  cache_positions: Optional[Array] = None  # [b, t] cache slots of this call's tokens
  routable: Optional[Array] = None    # [b, t] bool: positions MoE layers route (not padding)


class Block(nnx.Module):
  """One transformer layer: self-attention, optional cross-attention, MLP (or, with
  `moe`, the mixture-of-experts feed-forward block of models/moe.py)."""

  def __init__(self, config: TransformerConfig, *, cross_attention: bool, use_rope: bool,
               rngs: nnx.Rngs, moe_layer: bool = False):
    self.config = config
    self.moe_layer = moe_layer
    self.self_attention_norm = layers.make_norm(config, rngs=rngs)
    self.self_attention = layers.Attention(config, use_rope=use_rope, rngs=rngs)
    if cross_attention:
      self.cross_attention_norm = layers.make_norm(config, rngs=rngs)
      self.cross_attention = layers.Attention(config, use_rope=False, rngs=rngs)
    self.mlp_norm = layers.make_norm(config, rngs=rngs)
    self.mlp = moe.MoeMlp(config, rngs=rngs) if moe_layer else layers.Mlp(config, rngs=rngs)

  def _residual(self, x: Array, norm: nnx.Module, branch, rng: Optional[Array]) -> Array:
    rate = self.config.dropout_rate
    if self.config.norm_position == "pre":
      return x + layers.dropout(branch(norm(x)), rate, rng)
    return norm(x + layers.dropout(branch(x), rate, rng))

  def __call__(self, x: Array, ctx: AttentionContext, dropout_rng: Optional[Array],
               cache: Optional[dict] = None, layer: Array | int = 0
               ) -> tuple[Array, Optional[dict], dict]:
    """(the layer's output, the stack's decoding cache with this layer's slice updated by
    this call's keys and values, the MoE layer's routing statistics ({} for a dense
    one)); the cache is None when none is given (training and evaluation). cache: the
    whole stack's, [layers, B, kv_heads, positions, head_dim] arrays; `layer` is this
    block's index in it."""
    rngs = [None] * 4 if dropout_rng is None else list(jax.random.split(dropout_rng, 4))
    updated = None if cache is None else dict(cache)

    def cached(name: str) -> Array:  # this layer's [B, positions, kv_heads, head_dim]
      return jnp.swapaxes(updated[name][layer], 1, 2)

    def self_attend(h):
      attention = self.self_attention
      if cache is None:
        return attention(h, h, mask=ctx.self_mask, bias=ctx.self_bias, is_causal=ctx.is_causal,
                         q_positions=ctx.positions, kv_positions=ctx.positions)
      key_BxTxKxH, value_BxTxKxH = attention.keys_values(h, ctx.positions)
      rows_Bx1 = jnp.arange(h.shape[0])[:, None]
      # Advanced indices around a slice: the indexed shape is [B, T, kv_heads, head_dim].
      updated["key"] = cache["key"].at[layer, rows_Bx1, :, ctx.cache_positions].set(
          key_BxTxKxH)
      updated["value"] = cache["value"].at[layer, rows_Bx1, :, ctx.cache_positions].set(
          value_BxTxKxH)
      return attention.attend(h, cached("key"), cached("value"), mask=ctx.self_mask,
                              bias=ctx.self_bias, q_positions=ctx.positions)

    def cross_attend(h):
      if cache is None:
        return self.cross_attention(h, ctx.encoded, mask=ctx.cross_mask)
      return self.cross_attention.attend(h, cached("cross_key"), cached("cross_value"),
                                         mask=ctx.cross_mask)

    x = self._residual(x, self.self_attention_norm, self_attend, rngs[0])
    if hasattr(self, "cross_attention"):
      x = self._residual(x, self.cross_attention_norm, cross_attend, rngs[1])
    stats = {}

    def feed_forward(h):
      nonlocal stats
      if not self.moe_layer:
        return self.mlp(h, dropout_rng=rngs[3])
      # Decoding calls see a token or a prompt at a time, not the sequences training
      # routed: nothing is dropped there (see models/moe.py).
      out, stats = self.mlp(h, routable=ctx.routable, dropout_rng=rngs[3],
                            dropless=cache is not None)
      return out

    x = self._residual(x, self.mlp_norm, feed_forward, rngs[2])
    x = constrain(x, HIDDEN_AXES)
    return x, updated, stats


class LayerGroup(nnx.Module):
  """k consecutive layers run as one unit: the scanned layout of a stack whose every k-th
  layer is an MoE layer (k > 1), where one scanned unit must hold one of each kind."""

  def __init__(self, blocks: list[Block]):
    self.blocks = nnx.List(blocks)

  def __call__(self, x: Array, ctx: AttentionContext, dropout_rngs: Optional[Array],
               cache: Optional[dict] = None, group: Array | int = 0
               ) -> tuple[Array, Optional[dict], dict]:
    """Block.__call__ over the group's layers; dropout_rngs: one key per layer [k];
    `group` is the group's index (its layers are k group ... k group + k - 1)."""
    size = len(self.blocks)
    stats = {}
    for j, block in enumerate(self.blocks):
      x, cache, block_stats = block(x, ctx, None if dropout_rngs is None else dropout_rngs[j],
                                    cache, group * size + j)
      stats = moe.add_stats(stats, block_stats)
    return x, cache, stats


class TransformerStack(nnx.Module):
  """An encoder or decoder: position handling, the layers, the final norm."""

  def __init__(self, config: TransformerConfig, num_layers: int, *, bidirectional: bool,
               cross_attention: bool, rngs: nnx.Rngs, name: str = "decoder"):
    self.config = config
    self.num_layers = num_layers
    self.name = name
    encoding = config.position_encoding
    if encoding == "t5_relative":
      self.relative_bias = layers.RelativePositionBias(config, bidirectional=bidirectional,
                                                       rngs=rngs)
    elif encoding in ("learned", "sinusoidal"):
      self.absolute_positions = layers.AbsolutePositionEmbedding(config, rngs=rngs)

    def make_block(block_rngs: nnx.Rngs, index: int) -> Block:
      return Block(config, cross_attention=cross_attention, use_rope=encoding == "rope",
                   rngs=block_rngs, moe_layer=config.is_moe_layer(name, index))

    # Layer i draws its initial parameters from the same stream in every layout, so the
    # layout (scan_layers, and the pipeline stages that need it) never changes the model.
    blocks = [make_block(rngs, i) for i in range(num_layers)]
    # The scanned unit: a layer, or with an MoE layer every k > 1 layers a group of k.
    self.group_size = max(config.moe_interval(name), 1)
    if config.scan_layers:
      size = self.group_size
      units = num_layers // size
      if size == 1:
        make_unit, scanned = (lambda unit_rngs: make_block(unit_rngs, size - 1)), blocks
      else:
        make_unit = lambda unit_rngs: LayerGroup(  # noqa: E731
            [make_block(unit_rngs, j) for j in range(size)])
        scanned = [LayerGroup(blocks[g * size:(g + 1) * size]) for g in range(units)]
      # One unit whose parameters carry a leading "layers" axis (vmap's metadata names it),
      # holding the units above stacked.
      make_stacked = nnx.split_rngs(splits=units)(
          nnx.vmap(make_unit, in_axes=0, out_axes=0,
                   transform_metadata={nnx.PARTITION_NAME: "layers"}))
      graphdef, abstract = nnx.split(nnx.eval_shape(lambda: make_stacked(nnx.Rngs(0))))
      per_unit = [jax.tree.leaves(nnx.state(unit)) for unit in scanned]
      self.layers = nnx.merge(graphdef, jax.tree.unflatten(
          jax.tree.structure(abstract), [jnp.stack(leaves) for leaves in zip(*per_unit)]))
    else:
      self.layers = nnx.List(blocks)
    if config.norm_position == "pre":
      self.final_norm = layers.make_norm(config, rngs=rngs)

  def __call__(self, x: Array, ctx: AttentionContext, positions: Array,
               dropout_rng: Optional[Array] = None, cache: Optional[dict] = None
               ) -> tuple[Array, Optional[dict]]:
    """(the stack's output, the decoding cache with this call's tokens written at
    `positions`): arrays stacked over layers; None when no cache is given."""
    config = self.config
    if config.position_encoding in ("learned", "sinusoidal"):
      if cache is None and x.shape[1] > config.max_length:
        raise ValueError(
            f"Sequence length {x.shape[1]} exceeds TransformerConfig.max_length="
            f"{config.max_length} of the absolute position table.")
      x = self.absolute_positions(x, positions)
    if config.position_encoding == "t5_relative":
      if cache is None:
        bias = self.relative_bias(x.shape[1], x.shape[1])
      else:
        bias = self.relative_bias(x.shape[1], cache_length(cache), q_positions=positions)
      ctx = dataclasses.replace(ctx, self_bias=bias)
    if config.position_encoding == "rope":
      ctx = dataclasses.replace(ctx, positions=positions)
    if cache is not None:
      ctx = dataclasses.replace(ctx, cache_positions=positions)
    if dropout_rng is not None:
      dropout_rng, embed_rng = jax.random.split(dropout_rng)
      x = layers.dropout(x, config.dropout_rate, embed_rng)
      layer_rngs = jax.random.split(dropout_rng, self.num_layers)
    else:
      layer_rngs = None
    x = constrain(x, HIDDEN_AXES)
    no_stats = moe.empty_stats(config) if config.moe_interval(self.name) else {}

    def block_applier(ctx: AttentionContext):
      def apply_block(graphdef, state, h, rng, cache, layer):
        return nnx.merge(graphdef, state)(h, ctx, rng, cache, layer)

      if config.remat_policy != "none" and cache is None:
        return jax.checkpoint(apply_block, policy=REMAT_POLICIES[config.remat_policy],
                              static_argnums=(0,))
      return apply_block

    apply_block = block_applier(ctx)
    stages = pipeline_parallel.mesh_stages()
    if stages > 1 and cache is None:
      if not config.scan_layers:
        raise pipeline_parallel.PipelineError("pipeline stages need the scanned layout (stacked "
                                     "layers): set TransformerConfig.scan_layers = True.")
      graphdef, state = nnx.split(self.layers)
      x, stats = pipeline_parallel.pipelined_stack(
          block_applier, graphdef, state, x, ctx, self._unit_rngs(layer_rngs), no_stats,
          stages=stages, microbatches=config.pipeline_microbatches,
          repeats=config.pipeline_repeats, stack=self.name)
    elif config.scan_layers:
      graphdef, state = nnx.split(self.layers)

      def scan_body(carry, xs):
        h, cache, stats = carry
        unit_state, rng, unit = xs
        h, cache, unit_stats = apply_block(graphdef, unit_state, h, rng, cache, unit)
        return (h, cache, moe.add_stats(stats, unit_stats)), None

      units = self.num_layers // self.group_size
      (x, cache, stats), _ = jax.lax.scan(
          scan_body, (x, cache, no_stats),
          (state, self._unit_rngs(layer_rngs), jnp.arange(units)))
    else:
      stats = no_stats
      for i, block in enumerate(self.layers):
        graphdef, state = nnx.split(block)
        x, cache, block_stats = apply_block(
            graphdef, state, x, None if layer_rngs is None else layer_rngs[i], cache, i)
        stats = moe.add_stats(stats, block_stats)
    moe.report(stats)
    if config.norm_position == "pre":
      x = self.final_norm(x)
    x = layers.dropout(x, config.dropout_rate, dropout_rng)
    return x, cache

  def _unit_rngs(self, layer_rngs: Optional[Array]) -> Optional[Array]:
    """Per-layer dropout keys [layers] arranged per scanned unit ([groups, k] for groups)."""
    if layer_rngs is None or self.group_size == 1:
      return layer_rngs
    return layer_rngs.reshape(-1, self.group_size, *layer_rngs.shape[1:])

  def cross_keys_values(self, encoded: Array) -> dict:
    """Every layer's cross-attention keys and values of the encoder output, stacked in
    the cache layout [layers, B, kv_heads, encoder positions, head_dim]."""
    def layer(block):
      key_BxSxKxH, value_BxSxKxH = block.cross_attention.keys_values(encoded)
      return {"cross_key": jnp.swapaxes(key_BxSxKxH, 1, 2),
              "cross_value": jnp.swapaxes(value_BxSxKxH, 1, 2)}

    if self.config.scan_layers:
      graphdef, state = nnx.split(self.layers)

      def unit(unit_state):
        merged = nnx.merge(graphdef, unit_state)
        if self.group_size == 1:
          return layer(merged)
        return jax.tree.map(lambda *arrays: jnp.stack(arrays),
                            *[layer(block) for block in merged.blocks])

      stacked = jax.lax.map(unit, state)
      # Groups: [groups, k, ...] -> [layers, ...] in layer order.
      return jax.tree.map(lambda a: a.reshape(self.num_layers, *a.shape[a.ndim - 4:]), stacked)
    return jax.tree.map(lambda *arrays: jnp.stack(arrays), *[layer(b) for b in self.layers])


def cache_length(cache: dict) -> int:
  """Positions a decoding cache holds (its arrays are [layers, B, kv_heads, positions,
  head_dim])."""
  return cache["key"].shape[3]


def _positions(batch: Batch, prefix: str, tokens: Array) -> Array:
  positions = batch.get(f"{prefix}_positions")
  if positions is None:
    return jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
  return positions


def _decoder_routable(batch: Batch) -> Optional[Array]:
  """[b, t] True at the decoder positions that hold a token (what MoE layers route):
  those of a segment in packed rows, else those with a target (the first input is the
  BOS id 0, so input tokens cannot tell); None (every position) without either."""
  segments = batch.get("decoder_segment_ids")
  if segments is not None:
    return segments > 0
  targets = batch.get("decoder_target_tokens")
  return None if targets is None else targets > 0


def _same_segment(q_segments: Array, k_segments: Array) -> Array:
  return (q_segments[:, :, None] == k_segments[:, None, :])[:, None]


class Transformer(nnx.Module):
  """Encoder-decoder, causal decoder or prefix decoder, chosen by the config."""

  def __init__(self, config: TransformerConfig, *, rngs: nnx.Rngs):
    self.config = config
    spec = config.architecture_spec
    self.token_embedding = layers.make_token_embedding(config, rngs=rngs)
    if spec.has_encoder:
      self.encoder = TransformerStack(config, config.num_encoder_layers, bidirectional=True,
                                      cross_attention=False, rngs=rngs, name="encoder")
    self.decoder = TransformerStack(config, config.num_decoder_layers,
                                    bidirectional=spec.bidirectional_prefix,
                                    cross_attention=spec.has_encoder, rngs=rngs)
    if not config.tie_embeddings:
      self.logits_dense = nnx.Linear(
          config.d_model, config.vocab_size, use_bias=False,
          kernel_init=layers.partitioned(layers.fan_in_init(), ("embed", "vocab")),
          rngs=rngs, **layers.dtypes(config))
    if config.head in ("reward", "value"):
      # A reward model's (or a critic's) scalar head; it starts at zero, so a model
      # fine-tuned from a language model starts by giving every completion the same
      # reward (value).
      self.reward_head = nnx.Linear(
          config.d_model, 1, use_bias=True,
          kernel_init=layers.partitioned(nnx.initializers.zeros_init(), ("embed", None)),
          rngs=rngs, **layers.dtypes(config))

  def __call__(self, batch: Batch, *, dropout_rng: Optional[Array] = None) -> Array:
    """Logits [batch, decoder length, vocab] in float32 for a seqio feature dict.

    dropout_rng: None for evaluation; a PRNG key enables dropout (training).
    """
    return self.logits(self._hidden(batch, dropout_rng))

  def rewards(self, batch: Batch, *, dropout_rng: Optional[Array] = None) -> Array:
    """A reward model's (head="reward") scalar at every decoder position, [batch, length]
    in float32: the projection of the decoder's final hidden state (the encoder-decoder's
    decoder reads the prompt through its encoder)."""
    if self.config.head != "reward":
      raise ValueError("rewards() needs TransformerConfig.head='reward'")
    return self._scalars(self._hidden(batch, dropout_rng))

  def logits_and_values(self, batch: Batch, *, dropout_rng: Optional[Array] = None
                        ) -> tuple[Array, Array]:
    """A policy-and-critic model's (head="value") logits [batch, length, vocab] and value
    estimates [batch, length] from one pass, both in float32."""
    if self.config.head != "value":
      raise ValueError("logits_and_values() needs TransformerConfig.head='value'")
    hidden = self._hidden(batch, dropout_rng)
    return self.logits(hidden), self._scalars(hidden)

  def _hidden(self, batch: Batch, dropout_rng: Optional[Array]) -> Array:
    """The decoder's final hidden states for a feature dict (the encoder run first for
    the encoder-decoder): what the logits and the scalar heads project."""
    encoder_rng = decoder_rng = None
    if dropout_rng is not None:
      encoder_rng, decoder_rng = jax.random.split(dropout_rng)
    encoded = None
    if self.config.architecture_spec.has_encoder:
      encoded = self.encode(batch, dropout_rng=encoder_rng)
    return self.decoder_hidden(batch, encoded, dropout_rng=decoder_rng)

  def _scalars(self, hidden: Array) -> Array:
    return self.reward_head(hidden)[..., 0].astype(jnp.float32)

  def embed(self, tokens: Array) -> Array:
    return self.token_embedding(tokens.astype(jnp.int32))

  def encode(self, batch: Batch, *, dropout_rng: Optional[Array] = None) -> Array:
    """Encoder output [batch, input length, d_model]; padding (token 0) is masked."""
    tokens = batch["encoder_input_tokens"]
    segments = batch.get("encoder_segment_ids")
    if segments is None:
      # Mask padded keys only, so no query row is ever fully masked.
      mask = (tokens > 0)[:, None, None, :]
    else:
      mask = _same_segment(segments, segments)
    routable = tokens > 0 if segments is None else segments > 0
    ctx = AttentionContext(self_mask=mask, routable=routable)
    encoded, _ = self.encoder(self.embed(tokens), ctx, _positions(batch, "encoder", tokens),
                              dropout_rng)
    return encoded

  def decoder_hidden(self, batch: Batch, encoded: Optional[Array] = None, *,
                     dropout_rng: Optional[Array] = None) -> Array:
    """The decoder's final hidden states [batch, length, d_model]."""
    tokens = batch["decoder_input_tokens"]
    segments = batch.get("decoder_segment_ids")
    prefix = None
    if self.config.architecture_spec.bidirectional_prefix:
      prefix = batch.get("decoder_causal_attention")
      if prefix is None:
        raise ValueError(f"architecture={self.config.architecture!r} needs the "
                         "'decoder_causal_attention' feature (use seqio's "
                         "PrefixLMFeatureConverter).")
    ctx = self._decoder_self_attention(tokens.shape[1], segments, prefix)
    ctx = dataclasses.replace(ctx, routable=_decoder_routable(batch))
    if encoded is not None:
      ctx = dataclasses.replace(ctx, encoded=encoded,
                                cross_mask=self._cross_mask(batch, tokens.shape[1]))
    hidden, _ = self.decoder(self.embed(tokens), ctx, _positions(batch, "decoder", tokens),
                             dropout_rng)
    return hidden

  def init_cache(self, batch_size: int, length: int, encoded: Optional[Array] = None) -> dict:
    """An empty decoding cache of `length` positions, plus the cross-attention keys and
    values of `encoded` (encoder_decoder). Arrays are stacked over decoder layers."""
    config = self.config
    shape = (config.num_decoder_layers, batch_size, config.kv_heads, length,
             config.resolved_head_dim)
    cache = {"key": jnp.zeros(shape, config.dtype), "value": jnp.zeros(shape, config.dtype)}
    if encoded is not None:
      cache.update(self.decoder.cross_keys_values(encoded))
    return cache

  def decode_cached(self, tokens: Array, positions: Array, self_mask: Array, cache: dict,
                    cross_mask: Optional[Array] = None) -> tuple[Array, dict]:
    """Logits of `tokens` [b, t] at `positions` [b, t], attending to the cache under
    `self_mask` [b, 1, t, cache length] (and the encoder under `cross_mask`); returns
    them with the cache updated by these tokens' keys and values."""
    ctx = AttentionContext(self_mask=self_mask, cross_mask=cross_mask)
    hidden, cache = self.decoder(self.embed(tokens), ctx, positions, cache=cache)
    return self.logits(hidden), cache

  def logits(self, hidden: Array) -> Array:
    multiplier = mup.output_multiplier(self.config)
    if multiplier != 1.0:
      hidden = hidden * multiplier
    if self.config.tie_embeddings:
      logits = self.token_embedding.attend(hidden)
    else:
      logits = self.logits_dense(hidden)
    logits = constrain(logits, ("activation_batch", "activation_length", "activation_vocab"))
    return logits.astype(jnp.float32)

  def _decoder_self_attention(self, length: int, segments: Optional[Array],
                              prefix: Optional[Array]) -> AttentionContext:
    if segments is None and prefix is None:
      return AttentionContext(self_mask=None, is_causal=True)
    index = jnp.arange(length)[None]
    in_prefix = None if prefix is None else prefix.astype(bool)
    mask = self.config.architecture_spec.decoder_mask(index, index, in_prefix, in_prefix)
    if segments is not None:
      mask = mask & _same_segment(segments, segments)
    return AttentionContext(self_mask=mask)

  @staticmethod
  def _cross_mask(batch: Batch, decoder_length: int) -> Array:
    encoder_segments = batch.get("encoder_segment_ids")
    decoder_segments = batch.get("decoder_segment_ids")
    if encoder_segments is not None and decoder_segments is not None:
      return _same_segment(decoder_segments, encoder_segments)
    valid = batch["encoder_input_tokens"] > 0
    return jnp.broadcast_to(valid[:, None, None, :],
                            (valid.shape[0], 1, decoder_length, valid.shape[1]))


def create_model(config: TransformerConfig, seed: int = 0) -> Transformer:
  """Initialises a model with fresh parameters."""
  return Transformer(config, rngs=nnx.Rngs(params=seed))


@functools.partial(jax.jit, static_argnums=0)
def _forward(graphdef: nnx.GraphDef, state: nnx.State, batch: Batch) -> Array:
  return nnx.merge(graphdef, state)(batch)


def forward(model: Transformer, batch: Batch) -> Array:
  """Evaluation-mode logits through a jitted pure function of the model state
  (compiled once per model structure and batch shape)."""
  graphdef, state = nnx.split(model)
  return _forward(graphdef, state, batch)


# The weight matrices of every block (attention, MLP; an MoE block's experts and shared
# experts, not its router): what LoRA adapts and quantization quantizes.
PROJECTIONS = ("query", "key", "value", "out", "wi_0", "wi_1", "wo")


def projections(model: Transformer) -> Iterator[tuple[nnx.Module, str]]:
  """(owning module, attribute name) of every projection in every layer of every stack
  (unscanned layout: scanned layers are one stacked module). An MoE block's routed
  experts are one projection per name ([E, in, out] kernels, `expert_dims`); its shared
  experts' Mlp follows it."""
  for stack_name in ("encoder", "decoder"):
    stack = getattr(model, stack_name, None)
    if stack is None:
      continue
    for block in stack.layers:
      for part in ("self_attention", "cross_attention", "mlp"):
        owner = getattr(block, part, None)
        if owner is None:
          continue
        for module in (owner, getattr(owner, "shared", None)):
          for name in PROJECTIONS if module is not None else ():
            if hasattr(module, name):
              yield module, name


def expert_dims(projection: nnx.Module) -> int:
  """Leading kernel dimensions that index experts (1 for an MoE block's routed experts,
  whose input keeps that axis; 0 for every other projection)."""
  return 1 if isinstance(projection, moe.ExpertProjection) else 0


def contracted_dims(projection: nnx.Module) -> int:
  """How many leading kernel dimensions a projection's input contracts (nnx.Linear: 1;
  an attention nnx.Einsum: 1 into heads x head_dim, or 2 out of them)."""
  if isinstance(projection, nnx.Einsum):
    operands, _ = projection.einsum_str.replace(" ", "").split("->")
    inputs, kernel = operands.split(",")
    return sum(1 for letter in kernel if letter in inputs)
  return 1
