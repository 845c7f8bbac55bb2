"""Pipeline parallelism on 8 fake CPU devices (`make bench`): training step time of 2-
and 4-stage pipelines (GPipe and circular) against the unpipelined step, and the
bubble measured against the schedule's formula, all interleaved in one run.

The fake devices share this machine's cores, so stages do not run in parallel and a
pipeline cannot be faster here; what the figures show is the schedule's cost. A
pipelined step runs R M + S - 1 iterations in which every stage computes its layer
group on one microbatch, of which S - 1 iterations per stage are bubble (stale inputs,
discarded); on cores shared by all stages that is the unpipelined step's work plus the
bubble's, so the measured bubble is 1 - (unpipelined step time) / (pipelined step
time), beside the formula (S - 1) / (R M + S - 1). (Smaller per-microbatch matmuls and
the stage-to-stage copies move it either way.)

  XLA_FLAGS=--xla_force_host_platform_device_count=8 python tools/benchmark_pipeline.py \
      [--layers 8] [--batch 32] [--rounds 5] [--json PATH]
"""

from __future__ import annotations

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import statistics
import sys
import time

import bench_cli
import jax

from t5x_lite import gin_utils
from t5x_lite.common import partitioning
from t5x_lite.data import get_batches, register_tasks
from t5x_lite.models import pipeline_parallel
from t5x_lite.training import optim
from t5x_lite.training.steps import make_step_functions


def main(argv=None) -> None:
  parser = bench_cli.parser(__doc__)
  parser.add_argument("--layers", type=int, default=8)
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--rounds", type=int, default=5)
  args = parser.parse_args(argv)
  if len(jax.devices()) < 8:
    sys.exit("error: needs 8 devices; run with "
             "XLA_FLAGS=--xla_force_host_platform_device_count=8.")
  register_tasks()
  base = gin_utils.model_config(["models/tiny_causal_decoder.gin"]).replace(
      num_decoder_layers=args.layers, scan_layers=True)
  batch = next(get_batches("pydocs.full_lm.byte", {"targets": 128}, "train", args.batch,
                           "causal_decoder", seed=0))
  # (stages, microbatches, repeats); stage 1 is the unpipelined step.
  configurations = [(1, 1, 1)] + [(s, m, 1) for s in (2, 4) for m in (s, 2 * s, 4 * s)] + [
      (s, m, 2) for s in (2, 4) for m in (s, 2 * s)]
  steps = {}
  for stages, microbatches, repeats in configurations:
    mesh = partitioning.create_mesh((1, 1, 1, stages), jax.devices()[:stages])
    config = base.replace(pipeline_microbatches=microbatches, pipeline_repeats=repeats)
    optimizer = optim.make_optimizer(optim.OptimizerConfig(), optim.make_schedule(
        optim.ScheduleConfig(warmup_steps=1), total_steps=100))
    functions = make_step_functions(config, optimizer, mesh)
    state = functions.init()
    sharded = partitioning.global_batch(batch, mesh)
    state, _ = functions.train(state, sharded)  # compile
    jax.block_until_ready(state)
    steps[(stages, microbatches, repeats)] = [functions, state, sharded, []]
  for _ in range(args.rounds):  # interleaved: machine noise falls on every configuration
    for key, entry in steps.items():
      functions, state, sharded, times = entry
      start = time.perf_counter()
      state, stats = functions.train(state, sharded)
      jax.block_until_ready(stats)
      times.append(time.perf_counter() - start)
      entry[1] = state
  seconds = {key: statistics.median(entry[3]) for key, entry in steps.items()}
  plain = seconds[(1, 1, 1)]
  rows = []
  for (stages, microbatches, repeats), value in seconds.items():
    if stages == 1:
      continue
    rows.append({"stages": stages, "microbatches": microbatches, "repeats": repeats,
                 "step_seconds": value, "vs_unpipelined": value / plain,
                 "bubble_formula": pipeline_parallel.bubble_fraction(stages, microbatches, repeats),
                 "bubble_measured": 1 - plain / value})
  print(f"unpipelined step ({args.layers} layers, batch {args.batch} x 128 tokens, 1 device): "
        f"{plain * 1e3:.1f} ms")
  print("| stages | microbatches | repeats | step | vs unpipelined | bubble (formula) | "
        "bubble (measured) |\n|---|---|---|---|---|---|---|")
  for row in rows:
    print(f"| {row['stages']} | {row['microbatches']} | {row['repeats']} | "
          f"{row['step_seconds'] * 1e3:.1f} ms | {row['vs_unpipelined']:.2f}x | "
          f"{row['bubble_formula']:.1%} | {row['bubble_measured']:.1%} |")
  bench_cli.write_json(args.json, {"unpipelined_seconds": plain, "pipelined": rows})


if __name__ == "__main__":
  main()
