"""Checkpoints with orbax: train state + each host's data-iterator position, saved together.

A step directory holds two items: `state` (params, optimizer state, step;
saved asynchronously by orbax's StandardCheckpointHandler) and `data` (one
tf.data iterator state per process, saved synchronously at the same step).
Orbax writes into a temporary directory and renames it when complete, so a
save interrupted by kill -9 leaves a temporary directory that is never
listed, never restored from, and cleaned up by the next run.

Restoring is total: a committed step that cannot be read (a truncated array or
iterator file, damaged metadata) is skipped with a warning naming the step and
the cause, and the next older step is used; the trainer moves such a step aside
(MODEL_DIR/unreadable_checkpoints/) so the run can save that step number again.
A checkpoint that is readable but belongs to another model or data pipeline is
a user error, never a reason to fall back.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import os
import shutil
import sys
import tempfile
import time
from typing import Any, Callable, Iterator, Optional, Sequence, TextIO

import jax
import orbax.checkpoint as ocp
import tensorflow as tf
from etils import epath
from jax.experimental import multihost_utils
from orbax.checkpoint.checkpoint_managers import preservation_policy as preservation

from t5x_lite.common.errors import FileSystemError, UserError, file_errors, storage_errors
from t5x_lite.data import BatchIterator
from t5x_lite.models import params
from t5x_lite.runs.spec import check_retention


class CheckpointError(UserError, ValueError):
  """A checkpoint that cannot be restored into this run; the message says why."""


class DataIteratorHandler(ocp.CheckpointHandler):
  """Saves/restores each process's BatchIterator under <item>/process_<i>-of-<n>."""

  def _path(self, directory: epath.Path) -> str:
    return os.fspath(directory / f"process_{jax.process_index()}-of-{jax.process_count()}")

  def save(self, directory: epath.Path, args: "DataIteratorSave") -> None:
    path = self._path(directory)
    try:
      args.iterator.save(path)
    except tf.errors.OpError as error:  # tf.train.Checkpoint's I/O errors (e.g. disk full)
      reason = error.message.split("}} ")[-1].split(" [Op:")[0]  # drop TF's op decoration
      raise FileSystemError(f"cannot write the data position to {path}: {reason}; free "
                            "space or choose a writable MODEL_DIR.") from None

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


def _paths(flat: dict[str, Any]) -> dict[tuple, Any]:
  return {tuple(int(part) if part.isdigit() else part for part in name.split(".")): value
          for name, value in flat.items()}


def _names(flat: dict[tuple, Any]) -> dict[str, Any]:
  return {".".join(map(str, path)): value for path, value in flat.items()}


def on_disk(flat: dict[str, Any], take=lambda value, index: value[index]) -> dict[str, Any]:
  """A flattened state in the one on-disk layout: layers stacked by scan_layers (in the
  parameters and in the optimizer state that mirrors them) split into one entry per
  layer (models/params.py), so any layout can restore it."""
  return _names(params.unstack_layers(_paths(flat), take))


def _read_state(manager: ocp.CheckpointManager, step: int, template: Any, directory: str,
                restore: Callable[[dict[str, Any]], dict[str, Any]], what: str,
                prefix: str = "") -> Any:
  """`template`'s state (a pytree of placeholders) from `step`: read in the per-layer
  on-disk layout (or in the template's own, for checkpoints saved before there was one)
  by `restore(target)`, then stacked back into the template's layout and structure."""
  target = flatten_state(template)
  saved = _read("metadata", step, lambda: _saved_shapes(manager, step, prefix))
  disk = target if target.keys() <= saved.keys() else on_disk(target, params.abstract_layer)
  check_compatible(saved, disk, step, directory)
  restored = _read(what, step, lambda: restore(disk))
  if disk is not target:
    restored = _names(params.restack_layers(_paths(restored), _paths(target)))
  return unflatten_state(template, restored)


def _shape_mismatches(saved: dict[str, Any], target: dict[str, Any]) -> list[str]:
  """Names whose saved shape differs from the target's, plus missing/extra ones."""
  problems = [f"{name}: checkpoint {tuple(saved[name].shape)} vs model {tuple(leaf.shape)}"
              for name, leaf in target.items()
              if name in saved and tuple(saved[name].shape) != tuple(leaf.shape)]
  problems += [f"{name}: missing from the checkpoint" for name in target if name not in saved]
  problems += [f"{name}: in the checkpoint but not in the model" for name in saved
               if name not in target]
  return problems


