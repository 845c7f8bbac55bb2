"""Mixture-of-experts feed-forward blocks: a float32 router, top-k dispatch with a
capacity (token dropping) or dropless, the Switch load-balancing loss and ST-MoE's
router z-loss, shared and fine-grained experts.

Routing, per sequence (a row of the batch, so nothing depends on how the batch is split
over devices):
  - the router's logits x W_r and their softmax are float32 whatever the model's dtype;
  - each token picks its k most probable experts; its gates are the chosen
    probabilities renormalised (Mixtral) or as they are (Switch);
  - an expert takes at most C = ceil(capacity_factor x T x k / E) of the T tokens of a
    row (its positions that are not padding; at most T: no expert can receive more), so
    how far a row is padded never changes its routing; assignments are served in GShard's order
    (every token's first choice, in position order, before any second choice) and those
    beyond C are dropped: that expert adds nothing for the token, which keeps its
    residual. Dropless routing (capacity_factor None) sets C = L, so nothing is dropped;
  - padding (positions whose `routable` mask is False: padding and, in packed rows,
    positions of no segment) is never routed: it takes no capacity, gets no expert
    output and is left out of every statistic and auxiliary loss.

Dispatch and combine are one-hot einsums (GShard, Switch): [B, L, E, C] masks move the
tokens into an [E, B, C, D] buffer, the experts run as batched matmuls over it, and the
gates bring the outputs back. Under a mesh with an "expert" axis the buffer is
constrained to experts sharded over that axis while the tokens are sharded over the
batch, so XLA moves them with an all-to-all each way (common/partitioning.py).

The statistics of a call (`stats`) are sums, so layers, stacks and microbatches add
them: the per-layer auxiliary losses, the routed tokens, every expert's assignments and
the dropped ones. `collect()` gathers what the MoE layers of a forward pass report, for
the training objective (training/objectives.py) to add the auxiliary losses and log the
balance.

Definitions (per layer, over the routed tokens T of the call, k choices each):
  load balance (Switch, eq. 4, with f over the k T assignments):
    E x sum_e f_e P_e, f_e = assignments to e / (k T), P_e = mean router probability of e;
    1 when both are uniform;
  router z-loss (ST-MoE, eq. 5): mean over tokens of logsumexp(logits)^2.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from typing import Iterator, Optional

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx.nn import dtypes as flax_dtypes

from t5x_lite.common.partitioning import constrain
from t5x_lite.models import layers
from t5x_lite.models.configs import TransformerConfig

Array = jax.Array
STAT_NAMES = ("aux_loss", "z_loss", "moe_layers", "routed_tokens", "assignments", "dropped")
# The buffer of dispatched tokens [E, B, C, D] on the mesh (partitioning.py's rules): as
# the tokens are (rows over every batch axis, all experts) where it is filled and emptied,
# and with the experts over the "expert" axis (rows over the other batch axes) where the
# experts compute. Pinning both makes the move between them an all-to-all each way;
# without the first, XLA may gather every token to every expert shard instead.
TOKEN_BUFFER_AXES = (None, "activation_batch", None, "activation_embed")
EXPERT_BUFFER_AXES = ("activation_experts", "activation_expert_batch", None, "activation_embed")


def capacity(config: TransformerConfig, length: int, dropless: bool = False) -> int:
  """Slots per expert for a sequence of `length` tokens (see the module docstring); for
  the rows of a batch, the buffer's size (length: the padded one)."""
  if dropless or config.moe_capacity_factor is None:
    return length
  slots = math.ceil(config.moe_capacity_factor * length * config.experts_per_token
                    / config.routed_experts)
  return max(1, min(length, slots))


def row_capacity(config: TransformerConfig, tokens_B: Array, length: int,
                 dropless: bool = False) -> Array:
  """`capacity` of each row's own token count [B] (a traced value: padding is left out)."""
  if dropless or config.moe_capacity_factor is None:
    return jnp.full(tokens_B.shape, length, jnp.float32)
  slots = jnp.ceil(config.moe_capacity_factor * tokens_B * config.experts_per_token
                   / config.routed_experts)
  return jnp.minimum(slots, tokens_B)


def empty_stats(config: TransformerConfig) -> dict[str, Array]:
  """Zero statistics of the structure every MoE layer of `config` returns."""
  stats = {name: jnp.zeros((), jnp.float32) for name in STAT_NAMES}
  stats["expert_assignments"] = jnp.zeros((config.routed_experts,), jnp.float32)
  return stats


def add_stats(a: dict[str, Array], b: dict[str, Array]) -> dict[str, Array]:
  """The sum of two statistics dicts (an empty one is the zero)."""
  if not a:
    return b
  if not b:
    return a
  return jax.tree.map(jnp.add, a, b)


