"""Full fine-tuning vs LoRA vs QLoRA on the quick-start decoder (`make bench`): step time
and memory (trainable parameters, AdamW state bytes, bytes of the parameters held),
the three steps interleaved in one run. QLoRA trains the same adapters over the base
quantized to int4 weights (t5x_lite/models/quantization.py, qwix).

Both steps are the same jitted forward + cross-entropy + AdamW update over nnx state;
full fine-tuning differentiates and updates every nnx.Param, LoRA only the adapters
(t5x_lite/models/lora.py, nnx.LoRAParam) with the base frozen.

  python tools/benchmark_lora.py [--rank 8] [--batch 16] [--length 256] [--rounds 5]
"""

from __future__ import annotations

import statistics
import time

import bench_cli
import jax
import numpy as np
import optax
from flax import nnx

from t5x_lite import gin_utils
from t5x_lite.models import (
  create_model,
  quantization,
)
from t5x_lite.models.lora import LoraConfig, apply_lora, optimizer_state_bytes, parameter_counts


def make_step(model, tx, wrt):
  """A jitted step of `model` with optimizer `tx` over the parameters `wrt` selects."""
  optimizer = nnx.Optimizer(model, tx, wrt=wrt)

  @nnx.jit
  def step(model, optimizer, batch):
    def loss(model):
      logits = model(batch)
      return optax.softmax_cross_entropy_with_integer_labels(
          logits, batch["decoder_target_tokens"]).mean()
    value, grads = nnx.value_and_grad(loss, argnums=nnx.DiffState(0, wrt))(model)
    optimizer.update(model, grads)
    return value

  return lambda batch: jax.block_until_ready(step(model, optimizer, batch))


def main(argv=None) -> None:
  parser = bench_cli.parser(__doc__)
  parser.add_argument("--rank", type=int, default=8)
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--length", type=int, default=256)
  parser.add_argument("--rounds", type=int, default=5)
  args = parser.parse_args(argv)
  config = gin_utils.model_config(["models/quickstart_decoder.gin"])
  rng = np.random.default_rng(0)
  text = rng.integers(2, config.vocab_size, (args.batch, args.length + 1))
  batch = {"decoder_input_tokens": np.pad(text[:, :-1], ((0, 0), (1, 0)))[:, :args.length],
           "decoder_target_tokens": text[:, :args.length]}
  full = create_model(config)
  lora = LoraConfig(rank=args.rank, alpha=2.0 * args.rank)
  adapted = apply_lora(create_model(config), lora)
  qlora = apply_lora(quantization.quantize(create_model(config), "int4_weights"), lora)
  tx = optax.adamw(1e-4)
  runs = {"full fine-tuning": (make_step(full, tx, nnx.Param), full, nnx.Param),
          f"LoRA rank {args.rank}": (make_step(adapted, tx, nnx.LoRAParam), adapted,
                                     nnx.LoRAParam),
          f"QLoRA rank {args.rank} (int4)": (make_step(qlora, tx, nnx.LoRAParam), qlora,
                                             nnx.LoRAParam)}
  for step, _, _ in runs.values():
    step(batch)  # compile
  times = {name: [] for name in runs}
  for _ in range(args.rounds):
    for name, (step, _, _) in runs.items():
      start = time.perf_counter()
      step(batch)
      times[name].append(time.perf_counter() - start)
  counts = parameter_counts(adapted)
  results = []
  for name, (_, model, wrt) in runs.items():
    trainable = counts["adapter"] if wrt is nnx.LoRAParam else counts["base"]
    row = {"run": name, "step_seconds": statistics.median(times[name]),
           "trainable_params": trainable,
           "optimizer_state_bytes": optimizer_state_bytes(model, tx, wrt=wrt),
           "parameter_bytes": quantization.parameter_bytes(model)}
    results.append(row)
    print(f"{name:24s} step {row['step_seconds']:.3f}s  trainable {trainable:>10,d} params  "
          f"AdamW state {row['optimizer_state_bytes'] / 2**20:8.2f} MiB  parameters "
          f"{row['parameter_bytes'] / 2**20:6.2f} MiB")
  bench_cli.write_json(args.json, results)


if __name__ == "__main__":
  main()
