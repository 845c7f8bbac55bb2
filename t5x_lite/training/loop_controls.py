"""What the training loop watches besides the steps: stop signals, the non-finite
update guard (train.nan_policy) and the step profiler. trainer.py uses them."""

from __future__ import annotations

import math
import os
import signal
from typing import Any, Optional, TextIO

import jax

from t5x_lite.common.errors import UserError
from t5x_lite.runs import checkpoints
from t5x_lite.runs.spec import RunConfig


class TrainingHalted(UserError):
  """The run stopped on purpose (e.g. a non-finite loss); the message says where and why."""


class StopSignal:
  """SIGTERM/SIGINT set a flag; the loop finishes the step, saves and exits cleanly."""

  def __init__(self):
    self.received: Optional[int] = None
    self._previous = {}

  def __enter__(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    self.received = signum

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


class UpdateGuard:
  """train.nan_policy, applied to each step's statistics in step order.

  A step whose loss, gradient or updated parameters are not finite left the state as it
  was (train_step); "halt" stops the run naming it, "skip" prints it and stops after
  `max_consecutive` in a row. Nothing is saved for a step before it is checked here.
  """

  def __init__(self, policy: str, max_consecutive: int, checkpointer: checkpoints.Checkpointer,
               stream: Optional[TextIO]):
    self.policy, self.max_consecutive = policy, max_consecutive
    self.checkpointer, self.stream = checkpointer, stream
    self.skipped = self.consecutive = 0

  def check(self, step: int, stats: Any) -> dict:
    """The step's statistics on the host (this waits for the step to finish)."""
    stats = jax.device_get(stats)
    if stats["finite"]:
      self.consecutive = 0
      return stats
    what = ("loss" if not math.isfinite(float(stats["loss"])) else
            "gradient" if not math.isfinite(float(stats["grad_norm"])) else
            "updated parameters (the update overflowed)")
    if self.policy == "halt":
      raise self._halted(f"non-finite {what} at step {step} (loss {stats['loss']}, grad norm "
                         f"{stats['grad_norm']})")
    self.skipped += 1
    self.consecutive += 1
    if self.stream is not None:
      print(f"step {step}: non-finite {what}: update skipped ({self.consecutive} in a row, "
            f"{self.skipped} in all)", file=self.stream, flush=True)
    if self.consecutive >= self.max_consecutive:
      raise self._halted(f"{self.consecutive} consecutive non-finite updates (steps "
                         f"{step - self.consecutive + 1}-{step}, {self.skipped} skipped in all)")
    return stats

  def _halted(self, message: str) -> TrainingHalted:
    return TrainingHalted(f"{message}; nothing was saved for it; the newest checkpoint is step "
                          f"{self.checkpointer.latest_step()}. Lower the learning rate, or set "
                          "train.nan_policy='skip' (with train.max_consecutive_skips).")


class StepProfiler:
  """Traces steps profile_start_step + 1 ... + profile_steps (RunConfig) with jax.profiler
  into MODEL_DIR/profile; waits for the last traced step so the trace holds its ops."""

  def __init__(self, run: RunConfig, stream: Optional[TextIO]):
    self.first = run.profile_start_step
    self.last = None if self.first is None else self.first + run.profile_steps
    self.directory = os.path.join(run.model_dir, "profile")
    self.stream = stream
    self.active = False

  def before(self, step: int) -> None:
    if self.first is not None and step == self.first and not self.active:
      jax.profiler.start_trace(self.directory)
      self.active = True

  def after(self, step: int, stats: Any) -> None:
    if self.active and step >= self.last:
      jax.block_until_ready(stats)
      self.close()
      if self.stream is not None:
        print(f"profiled steps {self.first + 1}-{step} into {self.directory} "
              "(tools/top_ops.py lists the costliest ops)", file=self.stream)

  def close(self) -> None:
    if self.active:
      self.active = False
      jax.profiler.stop_trace()