class Unreadable(Exception):
  """A committed checkpoint step whose files cannot be read (internal: triggers fallback)."""


def _cause(error: BaseException) -> str:
  message = str(error).strip().splitlines()[0] if str(error).strip() else ""
  message = message.split(" See full TensorStore details")[0]  # a page of JSON follows
  return f"{type(error).__name__}: {message[:300]}"


@contextlib.contextmanager
def _quiet_if_it_fails() -> Iterator[None]:
  """Holds back what a failing read prints to stderr; replays it if the read succeeds.

  Orbax reads the arrays of a step concurrently; when one read fails it returns at
  once and closes its event loop while the other reads are still in flight, and each
  of those then prints a traceback ("Event loop is closed"; "Exception ignored in"
  when its coroutine is collected). They are echoes of the failure that _read
  reports in one line, so they are drained here (collected and discarded).
  """
  sys.stderr.flush()
  saved = os.dup(2)
  held = tempfile.TemporaryFile()
  os.dup2(held.fileno(), 2)
  previous_hook = sys.unraisablehook
  try:
    yield
  except Exception:
    sys.unraisablehook = lambda unraisable: None
    time.sleep(0.5)  # let the reads still in flight finish and fail quietly
    gc.collect()
    raise
  else:
    sys.stderr.flush()
    os.dup2(saved, 2)
    held.seek(0)
    os.write(2, held.read())
  finally:
    sys.stderr.flush()
    os.dup2(saved, 2)
    os.close(saved)
    held.close()
    sys.unraisablehook = previous_hook


def _read(what: str, step: int, read: Callable[[], Any]) -> Any:
  """Runs one orbax/TensorStore/tf.data read; any failure but a user error is Unreadable.

  Orbax and TensorStore raise plain Exception, ValueError, KeyError, JSONDecodeError or
  tf errors for damaged files, so only the user errors (a different model or pipeline)
  are told apart; they propagate unchanged.
  """
  try:
    with _quiet_if_it_fails():
      return read()
  except UserError:
    raise
  except Exception as error:  # noqa: BLE001  see the docstring
    raise Unreadable(f"step {step} {what} is unreadable ({_cause(error)})") from error


def _restore_newest_readable(manager: ocp.CheckpointManager, directory: str,
                             restore_step: Callable[[int], Any], stream: Optional[TextIO]
                             ) -> tuple[Optional[int], Any, list[int]]:
  """(step, restored, unreadable steps) trying the newest step first, then older ones.

  Raises CheckpointError when steps exist and none of them can be read.
  """
  stream = stream or sys.stderr
  skipped, causes = [], []
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      return step, restore_step(step), skipped
    except Unreadable as error:
      print(f"warning: checkpoint {error}; falling back to the previous step.", file=stream,
            flush=True)
      skipped.append(step)
      causes.append(str(error))
  if skipped:
    raise CheckpointError(f"no checkpoint in {directory} can be read: {'; '.join(causes)}. "
                          "Restore the files from a copy or start a new MODEL_DIR.")
  return None, None, []


