"""What a run reports: TensorBoard event files, metrics.jsonl, a console progress line,
and the hardware peak that MFU is measured against."""

from __future__ import annotations

import functools
import json
import math
import os
import sys
import time
from typing import Mapping, Optional

import jax
import jax.numpy as jnp
import tensorflow as tf

from t5x_lite.common.errors import UserError, file_errors
from t5x_lite.common.files import atomic_write
from t5x_lite.data.corpus_store import cache_root

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


def real_device_count() -> int:
  """Devices with a peak of their own: the accelerators, or on CPU one per process (the
  fake devices of --xla_force_host_platform_device_count share their host's cores)."""
  return jax.process_count() if jax.devices()[0].platform == "cpu" else jax.device_count()


def best_measured_peak_flops(dtype: str) -> tuple[float, float]:
  """(this machine's matmul peak, the measurement just taken). The peak is the best of
  now and every earlier measurement on this machine (kept under the t5x_lite cache): a
  machine busy with other work measures low, and MFU against that would read high."""
  now = measured_peak_flops(dtype)
  key = f"{jax.devices()[0].device_kind}/{dtype}/{os.cpu_count()}"
  path = os.path.join(cache_root(), "peak_flops.json")
  try:
    with open(path) as handle:
      seen = json.load(handle)
  except (OSError, ValueError):
    seen = {}
  best = max(now, float(seen.get(key, 0.0)))
  if best > float(seen.get(key, 0.0)):
    try:
      with atomic_write(path) as handle:
        json.dump({**seen, key: best}, handle)
    except UserError:
      pass  # an unwritable cache only costs the memory of a better measurement
  return best, now


def job_peak_flops(dtype: str, per_device: Optional[float] = None) -> tuple[float, str]:
  """(the peak FLOP/s of all devices of this job, where the figure comes from): the
  override or a bfloat16 datasheet figure per accelerator, else this machine's best
  measured matmul, times real_device_count()."""
  devices = real_device_count()
  kind = jax.devices()[0].device_kind
  if per_device:
    peak, source = per_device, "train.peak_flops_per_device"
  elif kind in KNOWN_PEAK_FLOPS and dtype == "bfloat16":
    peak, source = KNOWN_PEAK_FLOPS[kind], f"{kind} datasheet"
  else:
    peak, source = best_measured_peak_flops(dtype)[0], f"best measured {dtype} matmul on {kind}"
  unit = "host" if jax.devices()[0].platform == "cpu" else "device"
  return peak * devices, f"{peak / 1e9:.0f} GFLOP/s per {unit} ({source}) x {devices}"


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
               peak_flops: float, stream=sys.stdout, bubble: Optional[float] = None):  # noqa: B008
    self.total_steps = total_steps
    self.bubble = bubble  # a pipeline schedule's idle fraction, shown with the step time
    self.flops_per_token = flops_per_token
    self.peak_flops = peak_flops
    self.stream = stream
    self._last_step, self._last_time, self._tokens = first_step, time.perf_counter(), 0

  def add_tokens(self, tokens: int) -> None:
    self._tokens += tokens

  def exclude(self, seconds: float) -> None:
    """Leaves time spent outside training steps (evaluation) out of tokens/s and MFU."""
    self._last_time += seconds

  def report(self, step: int, loss: float, detail: str = "") -> dict[str, float]:
    """Prints the line (with `detail` after the loss, e.g. an MoE model's routing) and
    returns the throughput figures for the metric writers."""
    now = time.perf_counter()
    elapsed = max(now - self._last_time, 1e-9)
    tokens_per_second = self._tokens / elapsed
    steps_per_second = (step - self._last_step) / elapsed
    mfu = tokens_per_second * self.flops_per_token / self.peak_flops
    eta = (self.total_steps - step) / steps_per_second if steps_per_second else float("inf")
    pipelined = {}
    if self.bubble is not None:
      pipelined = {"pipeline_bubble": self.bubble,
                   "step_seconds": 1 / steps_per_second if steps_per_second else float("inf")}
    if self.stream is not None:
      shown = (f" | {pipelined['step_seconds']:.3f} s/step, bubble {100 * self.bubble:.0f}%"
               if pipelined else "")
      detail = f" | {detail}" if detail else ""
      print(f"step {step}/{self.total_steps} | loss {loss:.4f}{detail} | "
            f"{tokens_per_second:,.0f} tok/s"
            f" | MFU {100 * mfu:.1f}%{shown} | ETA {format_duration(eta)}", file=self.stream,
            flush=True)
    self._last_step, self._last_time, self._tokens = step, now, 0
    return {"tokens_per_second": tokens_per_second, "mfu": mfu, **pipelined}
