"""Logical axis names and the rules that map them onto the device mesh.

Model code names every parameter and block-boundary activation axis with a
logical name; this table alone decides which mesh axis ("data", "fsdp", "tensor",
"stage", "expert") shards it, so pipeline, data, FSDP, tensor and expert parallelism are
a rules/mesh change rather than a model change (the T5X/MaxText convention).

Expert parallelism: the "expert" axis shards the experts of MoE layers (their weights and
the buffer of tokens dispatched to them, models/moe.py) and, everywhere else, acts as one
more data axis: the batch is split over data x fsdp x expert, so between the two layouts
XLA moves the tokens with an all-to-all.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Iterator, Sequence

import flax.linen as nn
import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from t5x_lite.common.errors import ConfigError

# "stage": pipeline stages (models/pipeline.py); "expert": MoE experts; the others as in
# T5X.
MESH_AXES = ("data", "fsdp", "tensor", "stage", "expert")
# The axes the batch is split over.
BATCH_AXES = ("data", "fsdp", "expert")

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
    # Stacked layers: stage s holds the s-th block of consecutive layers (with circular
    # repeats the pipeline regroups them; see models/pipeline.py).
    ("layers", "stage"),
    ("relpos_buckets", None),
    ("abspos", None),
    # MoE: expert e's weights and dispatched tokens live on expert shard e // (E / size).
    ("experts", "expert"),
    ("activation_experts", "expert"),
    ("activation_expert_batch", ("data", "fsdp")),
    # Activations: the batch is split over every data-like axis.
    ("activation_batch", BATCH_AXES),
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


class MeshError(ConfigError):
  """A mesh shape that does not fit the devices; the message says what to set."""


def create_mesh(shape: Sequence[int] = (-1, 1, 1),
                devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A ("data", "fsdp", "tensor", "stage", "expert") mesh over all devices; one -1 entry
  takes the rest. `shape` has five entries, or four (no expert parallelism) or three
  (data, fsdp, tensor: neither stages nor expert parallelism).

  Entry points bind `create_mesh.shape` in gin (gin/meshes/*.gin). The device order is
  jax's (process-major), so on multi-host systems each host's devices form a
  contiguous block of the data axes and a host feeds exactly its own rows.
  """
  devices = list(jax.devices() if devices is None else devices)
  given = tuple(shape)  # as the user wrote it, for messages
  shape = list(shape)
  if len(MESH_AXES) - 2 <= len(shape) < len(MESH_AXES):
    shape = [*shape, *[1] * (len(MESH_AXES) - len(shape))]
  if len(shape) != len(MESH_AXES) or shape.count(-1) > 1 or any(
      s == 0 or s < -1 for s in shape):
    raise MeshError(f"mesh shape {given} must have {len(MESH_AXES)} positive entries "
                    f"for {MESH_AXES} (or 4 for {MESH_AXES[:4]}, or 3 for {MESH_AXES[:3]}), "
                    "at most one of them -1.")
  known = math.prod(s for s in shape if s != -1)
  if -1 in shape:
    if len(devices) % known:
      raise MeshError(f"mesh shape {given} cannot fill {len(devices)} devices "
                      f"({len(devices)} is not a multiple of {known}); fix create_mesh.shape.")
    shape[shape.index(-1)] = len(devices) // known
  if math.prod(shape) != len(devices):
    raise MeshError(f"mesh shape {given} needs {math.prod(shape)} devices but "
                    f"{len(devices)} are available; set create_mesh.shape so the product is "
                    f"{len(devices)} (or use -1 for one axis).")
  return Mesh(np.array(devices).reshape(shape), MESH_AXES)


def single_device() -> list[jax.Device]:
  """This process's first device, for one-device meshes on machines that have more."""
  return [jax.local_devices()[0]]


def mesh_axes_for(logical: Sequence[str | None], shape: Sequence[int], mesh: Mesh,
                  rules: Sequence[tuple[str, Any]] = LOGICAL_AXIS_RULES) -> PartitionSpec:
  """The mesh PartitionSpec of an array with these logical axis names.

  A dimension that the mesh axes would not divide evenly (e.g. 2 KV heads
  over 4-way tensor parallelism) is replicated instead of failing.
  """
  spec = nn.logical_to_mesh_axes(tuple(logical), rules)
  resolved = []
  for dim, axes in zip(shape, spec):
    names = (axes,) if isinstance(axes, str) else tuple(axes or ())
    size = math.prod(mesh.shape[name] for name in names)
    resolved.append(axes if names and dim % size == 0 else None)
  return PartitionSpec(*resolved)


def state_shardings(abstract_state: Any, mesh: Mesh,
                    rules: Sequence[tuple[str, Any]] = LOGICAL_AXIS_RULES) -> Any:
  """NamedShardings for an nnx State of variables carrying `out_sharding` names."""
  logical = nnx.get_partition_spec(abstract_state)

  def leaf(spec, value):
    return NamedSharding(mesh, mesh_axes_for(tuple(spec), value.shape, mesh, rules))

  return jax.tree.map(leaf, logical, abstract_state,
                      is_leaf=lambda x: isinstance(x, PartitionSpec))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Batches are split over every data-like axis and replicated over tensor."""
  return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def batch_shards(mesh: Mesh) -> int:
  """How many ways the batch is split (data x fsdp x expert)."""
  return math.prod(mesh.shape.get(axis, 1) for axis in BATCH_AXES)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Assembles each host's rows into global arrays sharded over the batch axes."""
  sharding = batch_sharding(mesh)
  return {key: jax.make_array_from_process_local_data(sharding, value)
          for key, value in local_batch.items()}


@contextlib.contextmanager
def axis_rules(mesh: Mesh, rules: Sequence[tuple[str, Any]] = LOGICAL_AXIS_RULES) -> Iterator[None]:
  """Activates the mesh and rules so `constrain` pins activations while tracing."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    yield
