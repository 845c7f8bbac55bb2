"""Input-pipeline throughput against what training consumes (`make bench`).

Measures tokens/s of packed seqio batches from `t5x_lite.data.get_batches`
(span corruption at inputs 512 / targets 114 for the encoder-decoder, and the
quick-start full-LM stream), then the training-step tokens/s of the
quick-start model (gin/models/quickstart_decoder.gin), and reports the ratio.
The pipeline should be at least 10x faster than training so a run is never
input-bound.

  python tools/benchmark_data.py [--seconds 15] [--json out.json]
"""

from __future__ import annotations

import time

import bench_cli
import benchmark

from t5x_lite import gin_utils
from t5x_lite.data import get_batches, register_tasks

QUICKSTART_BATCH, QUICKSTART_LENGTH = 16, 256
PIPELINES = {
    "span_corruption_512": ("pydocs.span_corruption", {"inputs": 512, "targets": 114},
                            "encoder_decoder", 32),
    "quickstart_full_lm_256": ("pydocs.full_lm", {"targets": QUICKSTART_LENGTH}, "causal_decoder",
                               QUICKSTART_BATCH),
}


def pipeline_tokens_per_second(name: str, seconds: float) -> dict:
  """Model-input positions per second (every position of every packed row)."""
  task, lengths, architecture, batch_size = PIPELINES[name]
  batches = get_batches(task, lengths, "train", batch_size, architecture, seed=0)
  next(batches)  # Builds the graph, the corpus and the vocabulary if needed.
  count, tokens, start = 0, 0, time.perf_counter()
  while time.perf_counter() - start < seconds:
    batch = next(batches)
    tokens += sum(v.size for k, v in batch.items() if k.endswith("input_tokens"))
    count += 1
  elapsed = time.perf_counter() - start
  return {"pipeline": name, "batches_per_second": count / elapsed,
          "tokens_per_second": tokens / elapsed}


def quickstart_training_tokens_per_second(steps: int) -> dict:
  """The quick-start model's training step (the trainer's own), median of `steps`."""
  config = gin_utils.model_config(["models/quickstart_decoder.gin"])
  batches = benchmark.make_batches(config, QUICKSTART_BATCH, 0, QUICKSTART_LENGTH)
  seconds = benchmark.time_rounds({"t5x_lite": benchmark.ours(config, batches)}, steps)
  return {"tokens_per_second": QUICKSTART_BATCH * QUICKSTART_LENGTH / seconds["t5x_lite"]}


def main() -> None:
  register_tasks()
  parser = bench_cli.parser(__doc__)
  parser.add_argument("--seconds", type=float, default=15.0)
  parser.add_argument("--steps", type=int, default=5)
  args = parser.parse_args()
  training = quickstart_training_tokens_per_second(args.steps)
  print(f"quick-start model training: {training['tokens_per_second']:9.0f} tokens/s")
  results = []
  for name in PIPELINES:
    result = pipeline_tokens_per_second(name, args.seconds)
    result["ratio_to_training"] = result["tokens_per_second"] / training["tokens_per_second"]
    results.append(result)
    print(f"{name:24s} {result['tokens_per_second']:11.0f} tokens/s "
          f"({result['batches_per_second']:.1f} batches/s) = "
          f"{result['ratio_to_training']:.0f}x what training consumes")
  bench_cli.write_json(args.json, {"training": training, "pipelines": results})


if __name__ == "__main__":
  main()
