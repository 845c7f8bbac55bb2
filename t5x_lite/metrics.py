"""What a run reports: TensorBoard event files, metrics.jsonl, a console progress line,
and the hardware peak that MFU is measured against."""

from __future__ import annotations

import functools
import json
import math
import os
import sys
import time
from typing import Mapping

import jax
import jax.numpy as jnp
import tensorflow as tf

from t5x_lite.errors import file_errors

# Dense bf16 peak FLOP/s per chip from the vendors' datasheets (no sparsity).
KNOWN_PEAK_FLOPS = {
    "NVIDIA H100 80GB HBM3": 989e12,
    "NVIDIA H100": 989e12,
    "NVIDIA H200": 989e12,
    "NVIDIA A100-SXM4-80GB": 312e12,
    "NVIDIA A100-SXM4-40GB": 312e12,
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5p": 459e12,
}


@functools.lru_cache(maxsize=None)
def measured_peak_flops(dtype: str = "float32", size: int = 2048, repeats: int = 10) -> float:
  """FLOP/s of a chain of size x size matmuls on one device, best of three timings.

  On CPU this is what XLA can actually reach here, the honest denominator for MFU.
  """
  a = jnp.ones((size, size), dtype) / size

  @jax.jit
  def chain(x):
    for _ in range(repeats):
      x = x @ a
    return x

  chain(a).block_until_ready()
  best = float("inf")
  for _ in range(3):
    start = time.perf_counter()
    chain(a).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2 * size**3 * repeats / best


def peak_flops_per_device(dtype: str) -> tuple[float, str]:
  """(peak FLOP/s of one device, where the figure comes from)."""
  kind = jax.devices()[0].device_kind
  if kind in KNOWN_PEAK_FLOPS and dtype == "bfloat16":
    return KNOWN_PEAK_FLOPS[kind], f"{kind} datasheet"
  return measured_peak_flops(dtype), f"measured {dtype} matmul on {kind}"


def format_duration(seconds: float) -> str:
  if not math.isfinite(seconds):
    return "?"
  minutes, seconds = divmod(int(seconds), 60)
  hours, minutes = divmod(minutes, 60)
  return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s"


class MetricsWriter:
  """Writes scalars to TensorBoard (<model_dir>/tensorboard/{train,eval}) and metrics.jsonl.

  Only process 0 writes, so multi-host runs produce one set of files.
  """

  def __init__(self, model_dir: str, enabled: bool = True):
    self.enabled = enabled
    self._writers = {}
    self.model_dir = model_dir
    self.path = os.path.join(model_dir, "metrics.jsonl")
    if enabled:
      with file_errors("metrics", self.path):
        os.makedirs(model_dir, exist_ok=True)
        self._jsonl = open(self.path, "a")

  def _tensorboard(self, split: str):
    if split not in self._writers:
      self._writers[split] = tf.summary.create_file_writer(
          os.path.join(self.model_dir, "tensorboard", split))
    return self._writers[split]

  def write(self, step: int, split: str, scalars: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    with self._tensorboard(split).as_default(step=step):
      for name, value in scalars.items():
        tf.summary.scalar(name, value)
    with file_errors("metrics", self.path):
      self._jsonl.write(json.dumps({"step": step, "split": split,
                                    **{k: float(v) for k, v in scalars.items()}}) + "\n")
      self._jsonl.flush()

  def close(self) -> None:
    if self.enabled:
      for writer in self._writers.values():
        writer.close()
      with file_errors("metrics", self.path):
        self._jsonl.close()


class Progress:
  """The console line: step, loss, tokens/s, MFU and ETA, measured between reports.

  With stream=None (processes other than 0) the figures are computed but not printed.
  """

  def __init__(self, total_steps: int, first_step: int, flops_per_token: float,
               peak_flops: float, stream=sys.stdout):  # noqa: B008
    self.total_steps = total_steps
    self.flops_per_token = flops_per_token
    self.peak_flops = peak_flops
    self.stream = stream
    self._last_step, self._last_time, self._tokens = first_step, time.perf_counter(), 0

  def add_tokens(self, tokens: int) -> None:
    self._tokens += tokens

  def exclude(self, seconds: float) -> None:
    """Leaves time spent outside training steps (evaluation) out of tokens/s and MFU."""
    self._last_time += seconds

  def report(self, step: int, loss: float) -> dict[str, float]:
    """Prints the line and returns the throughput figures for the metric writers."""
    now = time.perf_counter()
    elapsed = max(now - self._last_time, 1e-9)
    tokens_per_second = self._tokens / elapsed
    steps_per_second = (step - self._last_step) / elapsed
    mfu = tokens_per_second * self.flops_per_token / self.peak_flops
    eta = (self.total_steps - step) / steps_per_second if steps_per_second else float("inf")
    if self.stream is not None:
      print(f"step {step}/{self.total_steps} | loss {loss:.4f} | {tokens_per_second:,.0f} tok/s"
            f" | MFU {100 * mfu:.1f}% | ETA {format_duration(eta)}", file=self.stream, flush=True)
    self._last_step, self._last_time, self._tokens = step, now, 0
    return {"tokens_per_second": tokens_per_second, "mfu": mfu}
