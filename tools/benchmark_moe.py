"""Mixture-of-experts on this CPU (`make bench`): the training step of MoE models against
the dense model of equal active parameters, interleaved in one run, and the all-to-all's
share of an expert-parallel step on 8 fake devices.

Models (each a decoder of --layers layers, width --d_model, SwiGLU):
  dense         d_ff = 4 d
  top2_e8       8 experts of d_ff 2 d, top-2, capacity factor 1.25 (Mixtral-style): a
                token's active feed-forward is the dense model's
  top2_e8_dropless  the same, no capacity limit (its buffer holds every token per expert)
  top1_e8       8 experts of d_ff 4 d, top-1, capacity factor 1.25 (Switch-style)
The ratio is the dense step time over the MoE one (above 1: MoE faster); MFU counts
active FLOPs (models/counting.py), so routing overhead shows as lower MFU.

All-to-all share: the step of top2_e8 on an expert-parallel mesh of 8 fake devices
(experts over the expert axis), and alone the reshard its MoE layers do each way
(token buffer -> expert buffer and back, forward and backward: 4 per layer), timed on
the same mesh; share = 4 x layers x (one reshard) / step. The fake devices share this
machine's cores and memory, so the all-to-all here is a memory copy: the share is what
this machine spends, not what an interconnect would.

  python tools/benchmark_moe.py [--layers 4] [--d_model 128] [--batch 16] [--rounds 5]
      [--json PATH]
"""

from __future__ import annotations

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import statistics
import sys
import time

import bench_cli
import jax
import jax.numpy as jnp

from t5x_lite.common import partitioning
from t5x_lite.data import get_batches, register_tasks
from t5x_lite.models import TransformerConfig, counting, moe
from t5x_lite.training import metrics, optim
from t5x_lite.training.steps import make_step_functions

LENGTH = 128


def configs(layers: int, d: int) -> dict[str, TransformerConfig]:
  base = TransformerConfig(vocab_size=512, d_model=d, num_heads=4, d_ff=4 * d,
                           num_decoder_layers=layers, activation="silu", gated=True,
                           max_length=LENGTH)
  top2 = base.replace(num_experts=8, moe_top_k=2, d_ff=2 * d, moe_capacity_factor=1.25)
  return {"dense": base, "top2_e8": top2,
          "top2_e8_dropless": top2.replace(moe_capacity_factor=None),
          "top1_e8": base.replace(num_experts=8, moe_top_k=1, moe_router="switch",
                                  moe_capacity_factor=1.25)}


def build(config: TransformerConfig, mesh, batch):
  optimizer = optim.make_optimizer(optim.OptimizerConfig(), optim.make_schedule(
      optim.ScheduleConfig(warmup_steps=1), total_steps=100))
  functions = make_step_functions(config, optimizer, mesh)
  state = functions.init()
  sharded = partitioning.global_batch(batch, mesh)
  state, stats = functions.train(state, sharded)  # compile
  jax.block_until_ready(stats)
  return [functions, state, sharded, []]


def timed_step(entry) -> None:
  functions, state, sharded, times = entry
  start = time.perf_counter()
  state, stats = functions.train(state, sharded)
  jax.block_until_ready(stats)
  times.append(time.perf_counter() - start)
  entry[1] = state


def reshard_seconds(config: TransformerConfig, mesh, batch_size: int, rounds: int) -> float:
  """One move of an MoE layer's token buffer into the expert layout (the all-to-all)."""
  slots = moe.capacity(config, LENGTH)
  shape = (config.routed_experts, batch_size, slots, config.d_model)
  with partitioning.axis_rules(mesh):
    source = jax.jit(lambda: jnp.ones(shape), out_shardings=jax.sharding.NamedSharding(
        mesh, partitioning.mesh_axes_for(moe.TOKEN_BUFFER_AXES, shape, mesh)))()
    move = jax.jit(lambda x: partitioning.constrain(x, moe.EXPERT_BUFFER_AXES) * 1.0)
    jax.block_until_ready(move(source))
    times = []
    for _ in range(rounds * 5):
      start = time.perf_counter()
      jax.block_until_ready(move(source))
      times.append(time.perf_counter() - start)
  return statistics.median(times)


def main(argv=None) -> None:
  parser = bench_cli.parser(__doc__)
  parser.add_argument("--layers", type=int, default=4)
  parser.add_argument("--d_model", type=int, default=128)
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--rounds", type=int, default=5)
  args = parser.parse_args(argv)
  if len(jax.devices()) < 8:
    sys.exit("error: needs 8 devices; run with "
             "XLA_FLAGS=--xla_force_host_platform_device_count=8.")
  register_tasks()
  batch = next(get_batches("pydocs.full_lm.byte", {"targets": LENGTH}, "train", args.batch,
                           "causal_decoder", seed=0))
  models = configs(args.layers, args.d_model)
  one = partitioning.create_mesh((1, 1, 1), jax.devices()[:1])
  experts_mesh = partitioning.create_mesh((1, 1, 1, 1, 8), jax.devices()[:8])
  entries = {name: build(config, one, batch) for name, config in models.items()}
  entries["top2_e8 on 8 expert shards"] = build(models["top2_e8"], experts_mesh, batch)
  for _ in range(args.rounds):  # interleaved: machine noise falls on every model
    for entry in entries.values():
      timed_step(entry)
  seconds = {name: statistics.median(entry[3]) for name, entry in entries.items()}
  peak = metrics.measured_peak_flops("float32")
  tokens = args.batch * LENGTH
  rows = []
  for name, config in models.items():
    counts = counting.count(config, targets_length=LENGTH)
    rows.append({"model": name, "params": counts.params, "active_params": counts.active_params,
                 "step_seconds": seconds[name], "tokens_per_second": tokens / seconds[name],
                 "dense_over_this": seconds["dense"] / seconds[name],
                 "mfu": counts.flops_per_token * tokens / seconds[name] / peak})
  print(f"{args.layers} layers, d_model {args.d_model}, batch {args.batch} x {LENGTH} tokens, "
        f"1 CPU device; MFU against {peak / 1e9:.0f} GFLOP/s (measured matmul)")
  print("| model | params | active | step | tokens/s | dense / this | MFU (active) |\n"
        "|---|---|---|---|---|---|---|")
  for row in rows:
    print(f"| {row['model']} | {row['params'] / 1e6:.2f}M | {row['active_params'] / 1e6:.2f}M | "
          f"{row['step_seconds'] * 1e3:.0f} ms | {row['tokens_per_second']:,.0f} | "
          f"{row['dense_over_this']:.2f}x | {100 * row['mfu']:.1f}% |")
  expert_step = seconds["top2_e8 on 8 expert shards"]
  one_move = reshard_seconds(models["top2_e8"], experts_mesh, args.batch, args.rounds)
  share = 4 * args.layers * one_move / expert_step
  print(f"expert-parallel top2_e8 on 8 fake devices: step {expert_step * 1e3:.0f} ms; one "
        f"token-buffer all-to-all {one_move * 1e3:.2f} ms, x 4 per layer x {args.layers} "
        f"layers = {share:.1%} of the step")
  bench_cli.write_json(args.json, {"models": rows, "expert_parallel_step_seconds": expert_step,
                                   "all_to_all_seconds": one_move, "all_to_all_share": share})


if __name__ == "__main__":
  main()
