"""lm-evaluation-harness throughput (`make bench`): loglikelihood requests per second of
the harness model (t5x_lite/inference/harness.py) on the quick-start decoder, one request
at a time against batched, the two interleaved in one run after a warm-up pass.

The requests are the pydocs cloze set's (context, choice) pairs, as the harness sends
them for t5x_lite_pydocs_cloze; the weights are freshly initialised (throughput does
not depend on them).

  python tools/benchmark_harness.py [--requests 256] [--batch 32] [--rounds 2]
"""

from __future__ import annotations

import statistics
import time

import bench_cli
from lm_eval.api.instance import Instance

from t5x_lite import gin_utils
from t5x_lite.data import register_tasks
from t5x_lite.inference import multiple_choice, textio
from t5x_lite.inference.harness import T5xLiteLM
from t5x_lite.models import create_model


def main(argv=None) -> None:
  parser = bench_cli.parser(__doc__)
  parser.add_argument("--requests", type=int, default=256)
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--rounds", type=int, default=2)
  args = parser.parse_args(argv)
  register_tasks()
  model = create_model(gin_utils.model_config(["models/quickstart_decoder.gin"]))
  vocabulary = textio.task_vocabularies("pydocs.full_lm")[1]
  pairs = [(q.context, choice) for q in multiple_choice.read_questions("pydocs_cloze")
           for choice in q.choices][:args.requests]
  requests = [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)]
  harnesses = {f"batch {size}": T5xLiteLM(model=model, vocabulary=vocabulary, batch_size=size)
               for size in (1, args.batch)}
  for harness in harnesses.values():
    harness.loglikelihood(requests)  # compiles every bucketed shape
  times = {name: [] for name in harnesses}
  for _ in range(args.rounds):
    for name, harness in harnesses.items():
      start = time.perf_counter()
      harness.loglikelihood(requests)
      times[name].append(time.perf_counter() - start)
  results = []
  base = len(requests) / statistics.median(times["batch 1"])
  for name in harnesses:
    rate = len(requests) / statistics.median(times[name])
    results.append({"run": name, "requests": len(requests), "requests_per_second": rate})
    print(f"harness loglikelihood, {name:9s}: {rate:8.1f} requests/s ({rate / base:.2f}x "
          f"one at a time; {len(requests)} cloze requests, quick-start decoder)")
  bench_cli.write_json(args.json, results)


if __name__ == "__main__":
  main()
