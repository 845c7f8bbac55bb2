"""Speed on a shared CPU, side by side with PyTorch (`make bench`).

Researchers train on shared laptops, CI runners and CPU-limited containers, so losing
cores to other work should cost what it costs PyTorch, no more. Each condition starts
fresh worker processes (a thread pool sizes itself when the process starts) for
t5x_lite and its PyTorch peer and times them interleaved (tools/interleave.py):
  - quiet: every core this process may use;
  - one core: the workers pinned to one core (as `taskset -c 0` does; children inherit
    the affinity the parent sets around their start);
  - busy neighbour: all cores, beside one process that spins on a core meanwhile;
  - 1-CPU quota: all cores in the affinity mask, but a cgroup allows one CPU's worth of
    time per period, as `docker --cpus=1` and CI runners do (needs root and a writable
    cgroup cpu controller; skipped otherwise).
Timed: the training step of the 6 x 512 decoder (SwiGLU 1408, sequence 512, batch 4,
float32) against the PyTorch eager reference (tools/benchmark.py's runs), and greedy
generation of the quick-start decoder at batch 1 and 8 against Hugging Face generate
(tools/benchmark_decoding.py's runs). Printed: seconds per call, each framework's
slowdown against its own quiet time, and the ratio of the two (> 1: t5x_lite faster).

  python tools/benchmark_shared_cpu.py [--rounds 3] [--conditions quiet one_core busy quota]
"""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing
import os
from typing import Iterator, Optional

import bench_cli
import benchmark
import benchmark_decoding
import interleave
import numpy as np

from t5x_lite import gin_utils
from t5x_lite.common import cpus as cpus_lib
from t5x_lite.models import TransformerConfig

CONDITIONS = {"quiet": "quiet", "one_core": "one core", "busy": "busy neighbour",
              "quota": "1-CPU quota"}
STEP_CONFIG = TransformerConfig(architecture="causal_decoder", d_model=512,
                                num_decoder_layers=6, num_heads=8, d_ff=1408, gated=True,
                                activation="silu", vocab_size=32128, max_length=512)
STEP_BATCH, STEP_LENGTH = 4, 512
NEW_TOKENS = 128


def _spin() -> None:
  while True:
    pass


def _own_cgroup() -> Optional[tuple[int, str]]:
  """(version, directory) of this process's cgroup that can take a CPU quota, or None."""
  with open("/proc/self/mountinfo") as mountinfo, open("/proc/self/cgroup") as cgroup:
    mounts, paths = cpus_lib.cgroup_mounts(mountinfo.read()), cpus_lib.process_cgroups(
        cgroup.read())
  for version, mounted_root, mount_point in sorted(mounts):  # v1's cpu controller first
    if version in paths and paths[version].startswith(mounted_root):
      directory = os.path.join(mount_point, os.path.relpath(paths[version], mounted_root))
      if version == 1 or "cpu" in open(os.path.join(directory, "cgroup.subtree_control")
                                       ).read().split():
        return version, os.path.normpath(directory)
  return None


@contextlib.contextmanager
def cpu_quota(cpus: float) -> Iterator[bool]:
  """Processes started inside run in a new cgroup allowed `cpus` CPUs of time per
  100 ms period; yields False (and limits nothing) where cgroups cannot be written."""
  own = _own_cgroup()
  made = None
  try:
    if own is None:
      raise OSError("no cgroup with a cpu controller")
    version, parent = own
    made = os.path.join(parent, f"t5x_lite_bench_{os.getpid()}")
    os.mkdir(made)
    if version == 1:
      for name, value in (("cpu.cfs_period_us", 100_000), ("cpu.cfs_quota_us",
                                                           int(cpus * 100_000))):
        with open(os.path.join(made, name), "w") as handle:
          handle.write(str(value))
    else:
      with open(os.path.join(made, "cpu.max"), "w") as handle:
        handle.write(f"{int(cpus * 100_000)} 100000")
    with open(os.path.join(made, "cgroup.procs"), "w") as handle:
      handle.write(str(os.getpid()))  # children started meanwhile inherit it
  except OSError as error:
    print(f"  (no CPU quota: {error}; needs root and a writable cgroup cpu controller)")
    if made and os.path.isdir(made):
      os.rmdir(made)
    yield False
    return
  try:
    yield True
  finally:
    with open(os.path.join(parent, "cgroup.procs"), "w") as handle:
      handle.write(str(os.getpid()))
    os.rmdir(made)  # empty now: the workers have exited


@contextlib.contextmanager
def condition(name: str) -> Iterator[bool]:
  """Processes started inside run under condition `name` (a key of CONDITIONS); yields
  whether the condition could be made."""
  if name == "quota":
    with cpu_quota(1.0) as made:
      yield made
    return
  cpus = os.sched_getaffinity(0)
  neighbour = None
  if name == "one_core":
    os.sched_setaffinity(0, {min(cpus)})
  elif name == "busy":
    neighbour = multiprocessing.get_context("spawn").Process(target=_spin, daemon=True)
    neighbour.start()
  try:
    yield True
  finally:
    os.sched_setaffinity(0, cpus)
    if neighbour is not None:
      neighbour.kill()
      neighbour.join()