_COLLECTOR: contextvars.ContextVar[Optional[list]] = contextvars.ContextVar(
    "moe_stats", default=None)


@contextlib.contextmanager
def collect() -> Iterator[list]:
  """Gathers the statistics dicts that forward passes inside the block report (one per
  stack with MoE layers); outside it, reports are dropped."""
  reports: list = []
  token = _COLLECTOR.set(reports)
  try:
    yield reports
  finally:
    _COLLECTOR.reset(token)


def report(stats: dict[str, Array]) -> None:
  """Hands a stack's summed statistics to the active `collect()`, if any."""
  reports = _COLLECTOR.get()
  if reports is not None and stats:
    reports.append(stats)


def mean_losses(stats: dict[str, Array]) -> tuple[Array, Array]:
  """(load-balancing loss, router z-loss), each the mean over the MoE layers."""
  layers_run = jnp.maximum(stats["moe_layers"], 1.0)
  return stats["aux_loss"] / layers_run, stats["z_loss"] / layers_run


class ExpertProjection(nnx.Module):
  """E weight matrices [E, d_in, d_out] (and biases [E, d_out]) applied expert by expert
  to an [E, B, C, d_in] buffer."""

  def __init__(self, config: TransformerConfig, d_in: int, d_out: int,
               names: tuple[str, str], *, rngs: nnx.Rngs):
    experts = config.routed_experts
    self.kernel = nnx.Param(layers.partitioned(layers.fan_in_init(-2, -1), ("experts", *names))(
        rngs.params(), (experts, d_in, d_out), jnp.dtype(config.param_dtype)))
    if config.use_bias:
      self.bias = nnx.Param(layers.partitioned(nnx.initializers.zeros_init(),
                                               ("experts", names[1]))(
          rngs.params(), (experts, d_out), jnp.dtype(config.param_dtype)))
    self.dtype = jnp.dtype(config.dtype)

  def __call__(self, x_ExBxCxI: Array) -> Array:
    # Promoted as nnx.Linear does, so a qwix-quantized kernel (models/quantization.py)
    # multiplies through qwix's einsum.
    x_ExBxCxI, kernel = flax_dtypes.promote_dtype((x_ExBxCxI, self.kernel[...]),
                                                  dtype=self.dtype)
    y_ExBxCxO = jnp.einsum("ebci,eio->ebco", x_ExBxCxI, kernel)
    if hasattr(self, "bias"):
      y_ExBxCxO = y_ExBxCxO + self.bias[...].astype(self.dtype)[:, None, None, :]
    return y_ExBxCxO


class Router(nnx.Module):
  """The learned map from a token to its experts' probabilities, in float32."""

  def __init__(self, config: TransformerConfig, *, rngs: nnx.Rngs):
    self.kernel = nnx.Param(layers.partitioned(layers.fan_in_init(), ("embed", None))(
        rngs.params(), (config.d_model, config.routed_experts), jnp.dtype(config.param_dtype)))

  def __call__(self, x_BxLxD: Array) -> Array:
    """Router logits [B, L, E] in float32."""
    return jnp.einsum("bld,de->ble", x_BxLxD.astype(jnp.float32),
                      self.kernel[...].astype(jnp.float32))


