"""Building blocks shared by every architecture: norms, feed-forward, attention,
position encodings and embeddings.

Every parameter is created through `nnx.with_partitioning` with logical axis
names (see t5x_lite/partitioning.py for the table that maps them to the mesh).
"""

from __future__ import annotations

import functools
import math
from typing import Callable, Optional

import jax
import jax.numpy as jnp
from flax import nnx

from t5x_lite.common.partitioning import constrain
from t5x_lite.models import mup
from t5x_lite.models.configs import TransformerConfig

Array = jax.Array
init = nnx.initializers

ACTIVATION_FUNCTIONS: dict[str, Callable[[Array], Array]] = {
    "relu": jax.nn.relu,
    "gelu": functools.partial(jax.nn.gelu, approximate=False),
    "gelu_tanh": functools.partial(jax.nn.gelu, approximate=True),
    "silu": jax.nn.silu,
}


def partitioned(initializer: Callable, logical_names: tuple[str, ...]) -> Callable:
  """Tags an initialiser with logical axis names. Eager sharding is off: the
  trainer places parameters by mapping these names through the rules table."""
  return nnx.with_partitioning(initializer, logical_names, eager_sharding=False)


def dtypes(config: TransformerConfig) -> dict:
  return dict(dtype=jnp.dtype(config.dtype), param_dtype=jnp.dtype(config.param_dtype))


def fan_in_init(in_axis=-2, out_axis=-1, scale: float = 1.0):
  """T5X's default kernel initialiser: truncated normal with variance scale/fan_in."""
  return init.variance_scaling(scale, "fan_in", "truncated_normal", in_axis=in_axis,
                               out_axis=out_axis)


def dropout(x: Array, rate: float, rng: Optional[Array]) -> Array:
  """Inverted dropout; the identity when rng is None (evaluation) or rate is 0."""
  if rng is None or rate == 0.0:
    return x
  keep = jax.random.bernoulli(rng, 1.0 - rate, x.shape)
  return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))


def make_norm(config: TransformerConfig, *, rngs: nnx.Rngs) -> nnx.Module:
  """RMSNorm or LayerNorm over d_model, statistics in float32."""
  scale_init = partitioned(init.ones_init(), ("embed",))
  if config.norm == "rms":
    return nnx.RMSNorm(config.d_model, epsilon=config.norm_epsilon, scale_init=scale_init,
                       use_fast_variance=False, rngs=rngs, **dtypes(config))
  return nnx.LayerNorm(config.d_model, epsilon=config.norm_epsilon, use_bias=config.norm_bias,
                       scale_init=scale_init,
                       bias_init=partitioned(init.zeros_init(), ("embed",)),
                       use_fast_variance=False, rngs=rngs, **dtypes(config))


def _dense(config: TransformerConfig, d_in: int, d_out: int, names: tuple[str, str], *,
           rngs: nnx.Rngs) -> nnx.Linear:
  return nnx.Linear(d_in, d_out, use_bias=config.use_bias,
                    kernel_init=partitioned(fan_in_init(), names),
                    bias_init=partitioned(init.zeros_init(), names[1:]),
                    rngs=rngs, **dtypes(config))


class Mlp(nnx.Module):
  """Feed-forward block: act(x W_0) [* x W_1 when gated] W_o."""

  def __init__(self, config: TransformerConfig, *, rngs: nnx.Rngs):
    self.config = config
    self.wi_0 = _dense(config, config.d_model, config.d_ff, ("embed", "mlp"), rngs=rngs)
    if config.gated:
      self.wi_1 = _dense(config, config.d_model, config.d_ff, ("embed", "mlp"), rngs=rngs)
    self.wo = _dense(config, config.d_ff, config.d_model, ("mlp", "embed"), rngs=rngs)

  def __call__(self, x: Array, *, dropout_rng: Optional[Array] = None) -> Array:
    hidden = ACTIVATION_FUNCTIONS[self.config.activation](self.wi_0(x))
    if self.config.gated:
      hidden = hidden * self.wi_1(x)
    hidden = constrain(hidden, ("activation_batch", "activation_length", "activation_mlp"))
    hidden = dropout(hidden, self.config.dropout_rate, dropout_rng)
    return self.wo(hidden)


