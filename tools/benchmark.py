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
import jax.numpy as jnp
import optax
from flax import nnx

from t5x_lite.models import Transformer, TransformerConfig
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


def measure_peak_flops(dtype: str, size: int = 2048, repeats: int = 10) -> float:
  """FLOP/s of a chain of size x size matmuls, best of three timings."""
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


def make_batch(config: TransformerConfig, batch: int, inputs: int, targets: int) -> dict:
  key = jax.random.key(0)
  length = targets if config.is_encoder_decoder else inputs + targets
  tokens = jax.random.randint(key, (batch, length), 1, config.vocab_size)
  features = {"decoder_input_tokens": tokens, "decoder_target_tokens": tokens}
  if config.is_encoder_decoder:
    features["encoder_input_tokens"] = jax.random.randint(key, (batch, inputs), 1,
                                                          config.vocab_size)
  if config.architecture == "prefix_decoder":
    features["decoder_causal_attention"] = (jnp.arange(length) < inputs)[None].repeat(batch, 0)
  return features


def benchmark(name: str, dtype: str, steps: int, peak: float) -> dict:
  fields, batch_size, inputs, targets = CONFIGS[name]
  config = TransformerConfig(dtype=dtype, **fields)
  return dict(benchmark_config(config, batch_size, inputs, targets, steps, peak), config=name)


def benchmark_config(config: TransformerConfig, batch_size: int, inputs: int, targets: int,
                     steps: int, peak: float) -> dict:
  """Times `steps` AdamW training steps of `config` on one random batch."""
  model = Transformer(config, rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(model)
  optimizer = optax.adamw(1e-4)
  opt_state = optimizer.init(params)
  batch = make_batch(config, batch_size, inputs, targets)

  def loss_fn(params, batch):
    logits = nnx.merge(graphdef, params)(batch)
    return optax.softmax_cross_entropy_with_integer_labels(
        logits, batch["decoder_target_tokens"]).mean()

  @jax.jit
  def train_step(params, opt_state, batch):
    loss, grads = jax.value_and_grad(loss_fn)(params, batch)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  params, opt_state, loss = train_step(params, opt_state, batch)  # compile
  loss.block_until_ready()
  start = time.perf_counter()
  for _ in range(steps):
    params, opt_state, loss = train_step(params, opt_state, batch)
  loss.block_until_ready()
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
  peak = measure_peak_flops(args.dtype)
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
