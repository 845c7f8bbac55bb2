"""Curation throughput beside datatrove's own pipeline on the same input (`make bench`).

Input: the embedded corpora (pydocs and Shakespeare) as one JSONL file. Ours is
`python -m t5x_lite.curate`'s pipeline (data/curation) with its default steps; the peer
is datatrove's own example shape on the same steps it has: JsonlReader, Gopher
repetition and quality, C4 quality, JsonlWriter; the four MinHash stages; JsonlReader,
PIIFormatter, JsonlWriter (no exact deduplication, decontamination, report or corpus,
which datatrove's example has no equivalent of). The two run interleaved, `--rounds`
times each, in fresh directories; reported: documents/s of each whole pipeline, their
ratio, and documents/s of each shared step from datatrove's own per-step timings.

  python tools/benchmark_curation.py [--rounds 2] [--json out.json]
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time

import bench_cli
from datatrove.executor import LocalPipelineExecutor
from datatrove.pipeline.dedup import (
  MinhashConfig,
  MinhashDedupBuckets,
  MinhashDedupCluster,
  MinhashDedupFilter,
  MinhashDedupSignature,
)
from datatrove.pipeline.filters import C4QualityFilter, GopherQualityFilter, GopherRepetitionFilter
from datatrove.pipeline.formatters import PIIFormatter
from datatrove.pipeline.readers import JsonlReader
from datatrove.pipeline.writers import JsonlWriter
from loguru import logger

from t5x_lite.data import pydocs, shakespeare
from t5x_lite.data.curation import eval_sets, pipeline
from t5x_lite.data.curation.config import CurationConfig

# The per-document steps both pipelines run, by the name datatrove's stats give them.
SHARED_STEPS = ("Gopher Repetition", "Gopher Quality", "C4 Quality")


def write_input(path: str) -> int:
  count = 0
  with open(path, "w") as handle:
    for documents in (pydocs.documents, shakespeare.documents):
      for text in documents():
        handle.write(json.dumps({"text": text}) + "\n")
        count += 1
  return count


def datatrove_pipeline(source: str, work: str) -> None:
  """datatrove's example shape (its examples/fineweb.py, minus web extraction)."""
  minhash = MinhashConfig(hash_config=eval_sets.HASH)
  filtered, signatures, buckets, clusters = (os.path.join(work, name) for name in (
      "filtered", "signatures", "buckets", "clusters"))
  stages = [
      ([JsonlReader(os.path.dirname(source), glob_pattern=os.path.basename(source)),
        GopherRepetitionFilter(), GopherQualityFilter(), C4QualityFilter(),
        JsonlWriter(filtered)], 1),
      ([JsonlReader(filtered), MinhashDedupSignature(signatures, config=minhash)], 1),
      ([MinhashDedupBuckets(signatures, buckets, config=minhash)], minhash.num_buckets),
      ([MinhashDedupCluster(buckets, clusters, config=minhash)], 1),
      ([JsonlReader(filtered), MinhashDedupFilter(clusters), PIIFormatter(),
        JsonlWriter(os.path.join(work, "output"))], 1),
  ]
  for index, (steps, tasks) in enumerate(stages):
    LocalPipelineExecutor(steps, tasks=tasks, workers=1,
                          logging_dir=os.path.join(work, "logs", str(index))).run()


def step_seconds(logs: str) -> dict[str, float]:
  """Seconds each named step spent, from datatrove's per-task stats under `logs`."""
  found: dict[str, float] = {}
  for folder, _, names in os.walk(logs):
    if os.path.basename(folder) != "stats":
      continue
    for name in names:
      with open(os.path.join(folder, name)) as handle:
        for step in json.load(handle):
          label = next((s for s in SHARED_STEPS if step["name"].endswith(s)), None)
          timing = step.get("time_stats")
          if label and isinstance(timing, dict):
            found[label] = found.get(label, 0.0) + timing["total"]
  return found


def main() -> None:
  parser = bench_cli.parser(__doc__)
  parser.add_argument("--rounds", type=int, default=2)
  args = parser.parse_args()
  logger.disable("datatrove")
  root = tempfile.mkdtemp(prefix="bench_curation_")
  source = os.path.join(root, "input.jsonl")
  documents = write_input(source)
  seconds = {"t5x_lite": [], "datatrove": []}
  steps = {"t5x_lite": [], "datatrove": []}
  for round_index in range(args.rounds):
    work = os.path.join(root, f"datatrove-{round_index}")
    start = time.perf_counter()
    datatrove_pipeline(source, work)
    seconds["datatrove"].append(time.perf_counter() - start)
    steps["datatrove"].append(step_seconds(os.path.join(work, "logs")))
    out = os.path.join(root, f"ours-{round_index}")
    start = time.perf_counter()
    with open(os.devnull, "w") as quiet:
      curated = pipeline.curate(CurationConfig(inputs=(source,), output_dir=out), stream=quiet)
    seconds["t5x_lite"].append(time.perf_counter() - start)
    steps["t5x_lite"].append(step_seconds(out + ".work"))
    print(f"round {round_index + 1}: datatrove {seconds['datatrove'][-1]:.1f} s, t5x_lite "
          f"{seconds['t5x_lite'][-1]:.1f} s", file=sys.stderr)
  results = {"documents": documents, "rounds": args.rounds,
             "kept": curated.report["documents_out"]}
  for name in seconds:
    best = min(seconds[name])
    results[name] = {"seconds": best, "documents_per_second": documents / best,
                     "steps_documents_per_second": {
                         step: documents / statistics.median(s[step] for s in steps[name])
                         for step in SHARED_STEPS}}
  results["t5x_lite_over_datatrove_time"] = (results["t5x_lite"]["seconds"]
                                             / results["datatrove"]["seconds"])
  print(f"{documents} documents (pydocs + Shakespeare), best of {args.rounds}:")
  for name in seconds:
    r = results[name]
    per_step = ", ".join(f"{step} {rate:,.0f}/s" for step, rate in
                         r["steps_documents_per_second"].items())
    print(f"  {name:<9} {r['seconds']:6.1f} s  {r['documents_per_second']:6.1f} documents/s"
          f"  ({per_step})")
  print(f"  t5x_lite takes {results['t5x_lite_over_datatrove_time']:.2f}x datatrove's time "
        "(it also deduplicates exactly, decontaminates, reports and writes the corpus)")
  bench_cli.write_json(args.json, results)


if __name__ == "__main__":
  main()
