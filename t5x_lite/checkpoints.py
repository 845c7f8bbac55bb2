"""Checkpoints with orbax: train state + each host's data-iterator position, saved together.

A step directory holds two items: `state` (params, optimizer state, step;
saved asynchronously by orbax's StandardCheckpointHandler) and `data` (one
tf.data iterator state per process, saved synchronously at the same step).
Orbax writes into a temporary directory and renames it when complete, so a
save interrupted by kill -9 leaves a temporary directory that is never
listed, never restored from, and cleaned up by the next run.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp
from etils import epath

from t5x_lite.data import BatchIterator


class CheckpointError(ValueError):
  """A checkpoint that cannot be restored into this run; the message says why."""


class DataIteratorHandler(ocp.CheckpointHandler):
  """Saves/restores each process's BatchIterator under <item>/process_<i>-of-<n>."""

  def _path(self, directory: epath.Path) -> str:
    return os.fspath(directory / f"process_{jax.process_index()}-of-{jax.process_count()}")

  def save(self, directory: epath.Path, args: "DataIteratorSave") -> None:
    args.iterator.save(self._path(directory))

  def restore(self, directory: epath.Path, args: "DataIteratorRestore") -> BatchIterator:
    path = self._path(directory)
    if not os.path.isdir(path):
      raise CheckpointError(f"{directory} holds no data position for process "
                            f"{jax.process_index()} of {jax.process_count()}: the checkpoint was "
                            "written by a run with a different number of hosts.")
    args.iterator.restore(path)
    return args.iterator

  def metadata(self, directory: epath.Path) -> Optional[Any]:
    return None


@ocp.args.register_with_handler(DataIteratorHandler, for_save=True)
@dataclasses.dataclass
class DataIteratorSave(ocp.args.CheckpointArgs):
  iterator: BatchIterator


@ocp.args.register_with_handler(DataIteratorHandler, for_restore=True)
@dataclasses.dataclass
class DataIteratorRestore(ocp.args.CheckpointArgs):
  iterator: BatchIterator


def item_handlers() -> dict[str, ocp.CheckpointHandler]:
  """The two items of every step; naming their handlers lets orbax read metadata up front."""
  return {"state": ocp.StandardCheckpointHandler(), "data": DataIteratorHandler()}


def _key_name(entry: Any) -> str:
  for attribute in ("key", "name", "idx"):
    if hasattr(entry, attribute):
      return str(getattr(entry, attribute))
  return str(entry)


def flatten_state(tree: Any) -> dict[str, Any]:
  """{"params.decoder.layers.mlp.wo.kernel": leaf, ...}: the form checkpoints store.

  Flat, readable names make the saved files independent of container types
  (nnx.State, optax NamedTuples) and make shape mismatches easy to report.
  """
  return {".".join(_key_name(k) for k in path): leaf
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def unflatten_state(template: Any, flat: dict[str, Any]) -> Any:
  """Puts flat leaves back into the structure of `template`."""
  names = list(flatten_state(template))
  return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(template),
                                      [flat[name] for name in names])


def _shape_mismatches(saved: dict[str, Any], target: dict[str, Any]) -> list[str]:
  """Names whose saved shape differs from the target's, plus missing/extra ones."""
  problems = [f"{name}: checkpoint {tuple(saved[name].shape)} vs model {tuple(leaf.shape)}"
              for name, leaf in target.items()
              if name in saved and tuple(saved[name].shape) != tuple(leaf.shape)]
  problems += [f"{name}: missing from the checkpoint" for name in target if name not in saved]
  problems += [f"{name}: in the checkpoint but not in the model" for name in saved
               if name not in target]
  return problems


