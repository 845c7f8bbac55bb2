"""Quantization quality and memory (`make bench`, after `make demo`): the quick-start
decoder in float32, bfloat16, int8 and int4 weights (t5x_lite/quantization.py, qwix),
side by side: validation perplexity, pydocs_cloze accuracy (with its binomial standard
error), parameter bytes, checkpoint size on disk, and greedy decode tokens/s (the
variants interleaved in one run after a warm-up).

  python tools/benchmark_quantization.py [--checkpoint /tmp/t5x_lite_quickstart] \
      [--batch 8] [--new_tokens 32] [--rounds 3] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import jax
import numpy as np
from flax import nnx

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from t5x_lite import (  # noqa: E402
  checkpoints,
  decoding,
  evaluation,
  inference,
  multiple_choice,
  quantization,
  run_dir,
)
from t5x_lite.data import register_tasks  # noqa: E402


def directory_bytes(path: str) -> int:
  return sum(os.path.getsize(os.path.join(root, name))
             for root, _, names in os.walk(path) for name in names)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--checkpoint", default="/tmp/t5x_lite_quickstart")
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--new_tokens", type=int, default=32)
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--json", help="also write the results here")
  args = parser.parse_args(argv)
  if run_dir.read_record(args.checkpoint) is None:
    sys.exit(f"error: no trained model in {args.checkpoint}; run `make demo` first.")
  register_tasks()
  record = run_dir.read_record(args.checkpoint)
  task, lengths = record["spec"]["train"]["task"], record["spec"]["train"]["feature_lengths"]
  config = run_dir.recorded_model(args.checkpoint).replace(scan_layers=False)
  float32 = checkpoints.load_model(args.checkpoint, config)
  variants = {
      "float32": float32,
      "bfloat16": checkpoints.load_model(args.checkpoint, config.replace(
          dtype="bfloat16", param_dtype="bfloat16")),
      "int8 weights": quantization.quantize(float32, "int8_weights"),
      "int4 weights": quantization.quantize(float32, "int4_weights"),
  }
  vocabulary = inference.task_vocabularies(task)[1]
  questions = multiple_choice.read_questions("pydocs_cloze")
  prompts = np.array([np.pad(p[:16], (0, 16 - len(p[:16]))) for p in (
      list(vocabulary.encode(q.context))[-16:] for q in questions[:args.batch])], np.int32)
  rows = {}
  with tempfile.TemporaryDirectory() as scratch:
    for name, model in variants.items():
      quality = evaluation.perplexity(model, task, lengths, "validation", 8, 8)
      cloze = multiple_choice.rank_classify(model, vocabulary, questions)
      saved = os.path.join(scratch, name.replace(" ", "_"))
      checkpoints.save_params(saved, 0, nnx.state(model, nnx.Param))
      rows[name] = {"variant": name, "perplexity": quality["perplexity"],
                    "cloze_accuracy": cloze["accuracy"], "cloze_stderr": cloze["stderr"],
                    "parameter_bytes": quantization.parameter_bytes(model),
                    "checkpoint_bytes": directory_bytes(saved), "decode_seconds": []}
      decoding.generate(model, prompts, max_new_tokens=args.new_tokens, eos_id=-1)  # compile
  for _ in range(args.rounds):
    for name, model in variants.items():
      start = time.perf_counter()
      jax.block_until_ready(decoding.generate(model, prompts, max_new_tokens=args.new_tokens,
                                              eos_id=-1).tokens)
      rows[name]["decode_seconds"].append(time.perf_counter() - start)
  print("| weights | validation perplexity | pydocs_cloze accuracy | parameter bytes | "
        "checkpoint on disk | decode tokens/s |\n|---|---|---|---|---|---|")
  for row in rows.values():
    row["decode_tokens_per_second"] = (args.batch * args.new_tokens
                                       / statistics.median(row.pop("decode_seconds")))
    print(f"| {row['variant']} | {row['perplexity']:.2f} | {row['cloze_accuracy']:.3f} ± "
          f"{row['cloze_stderr']:.3f} | {row['parameter_bytes'] / 2**20:.2f} MiB | "
          f"{row['checkpoint_bytes'] / 2**20:.2f} MiB | {row['decode_tokens_per_second']:,.0f} |")
  if args.json:
    with open(args.json, "w") as handle:
      json.dump(list(rows.values()), handle, indent=1)


if __name__ == "__main__":
  main()
