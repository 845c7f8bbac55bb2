"""Interleaved timing of runs that each live in their own process.

Timing JAX and PyTorch in one process understates whichever runs second: measured
on a 2-core machine, our training step went from 5.0 s to 6.4 s once a PyTorch step
had run in the same process (its allocator and OpenMP threads stay behind), which
made the step look 0.75x PyTorch's when alone it is on par. So every framework
gets a worker process of its own; the parent asks the workers for steps round by
round, so slow drifts of the machine (other jobs, thermal limits) touch every run
alike, and only the time of the step itself is reported.

The first step after a pause is slow too (5.4 s -> 6.4 s for the same step after 5 s
idle here: a virtual machine hands idle memory back to its host and faults it in
again), while a training loop runs its steps back to back. So each round runs every
run `steps_per_round` times and times all but the first.
"""

from __future__ import annotations

import multiprocessing
import statistics
import time
import traceback
from typing import Callable

Runs = dict[str, Callable[[int], None]]


def _serve(connection, factory: Callable[..., Runs], args: tuple) -> None:
  try:
    runs = factory(*args)
  except BaseException:  # the parent re-raises it with the worker's traceback
    connection.send(RuntimeError(traceback.format_exc()))
    return
  connection.send(list(runs))
  while (request := connection.recv()) is not None:
    name, index = request
    try:
      start = time.perf_counter()
      runs[name](index)
      connection.send(time.perf_counter() - start)
    except BaseException:
      connection.send(RuntimeError(traceback.format_exc()))
      return


class Worker:
  """A process holding the runs `factory(*args)` builds: {name: run(index)}.

  factory must be importable by name (a module-level function) and its arguments
  picklable; the process starts fresh ("spawn"), so it shares no runtime state.
  """

  def __init__(self, factory: Callable[..., Runs], *args):
    context = multiprocessing.get_context("spawn")
    self._connection, child = context.Pipe()
    self._process = context.Process(target=_serve, args=(child, factory, args), daemon=True)
    self._process.start()
    self.names: list[str] = self._receive()

  def _receive(self):
    message = self._connection.recv()
    if isinstance(message, BaseException):
      self.close()
      raise message
    return message

  def run(self, name: str, index: int) -> float:
    """Seconds that run `name` took on input `index`, timed inside the worker."""
    self._connection.send((name, index))
    return self._receive()

  def close(self) -> None:
    if self._process.is_alive():
      try:
        self._connection.send(None)
      except (BrokenPipeError, OSError):
        pass
      self._process.join(timeout=30)
    if self._process.is_alive():
      self._process.kill()


def time_rounds(workers: list[Worker], rounds: int, warmup: int = 2,
                steps_per_round: int = 2) -> dict[str, float]:
  """Median seconds of every run of every worker, interleaved round by round
  (after `warmup` untimed calls of each, which compile and fill caches); each
  round's first call of a run re-warms it and is not timed."""
  runs = [(worker, name) for worker in workers for name in worker.names]
  for worker, name in runs:
    for index in range(warmup):
      worker.run(name, index)
  samples: dict[str, list[float]] = {name: [] for _, name in runs}
  for round_ in range(rounds):
    for worker, name in runs:
      for step in range(steps_per_round):
        seconds = worker.run(name, round_ * steps_per_round + step)
        if step or steps_per_round == 1:
          samples[name].append(seconds)
  return {name: statistics.median(values) for name, values in samples.items()}
