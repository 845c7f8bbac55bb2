"""Moving parameters in and out of models as flat {path: array} dicts.

Paths are tuples such as ("decoder", "layers", 3, "mlp", "wo", "kernel") in the
per-layer layout. With scan_layers=True the layer index disappears and every
layer parameter gains a leading axis; a stack whose every k-th layer is an MoE layer
(k > 1) scans groups of k layers instead, ("decoder", "layers", "blocks", j, ...) with a
leading group axis g holding layer g k + j. `stack_layers` / `unstack_layers` (and
`restack_layers` for sharded device arrays) convert between the two. The
per-layer layout is the one on disk: weight import, export and checkpoints
(parameters and the optimizer state that mirrors them) use it whatever the
model was built with, so a run can change scan_layers and keep its checkpoints.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from t5x_lite.models.configs import TransformerConfig
from t5x_lite.models.transformer import Transformer

Path = tuple
FlatParams = dict[Path, np.ndarray]


def stacked_at(path: Path) -> Optional[int]:
  """Where "layers" is in a path whose leaf stacks every layer on a leading axis
  (scan_layers: no layer index follows it); None for other paths."""
  for position, part in enumerate(path[:-1]):
    if part == "layers" and not str(path[position + 1]).isdigit():
      return position
  return None


def layer_path(path: Path, position: int, index: int) -> Path:
  """The per-layer path of layer `index` of a stacked path ("layers" at `position`)."""
  return path[:position + 1] + (index,) + path[position + 1:]


GROUP = "blocks"  # the scanned group's list of layers (models/transformer.py LayerGroup)


def _group_sizes(paths) -> dict[Path, int]:
  """{stack prefix ending in "layers": k} for the stacks scanned in groups of k layers."""
  sizes: dict[Path, int] = {}
  for path in paths:
    position = stacked_at(path)
    if position is not None and path[position + 1] == GROUP:
      prefix = path[:position + 1]
      sizes[prefix] = max(sizes.get(prefix, 0), int(path[position + 2]) + 1)
  return sizes


def per_layer_paths(path: Path, units: int, group_sizes: Mapping[Path, int]) -> list[Path]:
  """The per-layer paths a stacked path's `units` entries hold, in order along its axis."""
  position = stacked_at(path)
  if path[position + 1] != GROUP:
    return [layer_path(path, position, i) for i in range(units)]
  size, member = group_sizes[path[:position + 1]], int(path[position + 2])
  return [path[:position + 1] + (g * size + member,) + path[position + 3:] for g in range(units)]


def flat_params(model: Transformer) -> FlatParams:
  """The model's parameters in the per-layer layout, as host numpy arrays."""
  flat = {path: np.asarray(var.get_value())
          for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param))}
  if model.config.scan_layers:
    flat = unstack_layers(flat)
  return flat


def unstack_layers(flat: Mapping[Path, Any],
                   take: Callable[[Any, int], Any] = lambda value, index: value[index]
                   ) -> dict[Path, Any]:
  """Scanned layout (a leading layer axis) -> one entry per layer index; other entries
  (and entries of the per-layer layout) pass through. `take(value, index)` is one layer
  of a stacked value (numpy, jax, or `abstract_layer` for shape placeholders)."""
  out = {}
  groups = _group_sizes(flat)
  for path, value in flat.items():
    if stacked_at(path) is None:
      out[path] = value
    else:
      for index, target in enumerate(per_layer_paths(path, value.shape[0], groups)):
        out[target] = take(value, index)
  return out


def abstract_layer(leaf: jax.ShapeDtypeStruct, index: int = 0) -> jax.ShapeDtypeStruct:
  """The placeholder of one layer of a stacked leaf: no leading axis, the rest sharded
  as before (the layer axis itself is never sharded: partitioning.py)."""
  sharding = leaf.sharding
  if isinstance(sharding, NamedSharding):
    spec = tuple(sharding.spec) + (None,) * (len(leaf.shape) - len(sharding.spec))
    sharding = NamedSharding(sharding.mesh, PartitionSpec(*spec[1:]))
  return jax.ShapeDtypeStruct(leaf.shape[1:], leaf.dtype, sharding=sharding)


def restack_layers(per_layer: Mapping[Path, jax.Array],
                   template: Mapping[Path, jax.ShapeDtypeStruct]) -> dict[Path, jax.Array]:
  """The inverse of unstack_layers for device arrays: every stacked entry of `template`
  gathered from its per-layer entries, placed with the template's sharding."""
  out = {}
  groups = _group_sizes(template)
  for path, leaf in template.items():
    if stacked_at(path) is None:
      out[path] = per_layer[path]
      continue
    layers = [per_layer[p] for p in per_layer_paths(path, leaf.shape[0], groups)]
    out[path] = jax.jit(jnp.stack, out_shardings=leaf.sharding)(layers)
  return out


def stack_layers(flat: Mapping[Path, np.ndarray], template: Mapping[Path, Any]
                 ) -> FlatParams:
  """Per-layer layout -> the scanned layout of `template` (a scanned model's flat state:
  which entries are stacked, how many units each holds, and in which groups)."""
  groups = _group_sizes(template)
  out: FlatParams = {}
  for path, leaf in template.items():
    if stacked_at(path) is None:
      if path in flat:
        out[path] = flat[path]
      continue
    members = per_layer_paths(path, leaf.shape[0], groups)
    if all(member in flat for member in members):
      out[path] = np.stack([flat[member] for member in members])
  # Entries the template does not know stay, for model_from_params to report.
  used = {member for path, leaf in template.items() if stacked_at(path) is not None
          for member in per_layer_paths(path, leaf.shape[0], groups)}
  out.update({path: value for path, value in flat.items()
              if path not in used and path not in template})
  return out


def abstract_model(config: TransformerConfig) -> Transformer:
  """The model's structure with shape/dtype placeholders, nothing allocated."""
  return nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(0)))


def model_from_params(config: TransformerConfig, flat: Mapping[Path, np.ndarray]) -> Transformer:
  """Builds a model of `config` holding exactly the given per-layer parameters.

  Raises ValueError naming missing, unexpected or mis-shaped parameters, so a
  weight file that does not match the config is never loaded half-way.
  """
  graphdef, state = nnx.split(abstract_model(config))
  expected = dict(nnx.to_flat_state(state))
  if config.scan_layers:
    flat = stack_layers(flat, {path: var.get_value() for path, var in expected.items()})
  missing = sorted(map(str, set(expected) - set(flat)))
  unexpected = sorted(map(str, set(flat) - set(expected)))
  if missing or unexpected:
    raise ValueError(f"Parameters do not match the model config: missing {missing[:5]}"
                     f"{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
                     f"{'...' if len(unexpected) > 5 else ''}.")
  for path, var in expected.items():
    value = np.asarray(flat[path])
    if value.shape != var.get_value().shape:
      raise ValueError(f"Parameter {'/'.join(map(str, path))} has shape {value.shape}; the "
                       f"config expects {var.get_value().shape}.")
    var.set_value(jnp.asarray(value, dtype=var.get_value().dtype))
  return nnx.merge(graphdef, nnx.from_flat_state(expected))


def count_initialized_params(model: Transformer) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
