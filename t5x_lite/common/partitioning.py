"""Logical axis names and the rules that map them onto the device mesh.

Model code names every parameter and block-boundary activation axis with a
logical name; this table alone decides which mesh axis ("data", "fsdp", "tensor",
"stage") shards it, so pipeline, data, FSDP and tensor parallelism are a rules/mesh
change rather than a model change (the T5X/MaxText convention).
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

# "stage": pipeline stages (models/pipeline.py); the others as in T5X.
MESH_AXES = ("data", "fsdp", "tensor", "stage")

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


class MeshError(ConfigError):
  """A mesh shape that does not fit the devices; the message says what to set."""


def create_mesh(shape: Sequence[int] = (-1, 1, 1),
                devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A ("data", "fsdp", "tensor", "stage") mesh over all devices; one -1 entry takes the
  rest. `shape` has four entries, or three for (data, fsdp, tensor) with one stage.

  Entry points bind `create_mesh.shape` in gin (gin/meshes/*.gin). The device order is
  jax's (process-major), so on multi-host systems each host's devices form a
  contiguous block of the data axes and a host feeds exactly its own rows.
  """
  devices = list(jax.devices() if devices is None else devices)
  given = tuple(shape)  # as the user wrote it, for messages
  shape = list(shape)
  if len(shape) == len(MESH_AXES) - 1:
    shape = [*shape, 1]
  if len(shape) != len(MESH_AXES) or shape.count(-1) > 1 or any(
      s == 0 or s < -1 for s in shape):
    raise MeshError(f"mesh shape {given} must have {len(MESH_AXES)} positive entries "
                    f"for {MESH_AXES} (or 3 for {MESH_AXES[:3]}), at most one of them -1.")
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
  return NamedSharding(mesh, PartitionSpec(("data", "fsdp")))


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
