"""Logical axis names and the rules that map them onto the device mesh.

Model code names every parameter and block-boundary activation axis with a
logical name; this table alone decides which mesh axis ("data", "fsdp",
"tensor") shards it, so data, FSDP and tensor parallelism are a rules/mesh
change rather than a model change (the T5X/MaxText convention).
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax

MESH_AXES = ("data", "fsdp", "tensor")

# (logical name, mesh axis or axes). Names absent here are replicated.
LOGICAL_AXIS_RULES: tuple[tuple[str, object], ...] = (
    # Parameters: FSDP shards the model dimension, tensor parallelism the
    # head / feed-forward / vocabulary dimensions (Megatron-style).
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("kv", None),
    ("layers", None),
    ("relpos_buckets", None),
    ("abspos", None),
    # Activations: the batch is split over every data-like axis.
    ("activation_batch", ("data", "fsdp")),
    ("activation_length", None),
    ("activation_embed", None),
    ("activation_heads", "tensor"),
    ("activation_kv_heads", "tensor"),
    ("activation_mlp", "tensor"),
    ("activation_vocab", "tensor"),
)


def constrain(x: jax.Array, logical_axes: Sequence[str | None]) -> jax.Array:
  """Pins an activation's sharding by logical axis names.

  A no-op outside a mesh context (single-device runs and tests), so model
  code can call it unconditionally at block boundaries.
  """
  return nn.with_logical_constraint(x, tuple(logical_axes))
