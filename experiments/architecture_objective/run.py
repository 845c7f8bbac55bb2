"""The architecture x objective grid of Wang et al. (2022), "What language model
architecture and pretraining objective work best for zero-shot generalization?",
at a scale that runs on CPU.

  python experiments/architecture_objective/run.py [--mode full|tiny] [--seeds 0 1 2] \
      [--work_dir /tmp/t5x_lite_ablation]

Six pretraining runs per seed on the embedded corpus (pydocs, bytes):
causal decoder x {full LM, span corruption}, non-causal (prefix) decoder x {prefix LM,
span corruption}, encoder-decoder x {prefix LM, span corruption}.

Compute matching: every run trains for the same number of FLOPs (the mode's budget,
counted exactly by t5x_lite.scaling.counting for its architecture and feature lengths;
steps = budget / (FLOPs per sequence x batch)). Widths are equal; decoders have 2L
layers and the encoder-decoder L + L, so parameters are nearly equal too (the
encoder-decoder has cross-attention on top), and each model spends its FLOPs on the
token layout its objective produces: the encoder-decoder's encoder reads the inputs
and its decoder only the targets.

Evaluation, the same for every run:
  - held-out language modelling: the loss (nats per byte) of the second half of
    validation passages given the first half (prefix in the encoder for the
    encoder-decoder, bidirectional prefix for the prefix decoder, causal context for
    the causal decoder), the one measure all six models can be scored on;
  - zero-shot multiple choice: pydocs_cloze rank classification (accuracy and
    length-normalised accuracy), t5x_lite.multiple_choice.
Runs are resumable (finished runs are skipped). Writes results.csv, results.md and
results.png into the experiment folder (tiny mode: into the work directory).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import os
import sys
from typing import Optional, Sequence

import numpy as np

from t5x_lite import checkpoints, files, gin_utils, inference, multiple_choice
from t5x_lite.data import objectives, register_tasks
from t5x_lite.models.configs import TransformerConfig
from t5x_lite.scaling import counting, sweep

HERE = os.path.dirname(os.path.abspath(__file__))
GRID = (("causal_decoder", "full_lm"), ("causal_decoder", "span_corruption"),
        ("prefix_decoder", "prefix_lm"), ("prefix_decoder", "span_corruption"),
        ("encoder_decoder", "prefix_lm"), ("encoder_decoder", "span_corruption"))


@dataclasses.dataclass(frozen=True)
class Mode:
  d_model: int
  layers: int  # L: decoders get 2L, the encoder-decoder L + L
  length: int  # tokens per decoder-only row
  batch_size: int
  budget: float  # training FLOPs per run
  eval_passages: int
  cloze_questions: int
  learning_rate: float = 2e-3


MODES = {
    "full": Mode(d_model=96, layers=2, length=256, batch_size=16, budget=6e12,
                 eval_passages=128, cloze_questions=200),
    "tiny": Mode(d_model=32, layers=1, length=32, batch_size=2, budget=6e7,
                 eval_passages=4, cloze_questions=4),
}


def feature_lengths(architecture: str, objective: str, length: int) -> dict:
  """Task feature lengths giving decoders rows of about `length` tokens."""
  if objective == "full_lm":
    return {"targets": length}
  if objective == "prefix_lm":
    return {"inputs": length // 2, "targets": length // 2}
  inputs = length
  while inputs + objectives.span_corruption_lengths(inputs)[1] > length:
    inputs -= 1
  return {"inputs": inputs, "targets": objectives.span_corruption_lengths(inputs)[1]}


def model_config(architecture: str, mode: Mode) -> TransformerConfig:
  decoder_layers = mode.layers if architecture == "encoder_decoder" else 2 * mode.layers
  base = gin_utils.model_config([os.path.join(HERE, "model.gin")])
  return dataclasses.replace(
      base, architecture=architecture, d_model=mode.d_model,
      num_heads=mode.d_model // 32, d_ff=mode.d_model * 8 // 3 // 32 * 32 or 32,
      num_decoder_layers=decoder_layers,
      num_encoder_layers=mode.layers if architecture == "encoder_decoder" else 0)


def plan(mode: Mode, seeds) -> dict:
  runs = []
  for seed in seeds:
    for architecture, objective in GRID:
      config = model_config(architecture, mode)
      lengths = feature_lengths(architecture, objective, mode.length)
      if architecture == "encoder_decoder":
        counts = counting.count(config, inputs_length=lengths.get("inputs", 0),
                                targets_length=lengths["targets"])
      else:
        counts = counting.count(config, inputs_length=0,
                                targets_length=lengths.get("inputs", 0) + lengths["targets"])
      steps = max(1, round(mode.budget / (counts.flops_per_sequence * mode.batch_size)))
      bindings = [f"TransformerConfig.{name} = {getattr(config, name)!r}" for name in
                  ("architecture", "d_model", "num_heads", "d_ff", "num_decoder_layers",
                   "num_encoder_layers")]
      bindings += [f"MIXTURE_OR_TASK_NAME = 'pydocs.{objective}.byte'", f"train.seed = {seed}"]
      runs.append({"id": f"{architecture}-{objective}-seed{seed}", "architecture": architecture,
                   "objective": objective, "seed": seed, "params": counts.params,
                   "steps": steps, "tokens": steps * mode.batch_size * counts.tokens_per_sequence,
                   "flops": steps * mode.batch_size * counts.flops_per_sequence,
                   "feature_lengths": lengths, "bindings": bindings,
                   "gin_files": [os.path.join(HERE, "model.gin")]})
  return {"gin_files": [], "batch_size": mode.batch_size, "targets_length": mode.length,
          "runs": runs}


def validation_passages(count: int, length: int) -> list[tuple[list[int], list[int]]]:
  """(first half, second half) byte ids of the first `count` validation passages."""
  examples = inference.task_examples("pydocs.full_lm.byte", "validation", count, length // 2,
                                 {"targets": length})
  vocabulary = inference.task_vocabularies("pydocs.full_lm.byte")[1]
  return [(list(vocabulary.encode(e["inputs"])), list(vocabulary.encode(e["targets"])))
          for e in examples]


def evaluate_run(run: dict, model_dir: str, mode: Mode, passages, questions) -> dict:
  from t5x_lite import decoding

  model = checkpoints.load_model(model_dir)  # the model its run directory recorded
  sums, tokens = decoding.score(model, [p for p, _ in passages], [c for _, c in passages])
  vocabulary = inference.task_vocabularies("pydocs.full_lm.byte")[1]
  cloze = multiple_choice.rank_classify(model, vocabulary, questions)
  return {"heldout_loss": float(-sums.sum() / tokens.sum()), "cloze_accuracy": cloze["accuracy"],
          "cloze_accuracy_norm": cloze["accuracy_norm"]}


COLUMNS = ("architecture", "objective", "seed", "params", "steps", "flops", "heldout_loss",
           "cloze_accuracy", "cloze_accuracy_norm")


def summarise(rows: list[dict], output_dir: str) -> str:
  """results.csv, results.md (mean +- std over seeds) and results.png."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  with files.atomic_write(os.path.join(output_dir, "results.csv"), newline="") as handle:
    writer = csv.DictWriter(handle, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows({k: row[k] for k in COLUMNS} for row in rows)
  lines = ["| architecture | objective | params | held-out loss (nats/byte) | cloze accuracy | "
           "cloze accuracy (length-normalised) | seeds |", "|---|---|---|---|---|---|---|"]
  labels, means, spreads = [], {"heldout_loss": [], "cloze_accuracy": []}, \
      {"heldout_loss": [], "cloze_accuracy": []}
  for architecture, objective in GRID:
    group = [r for r in rows if (r["architecture"], r["objective"]) == (architecture, objective)]
    if not group:
      continue
    stats = {k: (np.mean([r[k] for r in group]), np.std([r[k] for r in group]))
             for k in ("heldout_loss", "cloze_accuracy", "cloze_accuracy_norm")}
    lines.append(f"| {architecture} | {objective} | {group[0]['params']:,} | "
                 + " | ".join(f"{m:.3f} ± {s:.3f}" for m, s in stats.values())
                 + f" | {len(group)} |")
    labels.append(f"{architecture}\n{objective}")
    for key in means:
      means[key].append(stats[key][0])
      spreads[key].append(stats[key][1])
  table = "\n".join(lines)
  with files.atomic_write(os.path.join(output_dir, "results.md")) as handle:
    handle.write(table + "\n")
  figure, axes = plt.subplots(1, 2, figsize=(13, 4.5))
  for axis, key, title in ((axes[0], "heldout_loss", "held-out LM loss (lower is better)"),
                           (axes[1], "cloze_accuracy", "zero-shot cloze accuracy")):
    axis.bar(range(len(labels)), means[key], yerr=spreads[key], capsize=4,
             color=plt.cm.tab10.colors[:len(labels)])
    axis.set_xticks(range(len(labels)), labels, fontsize=7)
    axis.set_title(title)
  axes[1].axhline(0.25, color="grey", ls="--", lw=1, label="chance")
  axes[1].legend(fontsize=7)
  figure.tight_layout()
  figure.savefig(os.path.join(output_dir, "results.png"), dpi=120)
  plt.close(figure)
  return table


def training_options(mode: Mode) -> dict:
  """The gin files and bindings every run of the grid trains with (besides its own)."""
  return {"gin_files": ["runs/pretrain.gin", "meshes/single_device.gin"],
          "gin_bindings": [f"LEARNING_RATE = {mode.learning_rate}", "train.eval_steps = 2",
                           "make_optimizer.weight_decay = 0.01"]}


def run(mode_name: str, seeds, work_dir: str, output_dir: str, train=None,
        stream=sys.stdout) -> list[dict]:
  register_tasks()  # the evaluation reads a task split in this process
  mode = MODES[mode_name]
  the_plan = plan(mode, seeds)
  failed = sweep.run_sweep(the_plan, work_dir, **training_options(mode), evaluations_per_run=2,
                           train=train, stream=stream)
  if failed:
    raise RuntimeError(f"runs failed: {failed}; see their train.log in {work_dir}")
  passages = validation_passages(mode.eval_passages, mode.length)
  questions = multiple_choice.read_questions("pydocs_cloze")[:mode.cloze_questions]
  rows = []
  for planned in the_plan["runs"]:
    scores = evaluate_run(planned, os.path.join(work_dir, planned["id"]), mode, passages,
                          questions)
    rows.append({**planned, **scores})
    print(f"{planned['id']}: held-out loss {scores['heldout_loss']:.4f}, cloze "
          f"{scores['cloze_accuracy']:.3f}", file=stream, flush=True)
  print(summarise(rows, output_dir), file=stream)
  return rows


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--mode", choices=sorted(MODES), default="full")
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  parser.add_argument("--work_dir", default="/tmp/t5x_lite_ablation")
  return parser.parse_args(argv)


def main() -> None:
  args = parse_args()
  output_dir = HERE if args.mode == "full" else args.work_dir
  os.makedirs(args.work_dir, exist_ok=True)
  run(args.mode, args.seeds, os.path.join(args.work_dir, args.mode), output_dir)


if __name__ == "__main__":
  main()
