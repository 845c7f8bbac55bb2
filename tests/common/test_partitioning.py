"""Meshes: axis sizes from the devices, errors naming the shape, what cannot divide is
replicated."""

import re

import jax
import pytest

from t5x_lite.common import partitioning


def test_a_minus_one_mesh_axis_takes_the_remaining_devices():
  mesh = partitioning.create_mesh((2, -1, 2))  # three entries: one stage, one expert shard
  assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2, "stage": 1, "expert": 1}
  mesh = partitioning.create_mesh((1, -1, 2, 2))
  assert dict(mesh.shape) == {"data": 1, "fsdp": 2, "tensor": 2, "stage": 2, "expert": 1}
  mesh = partitioning.create_mesh((1, 1, 2, 1, -1))
  assert dict(mesh.shape) == {"data": 1, "fsdp": 1, "tensor": 2, "stage": 1, "expert": 4}
  assert partitioning.batch_shards(mesh) == 4  # the expert axis splits the batch too


@pytest.mark.parametrize("shape, message", [
    ((3, 1, 1), "needs 3 devices but 8 are available"),
    ((3, -1, 1), "cannot fill 8 devices"),
    ((2, 2), "must have 5 positive entries"),
    ((2, 1, 1, 1, 1, 1), "or 3 for ('data', 'fsdp', 'tensor')"),
])
def test_a_mesh_that_does_not_fit_the_devices_is_one_clear_error(shape, message):
  with pytest.raises(partitioning.MeshError, match=re.escape(message)):
    partitioning.create_mesh(shape)


def test_dimensions_the_mesh_cannot_divide_are_replicated():
  mesh = partitioning.create_mesh((1, 2, 4))
  # 2 KV heads cannot be split 4 ways: replicated; 64-wide embed splits over fsdp.
  spec = partitioning.mesh_axes_for(("embed", "kv_heads", "kv"), (64, 2, 16), mesh)
  assert spec == jax.sharding.PartitionSpec("fsdp", None, None)
  spec = partitioning.mesh_axes_for(("embed", "heads", "kv"), (64, 8, 16), mesh)
  assert spec == jax.sharding.PartitionSpec("fsdp", "tensor", None)
