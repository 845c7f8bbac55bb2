"""The run directory (MODEL_DIR): one writer, a recorded configuration, consistent metrics.

  MODEL_DIR/
    run.lock         held (flock) by the one trainer writing here; names its pid and host
    spec.json        the run's TrainSpec (spec.py), its vocabulary and every accepted change
    config.gin       the operative gin configuration of the latest start, as T5X writes it
    checkpoints/     orbax steps (checkpoints.py)
    metrics.jsonl    one record per log/eval step, never a step twice (trim_metrics)
    tensorboard/     event files, trimmed like metrics.jsonl

A trainer takes the lock before it touches anything else, so a second trainer on the
same directory is refused before it can clean up, save or trim anything. infer and
evaluate read spec.json to rebuild the model and its vocabulary (`recorded_model`).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import sys
import tempfile
import time
from typing import Any, Mapping, Optional, TextIO

import tensorflow as tf

from t5x_lite.common import files
from t5x_lite.common.errors import UserError, file_errors
from t5x_lite.models.configs import TransformerConfig
from t5x_lite.runs.spec import TrainSpec, config_from_json, differences, refused_changes

SPEC_FILE = "spec.json"
CONFIG_FILE = "config.gin"
LOCK_FILE = "run.lock"
METRICS_FILE = "metrics.jsonl"


class RunDirError(UserError):
  """A run directory that cannot be used as asked; the message says why and what to do."""


class RunLock:
  """An exclusive lock on MODEL_DIR for the life of a trainer.

  flock is released by the kernel however the process ends (even kill -9), so a crash
  never leaves the directory locked; the file's content (pid, host, state) names the
  holder for the refusal message and shows that the previous holder did not exit
  cleanly. The file is never deleted: deleting it would let two processes lock two
  different files of the same name.
  """

  def __init__(self, model_dir: str):
    self.path = os.path.join(model_dir, LOCK_FILE)
    self._fd: Optional[int] = None
    self.previous_holder: Optional[dict] = None  # set when the last holder crashed

  def acquire(self) -> "RunLock":
    with file_errors("the run directory", os.path.dirname(self.path)):
      os.makedirs(os.path.dirname(self.path), exist_ok=True)
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      os.close(fd)
      holder = _read_json(self.path) or {}
      raise RunDirError(
          f"{os.path.dirname(self.path)} is in use by another trainer (pid "
          f"{holder.get('pid', '?')} on {holder.get('host', '?')}, started "
          f"{holder.get('started', '?')}); wait for it to finish or stop it, or use another "
          "MODEL_DIR.") from None
    previous = _read_json(self.path)
    if previous and previous.get("state") == "running":
      self.previous_holder = previous
    self._fd = fd
    self._write({"pid": os.getpid(), "host": socket.gethostname(),
                 "started": time.strftime("%Y-%m-%d %H:%M:%S"), "state": "running"})
    return self

  def release(self) -> None:
    if self._fd is None:
      return
    try:
      holder = _read_json(self.path) or {}
      self._write({**holder, "state": "released"})
    except OSError:
      pass  # A full disk must not hide the error that ended the run.
    fcntl.flock(self._fd, fcntl.LOCK_UN)
    os.close(self._fd)
    self._fd = None

  def _write(self, record: dict) -> None:
    with file_errors("the run lock", self.path):
      os.ftruncate(self._fd, 0)
      os.pwrite(self._fd, json.dumps(record).encode(), 0)

  def __enter__(self) -> "RunLock":
    return self.acquire()

  def __exit__(self, *exc) -> None:
    self.release()


def _read_json(path: str) -> Optional[Any]:
  try:
    with open(path) as handle:
      return json.load(handle)
  except (OSError, json.JSONDecodeError):
    return None


def read_record(model_dir: str) -> Optional[dict]:
  """spec.json of a run directory (or of the MODEL_DIR above a checkpoints/ directory)."""
  for directory in (model_dir, os.path.dirname(os.path.normpath(model_dir))):
    path = os.path.join(directory, SPEC_FILE)
    if os.path.isfile(path):
      record = _read_json(path)
      if not isinstance(record, dict) or "spec" not in record:
        raise RunDirError(f"{path} is unreadable or not a t5x_lite run record; restore it "
                          "from a copy, or delete it to accept the current configuration.")
      return record
  return None


def recorded_model(model_dir: str) -> Optional[TransformerConfig]:
  """The TransformerConfig a run directory was trained with, or None if it has no record."""
  return model_of(read_record(model_dir))


def model_of(record: Optional[dict]) -> Optional[TransformerConfig]:
  """The TransformerConfig of a run record already read (None for no record)."""
  if record is None:
    return None
  return config_from_json(TransformerConfig, record["spec"]["TransformerConfig"])


def format_changes(changed: Mapping[str, tuple[Any, Any]]) -> str:
  return "; ".join(f"{knob}: {old!r} -> {new!r}" for knob, (old, new) in changed.items())


def check_spec(model_dir: str, spec: TrainSpec, vocabulary: dict, resuming: bool,
               stream: TextIO = sys.stdout, data: Optional[dict] = None) -> dict:
  """Compares `spec` with the recorded one (when resuming); returns the record to write
  once the run has started (`record`), after the restore succeeded: a start that fails
  must leave the record describing what the checkpoints hold.

  Resuming with a knob that differs from the record and is neither free to change
  (spec.MAY_CHANGE_ON_RESUME) nor named in train.allow_changes is refused, listing
  every such knob; a changed vocabulary is always refused, and so is changed corpus content
  (`data`: corpus fingerprints) unless train.allow_changes names 'data'. Accepted changes are
  printed and appended to the record's history. Call with the run lock held.
  """
  current = spec.to_json()
  record = read_record(model_dir) if resuming else None
  history = []
  if resuming and record is None:
    print(f"note: {model_dir} has checkpoints but no {SPEC_FILE} (written by an older "
          "version); recording this run's configuration without comparing it.", file=stream)
  if record is not None:
    history = record.get("history", [])
    changed = differences(record["spec"], current)
    refused = refused_changes(changed, spec.run.allow_changes)
    if refused:
      raise RunDirError(
          f"{model_dir} was trained with a different configuration; resuming would continue "
          f"a different run. Differences: {format_changes(refused)}. Restore those settings, "
          "use a new MODEL_DIR, or list the knobs in train.allow_changes to change them "
          "deliberately.")
    if record.get("vocabulary") not in (None, vocabulary):
      raise RunDirError(
          f"{model_dir} was trained with vocabulary {record['vocabulary']} but task "
          f"{spec.run.task!r} now has {vocabulary}; the token ids would mean different text. "
          "Use the original vocabulary or a new MODEL_DIR.")
    recorded_data = record.get("data")
    if recorded_data is not None and data is not None and recorded_data != data and (
        "data" not in spec.run.allow_changes):
      raise RunDirError(
          f"{model_dir} was trained on corpus content {recorded_data} but task "
          f"{spec.run.task!r} now reads {data} (a rebuilt or changed corpus); resuming would "
          "continue on other data. Restore the corpus, use a new MODEL_DIR, or add 'data' to "
          "train.allow_changes.")
    if changed:
      print(f"resuming with changed settings: {format_changes(changed)}", file=stream)
      history.append({"time": time.strftime("%Y-%m-%d %H:%M:%S"),
                      "changed": {knob: list(values) for knob, values in changed.items()}})
  return {"spec": current, "vocabulary": vocabulary, "data": data, "history": history}


def record(model_dir: str, run_record: dict, operative_config: Optional[str]) -> None:
  """Writes spec.json (the record `check_spec` returned) and config.gin."""
  with files.atomic_write(os.path.join(model_dir, SPEC_FILE)) as handle:
    json.dump(run_record, handle, indent=1)
  if operative_config is not None:
    config_path = os.path.join(model_dir, CONFIG_FILE)
    with files.atomic_write(config_path) as handle:
      handle.write(operative_config)


def remove_unstarted(model_dir: str) -> bool:
  """Removes `model_dir` if it holds only what a start writes before its first step (the
  lock and an empty checkpoints/ directory): a new MODEL_DIR whose start failed is left
  as it was found. Returns whether it was removed; anything else there stays."""
  if not os.path.isdir(model_dir):
    return False
  checkpoints_dir = os.path.join(model_dir, "checkpoints")
  if set(os.listdir(model_dir)) - {LOCK_FILE, "checkpoints"} or (
      os.path.isdir(checkpoints_dir) and os.listdir(checkpoints_dir)):
    return False
  shutil.rmtree(model_dir, ignore_errors=True)
  return True


def trim_metrics(model_dir: str, step: int) -> int:
  """Drops every metrics.jsonl record and TensorBoard event past `step` (the step a run
  resumes from), so no step is reported twice; each file is rewritten atomically.
  Returns how many records were dropped."""
  dropped = 0
  path = os.path.join(model_dir, METRICS_FILE)
  if os.path.isfile(path):
    with open(path) as handle:
      lines = handle.readlines()
    kept = [line for line in lines if _metrics_step(line) is not None
            and _metrics_step(line) <= step]
    if len(kept) != len(lines):
      dropped += len(lines) - len(kept)
      with files.atomic_write(path) as handle:
        handle.writelines(kept)
  for root, _, names in os.walk(os.path.join(model_dir, "tensorboard")):
    for name in names:
      if ".tfevents." in name:
        dropped += _trim_events(os.path.join(root, name), step)
  return dropped


def _metrics_step(line: str) -> Optional[int]:
  """The step of a metrics line; None for a line cut short by a kill."""
  try:
    return int(json.loads(line)["step"])
  except (ValueError, KeyError, TypeError):
    return None


def _trim_events(path: str, step: int) -> int:
  """Rewrites a TensorBoard event file without the events past `step`."""
  records, dropped = [], 0
  try:
    for record in tf.data.TFRecordDataset(path).as_numpy_iterator():
      if tf.compat.v1.Event.FromString(record).step > step:
        dropped += 1
      else:
        records.append(record)
  except tf.errors.DataLossError:
    dropped += 1  # A record cut short by a kill: it was never complete.
  if dropped:
    with file_errors("TensorBoard events", path):
      fd, temporary = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp",
                                       dir=os.path.dirname(path))
      os.close(fd)
      try:
        with tf.io.TFRecordWriter(temporary) as writer:
          for event in records:
            writer.write(event)
        os.replace(temporary, path)
      finally:
        if os.path.exists(temporary):
          os.remove(temporary)
  return dropped

