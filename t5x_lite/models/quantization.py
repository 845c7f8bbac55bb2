"""Post-training quantization of any t5x_lite model through Google's qwix.

`quantize(model, "int8_weights")` returns a copy whose weight matrices are stored as
qwix quantized arrays (integer values + float scales) and multiply through qwix's
quantized dot_general/einsum; everything else (norms, biases, position tables, the
KV cache, decoding) is unchanged, so infer, evaluate, scoring and every decoding
method run on it as on the float model.

Modes (MODES):
  int8_weights                   int8, symmetric absmax, per output channel
  int4_weights                   int4, symmetric absmax, per output channel in groups
                                 of GROUP_SIZE inputs (sub-channel), per channel when
                                 the input dimension is not a multiple of it
  nf4_weights                    4-bit NormalFloat (QLoRA's data type: 16 levels at the
                                 quantiles of a normal distribution, absmax-scaled) in
                                 groups of NF4_GROUP_SIZE inputs, as QLoRA's blocks;
                                 stored as uint4 codes, multiplied after dequantizing
                                 (qwix emulates it: it saves memory, not time)
  int8_weights_int8_activations  int8 weights as above, and each projection's input
                                 quantized to int8 on the fly (dynamic range, per token)

What is quantized (the rule): every attention projection (query, key, value, out, self-
and cross-attention) and MLP projection (wi_0, wi_1, wo) of every layer, and the output
layer when it is its own matrix (untied) and `output_layer` is set (default). The token
embedding stays float: it is a table lookup, not a matrix product, and with tied
embeddings it is also the output layer, which then stays float as well.

Each projection is quantized by qwix's PtqProvider on its own (qwix.quantize_model over
the projection module): the model applies its layers through nnx.split/merge, and a
per-projection module keeps the quantized weights and the quantized call wherever the
projection is used. Quantized models are checkpointed like any (`python -m
t5x_lite.quantize`, runs/loading.write_quantized); the run record names the mode, and
the loader rebuilds the quantized structure before restoring the integer weights.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional, Union

import jax
import jax.numpy as jnp
import qwix
from flax import nnx

from t5x_lite.common.errors import ConfigError
from t5x_lite.models.transformer import Transformer, contracted_dims, expert_dims, projections

GROUP_SIZE = 128  # int4 sub-channel groups: inputs that share one scale
NF4_GROUP_SIZE = 64  # QLoRA's block size (Dettmers et al. 2023)


@dataclasses.dataclass(frozen=True)
class Mode:
  weight_dtype: Union[jnp.dtype, str]  # a dtype, or qwix's name of a synthetic type
  group_size: Optional[int] = None
  activation_dtype: Optional[jnp.dtype] = None


MODES = {
    "int8_weights": Mode(jnp.int8),
    "int4_weights": Mode(jnp.int4, group_size=GROUP_SIZE),
    "nf4_weights": Mode("nf4", group_size=NF4_GROUP_SIZE),
    "int8_weights_int8_activations": Mode(jnp.int8, activation_dtype=jnp.int8),
}


class QuantizationError(ConfigError):
  """An unsupported mode, or a model that cannot be quantized as asked."""


def check_mode(mode: str) -> Mode:
  if mode not in MODES:
    raise QuantizationError(f"quantize={mode!r} is not a supported mode; choose from "
                            f"{list(MODES)}.")
  return MODES[mode]


def is_quantized(module: nnx.Module) -> bool:
  """Whether qwix has quantized this projection (its class is qwix's intercepting one)."""
  return hasattr(type(module), "_unquantized_type")


def quantized_mode(model: Transformer) -> Optional[str]:
  """The mode a model was quantized with (recorded on it by `quantize`), or None."""
  return getattr(model, "quantization", None)


def _quantize_projection(module: nnx.Module, mode: Mode) -> nnx.Module:
  """The projection with qwix-quantized weights (one call converts them)."""
  inputs, experts = contracted_dims(module), expert_dims(module)
  # Routed experts ([E, in, out]) are quantized expert by expert: qwix's scales are per
  # expert and output channel, as its einsum keeps the expert axis.
  in_shape = tuple(module.kernel.shape[experts:experts + inputs])
  fan_in = math.prod(in_shape)
  # Sub-channel groups tile the contracted (input) axis; a 3-D attention kernel
  # contracts one axis into the model width, or heads x head_dim into it (out).
  tile = mode.group_size if (mode.group_size and inputs == 1
                             and fan_in % mode.group_size == 0) else None
  rule = qwix.QuantizationRule(module_path=".*", weight_qtype=mode.weight_dtype,
                               tile_size=tile, act_qtype=mode.activation_dtype)
  sample = jnp.zeros((*module.kernel.shape[:experts], 1, 1, *in_shape), module.kernel.dtype)
  return qwix.quantize_model(module, qwix.PtqProvider([rule]), sample)


def quantize(model: Transformer, mode: str, *, output_layer: bool = True) -> Transformer:
  """A copy of `model` with its weight matrices quantized by `mode` (see the module
  docstring for which); the float model is left as it was."""
  settings = check_mode(mode)
  if quantized_mode(model) is not None:
    raise QuantizationError(f"this model is already quantized ({quantized_mode(model)}); "
                            "quantize its float checkpoint instead.")
  if model.config.scan_layers:
    raise QuantizationError("quantization needs the unscanned layout: load the model with "
                            "TransformerConfig.scan_layers=False.")
  model = nnx.clone(model)
  for owner, name in list(projections(model)):
    setattr(owner, name, _quantize_projection(getattr(owner, name), settings))
  if output_layer and not model.config.tie_embeddings:
    model.logits_dense = _quantize_projection(model.logits_dense, settings)
  model.quantization = mode
  return model


def dequantized(module: nnx.Module) -> nnx.Module:
  """A qwix-quantized projection as the float one of its dequantized weights (in place;
  other modules are returned as they are)."""
  unquantized = getattr(type(module), "_unquantized_type", None)
  if unquantized is None:
    return module
  weights = qwix.dequantize(module.kernel.array)
  module.__class__ = unquantized
  module.kernel = nnx.Param(weights)
  return module


def dequantize(model: Transformer) -> Transformer:
  """Every quantized projection of `model` (and its output layer) as float (in place):
  e.g. to export a model fine-tuned over a quantized base."""
  for owner, name in list(projections(model)):
    setattr(owner, name, dequantized(getattr(owner, name)))
  if not model.config.tie_embeddings:
    model.logits_dense = dequantized(model.logits_dense)
  model.quantization = None
  return model


def parameter_bytes(model: nnx.Module) -> int:
  """Bytes of the model's parameters as stored (int4 counted at half a byte)."""
  total = 0
  for leaf in jax.tree.leaves(nnx.state(model, nnx.Param)):
    bits = jnp.iinfo(leaf.dtype).bits if jnp.issubdtype(leaf.dtype, jnp.integer) else \
        jnp.finfo(leaf.dtype).bits
    total += leaf.size * bits // 8
  return total


def storable(state: nnx.State) -> nnx.State:
  """The state with NF4's uint4 codes bitcast to int4 (same bits): orbax's tensorstore
  stores int4 but not uint4. The loader (runs/loading.py) bitcasts them back."""
  return jax.tree.map(lambda value: jax.lax.bitcast_convert_type(value, jnp.int4)
                      if value.dtype == jnp.uint4 else value, state)
