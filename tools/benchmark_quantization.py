"""Quantization quality and memory (`make bench`, after `make demo`): the quick-start
decoder in float32, bfloat16, int8, int4 and nf4 weights (t5x_lite/models/quantization.py, qwix),
side by side: validation perplexity, pydocs_cloze accuracy (with its binomial standard
error), parameter bytes, checkpoint size on disk, and greedy decode tokens/s (the
variants interleaved in one run after a warm-up).

A second table does the same for an imported Hugging Face model (t5x_lite/interop/hf.py):
--hf DIR names a local Llama / GPT-2 / T5 directory; without it the benchmark builds a
SmolLM-135M-shaped Llama (135M parameters, the largest that decodes comfortably on 2
CPU cores) with random weights, since no pretrained checkpoint can be downloaded here.
Its vocabulary is not the tasks', so its quality columns compare each variant with the
float32 model on the same token sequences: top-1 next-token agreement and the relative
error of the logits.

  python tools/benchmark_quantization.py [--checkpoint /tmp/t5x_lite_quickstart] \
      [--hf DIR] [--batch 8] [--new_tokens 32] [--rounds 3] [--json PATH]
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time

import bench_cli
import jax
import numpy as np
from flax import nnx

from t5x_lite.data import register_tasks
from t5x_lite.inference import decoding, evaluation, multiple_choice, textio
from t5x_lite.models import quantization
from t5x_lite.runs import checkpoints, loading, run_dir


def directory_bytes(path: str) -> int:
  return sum(os.path.getsize(os.path.join(root, name))
             for root, _, names in os.walk(path) for name in names)


def main(argv=None) -> None:
  parser = bench_cli.parser(__doc__)
  parser.add_argument("--checkpoint", default="/tmp/t5x_lite_quickstart")
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--new_tokens", type=int, default=32)
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--hf", help="a Hugging Face model directory to import and quantize "
                      "(default: a random-weight SmolLM-135M-shaped Llama)")
  parser.add_argument("--no_hf", action="store_true", help="skip the imported-model table")
  args = parser.parse_args(argv)
  if run_dir.read_record(args.checkpoint) is None:
    sys.exit(f"error: no trained model in {args.checkpoint}; run `make demo` first.")
  register_tasks()
  record = run_dir.read_record(args.checkpoint)
  task, lengths = record["spec"]["train"]["task"], record["spec"]["train"]["feature_lengths"]
  config = run_dir.recorded_model(args.checkpoint).replace(scan_layers=False)
  float32 = loading.load_model(args.checkpoint, config)
  variants = {
      "float32": float32,
      "bfloat16": loading.load_model(args.checkpoint, config.replace(
          dtype="bfloat16", param_dtype="bfloat16")),
      "int8 weights": quantization.quantize(float32, "int8_weights"),
      "int4 weights": quantization.quantize(float32, "int4_weights"),
      "nf4 weights": quantization.quantize(float32, "nf4_weights"),
  }
  vocabulary = textio.task_vocabularies(task)[1]
  questions = multiple_choice.read_questions("pydocs_cloze")
  prompts = np.array([np.pad(p[:16], (0, 16 - len(p[:16]))) for p in (
      list(vocabulary.encode(q.context))[-16:] for q in questions[:args.batch])], np.int32)
  rows = {}
  with tempfile.TemporaryDirectory() as scratch:
    for name, model in variants.items():
      quality = evaluation.perplexity(model, task, lengths, "validation", 8, 8)
      cloze = multiple_choice.rank_classify(model, vocabulary, questions)
      saved = os.path.join(scratch, name.replace(" ", "_"))
      checkpoints.save_params(saved, 0, quantization.storable(nnx.state(model, nnx.Param)))
      rows[name] = {"variant": name, "perplexity": quality["perplexity"],
                    "cloze_accuracy": cloze["accuracy"], "cloze_stderr": cloze["stderr"],
                    "parameter_bytes": quantization.parameter_bytes(model),
                    "checkpoint_bytes": directory_bytes(saved), "decode_seconds": []}
  time_decoding(variants, rows, prompts, args)
  print_table(rows, ["validation perplexity", "pydocs_cloze accuracy"], lambda row: [
      f"{row['perplexity']:.2f}", f"{row['cloze_accuracy']:.3f} ± {row['cloze_stderr']:.3f}"])
  results = {"quick_start": list(rows.values())}
  if not args.no_hf:
    results["imported_hf"] = imported_model_table(args)
  bench_cli.write_json(args.json, results)


def print_table(rows: dict, quality: list[str], quality_cells) -> None:
  """A markdown table of the variants: their quality columns, then the memory and
  decoding ones every table shares (decode seconds become tokens/s here)."""
  print("| weights | " + " | ".join(quality) + " | parameter bytes | checkpoint on disk | "
        "decode tokens/s |\n|" + "---|" * (len(quality) + 4))
  for row in rows.values():
    seconds = statistics.median(row.pop("decode_seconds"))
    row["decode_tokens_per_second"] = row.pop("decoded_tokens") / seconds
    cells = [row["variant"], *quality_cells(row), f"{row['parameter_bytes'] / 2**20:.2f} MiB",
             f"{row['checkpoint_bytes'] / 2**20:.2f} MiB",
             f"{row['decode_tokens_per_second']:,.1f}"]
    print("| " + " | ".join(cells) + " |")


def time_decoding(variants: dict, rows: dict, prompts: np.ndarray, args) -> None:
  """Greedy decode seconds per variant: one compile each, then the variants interleaved
  round by round so that machine noise falls on all of them alike."""
  for model in variants.values():
    decoding.generate(model, prompts, max_new_tokens=args.new_tokens, eos_id=-1)
  for _ in range(args.rounds):
    for name, model in variants.items():
      start = time.perf_counter()
      jax.block_until_ready(decoding.generate(model, prompts, max_new_tokens=args.new_tokens,
                                              eos_id=-1).tokens)
      rows[name]["decode_seconds"].append(time.perf_counter() - start)
  for row in rows.values():
    row["decoded_tokens"] = prompts.shape[0] * args.new_tokens


def random_smollm(path: str) -> None:
  """Writes a Llama with SmolLM-135M's shapes and random weights to path (safetensors)."""
  import torch
  import transformers

  torch.manual_seed(0)
  config = transformers.LlamaConfig(
      vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
      num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=2048,
      rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=True)
  transformers.LlamaForCausalLM(config).save_pretrained(path)