class Checkpointer:
  """Saves every `every_steps` steps (and on demand), keeps the last `keep`."""

  def __init__(self, directory: str, every_steps: int, keep: Optional[int] = 3,
               asynchronous: bool = True):
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=every_steps, max_to_keep=keep, create=True,
        enable_async_checkpointing=asynchronous, cleanup_tmp_directories=True)
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_handlers=item_handlers())

  def latest_step(self) -> Optional[int]:
    return self.manager.latest_step()

  def save(self, step: int, state: Any, iterator: BatchIterator, force: bool = False) -> bool:
    """Starts saving `state` and the iterator position at `step`; True if a save began."""
    return self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(flatten_state(state)), data=DataIteratorSave(iterator)),
        force=force)

  def restore(self, step: int, abstract_state: Any,
              iterator: Optional[BatchIterator] = None) -> Any:
    """Restores the state onto the shardings in `abstract_state` (any mesh shape)."""
    target = flatten_state(abstract_state)
    check_compatible(self.manager, step, target, self.directory)
    items = {"state": ocp.args.StandardRestore(target)}
    if iterator is not None:
      items["data"] = DataIteratorRestore(iterator)
    restored = self.manager.restore(step, args=ocp.args.Composite(**items))["state"]
    return unflatten_state(abstract_state, restored)

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def check_compatible(manager: ocp.CheckpointManager, step: int, target: dict[str, Any],
                     directory: str, prefix: str = "") -> None:
  """Raises CheckpointError naming the parameters whose shapes differ from the model's.

  With `prefix`, only the saved entries under it are compared (e.g. "params.").
  """
  try:
    saved = manager.item_metadata(step)["state"]
  except Exception as error:  # Orbax raises several types for an unreadable step.
    raise CheckpointError(f"checkpoint step {step} in {directory} is unreadable ({error}); "
                          "delete that step directory to fall back to an earlier one.") from None
  if saved is None:
    raise CheckpointError(f"checkpoint step {step} in {directory} holds no train state.")
  saved = {name: value for name, value in dict(saved).items() if name.startswith(prefix)}
  problems = _shape_mismatches(saved, target)
  if problems:
    shown = "; ".join(problems[:4]) + ("; ..." if len(problems) > 4 else "")
    raise CheckpointError(f"checkpoint step {step} in {directory} does not match this model "
                          f"({len(problems)} differences: {shown}). Use the model config it "
                          "was trained with, or a new MODEL_DIR.")


def restore_params(path: str, abstract_params: Any) -> Any:
  """Params only, from a MODEL_DIR's latest checkpoint (fine-tuning starts here)."""
  directory = os.path.join(path, "checkpoints") if os.path.isdir(
      os.path.join(path, "checkpoints")) else path
  if not os.path.isdir(directory):
    raise CheckpointError(f"checkpoint {path} does not exist; check CHECKPOINT_PATH.")
  # The generic PyTree handler reads what StandardCheckpointHandler wrote and, unlike it,
  # restores a subset (the params without the optimizer state).
  manager = ocp.CheckpointManager(os.path.abspath(directory),
                                  item_handlers={"state": ocp.PyTreeCheckpointHandler(),
                                                 "data": DataIteratorHandler()},
                                  options=ocp.CheckpointManagerOptions(read_only=True))
  step = manager.latest_step()
  if step is None:
    raise CheckpointError(f"{path} holds no finished checkpoint; point CHECKPOINT_PATH at a "
                          "MODEL_DIR of a run that saved one.")
  target = flatten_state({"params": abstract_params})
  check_compatible(manager, step, target, directory, prefix="params.")
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.PyTreeRestore(item=target, partial_restore=True,
                                   restore_args=ocp.checkpoint_utils.construct_restore_args(
                                       target))))
  return unflatten_state({"params": abstract_params}, restored["state"])["params"]


def load_model(path: str, config) -> "Transformer":  # noqa: F821
  """A Transformer of `config` holding the params of the latest checkpoint in `path` (a
  MODEL_DIR or its checkpoints/ directory), on the default device, for inference."""
  from flax import nnx

  from t5x_lite.models.transformer import Transformer

  abstract = nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(params=0)))
  graphdef, abstract_params = nnx.split(abstract, nnx.Param)
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                        abstract_params)
  return nnx.merge(graphdef, restore_params(path, target))
