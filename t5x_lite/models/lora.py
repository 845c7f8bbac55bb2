"""LoRA (Hu et al., 2021) on the attention and MLP projections of any t5x_lite model.

`apply_lora(model, LoraConfig(...))` wraps each targeted projection so it computes
    y = base(x) + (alpha / rank) * unflatten(flatten(x) @ A @ B)
with A [in, rank] and B [rank, out] from Flax's `nnx.LoRA` (A random, B zero, so the
wrapped model starts as exactly the base model). Adapters are `nnx.LoRAParam`
variables: train them with an optimizer over that filter
(`nnx.Optimizer(model, tx, wrt=nnx.LoRAParam)`) and the base `nnx.Param`s stay frozen
(no gradient, no optimizer state). `merge_lora` folds the adapters into the base
kernels and returns a plain model (for infer, evaluate and Hugging Face export).
`adapt` splits an adapted model into adapters and frozen base, as the trainer trains
it (gin/runs/lora.gin; adapter checkpoints and their base: adapters.py).

Projections are named as in the model: attention `query`, `key`, `value`, `out`
(self- and cross-attention), MLP `wi_0`, `wi_1` (gated models), `wo`; the groups
`attention` and `mlp` name those of each kind that the model has. Attention
kernels are 3-D einsums ([d_model, heads, head_dim] in, [heads, head_dim, d_model]
out): the adapter sees their input and output dimensions flattened.

LoRA is applied to the unscanned layout (`scan_layers=False`); checkpoints store one
layout, so a scanned run's checkpoint loads unscanned for adaptation.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from t5x_lite.common.errors import ConfigError, check_field_types
from t5x_lite.models import quantization
from t5x_lite.models.transformer import PROJECTIONS, contracted_dims, expert_dims, projections

# Target groups: every projection of the kind that the model has (wi_1 only when gated).
GROUPS = {"attention": ("query", "key", "value", "out"), "mlp": ("wi_0", "wi_1", "wo")}


@dataclasses.dataclass(frozen=True)
class LoraConfig:
  """Which projections get adapters, and their rank and scale (gin: `lora.*`).

  Attributes:
    rank: inner dimension r of A [in, r] and B [r, out].
    alpha: the update is scaled by alpha / rank (so changing the rank keeps the
      update's size at initialisation comparable, as in the paper).
    targets: projection names (PROJECTIONS) or groups (GROUPS) to adapt in every
      layer; by default all attention and MLP projections.
    quantized_base: QLoRA: the base must be a quantized run directory (`python -m
      t5x_lite.quantize`, e.g. int4_weights) and the adapters train over its integer
      weights. (A quantized base is used as such even without it; this asks that it be one.)
  """
  rank: int = 8
  alpha: float = 16.0
  targets: tuple[str, ...] = ("attention", "mlp")
  quantized_base: bool = False

  def __post_init__(self):
    object.__setattr__(self, "targets", tuple(self.targets))
    check_field_types(self, "lora")
    if self.rank <= 0 or self.alpha <= 0:
      raise ConfigError(f"lora.rank and lora.alpha must be positive, got {self.rank} and "
                        f"{self.alpha}.")
    unknown = [t for t in self.targets if t not in PROJECTIONS and t not in GROUPS]
    if unknown or not self.targets:
      raise ConfigError(f"lora.targets {list(self.targets)}: {unknown or 'none given'} are not "
                        f"projections; choose from {list(PROJECTIONS)} or the groups "
                        f"{list(GROUPS)}.")

  @property
  def scale(self) -> float:
    return self.alpha / self.rank


class LoraProjection(nnx.Module):
  """A projection (nnx.Linear or nnx.Einsum) plus a scaled low-rank update."""

  def __init__(self, base: nnx.Module, config: LoraConfig, *, rngs: nnx.Rngs):
    self.base = base
    self.scale = config.scale
    kernel_shape = base.kernel.shape
    self.in_dims = contracted_dims(base)
    experts = expert_dims(base)
    self.out_shape = tuple(kernel_shape[experts + self.in_dims:])
    fan_in = math.prod(kernel_shape[experts:experts + self.in_dims])
    if experts:  # an MoE block's routed experts: one adapter per expert
      self.lora = ExpertLora(kernel_shape[0], fan_in, config.rank, math.prod(self.out_shape),
                             base.kernel.dtype, rngs=rngs)
    else:
      self.lora = nnx.LoRA(fan_in, config.rank, math.prod(self.out_shape),
                           param_dtype=base.kernel.dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    x_flat = x.reshape(x.shape[:x.ndim - self.in_dims] + (-1,))
    update = self.lora(x_flat).reshape(x_flat.shape[:-1] + self.out_shape)
    y = self.base(x)
    return y + (self.scale * update).astype(y.dtype)

  def merged(self) -> nnx.Module:
    """The base projection with the update folded into its kernel. A quantized base
    (QLoRA: a qwix projection) becomes the float projection of its dequantized weights
    plus the update, the function the adapters were trained with."""
    delta = (self.lora.lora_a[...] @ self.lora.lora_b[...]) * self.scale
    base = quantization.dequantized(self.base)
    kernel = base.kernel
    kernel[...] = kernel[...] + delta.reshape(kernel.shape).astype(kernel.dtype)
    return base


class ExpertLora(nnx.Module):
  """E low-rank updates, x_e A_e B_e for the tokens x_e [E, ..., in] dispatched to expert
  e: A [E, in, rank] random, B [E, rank, out] zero (as nnx.LoRA, expert by expert)."""

  def __init__(self, experts: int, fan_in: int, rank: int, fan_out: int, dtype, *,
               rngs: nnx.Rngs):
    init_a = nnx.initializers.lecun_normal(in_axis=-2, out_axis=-1, batch_axis=(0,))
    self.lora_a = nnx.LoRAParam(init_a(rngs.params(), (experts, fan_in, rank), dtype))
    self.lora_b = nnx.LoRAParam(jnp.zeros((experts, rank, fan_out), dtype))

  def __call__(self, x_ExNxI: jax.Array) -> jax.Array:
    shape = x_ExNxI.shape
    x_flat = x_ExNxI.reshape(shape[0], -1, shape[-1])
    low_rank = jnp.einsum("eni,eir->enr", x_flat, self.lora_a[...])
    return jnp.einsum("enr,ero->eno", low_rank, self.lora_b[...]).reshape(*shape[:-1], -1)


def apply_lora(model: nnx.Module, config: LoraConfig, seed: int = 0) -> nnx.Module:
  """Wraps the targeted projections of `model` (in place) with adapters; returns it."""
  if model.config.scan_layers:
    raise ConfigError("LoRA needs the unscanned layout: set TransformerConfig.scan_layers="
                      "False (checkpoints store one layout, so a scanned run loads unscanned).")
  rngs = nnx.Rngs(params=seed)
  found = {owner_name for _, owner_name in projections(model)}
  missing = [t for t in config.targets if t in PROJECTIONS and t not in found]
  if missing:
    raise ConfigError(f"lora.targets {missing} match no layer of this "
                      f"{model.config.architecture} (it has {sorted(found)}; wi_1 exists only "
                      "in gated models).")
  targets = {name for t in config.targets for name in GROUPS.get(t, (t,))}
  for owner, name in list(projections(model)):
    if name in targets:
      setattr(owner, name, LoraProjection(getattr(owner, name), config, rngs=rngs))
  return model


class AdaptedModel(NamedTuple):
  """A LoRA model split for training: `adapters` (nnx.LoRAParam, trained) and `base`
  (the frozen nnx.Params, in the adapted model's layout); nnx.merge(graphdef, adapters,
  base) rebuilds it."""
  graphdef: nnx.GraphDef
  adapters: nnx.State
  base: nnx.State


def adapt(model: nnx.Module, config: LoraConfig, seed: int = 0) -> AdaptedModel:
  """apply_lora, split into adapters and frozen base (the base arrays are not copied)."""
  return AdaptedModel(*nnx.split(apply_lora(model, config, seed), nnx.LoRAParam, nnx.Param))


def merge_lora(model: nnx.Module) -> nnx.Module:
  """Folds every adapter into its base kernel (in place); returns the plain model."""
  for owner, name in list(projections(model)):
    projection = getattr(owner, name)
    if isinstance(projection, LoraProjection):
      setattr(owner, name, projection.merged())
  return model


def parameter_counts(model: nnx.Module) -> dict[str, int]:
  """Trainable (adapter) and frozen (base) parameter counts."""
  def total(state) -> int:
    return sum(int(leaf.size) for leaf in jax.tree.leaves(state))
  return {"adapter": total(nnx.state(model, nnx.LoRAParam)),
          "base": total(nnx.state(model, nnx.All(nnx.Param, nnx.Not(nnx.LoRAParam))))}


def optimizer_state_bytes(model: nnx.Module, tx, wrt=nnx.LoRAParam) -> int:
  """Bytes of `tx`'s state for the parameters `wrt` selects (adapters by default,
  nnx.Param for full fine-tuning)."""
  state = jax.eval_shape(tx.init, nnx.state(model, wrt))
  return sum(int(jnp.dtype(leaf.dtype).itemsize * math.prod(leaf.shape))
             for leaf in jax.tree.leaves(state) if hasattr(leaf, "shape"))
