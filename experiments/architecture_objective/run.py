"""The architecture x objective grid of Wang et al. (2022), "What language model
architecture and pretraining objective work best for zero-shot generalization?",
at a scale that runs on CPU.

  python experiments/architecture_objective/run.py [--mode full|tiny] [--seeds 0 1 2] \
      [--work_dir /tmp/t5x_lite_ablation]

Six pretraining runs per seed on the embedded corpus (pydocs, bytes):
causal decoder x {full LM, span corruption}, non-causal (prefix) decoder x {prefix LM,
span corruption}, encoder-decoder x {prefix LM, span corruption}.

Compute matching: every run trains for the same number of FLOPs (the mode's budget,
counted exactly by t5x_lite.models.counting for its architecture and feature lengths;
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
    length-normalised accuracy), t5x_lite.inference.multiple_choice.
Runs are resumable (finished runs are skipped). Writes results.csv, results.md and
results.png into the experiment folder (tiny mode: into the work directory).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import sys
from typing import Optional, Sequence

import numpy as np

from t5x_lite import gin_utils
from t5x_lite.common import files
from t5x_lite.data import multitask, objectives, register_tasks
from t5x_lite.inference import multiple_choice, textio
from t5x_lite.models import counting
from t5x_lite.models.configs import TransformerConfig
from t5x_lite.runs import loading
from t5x_lite.scaling import sweep

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
  # The adaptation stage: multitask fine-tuning FLOPs per model, the causal decoder's
  # prefix-LM adaptation as a fraction of its pretraining, held-out questions per task.
  finetune_budget: float = 2e12
  adaptation_fraction: float = 0.1
  heldout_questions: int = 300
  finetune_learning_rate: float = 1e-3


MODES = {
    "full": Mode(d_model=96, layers=2, length=256, batch_size=16, budget=6e12,
                 eval_passages=128, cloze_questions=200),
    "tiny": Mode(d_model=32, layers=1, length=32, batch_size=2, budget=6e7,
                 eval_passages=4, cloze_questions=4, finetune_budget=2e7,
                 heldout_questions=4),
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


def planned_run(run_id: str, config: TransformerConfig, lengths: dict, budget: float,
                mode: Mode, **fields) -> dict:
  """A run of `budget` training FLOPs (to the nearest step), counted for its layout."""
  if config.architecture == "encoder_decoder":
    counts = counting.count(config, inputs_length=lengths.get("inputs", 0),
                            targets_length=lengths["targets"])
  else:
    counts = counting.count(config, inputs_length=0,
                            targets_length=lengths.get("inputs", 0) + lengths["targets"])
  steps = max(1, round(budget / (counts.flops_per_sequence * mode.batch_size)))
  return {"id": run_id, "architecture": config.architecture, "params": counts.params,
          "steps": steps, "tokens": steps * mode.batch_size * counts.tokens_per_sequence,
          "flops": steps * mode.batch_size * counts.flops_per_sequence,
          "feature_lengths": lengths, **fields}


def plan(mode: Mode, seeds) -> dict:
  runs = []
  for seed in seeds:
    for architecture, objective in GRID:
      config = model_config(architecture, mode)
      bindings = [f"TransformerConfig.{name} = {getattr(config, name)!r}" for name in
                  ("architecture", "d_model", "num_heads", "d_ff", "num_decoder_layers",
                   "num_encoder_layers")]
      bindings += [f"MIXTURE_OR_TASK_NAME = 'pydocs.{objective}.byte'", f"train.seed = {seed}"]
      runs.append(planned_run(f"{architecture}-{objective}-seed{seed}", config,
                              feature_lengths(architecture, objective, mode.length),
                              mode.budget, mode, objective=objective, seed=seed,
                              bindings=bindings, gin_files=[os.path.join(HERE, "model.gin")]))
  return {"gin_files": [], "batch_size": mode.batch_size, "targets_length": mode.length,
          "runs": runs}


def validation_passages(count: int, length: int) -> list[tuple[list[int], list[int]]]:
  """(first half, second half) byte ids of the first `count` validation passages."""
  examples = textio.task_examples("pydocs.full_lm.byte", "validation", count, length // 2,
                                 {"targets": length})
  vocabulary = textio.task_vocabularies("pydocs.full_lm.byte")[1]
  return [(list(vocabulary.encode(e["inputs"])), list(vocabulary.encode(e["targets"])))
          for e in examples]


def evaluate_run(run: dict, model_dir: str, mode: Mode, passages, questions) -> dict:
  from t5x_lite.inference import decoding

  model = loading.load_model(model_dir)  # the model its run directory recorded
  sums, tokens = decoding.score(model, [p for p, _ in passages], [c for _, c in passages])
  vocabulary = textio.task_vocabularies("pydocs.full_lm.byte")[1]
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


# ---------------------------------------------------------------- the adaptation stage
# Wang et al.'s second half: every pretrained model is multitask-finetuned on the
# training clusters of the multitask mixture (the same FLOPs for each) and scored
# zero-shot on the held-out clusters; and the causal decoder trained with full LM is
# continued as a prefix decoder with prefix LM for a fraction of its pretraining
# compute (their cheap "non-causal adaptation") before the same multitask stage.

ADAPTED = ("causal_decoder", "full_lm")


def finetune_lengths(mode: Mode) -> dict:
  """Multitask rows: prompt (inputs) and answer (targets) in a decoder row of mode.length."""
  return {"inputs": mode.length * 3 // 4, "targets": mode.length // 4}


def adaptation_plans(mode: Mode, seeds, work_dir: str) -> tuple[dict, dict]:
  """(prefix-LM adaptation runs, multitask fine-tuning runs); each run starts from the
  MODEL_DIR in `work_dir` named by its "init"."""
  meta = {"gin_files": [], "batch_size": mode.batch_size, "targets_length": mode.length}
  adaptations = []
  for seed in seeds:
    source = f"{ADAPTED[0]}-{ADAPTED[1]}-seed{seed}"
    adaptations.append(planned_run(
        f"{source}-prefix_lm_adapted", model_config("prefix_decoder", mode),
        feature_lengths("prefix_decoder", "prefix_lm", mode.length),
        mode.adaptation_fraction * mode.budget, mode, objective="full_lm+prefix_lm",
        seed=seed, init=source, bindings=[
            "TransformerConfig.architecture = 'prefix_decoder'",
            "train.allow_changes = ['TransformerConfig.architecture']",
            "MIXTURE_OR_TASK_NAME = 'pydocs.prefix_lm.byte'", f"train.seed = {seed}",
            f"CHECKPOINT_PATH = {os.path.join(work_dir, source)!r}"]))
  multitask_runs = []
  for run in [*plan(mode, seeds)["runs"], *adaptations]:
    multitask_runs.append(planned_run(
        f"{run['id']}-multitask", model_config(run["architecture"], mode),
        finetune_lengths(mode), mode.finetune_budget, mode, objective=run["objective"],
        seed=run["seed"], init=run["id"], bindings=[
            "MIXTURE_OR_TASK_NAME = 'multitask.train.byte'", f"train.seed = {run['seed']}",
            f"CHECKPOINT_PATH = {os.path.join(work_dir, run['id'])!r}"]))
  return {**meta, "runs": adaptations}, {**meta, "runs": multitask_runs}


def finetuning_options(mode: Mode) -> dict:
  """gin files and bindings of the adaptation stage's runs (the model comes from the
  checkpoint each starts from: runs/finetune.gin)."""
  return {"gin_files": ["runs/finetune.gin", "meshes/single_device.gin"],
          "gin_bindings": [f"LEARNING_RATE = {mode.finetune_learning_rate}",
                           "train.eval_steps = 2"]}


def heldout_questions(mode: Mode) -> dict[str, list]:
  """{multitask.<task>: questions}: the held-out clusters' validation questions."""
  return multiple_choice.question_sets(["multitask.held_out"], mode.heldout_questions)