class MoeMlp(nnx.Module):
  """The MoE feed-forward block: routed experts (plus shared ones) in place of the Mlp."""

  def __init__(self, config: TransformerConfig, *, rngs: nnx.Rngs):
    self.config = config
    width = config.expert_d_ff
    self.router = Router(config, rngs=rngs)
    self.wi_0 = ExpertProjection(config, config.d_model, width, ("embed", "mlp"), rngs=rngs)
    if config.gated:
      self.wi_1 = ExpertProjection(config, config.d_model, width, ("embed", "mlp"), rngs=rngs)
    self.wo = ExpertProjection(config, width, config.d_model, ("mlp", "embed"), rngs=rngs)
    if config.moe_shared_experts:
      # S shared experts summed are one feed-forward block S times as wide.
      self.shared = layers.Mlp(config.replace(d_ff=config.moe_shared_experts * width,
                                              num_experts=0), rngs=rngs)

  def __call__(self, x_BxLxD: Array, *, routable: Optional[Array] = None,
               dropout_rng: Optional[Array] = None, dropless: bool = False
               ) -> tuple[Array, dict[str, Array]]:
    """(the block's output [B, L, D], this layer's statistics).

    routable: [B, L] bool, False at padding (never routed); None: every position.
    dropless: no capacity limit (incremental decoding, where a call sees one token).
    """
    config = self.config
    batch, length, _ = x_BxLxD.shape
    experts, k = config.routed_experts, config.experts_per_token
    if routable is None:
      routable = jnp.ones((batch, length), bool)
    valid_BxL = routable.astype(jnp.float32)

    logits_BxLxE = self.router(x_BxLxD)
    probs_BxLxE = jax.nn.softmax(logits_BxLxE, axis=-1)
    chosen_BxLxK, expert_BxLxK = jax.lax.top_k(probs_BxLxE, k)
    if config.moe_router == "mixtral":
      gates_BxLxK = chosen_BxLxK / jnp.sum(chosen_BxLxK, axis=-1, keepdims=True)
    else:
      gates_BxLxK = chosen_BxLxK

    # Assignments in serving order: choice-major (all first choices before any second),
    # then by position; padding assigns nothing.
    assigned_BxKxLxE = (jax.nn.one_hot(jnp.swapaxes(expert_BxLxK, 1, 2), experts,
                                       dtype=jnp.float32) * valid_BxL[:, None, :, None])
    slots = capacity(config, length, dropless)  # the buffer: enough for any row
    row_slots_B = row_capacity(config, jnp.sum(valid_BxL, axis=1), length, dropless)
    order_BxKLxE = assigned_BxKxLxE.reshape(batch, k * length, experts)
    slot_BxKLxE = (jnp.cumsum(order_BxKLxE, axis=1) - 1.0) * order_BxKLxE
    kept_BxKLxE = order_BxKLxE * (slot_BxKLxE < row_slots_B[:, None, None])
    slot_BxKxL = jnp.sum(slot_BxKLxE * kept_BxKLxE, axis=-1).reshape(batch, k, length)
    kept_BxKxLxE = kept_BxKLxE.reshape(batch, k, length, experts)
    # One-hot over slots; a token reaches an expert through at most one of its choices.
    slot_onehot_BxKxLxC = jax.nn.one_hot(slot_BxKxL.astype(jnp.int32), slots,
                                         dtype=jnp.float32)
    dispatch_BxLxExC = jnp.einsum("bkle,bklc->blec", kept_BxKxLxE, slot_onehot_BxKxLxC)
    combine_BxLxExC = jnp.einsum("bkle,bklc,blk->blec", kept_BxKxLxE, slot_onehot_BxKxLxC,
                                 gates_BxLxK)

    dtype = jnp.dtype(config.dtype)
    buffer_ExBxCxD = jnp.einsum("blec,bld->ebcd", dispatch_BxLxExC.astype(dtype),
                                x_BxLxD.astype(dtype))
    buffer_ExBxCxD = constrain(constrain(buffer_ExBxCxD, TOKEN_BUFFER_AXES), EXPERT_BUFFER_AXES)
    hidden_ExBxCxF = layers.ACTIVATION_FUNCTIONS[config.activation](self.wi_0(buffer_ExBxCxD))
    if config.gated:
      hidden_ExBxCxF = hidden_ExBxCxF * self.wi_1(buffer_ExBxCxD)
    hidden_ExBxCxF = constrain(hidden_ExBxCxF, (*EXPERT_BUFFER_AXES[:3], "activation_mlp"))
    hidden_ExBxCxF = layers.dropout(hidden_ExBxCxF, config.dropout_rate, dropout_rng)
    out_ExBxCxD = constrain(constrain(self.wo(hidden_ExBxCxF), EXPERT_BUFFER_AXES),
                            TOKEN_BUFFER_AXES)
    y_BxLxD = jnp.einsum("ebcd,blec->bld", out_ExBxCxD, combine_BxLxExC.astype(dtype))
    if hasattr(self, "shared"):
      y_BxLxD = y_BxLxD + self.shared(x_BxLxD, dropout_rng=dropout_rng)

    tokens = jnp.sum(valid_BxL)
    assignments_E = jnp.sum(assigned_BxKxLxE, axis=(0, 1, 2))
    fraction_E = assignments_E / jnp.maximum(k * tokens, 1.0)
    mean_prob_E = (jnp.einsum("ble,bl->e", probs_BxLxE, valid_BxL)
                   / jnp.maximum(tokens, 1.0))
    log_z_BxL = jax.nn.logsumexp(logits_BxLxE, axis=-1)
    stats = {
        "aux_loss": experts * jnp.sum(fraction_E * mean_prob_E),
        "z_loss": jnp.sum(jnp.square(log_z_BxL) * valid_BxL) / jnp.maximum(tokens, 1.0),
        "moe_layers": jnp.ones((), jnp.float32),
        "routed_tokens": tokens,
        "assignments": k * tokens,
        "dropped": k * tokens - jnp.sum(kept_BxKLxE),
        "expert_assignments": assignments_E,
    }
    return y_BxLxD.astype(x_BxLxD.dtype), stats
