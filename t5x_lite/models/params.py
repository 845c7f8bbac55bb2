"""Moving parameters in and out of models as flat {path: array} dicts.

Paths are tuples such as ("decoder", "layers", 3, "mlp", "wo", "kernel") in the
per-layer layout. With scan_layers=True the layer index disappears and every
layer parameter gains a leading axis; `stack_layers` / `unstack_layers`
convert between the two, so weight import, export and checkpoints can use the
per-layer layout whatever the model was built with.
"""

from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from t5x_lite.models.configs import TransformerConfig
from t5x_lite.models.transformer import Transformer

Path = tuple
FlatParams = dict[Path, np.ndarray]


def _is_layer_path(path: Path) -> bool:
  return len(path) > 2 and path[1] == "layers"


def flat_params(model: Transformer) -> FlatParams:
  """The model's parameters in the per-layer layout, as host numpy arrays."""
  flat = {path: np.asarray(var.get_value())
          for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param))}
  if model.config.scan_layers:
    flat = unstack_layers(flat)
  return flat


def unstack_layers(flat: Mapping[Path, np.ndarray]) -> FlatParams:
  """Scanned layout (leading layer axis) -> one entry per layer index."""
  out: FlatParams = {}
  for path, value in flat.items():
    if _is_layer_path(path):
      for index in range(value.shape[0]):
        out[path[:2] + (index,) + path[2:]] = value[index]
    else:
      out[path] = value
  return out


def stack_layers(flat: Mapping[Path, np.ndarray]) -> FlatParams:
  """Per-layer layout -> scanned layout with a leading layer axis."""
  grouped: dict[Path, dict[int, np.ndarray]] = {}
  out: FlatParams = {}
  for path, value in flat.items():
    if _is_layer_path(path):
      grouped.setdefault(path[:2] + path[3:], {})[path[2]] = value
    else:
      out[path] = value
  for path, by_index in grouped.items():
    out[path] = np.stack([by_index[i] for i in range(len(by_index))])
  return out


def abstract_model(config: TransformerConfig) -> Transformer:
  """The model's structure with shape/dtype placeholders, nothing allocated."""
  return nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(0)))


def model_from_params(config: TransformerConfig, flat: Mapping[Path, np.ndarray]) -> Transformer:
  """Builds a model of `config` holding exactly the given per-layer parameters.

  Raises ValueError naming missing, unexpected or mis-shaped parameters, so a
  weight file that does not match the config is never loaded half-way.
  """
  if config.scan_layers:
    flat = stack_layers(flat)
  graphdef, state = nnx.split(abstract_model(config))
  expected = dict(nnx.to_flat_state(state))
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