def apply_rope(x: Array, positions: Array, theta: float) -> Array:
  """Rotary embedding, rotating the two halves of each head (Llama / GPT-NeoX
  layout, not interleaved pairs). x: [batch, length, heads, head_dim]."""
  half = x.shape[-1] // 2
  inv_freq = 1.0 / (theta ** (jnp.arange(0, 2 * half, 2, dtype=jnp.float32) / (2 * half)))
  angles_BxLxH = positions.astype(jnp.float32)[..., None] * inv_freq[None, None, :]
  sin, cos = jnp.sin(angles_BxLxH)[:, :, None, :], jnp.cos(angles_BxLxH)[:, :, None, :]
  first, second = x[..., :half].astype(jnp.float32), x[..., half:].astype(jnp.float32)
  rotated = jnp.concatenate([first * cos - second * sin, second * cos + first * sin], axis=-1)
  return rotated.astype(x.dtype)


class Attention(nnx.Module):
  """Multi-head attention with MHA / GQA / MQA key-value heads.

  T5 does not scale attention logits by 1/sqrt(head_dim); it folds that factor
  into the query initialiser instead (scale_attention_logits=False).
  """

  def __init__(self, config: TransformerConfig, *, use_rope: bool, rngs: nnx.Rngs):
    self.config = config
    self.use_rope = use_rope
    d, heads, kv_heads, head_dim = (config.d_model, config.num_heads, config.kv_heads,
                                    config.resolved_head_dim)
    query_scale = mup.query_init_scale(config)
    # Input projections map "embed" to (heads, head_dim); fan-in is d_model.
    self.query = self._projection("btd,dhk->bthk", (d, heads, head_dim),
                                  ("embed", "heads", "kv"), query_scale, rngs)
    self.key = self._projection("btd,dhk->bthk", (d, kv_heads, head_dim),
                                ("embed", "kv_heads", "kv"), 1.0, rngs)
    self.value = self._projection("btd,dhk->bthk", (d, kv_heads, head_dim),
                                  ("embed", "kv_heads", "kv"), 1.0, rngs)
    self.out = self._projection("bthk,hkd->btd", (heads, head_dim, d),
                                ("heads", "kv", "embed"), 1.0, rngs)

  def _projection(self, equation, shape, names, scale, rngs) -> nnx.Einsum:
    is_output = names[-1] == "embed"
    in_axis, out_axis = ((0, 1), 2) if is_output else (0, (1, 2))
    bias_shape = shape[2:] if is_output else shape[1:]
    return nnx.Einsum(
        equation, shape, bias_shape if self.config.use_bias else None,
        kernel_init=partitioned(fan_in_init(in_axis, out_axis, scale), names),
        bias_init=partitioned(init.zeros_init(), names[2:] if is_output else names[1:]),
        rngs=rngs, **dtypes(self.config))

  def __call__(self, inputs_q: Array, inputs_kv: Array, *, mask: Optional[Array],
               bias: Optional[Array] = None, is_causal: bool = False,
               q_positions: Optional[Array] = None, kv_positions: Optional[Array] = None
               ) -> Array:
    """Attends inputs_q [b, t, d] to inputs_kv [b, s, d].

    mask: boolean [b or 1, 1, t, s], True where attention is allowed.
    is_causal: plain causal masking without a mask array (lets fused kernels
      skip materialising it); only valid for unpacked, prefix-free inputs.
    bias: additive [1, heads, t, s] (T5 relative position bias).
    *_positions: [b, t] / [b, s] token positions for RoPE.
    """
    key, value = self.keys_values(inputs_kv, kv_positions)
    return self.attend(inputs_q, key, value, mask=mask, bias=bias, is_causal=is_causal,
                       q_positions=q_positions)

  def keys_values(self, inputs_kv: Array, positions: Optional[Array] = None
                  ) -> tuple[Array, Array]:
    """Keys (rotated when RoPE is on) and values [b, s, kv_heads, head_dim]: what a
    decoding cache keeps."""
    key, value = self.key(inputs_kv), self.value(inputs_kv)
    if self.use_rope:
      key = apply_rope(key, positions, self.config.rope_theta)
    return key, value

  def attend(self, inputs_q: Array, key: Array, value: Array, *, mask: Optional[Array],
             bias: Optional[Array] = None, is_causal: bool = False,
             q_positions: Optional[Array] = None) -> Array:
    """Attention of inputs_q [b, t, d] over given keys and values [b, s, kv_heads, head_dim]."""
    query = self.query(inputs_q)
    if self.use_rope:
      query = apply_rope(query, q_positions, self.config.rope_theta)
    query = constrain(query, ("activation_batch", "activation_length", "activation_heads", None))
    key = constrain(key, ("activation_batch", "activation_length", "activation_kv_heads", None))
    value = constrain(value, ("activation_batch", "activation_length", "activation_kv_heads",
                              None))
    scale = mup.attention_logit_scale(self.config)
    attended = dot_product_attention(query, key, value, mask=mask, bias=bias, scale=scale,
                                     is_causal=is_causal,
                                     implementation=resolve_attention_impl(self.config))
    return self.out(attended)


