"""Training-step throughput and MFU on this machine (`make bench`).

MFU = (training FLOPs per token from t5x_lite.scaling.counting, matmul
convention) x (tokens per second) / (peak FLOP/s). The peak is measured here
with a large float32 matmul (or bfloat16 with --dtype=bfloat16), so the
figure is against what this machine's XLA can actually do, not a datasheet.

  python tools/benchmark.py [--configs decoder_6x512 ...] [--steps 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import numpy as np

from t5x_lite import optim, partitioning, trainer
from t5x_lite.metrics import measured_peak_flops
from t5x_lite.models import TransformerConfig
from t5x_lite.scaling.counting import count

# name: (config fields, batch size, inputs length, targets length)
CONFIGS = {
    "decoder_6x512": (dict(architecture="causal_decoder", d_model=512, num_decoder_layers=6,
                           num_heads=8, d_ff=2048, vocab_size=32128), 4, 0, 512),
    "prefix_decoder_6x512": (dict(architecture="prefix_decoder", d_model=512,
                                  num_decoder_layers=6, num_heads=8, d_ff=2048,
                                  vocab_size=32128), 4, 256, 256),
    "encoder_decoder_3+3x512": (dict(architecture="encoder_decoder", d_model=512,
                                     num_encoder_layers=3, num_decoder_layers=3, num_heads=8,
                                     d_ff=2048, vocab_size=32128), 4, 512, 128),
    "decoder_2x256": (dict(architecture="causal_decoder", d_model=256, num_decoder_layers=2,
                           num_heads=4, d_ff=1024, vocab_size=8192), 8, 0, 256),
}


def make_batch(config: TransformerConfig, batch: int, inputs: int, targets: int) -> dict:
  rng = np.random.default_rng(0)
  length = targets if config.is_encoder_decoder else inputs + targets
  tokens = rng.integers(1, config.vocab_size, (batch, length), dtype=np.int32)
  features = {"decoder_input_tokens": tokens, "decoder_target_tokens": tokens,
              "decoder_loss_weights": np.ones_like(tokens)}
  if config.is_encoder_decoder:
    features["encoder_input_tokens"] = rng.integers(1, config.vocab_size, (batch, inputs),
                                                    dtype=np.int32)
  if config.architecture == "prefix_decoder":
    features["decoder_causal_attention"] = np.repeat(
        (np.arange(length) < inputs)[None].astype(np.int32), batch, 0)
  return features


def benchmark(name: str, dtype: str, steps: int, peak: float) -> dict:
  fields, batch_size, inputs, targets = CONFIGS[name]
  config = TransformerConfig(dtype=dtype, **fields)
  return dict(benchmark_config(config, batch_size, inputs, targets, steps, peak), config=name)


def benchmark_config(config: TransformerConfig, batch_size: int, inputs: int, targets: int,
                     steps: int, peak: float) -> dict:
  """Times `steps` steps of the trainer's own train step (AdamW, z-loss, clipping)."""
  mesh = partitioning.create_mesh((1, 1, 1), jax.devices()[:1])
  optimizer = optim.make_optimizer(optim.OptimizerConfig(),
                                   optim.make_schedule(optim.ScheduleConfig(), steps + 1))
  step_functions = trainer.make_step_functions(config, optimizer, mesh)
  state = step_functions.init()
  batch = partitioning.global_batch(make_batch(config, batch_size, inputs, targets), mesh)
  state, stats = step_functions.train(state, batch)  # compile
  jax.block_until_ready(stats)
  start = time.perf_counter()
  for _ in range(steps):
    state, stats = step_functions.train(state, batch)
  jax.block_until_ready(stats)
  seconds = (time.perf_counter() - start) / steps
  counts = count(config, inputs_length=inputs, targets_length=targets)
  tokens_per_second = batch_size * counts.tokens_per_sequence / seconds
  return {"dtype": config.dtype, "params": counts.params,
          "tokens_per_step": batch_size * counts.tokens_per_sequence,
          "step_seconds": seconds, "tokens_per_second": tokens_per_second,
          "mfu": counts.flops_per_token * tokens_per_second / peak}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
  parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--json", help="also write the results to this file")
  args = parser.parse_args()
  peak = measured_peak_flops(args.dtype)
  print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}; measured {args.dtype} "
        f"matmul peak {peak / 1e9:.1f} GFLOP/s")
  results = []
  for name in args.configs:
    result = benchmark(name, args.dtype, args.steps, peak)
    results.append(result)
    print(f"{name:26s} {result['params'] / 1e6:7.1f}M params  "
          f"{result['tokens_per_second']:9.0f} tokens/s  "
          f"step {result['step_seconds']:.3f}s  MFU {100 * result['mfu']:5.1f}%")
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"peak_flops": peak, "results": results}, f, indent=2)


if __name__ == "__main__":
  main()