def timed(name: str, workers_of, rounds: int, warmup: int) -> Optional[dict[str, float]]:
  """Median seconds of every run of the workers `workers_of(name)` starts under `name`
  (None: the condition cannot be made here)."""
  with condition(name) as made:
    if not made:
      return None
    workers = workers_of(name)
    try:
      return interleave.time_rounds(workers, rounds, warmup=warmup)
    finally:
      for worker in workers:
        worker.close()


def main(argv=None) -> None:
  parser = bench_cli.parser(__doc__)
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--conditions", nargs="+", default=list(CONDITIONS),
                      choices=list(CONDITIONS))
  parser.add_argument("--skip", nargs="*", default=[], choices=["training", "decoding"])
  args = parser.parse_args(argv)
  print(f"cores this process may use: {len(os.sched_getaffinity(0))}", flush=True)
  batches = benchmark.make_batches(STEP_CONFIG, STEP_BATCH, 0, STEP_LENGTH)
  decode_config = dataclasses.replace(
      gin_utils.model_config(["models/quickstart_decoder.gin"]),
      max_length=benchmark_decoding.PROMPT + 1 + NEW_TOKENS)
  prompts = {batch: np.random.default_rng(batch).integers(
      2, decode_config.vocab_size, (batch, benchmark_decoding.PROMPT)) for batch in (1, 8)}
  # Under a quota the pool XLA sizes from the affinity mask differs from ours, so that
  # condition also times it, to show what sizing the pool changes.
  suites = {
      "training": (lambda name: [
          interleave.Worker(benchmark.ours, STEP_CONFIG, batches),
          interleave.Worker(benchmark.peers, STEP_CONFIG, batches, False),
          *([interleave.Worker(benchmark.ours, STEP_CONFIG, batches, True)]
            if name == "quota" else [])],
          2, {"train step": ("t5x_lite", "PyTorch eager")}),
      "decoding": (lambda name: [
          interleave.Worker(benchmark_decoding.ours, decode_config, prompts, NEW_TOKENS),
          interleave.Worker(benchmark_decoding.theirs, decode_config, prompts, NEW_TOKENS),
          *([interleave.Worker(benchmark_decoding.ours, decode_config, prompts, NEW_TOKENS,
                               True)] if name == "quota" else [])],
          1, {f"generate b{b}": (f"t5x_lite b{b}", f"HF generate b{b}") for b in prompts}),
  }
  results = {}
  for suite, (workers_of, warmup, pairs) in suites.items():
    if suite in args.skip:
      continue
    seconds = {}
    for name in args.conditions:
      timing = timed(name, workers_of, args.rounds, warmup)
      if timing is None:
        continue
      seconds[name] = timing
      print(f"  {suite}, {CONDITIONS[name]}: " + ", ".join(
          f"{run} {s:.3f}s" for run, s in seconds[name].items()), flush=True)
    for what, (ours, theirs) in pairs.items():
      print(f"{what}:")
      for name in seconds:
        row = {"t5x_lite_seconds": seconds[name][ours], "peer_seconds": seconds[name][theirs],
               "ratio": seconds[name][theirs] / seconds[name][ours]}
        if "quiet" in seconds:
          row["t5x_lite_slowdown"] = row["t5x_lite_seconds"] / seconds["quiet"][ours]
          row["peer_slowdown"] = row["peer_seconds"] / seconds["quiet"][theirs]
        xla_sized = ours.replace("t5x_lite", "t5x_lite (XLA-sized pool)")
        if xla_sized in seconds[name]:
          row["xla_sized_pool_seconds"] = seconds[name][xla_sized]
        results.setdefault(what, {})[name] = row
        slowdown = ("" if "quiet" not in seconds else
                    f"  slowdown t5x_lite {row['t5x_lite_slowdown']:.2f}x, "
                    f"{theirs.split(' b')[0]} {row['peer_slowdown']:.2f}x")
        print(f"  {CONDITIONS[name]:15s} t5x_lite {row['t5x_lite_seconds']:7.3f}s  "
              f"{theirs.split(' b')[0]} {row['peer_seconds']:7.3f}s  ratio {row['ratio']:.2f}"
              f"{slowdown}", flush=True)
        if "xla_sized_pool_seconds" in row:
          quiet = seconds.get("quiet", {}).get(ours)
          print(f"  {'':15s} t5x_lite with XLA's own pool size {row['xla_sized_pool_seconds']:.3f}s"
                + (f", slowdown {row['xla_sized_pool_seconds'] / quiet:.2f}x" if quiet else ""),
                flush=True)
  bench_cli.write_json(args.json, {"cores": len(os.sched_getaffinity(0)), "results": results})


if __name__ == "__main__":
  main()
