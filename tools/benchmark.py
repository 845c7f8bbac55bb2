"""Training-step speed side by side with PyTorch, as ratios and MFU (`make bench`).

For each model, the step of t5x_lite's trainer (make_step_functions: forward,
cross-entropy + z-loss, backward, global-norm clipping, AdamW) and the same step in
PyTorch (tools/torch_reference.py: a nanoGPT-style decoder with exactly our parameters,
function and FLOPs, eager and torch.compile; Hugging Face T5 for the encoder-decoder) are
timed in interleaved rounds on the same batches (random tokens, targets shifted by one,
four distinct batches in turn), each framework in a process of its own
(tools/interleave.py says why). Denormals are flushed in PyTorch, as XLA does. Reported:
median step time, tokens/s, our speed as a ratio of each peer's (> 1: we are faster),
and MFU.

MFU = training FLOPs per token (t5x_lite.models.counting, matmul convention: every
projection, the logits and both attention matmuls over the full length, as PaLM counts
them; MaxText counts causal attention at half, so its MFU reads lower for the same
speed) x tokens/s / peak. The peak is a datasheet bfloat16 figure for known accelerators;
on CPU it is measured at the start and the end of the run, the better of XLA's and
PyTorch's float32 matmul, and the run warns when a measurement falls under 85% of the
best this machine has shown (metrics.best_measured_peak_flops): a busy machine.

  python tools/benchmark.py [--configs decoder_6x512 ...] [--rounds 5] [--no-compile]
  python tools/benchmark.py --preset gpt3_1_3b --dtype bfloat16 --seq 2048 --batch 8
"""

from __future__ import annotations

import time
from typing import Callable, Optional

import bench_cli
import interleave
import jax
import numpy as np

from t5x_lite import gin_utils, train
from t5x_lite.common import cpus, partitioning
from t5x_lite.models import TransformerConfig
from t5x_lite.models.counting import count
from t5x_lite.training import metrics, optim
from t5x_lite.training.steps import make_step_functions

BUSY = 0.85
# name: (config fields, batch size, inputs length, targets length)
CONFIGS = {
    "decoder_6x512": (dict(architecture="causal_decoder", d_model=512, num_decoder_layers=6,
                           num_heads=8, d_ff=2048, vocab_size=32128), 4, 0, 512),
    "prefix_decoder_6x512": (dict(architecture="prefix_decoder", d_model=512,
                                  num_decoder_layers=6, num_heads=8, d_ff=2048,
                                  vocab_size=32128), 4, 256, 256),
    # T5 v1.1-style, so Hugging Face's T5 is the same model.
    "encoder_decoder_3+3x512": (dict(architecture="encoder_decoder", d_model=512,
                                     num_encoder_layers=3, num_decoder_layers=3, num_heads=8,
                                     d_ff=2048, vocab_size=32128, gated=True,
                                     position_encoding="t5_relative",
                                     scale_attention_logits=False), 4, 512, 128),
}


def make_batches(config: TransformerConfig, batch: int, inputs: int, targets: int,
                 count_: int = 4, seed: int = 0) -> list[dict]:
  """`count_` distinct batches: random text, decoder inputs = targets shifted right by one
  (BOS 0), every target weighted; prefix decoders mark their first `inputs` positions."""
  rng = np.random.default_rng(seed)
  length = targets if config.is_encoder_decoder else inputs + targets
  batches = []
  for _ in range(count_):
    text = rng.integers(2, config.vocab_size, (batch, length + 1), dtype=np.int32)
    features = {"decoder_input_tokens": np.pad(text[:, :-1], ((0, 0), (1, 0)))[:, :length],
                "decoder_target_tokens": text[:, :length],
                "decoder_loss_weights": np.ones((batch, length), np.float32)}
    if config.is_encoder_decoder:
      features["encoder_input_tokens"] = rng.integers(2, config.vocab_size, (batch, inputs),
                                                      dtype=np.int32)
    if config.architecture_spec.bidirectional_prefix:
      features["decoder_causal_attention"] = np.repeat(
          (np.arange(length) < inputs)[None].astype(np.int32), batch, 0)
    batches.append(features)
  return batches


def ours(config: TransformerConfig, batches: list[dict],
         xla_sized_pool: bool = False) -> dict[str, Callable[[int], None]]:
  """{"t5x_lite": one training step on batch i (the trainer's own step function, under
  the XLA flags and CPU thread pool `python -m t5x_lite.train` uses)}; xla_sized_pool:
  leave the pool as XLA sizes it instead, as "t5x_lite (XLA-sized pool)"."""
  train.use_training_xla_flags()  # this worker has not computed anything yet
  if not xla_sized_pool:
    cpus.size_thread_pool()
  mesh = partitioning.create_mesh((1, 1, 1), jax.devices()[:1])
  optimizer = optim.make_optimizer(optim.OptimizerConfig(),
                                   optim.make_schedule(optim.ScheduleConfig(), 10_000))
  steps = make_step_functions(config, optimizer, mesh)
  state = {"state": steps.init()}
  device_batches = [partitioning.global_batch(b, mesh) for b in batches]

  def step(i: int) -> None:
    state["state"], stats = steps.train(state["state"], device_batches[i % len(batches)])
    jax.block_until_ready(stats)
  return {"t5x_lite (XLA-sized pool)" if xla_sized_pool else "t5x_lite": step}