class Checkpointer:
  """Saves every `every_steps` steps (and on demand), keeps the newest `keep` (None: all);
  also saves at each of `keep_steps` and keeps those for good (the fork points of
  cooldown branches: orbax's save-on-steps and preservation policies)."""

  def __init__(self, directory: str, every_steps: int, keep: Optional[int] = 3,
               asynchronous: bool = True, keep_steps: Sequence[int] = ()):
    check_retention(keep)
    self.directory = os.path.abspath(directory)
    retention = {"max_to_keep": keep}
    if keep_steps:
      retention = {"max_to_keep": None, "save_on_steps": list(keep_steps),
                   "preservation_policy": preservation.AnyPreservationPolicy(
                       [preservation.LatestN(keep), preservation.CustomSteps(keep_steps)])}
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=every_steps, create=True, enable_async_checkpointing=asynchronous,
        cleanup_tmp_directories=True, **retention)
    with file_errors("checkpoints in", self.directory):
      self.manager = ocp.CheckpointManager(self.directory, options=options,
                                           item_handlers=item_handlers())

  def latest_step(self) -> Optional[int]:
    return self.manager.latest_step()

  def should_save(self, step: int) -> bool:
    """Whether `save(step, ...)` would save (the interval, or no checkpoint yet)."""
    return self.manager.should_save(step)

  def save(self, step: int, state: Any, iterator: BatchIterator, force: bool = False) -> bool:
    """Starts saving `state` and the iterator position at `step`; True if a save began."""
    with storage_errors("a checkpoint in", self.directory):
      return self.manager.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(on_disk(flatten_state(state))),
          data=DataIteratorSave(iterator)),
          force=force)

  def restore_latest(self, abstract_state: Any,
                     make_iterator: Optional[Callable[[], BatchIterator]] = None,
                     stream: Optional[TextIO] = None
                     ) -> tuple[Optional[int], Any, Optional[BatchIterator]]:
    """(step, state, iterator at that step's data position) from the newest readable step,
    or (None, None, None) when there is no checkpoint.

    State goes onto the shardings of `abstract_state` (any mesh shape). Steps that
    cannot be read are moved to ../unreadable_checkpoints/ by process 0, after every
    process has chosen its step, so the run can save those step numbers again.
    """
    def restore_step(step: int):
      state = _read_state(self.manager, step, abstract_state, self.directory, lambda target: (
          self.manager.restore(step, args=ocp.args.Composite(
              state=ocp.args.StandardRestore(target)))["state"]), "train state")
      iterator = None
      if make_iterator is not None:
        iterator = make_iterator()  # fresh: a failed read may have moved the last one
        _read("data-iterator state", step, lambda: self.manager.restore(
            step, args=ocp.args.Composite(data=DataIteratorRestore(iterator))))
      return state, iterator

    step, restored, skipped = _restore_newest_readable(self.manager, self.directory,
                                                       restore_step, stream)
    if skipped:
      self._set_aside(skipped, stream)
    return (step, *restored) if step is not None else (None, None, None)

  def _set_aside(self, steps: list[int], stream: Optional[TextIO]) -> None:
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices("t5x_lite: unreadable checkpoints chosen")
    if jax.process_index() == 0:
      aside = os.path.join(os.path.dirname(self.directory), "unreadable_checkpoints")
      for step in steps:
        destination = os.path.join(aside, f"{step}-{time.strftime('%Y%m%d-%H%M%S')}")
        with file_errors("unreadable checkpoints to", aside):
          os.makedirs(aside, exist_ok=True)
          shutil.move(os.path.join(self.directory, str(step)), destination)
        print(f"moved unreadable checkpoint step {step} to {destination}",
              file=stream or sys.stderr)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices("t5x_lite: unreadable checkpoints moved")
    self.manager.reload()

  def wait(self) -> None:
    with storage_errors("a checkpoint in", self.directory):
      self.manager.wait_until_finished()

  def close(self) -> None:
    with storage_errors("a checkpoint in", self.directory):
      self.manager.wait_until_finished()
      self.manager.close()


def _saved_shapes(manager: ocp.CheckpointManager, step: int, prefix: str = "") -> dict:
  """The saved entries (with .shape) of a step whose names start with `prefix`.
  Unreadable metadata raises whatever orbax raises (see _read)."""
  saved = manager.item_metadata(step)["state"]
  if saved is None:
    raise KeyError(f"checkpoint step {step} holds no train state")
  return {name: value for name, value in dict(saved).items() if name.startswith(prefix)}


def check_compatible(saved: dict[str, Any], target: dict[str, Any], step: int,
                     directory: str) -> None:
  """Raises CheckpointError naming the entries whose shapes differ from the model's."""
  problems = _shape_mismatches(saved, target)
  if problems:
    shown = "; ".join(problems[:4]) + ("; ..." if len(problems) > 4 else "")
    raise CheckpointError(f"checkpoint step {step} in {directory} does not match this model "
                          f"({len(problems)} differences: {shown}). Use the model config it "
                          "was trained with, or a new MODEL_DIR.")