def imported_model_table(args) -> list[dict]:
  """Float32 / bfloat16 / int8 / int4 / nf4 of an imported Hugging Face model; quality as
  agreement with the float32 model (its vocabulary is not the tasks')."""
  from t5x_lite.interop import hf

  with tempfile.TemporaryDirectory() as scratch:
    source = args.hf
    if source is None:
      source = os.path.join(scratch, "smollm_shaped")
      random_smollm(source)
    float32 = hf.load(source, scan_layers=False)
    variants = {"float32": float32,
                "bfloat16": hf.load(source, scan_layers=False, dtype="bfloat16",
                                    param_dtype="bfloat16"),
                "int8 weights": quantization.quantize(float32, "int8_weights"),
                "int4 weights": quantization.quantize(float32, "int4_weights"),
                "nf4 weights": quantization.quantize(float32, "nf4_weights")}
    vocab_size = float32.config.vocab_size
    sequences = np.random.default_rng(0).integers(1, vocab_size, (4, 128), dtype=np.int32)
    reference = np.asarray(float32({"decoder_input_tokens": sequences}), np.float32)
    prompts = np.resize(sequences[:, :16], (args.batch, 16))
    rows = {}
    for name, model in variants.items():
      logits = np.asarray(model({"decoder_input_tokens": sequences}), np.float32)
      saved = os.path.join(scratch, name.replace(" ", "_"))
      checkpoints.save_params(saved, 0, quantization.storable(nnx.state(model, nnx.Param)))
      rows[name] = {
          "variant": name,
          "top1_agreement": float(np.mean(logits.argmax(-1) == reference.argmax(-1))),
          "logit_relative_error": float(np.linalg.norm(logits - reference)
                                        / np.linalg.norm(reference)),
          "parameter_bytes": quantization.parameter_bytes(model),
          "checkpoint_bytes": directory_bytes(saved), "decode_seconds": []}
  time_decoding(variants, rows, prompts, args)
  label = args.hf or "random-weight SmolLM-135M-shaped Llama"
  print(f"\nimported Hugging Face model: {label} "
        f"({sum(p.size for p in jax.tree.leaves(nnx.state(float32, nnx.Param))) / 1e6:.0f}M "
        "parameters)")
  print_table(rows, ["top-1 agreement with float32", "logit relative error"], lambda row: [
      f"{row['top1_agreement']:.3f}", f"{row['logit_relative_error']:.4f}"])
  return list(rows.values())


if __name__ == "__main__":
  main()