def heldout_scores(model_dir: str, question_sets: dict[str, list]) -> dict:
  """Zero-shot rank-classification accuracy per held-out task, per cluster and over all
  questions, with the binomial standard error of the overall accuracy. Kept in the run
  directory (heldout_scores.json) for the run's final step and these question sets, so
  a resumed study does not score a model twice."""
  key = {"step": sweep.evaluations(model_dir)[-1]["step"],
         "questions": {name: len(questions) for name, questions in question_sets.items()}}
  cache = os.path.join(model_dir, "heldout_scores.json")
  if os.path.exists(cache):
    with open(cache) as handle:
      saved = json.load(handle)
    if saved.get("key") == key:
      return saved["scores"]
  scores = _score_heldout(model_dir, question_sets)
  with files.atomic_write(cache) as handle:
    json.dump({"key": key, "scores": scores}, handle, indent=1)
  return scores


def _score_heldout(model_dir: str, question_sets: dict[str, list]) -> dict:
  model = loading.load_model(model_dir)
  vocabulary = textio.task_vocabularies("pydocs.full_lm.byte")[1]
  results = {f"{name}/0-shot": multiple_choice.rank_classify(model, vocabulary, questions)
             for name, questions in question_sets.items()}
  correct = sum(r["accuracy"] * r["questions"] for r in results.values())
  total = sum(r["questions"] for r in results.values())
  accuracy = correct / total
  scores = {"heldout_accuracy": accuracy,
            "heldout_stderr": float(np.sqrt(accuracy * (1 - accuracy) / total)),
            "heldout_questions": total,
            "heldout_chance": float(np.mean([r["chance"] for r in results.values()]))}
  for key, outcome in results.items():
    scores[key.split("/")[0].removeprefix("multitask.")] = outcome["accuracy"]
  for key, outcome in multiple_choice.cluster_means(results).items():
    scores[f"cluster_{key.split('/')[0]}"] = outcome["accuracy"]
  return scores