def checkpoints_directory(path: str) -> str:
  """The orbax directory of a MODEL_DIR (or `path` itself when it is one)."""
  nested = os.path.join(path, "checkpoints")
  return nested if os.path.isdir(nested) else path


def newest_params(path: str, abstract_params: Any, stream: Optional[TextIO] = None
                  ) -> tuple[int, Any]:
  """(step, params) from the newest readable checkpoint of a MODEL_DIR (or of its
  checkpoints/ directory), placed as `abstract_params` says: fine-tuning, inference and
  the loader (runs/loading.py) start here. Unreadable steps are skipped with a warning,
  never moved."""
  directory = checkpoints_directory(path)
  if not os.path.isdir(directory):
    raise CheckpointError(f"checkpoint {path} does not exist; check CHECKPOINT_PATH.")
  # The generic PyTree handler reads what StandardCheckpointHandler wrote and, unlike it,
  # restores a subset (the params without the optimizer state).
  manager = ocp.CheckpointManager(os.path.abspath(directory),
                                  item_handlers={"state": ocp.PyTreeCheckpointHandler(),
                                                 "data": DataIteratorHandler()},
                                  options=ocp.CheckpointManagerOptions(read_only=True))
  def restore_step(step: int):
    return _read_state(manager, step, {"params": abstract_params}, directory,
                       lambda target: manager.restore(step, args=ocp.args.Composite(
                           state=ocp.args.PyTreeRestore(
                               item=target, partial_restore=True,
                               restore_args=ocp.checkpoint_utils.construct_restore_args(
                                   target))))["state"], "parameters", prefix="params.")

  step, restored, _ = _restore_newest_readable(manager, directory, restore_step, stream)
  if step is None:
    raise CheckpointError(f"{path} holds no finished checkpoint; point CHECKPOINT_PATH at a "
                          "MODEL_DIR of a run that saved one.")
  return step, restored["params"]


def restore_step(path: str, step: int, abstract_state: Any,
                 make_iterator: Callable[[], BatchIterator]) -> tuple[Any, BatchIterator]:
  """(state, iterator) of another run's checkpoint at exactly `step`, read through a
  read-only manager (that run's directory is never written): where a cooldown branch
  starts. CheckpointError when that step was not saved or cannot be read."""
  directory = checkpoints_directory(path)
  manager = ocp.CheckpointManager(os.path.abspath(directory), item_handlers=item_handlers(),
                                  options=ocp.CheckpointManagerOptions(read_only=True))
  saved = sorted(manager.all_steps())
  if step not in saved:
    raise CheckpointError(
        f"{path} has no checkpoint at step {step} (it has {saved or 'none'}); the run to "
        f"fork from must keep it: train.keep_steps = [{step}] in that run.")
  try:
    state = _read_state(manager, step, abstract_state, directory, lambda target: (
        manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target)))["state"]), "train state")
    iterator = make_iterator()
    _read("data-iterator state", step, lambda: manager.restore(
        step, args=ocp.args.Composite(data=DataIteratorRestore(iterator))))
  except Unreadable as error:
    raise CheckpointError(f"{path}'s checkpoint at step {step} cannot be read ({error}); "
                          "fork from another step.") from error
  finally:
    manager.close()
  return state, iterator


def save_params(model_dir: str, step: int, params: Any) -> None:
  """A params-only checkpoint in `model_dir`/checkpoints (e.g. merged adapters), in the
  one on-disk layout: what newest_params (and so runs/loading.py) reads. Waits until written."""
  directory = os.path.abspath(os.path.join(model_dir, "checkpoints"))
  with storage_errors("a checkpoint in", directory):
    manager = ocp.CheckpointManager(directory, item_handlers=item_handlers(),
                                    options=ocp.CheckpointManagerOptions(
                                        create=True, enable_async_checkpointing=False))
    manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(on_disk(flatten_state({"params": params})))))
    manager.wait_until_finished()
    manager.close()


def on_default_device(abstract: Any) -> Any:
  """Shape/dtype placeholders of `abstract`'s leaves on the default device: the target
  for restoring onto one device (inference, evaluation, merging, quantizing)."""
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                      abstract)