def resolve_attention_impl(config: TransformerConfig, backend: Optional[str] = None) -> str:
  """The attention implementation to run: config.attention_impl, or when it is None
  the fastest one measured for `backend` (default: this process's; see
  dot_product_attention)."""
  if config.attention_impl is not None:
    return config.attention_impl
  backend = backend or jax.default_backend()
  if backend == "cpu":
    return "einsum"
  if backend == "gpu" and config.dtype in ("bfloat16", "float16"):
    return "cudnn"
  return "xla"


def dot_product_attention(query_BxTxNxH: Array, key_BxSxKxH: Array, value_BxSxKxH: Array, *,
                          mask: Optional[Array], bias: Optional[Array], scale: float,
                          is_causal: bool, implementation: str) -> Array:
  """softmax(scale * q k^T + bias, where mask) v over N query heads sharing K key/value
  heads (N = K * groups); output [B, T, N, H].

  mask: bool [B|1, 1|N, T, S], True where allowed (segment isolation and padding live
  here on every implementation); bias: [B|1, N, T, S]; is_causal: a lower-triangular
  mask without materialising it (T == S).

  implementation:
    "einsum": two einsums and a float32 softmax, key/value heads never repeated. On
      XLA:CPU it is ~1.7x faster than jax.nn.dot_product_attention for a training step
      of causal attention (whose vmap over head groups adds transposes and a reduction
      to the backward pass).
    "xla" / "cudnn": jax.nn.dot_product_attention (cudnn: the fused flash kernel on
      NVIDIA GPUs, for 16-bit dtypes; a mask becomes a bias there). A shape cuDNN
      refuses falls back to "xla".
  """
  if bias is not None:
    bias = bias.astype(query_BxTxNxH.dtype)
  if implementation == "einsum":
    return _einsum_attention(query_BxTxNxH, key_BxSxKxH, value_BxSxKxH, mask, bias, scale,
                             is_causal)
  if implementation == "cudnn":
    try:
      return jax.nn.dot_product_attention(query_BxTxNxH, key_BxSxKxH, value_BxSxKxH,
                                          bias=bias, mask=mask, scale=scale,
                                          is_causal=is_causal, implementation="cudnn")
    except (ValueError, NotImplementedError, RuntimeError):
      implementation = "xla"  # a shape, dtype or mask cuDNN does not take
  return jax.nn.dot_product_attention(query_BxTxNxH, key_BxSxKxH, value_BxSxKxH, bias=bias,
                                      mask=mask, scale=scale, is_causal=is_causal,
                                      implementation=implementation)


def _einsum_attention(query_BxTxNxH: Array, key_BxSxKxH: Array, value_BxSxKxH: Array,
                      mask: Optional[Array], bias: Optional[Array], scale: float,
                      is_causal: bool) -> Array:
  batch, length, heads, head_dim = query_BxTxNxH.shape
  kv_heads, kv_length = key_BxSxKxH.shape[2], key_BxSxKxH.shape[1]
  groups = heads // kv_heads
  if scale != 1.0:
    # Scaling the queries costs T*H multiplies per head instead of T*S on the logits.
    query_BxTxNxH = query_BxTxNxH * jnp.asarray(scale, query_BxTxNxH.dtype)
  query_BxTxKxGxH = query_BxTxNxH.reshape(batch, length, kv_heads, groups, head_dim)
  logits_BxKxGxTxS = jnp.einsum("btkgh,bskh->bkgts", query_BxTxKxGxH, key_BxSxKxH,
                                preferred_element_type=jnp.float32)

  def grouped(array):  # [b, 1|N, T, S] -> [b, 1|K, 1|G, T, S]
    if array.shape[1] == 1:
      return array[:, :, None]
    return array.reshape(array.shape[0], kv_heads, groups, *array.shape[2:])

  if bias is not None:
    logits_BxKxGxTxS = logits_BxKxGxTxS + grouped(bias).astype(jnp.float32)
  if is_causal:
    causal_TxS = jnp.arange(length)[:, None] >= jnp.arange(kv_length)[None, :]
    mask = causal_TxS[None, None] if mask is None else mask & causal_TxS
  if mask is not None:
    # As jax.nn.dot_product_attention: a large finite negative, so a row with every
    # key masked averages the values uniformly instead of producing NaN.
    logits_BxKxGxTxS = jnp.where(grouped(mask), logits_BxKxGxTxS,
                                 -0.7 * jnp.finfo(jnp.float32).max)
  probs_BxKxGxTxS = jax.nn.softmax(logits_BxKxGxTxS, axis=-1).astype(value_BxSxKxH.dtype)
  out_BxTxKxGxH = jnp.einsum("bkgts,bskh->btkgh", probs_BxKxGxTxS, value_BxSxKxH)
  return out_BxTxKxGxH.reshape(batch, length, heads, head_dim)