def peers(config: TransformerConfig, batches: list[dict], compile_: bool) -> dict:
  """The PyTorch steps of the same model: name -> step(i)."""
  import torch
  import torch_reference as reference

  torch.set_flush_denormal(True)
  torch.manual_seed(0)
  if config.is_encoder_decoder:
    models = {"HF T5 eager": reference.hf_t5(config)}
    forward = reference.t5_forward
  else:
    models = {"PyTorch eager": reference.Decoder(config)}
    forward = reference.decoder_forward
  result = {}
  for name, model in models.items():
    runs = [(name, forward(model))]
    if compile_:
      runs.append((name.replace("eager", "torch.compile"), torch.compile(forward(model))))
    for run_name, run in runs:
      step_fn = reference.TrainStep(model, run)
      torch_batches = [{k: torch.tensor(v) for k, v in b.items()} for b in batches]
      result[run_name] = lambda i, s=step_fn, b=torch_batches: s(b[i % len(b)])
  return result


def torch_matmul_peak(size: int = 2048, repeats: int = 10) -> float:
  import torch

  a = torch.ones(size, size) / size
  x = a @ a
  best = float("inf")
  for _ in range(3):
    start = time.perf_counter()
    x = a
    for _ in range(repeats):
      x = x @ a
    best = min(best, time.perf_counter() - start)
  return 2 * size**3 * repeats / best


def peak(dtype: str, with_torch: bool) -> tuple[float, float, str]:
  """(peak FLOP/s of one device, this run's measurement, description)."""
  kind = jax.devices()[0].device_kind
  if kind in metrics.KNOWN_PEAK_FLOPS and dtype == "bfloat16":
    value = metrics.KNOWN_PEAK_FLOPS[kind]
    return value, value, f"{kind} datasheet bfloat16"
  metrics.measured_peak_flops.cache_clear()
  best, xla_now = metrics.best_measured_peak_flops(dtype)
  now = max(xla_now, torch_matmul_peak() if with_torch else 0.0)
  return max(best, now), now, f"{dtype} matmul, best of XLA and PyTorch on {kind}"


def benchmark(name: str, config: TransformerConfig, batch: int, inputs: int, targets: int,
              rounds: int, peak_flops: float, compile_: bool, with_torch: bool) -> dict:
  batches = make_batches(config, batch, inputs, targets)
  workers = [interleave.Worker(ours, config, batches)]
  try:
    if with_torch:
      workers.append(interleave.Worker(peers, config, batches, compile_))
    seconds = interleave.time_rounds(workers, rounds)
  finally:
    for worker in workers:
      worker.close()
  counts = count(config, inputs_length=inputs, targets_length=targets)
  tokens = batch * counts.tokens_per_sequence
  rows = {run: {"step_seconds": s, "tokens_per_second": tokens / s,
                "mfu": counts.flops_per_token * tokens / s / peak_flops}
          for run, s in seconds.items()}
  for run, row in rows.items():
    row["ours_vs_this"] = seconds[run] / seconds["t5x_lite"]
  return {"config": name, "dtype": config.dtype, "params": counts.params,
          "tokens_per_step": tokens, "flops_per_token": counts.flops_per_token, "runs": rows}


def report(result: dict) -> None:
  print(f"\n{result['config']} ({result['params'] / 1e6:.1f}M params, "
        f"{result['tokens_per_step']} tokens/step, {result['dtype']})")
  for run, row in result["runs"].items():
    ratio = "" if run == "t5x_lite" else f"  t5x_lite is {row['ours_vs_this']:.2f}x this"
    print(f"  {run:24s} step {row['step_seconds']:.3f}s  {row['tokens_per_second']:9,.0f} "
          f"tok/s  MFU {100 * row['mfu']:5.1f}%{ratio}")


def main(argv: Optional[list[str]] = None) -> None:
  parser = bench_cli.parser(__doc__)
  parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
  parser.add_argument("--preset", help="a gin/models preset instead, e.g. gpt3_1_3b")
  parser.add_argument("--seq", type=int, default=2048, help="--preset: sequence length")
  parser.add_argument("--batch", type=int, default=8, help="--preset: batch size")
  parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--no-compile", dest="compile", action="store_false",
                      help="skip torch.compile (its compilation takes minutes on CPU)")
  args = parser.parse_args(argv)
  with_torch = jax.devices()[0].platform == "cpu"  # the torch wheel here is CPU-only
  peak_flops, measured, source = peak(args.dtype, with_torch)
  print(f"device: {jax.devices()[0].device_kind}; peak {peak_flops / 1e9:,.0f} GFLOP/s "
        f"({source}); measured now {measured / 1e9:,.0f}")
  if measured < BUSY * peak_flops:
    print(f"warning: the machine is busy (matmul at {100 * measured / peak_flops:.0f}% of its "
          "best): timings are low and MFU against the best peak is honest but pessimistic")
  if args.preset:
    base = gin_utils.model_config([f"models/{args.preset}.gin"])
    todo = [(args.preset, base.replace(dtype=args.dtype, max_length=max(base.max_length,
                                                                        args.seq)),
             args.batch, 0, args.seq)]
  else:
    todo = [(name, TransformerConfig(dtype=args.dtype, **fields), batch, inputs, targets)
            for name, (fields, batch, inputs, targets) in
            ((n, CONFIGS[n]) for n in args.configs)]
  results = []
  for name, config, batch, inputs, targets in todo:
    results.append(benchmark(name, config, batch, inputs, targets, args.rounds, peak_flops,
                             args.compile, with_torch))
    report(results[-1])
  after = peak(args.dtype, with_torch)[1]
  if after < BUSY * peak_flops:
    print(f"warning: the machine was busy by the end (matmul at {100 * after / peak_flops:.0f}% "
          "of its best)")
  bench_cli.write_json(args.json, {"peak_flops": peak_flops, "peak_source": source,
                                  "results": results})


if __name__ == "__main__":
  main()