ADAPTATION_COLUMNS = ("architecture", "objective", "stage", "seed", "params", "steps",
                      "flops", "heldout_accuracy", "heldout_stderr", "heldout_questions",
                      "heldout_chance", "cluster_cloze", "cluster_membership")


def summarise_adaptation(rows: list[dict], output_dir: str) -> str:
  """adaptation.csv (every model and stage), adaptation.md (mean ± std over seeds, with
  the binomial standard error of one run's accuracy) and adaptation.png."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  tasks = sorted({k for row in rows for k in row if k in multitask.TASKS})
  columns = (*ADAPTATION_COLUMNS, *tasks)
  with files.atomic_write(os.path.join(output_dir, "adaptation.csv"), newline="") as handle:
    writer = csv.DictWriter(handle, fieldnames=columns)
    writer.writeheader()
    writer.writerows({k: row.get(k) for k in columns} for row in rows)
  models = list(dict.fromkeys((r["architecture"], r["objective"]) for r in rows))
  lines = ["| architecture | objective | stage | held-out accuracy | ± binomial s.e. | "
           "cloze cluster | membership cluster | seeds |", "|---|---|---|---|---|---|---|---|"]
  bars: dict[str, list[tuple[float, float]]] = {}
  for model in models:
    for stage in ("pretrained", "multitask"):
      group = [r for r in rows if (r["architecture"], r["objective"]) == model
               and r["stage"] == stage]
      if not group:
        continue
      stats = {k: (np.mean([r[k] for r in group]), np.std([r[k] for r in group]))
               for k in ("heldout_accuracy", "cluster_cloze", "cluster_membership")}
      stderr = float(np.mean([r["heldout_stderr"] for r in group]))
      lines.append(f"| {model[0]} | {model[1]} | {stage} | {stats['heldout_accuracy'][0]:.3f} "
                   f"± {stats['heldout_accuracy'][1]:.3f} | {stderr:.3f} | "
                   f"{stats['cluster_cloze'][0]:.3f} | {stats['cluster_membership'][0]:.3f} | "
                   f"{len(group)} |")
      # Error bar: the spread over seeds and one run's binomial error, combined.
      mean, spread = stats["heldout_accuracy"]
      bars.setdefault(stage, []).append((mean, float(np.hypot(spread, stderr))))
  table = "\n".join(lines)
  with files.atomic_write(os.path.join(output_dir, "adaptation.md")) as handle:
    handle.write(table + "\n")
  figure, axis = plt.subplots(figsize=(11, 4.5))
  width = 0.4
  for offset, stage in ((-width / 2, "pretrained"), (width / 2, "multitask")):
    values = bars.get(stage, [])
    axis.bar(np.arange(len(values)) + offset, [m for m, _ in values], width,
             yerr=[s for _, s in values], capsize=3, label=stage)
  axis.set_xticks(range(len(models)), [f"{a}\n{o}" for a, o in models], fontsize=7)
  chance = float(np.mean([r["heldout_chance"] for r in rows]))
  axis.axhline(chance, color="grey", ls="--", lw=1, label="chance")
  axis.set_ylim(0, max(chance, *(m + s for values in bars.values() for m, s in values)) + 0.05)
  axis.set_ylabel("held-out zero-shot accuracy (± seeds and binomial error)")
  axis.set_title("held-out clusters (cloze, membership), before and after multitask "
                 "fine-tuning")
  axis.legend(fontsize=7)
  figure.tight_layout()
  figure.savefig(os.path.join(output_dir, "adaptation.png"), dpi=120)
  plt.close(figure)
  return table


def run_adaptation(mode_name: str, seeds, work_dir: str, output_dir: str, train=None,
                   stream=sys.stdout) -> list[dict]:
  """Pretrains what is missing, adapts, multitask-finetunes, evaluates and summarises."""
  register_tasks()
  mode = MODES[mode_name]
  adaptations, multitask_runs = adaptation_plans(mode, seeds, work_dir)
  for the_plan, options in ((plan(mode, seeds), training_options(mode)),
                            (adaptations, finetuning_options(mode)),
                            (multitask_runs, finetuning_options(mode))):
    failed = sweep.run_sweep(the_plan, work_dir, **options, evaluations_per_run=2,
                             train=train, stream=stream)
    if failed:
      raise RuntimeError(f"runs failed: {failed}; see their train.log in {work_dir}")
  question_sets = heldout_questions(mode)
  by_id = {run["id"]: run for run in [*plan(mode, seeds)["runs"], *adaptations["runs"]]}
  rows = []
  for finetuned in multitask_runs["runs"]:
    start = by_id[finetuned["init"]]
    for stage, run in (("pretrained", start), ("multitask", finetuned)):
      scores = heldout_scores(os.path.join(work_dir, run["id"]), question_sets)
      rows.append({**run, "architecture": start["architecture"],
                   "objective": start["objective"], "stage": stage, **scores})
      print(f"{run['id']}: held-out accuracy {scores['heldout_accuracy']:.3f} "
            f"(± {scores['heldout_stderr']:.3f})", file=stream, flush=True)
  print(summarise_adaptation(rows, output_dir), file=stream)
  return rows


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--mode", choices=sorted(MODES), default="full")
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  parser.add_argument("--work_dir", default="/tmp/t5x_lite_ablation")
  parser.add_argument("--stage", choices=("pretraining", "adaptation"), default="pretraining",
                      help="pretraining: the grid and its evaluation (results.*); adaptation: "
                      "also the prefix-LM adaptation and multitask fine-tuning, evaluated on "
                      "held-out tasks (adaptation.*)")
  return parser.parse_args(argv)


def main() -> None:
  args = parse_args()
  output_dir = HERE if args.mode == "full" else args.work_dir
  os.makedirs(args.work_dir, exist_ok=True)
  stage = run if args.stage == "pretraining" else run_adaptation
  stage(args.mode, args.seeds, os.path.join(args.work_dir, args.mode), output_dir)


if __name__ == "__main__":
  main()