def relative_position_bucket(relative_position: Array, *, bidirectional: bool, num_buckets: int,
                             max_distance: int) -> Array:
  """T5's bucketing of (key position - query position): exact for small
  distances, logarithmic up to max_distance, one bucket beyond."""
  buckets = jnp.zeros_like(relative_position)
  if bidirectional:
    num_buckets //= 2
    buckets += (relative_position > 0).astype(relative_position.dtype) * num_buckets
    distance = jnp.abs(relative_position)
  else:
    distance = -jnp.minimum(relative_position, 0)
  max_exact = num_buckets // 2
  is_small = distance < max_exact
  # Clamp before the log so distance 0 never produces -inf (it is "small" anyway).
  log_ratio = jnp.log(jnp.maximum(distance, 1).astype(jnp.float32) / max_exact)
  if_large = max_exact + (log_ratio / math.log(max_distance / max_exact) *
                          (num_buckets - max_exact)).astype(relative_position.dtype)
  if_large = jnp.minimum(if_large, num_buckets - 1)
  return buckets + jnp.where(is_small, distance, if_large)


class RelativePositionBias(nnx.Module):
  """T5's learned per-head bias over bucketed relative positions, computed once
  per stack and shared by all its layers."""

  def __init__(self, config: TransformerConfig, *, bidirectional: bool, rngs: nnx.Rngs):
    self.bidirectional = bidirectional
    self.num_buckets = config.relative_attention_num_buckets
    self.max_distance = config.relative_attention_max_distance
    self.embedding = nnx.Embed(
        self.num_buckets, config.num_heads,
        embedding_init=partitioned(init.variance_scaling(1.0, "fan_avg", "uniform"),
                                             ("relpos_buckets", "heads")),
        rngs=rngs, **dtypes(config))

  def __call__(self, q_length: int, k_length: int,
               q_positions: Optional[Array] = None) -> Array:
    """The additive bias [1, heads, q_length, k_length] for queries at 0..q_length-1, or
    [b, heads, t, k_length] for queries at q_positions [b, t] (incremental decoding)."""
    if q_positions is None:
      q_positions = jnp.arange(q_length)[None]
    relative = jnp.arange(k_length)[None, None, :] - q_positions[:, :, None]
    buckets = relative_position_bucket(relative, bidirectional=self.bidirectional,
                                       num_buckets=self.num_buckets,
                                       max_distance=self.max_distance)
    values = self.embedding(buckets)  # [b, q, k, heads]
    return jnp.transpose(values, (0, 3, 1, 2))


def sinusoidal_positions(positions: Array, d_model: int, max_timescale: float = 1.0e4) -> Array:
  """Fixed sin/cos position features [b, t, d_model] (sin half, then cos half)."""
  half = d_model // 2
  inv_timescale = jnp.exp(-math.log(max_timescale) * jnp.arange(half) / max(half - 1, 1))
  angles_BxTxH = positions.astype(jnp.float32)[..., None] * inv_timescale[None, None, :]
  features = jnp.concatenate([jnp.sin(angles_BxTxH), jnp.cos(angles_BxTxH)], axis=-1)
  return jnp.pad(features, [(0, 0), (0, 0), (0, d_model - 2 * half)])


class AbsolutePositionEmbedding(nnx.Module):
  """Adds learned (GPT-2 style) or sinusoidal position features to the input."""

  def __init__(self, config: TransformerConfig, *, rngs: nnx.Rngs):
    self.config = config
    if config.position_encoding == "learned":
      self.table = nnx.Embed(
          config.max_length, config.d_model,
          embedding_init=partitioned(init.normal(0.02), ("abspos", "embed")),
          rngs=rngs, **dtypes(config))

  def __call__(self, x: Array, positions: Array) -> Array:
    if self.config.position_encoding == "learned":
      return x + self.table(positions)
    return x + sinusoidal_positions(positions, self.config.d_model).astype(x.dtype)


def make_token_embedding(config: TransformerConfig, *, rngs: nnx.Rngs) -> nnx.Embed:
  return nnx.Embed(
      config.vocab_size, config.d_model,
      embedding_init=partitioned(init.normal(config.embedding_init_std),
                                           ("vocab", "embed")),
      rngs=rngs, **dtypes(config))
