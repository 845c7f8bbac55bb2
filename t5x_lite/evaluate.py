"""`python -m t5x_lite.evaluate`: how good is a trained model?

  python -m t5x_lite.evaluate --gin_file=runs/evaluate.gin \
      --gin.CHECKPOINT_PATH="'/tmp/t5x_lite_quickstart'"

Reports, and writes as JSON to <CHECKPOINT_PATH>/evaluation.json (or
evaluate.output_path), what t5x_lite/evaluation.py measures: validation loss,
perplexity and token accuracy on the task (by default the training task at the
training feature lengths), the task's own seqio metrics, and zero/few-shot
rank-classification multiple choice on each set in `multiple_choice` at every
count in `shots`. The model comes from the checkpoint's run directory.

Held-out tasks of the multitask mixture, zero-shot, per task and averaged per cluster
(rank classification where a task has answer choices, greedy generation scored by exact
match where it has none; `multitask.<task>` names one task):

  python -m t5x_lite.evaluate --gin_file=runs/evaluate.gin \
      --gin.CHECKPOINT_PATH="'/tmp/t5x_lite_quickstart'" \
      --gin.evaluate.multiple_choice="['multitask.held_out']"
"""

from __future__ import annotations

import json
import os
import sys
from typing import Mapping, Optional, Sequence

import gin

from t5x_lite import gin_utils
from t5x_lite.common import files
from t5x_lite.common.errors import check_at_least, run_cli
from t5x_lite.data.curation import report as curation_report
from t5x_lite.inference import chain_of_thought as cot
from t5x_lite.inference import evaluation, textio
from t5x_lite.inference import multiple_choice as mc
from t5x_lite.runs import loading, run_dir


@gin.configurable
def evaluate(checkpoint_path: str = gin.REQUIRED, task: Optional[str] = None,
             feature_lengths: Optional[Mapping[str, int]] = None, batch_size: int = 8,
             split: str = "validation", eval_batches: int = 8,
             multiple_choice: Sequence[str] = ("pydocs_cloze",), shots: Sequence[int] = (0,),
             separator: str = "\n\n", metric_examples: int = 64, max_new_tokens: int = 64,
             seed: int = 0, max_questions: Optional[int] = None,
             chain_of_thought: Optional[cot.ChainOfThought] = None,
             quantize: Optional[str] = None, output_path: Optional[str] = None,
             lora_base: Optional[str] = None,
             contamination_report: Optional[str] = None) -> dict:
  """Evaluates CHECKPOINT_PATH's model (see the module docstring); returns the results.

  task, feature_lengths: None means those the checkpoint was trained with.
  separator, seed: k-shot examples' separator and draw.
  chain_of_thought: `@chain_of_thought()` with its `chain_of_thought.*` bindings.
  quantize: e.g. 'int8_weights' (quantization.MODES): quantize the weights first.
  contamination_report: the training corpus's curation report (report.json, or the curated
    corpus directory): sets it names are also scored on their clean and contaminated
    items apart.
  """
  check_at_least("evaluate", 1, batch_size=batch_size, eval_batches=eval_batches,
                 max_new_tokens=max_new_tokens)
  check_at_least("evaluate", 0, metric_examples=metric_examples, **{
      f"shots[{index}]": count for index, count in enumerate(shots)})
  if max_questions is not None:
    check_at_least("evaluate", 1, max_questions=max_questions)
  output_path = output_path or os.path.join(checkpoint_path, "evaluation.json")
  predictions_path = os.path.splitext(output_path)[0] + "_predictions.jsonl"
  # Both outputs are claimed before any work: a second evaluate writing here is refused now.
  with files.exclusive(output_path), files.exclusive(predictions_path):
    contamination = (curation_report.dirty_items(contamination_report)
                     if contamination_report else None)
    return _evaluate(checkpoint_path, task, feature_lengths, multiple_choice, max_questions,
                     quantize, lora_base, output_path, predictions_path, dict(
                         split=split, batch_size=batch_size, eval_batches=eval_batches,
                         shots=shots, chain_of_thought=chain_of_thought, separator=separator,
                         metric_examples=metric_examples, max_new_tokens=max_new_tokens,
                         seed=seed, contamination=contamination))


def _evaluate(checkpoint_path, task, feature_lengths, multiple_choice, max_questions,
              quantize, lora_base, output_path, predictions_path, settings) -> dict:
  question_sets = mc.question_sets(multiple_choice, max_questions)  # fail early
  generation_sets = mc.generation_sets(multiple_choice, max_questions)
  model = loading.load_model(checkpoint_path, gin_utils.checkpoint_model_config(checkpoint_path),
                             quantize=quantize, base=lora_base)
  task = textio.resolve_task(checkpoint_path, task, model.config.vocab_size)
  if feature_lengths is None:
    record = run_dir.read_record(checkpoint_path)
    if record is None:
      raise gin_utils.GinConfigError(f"{checkpoint_path} records no feature lengths; set "
                                     "TASK_FEATURE_LENGTHS.")
    feature_lengths = record["spec"]["train"]["feature_lengths"]
  results = {"checkpoint": checkpoint_path, **evaluation.report(
      model, task, feature_lengths, question_sets=question_sets,
      generation_sets=generation_sets, **settings)}
  predictions = results.pop("predictions")
  with files.atomic_write(predictions_path) as handle:
    for name, rows in predictions.items():
      for row in rows:
        handle.write(json.dumps({"set": name, **row}) + "\n")
  with files.atomic_write(output_path) as handle:
    json.dump(results, handle, indent=1)
  results["output_path"], results["predictions_path"] = output_path, predictions_path
  return results


def main(argv: Sequence[str]) -> int:
  return run_cli(lambda: _main(argv))


def _main(argv: Sequence[str]) -> int:
  gin_utils.parse_flags(argv)
  gin_utils.register_tasks()
  gin_utils.check_required("evaluate")
  results = evaluate()
  lm = results["language_modelling"]
  print(f"{results['task']} {results['split']}: loss {lm['loss']:.4f}, perplexity "
        f"{lm['perplexity']:.2f}, token accuracy {lm['accuracy']:.3f} ({lm['tokens']:.0f} tokens)")
  for name, value in results["task_metrics"].items():
    print(f"{name}: {value:.4f}")
  for name, outcome in results["multiple_choice"].items():
    print(f"{name}: accuracy {outcome['accuracy']:.3f} ± {outcome['stderr']:.3f}, "
          f"length-normalised {outcome['accuracy_norm']:.3f} ({outcome['questions']} questions, "
          f"chance {outcome['chance']:.2f})" + (
              f"; {outcome['truncated_contexts']} contexts cut to fit the model, by up to "
              f"{outcome['truncated_tokens_max']} tokens" if outcome.get("truncated_contexts")
              else ""))
  for name, split in results.get("contamination", {}).items():
    print(f"{name}: " + evaluation.describe_contamination(split))
  for name, outcome in results["generation"].items():
    print(f"{name}: exact match {outcome['exact_match']:.3f} ({outcome['examples']} examples, "
          "greedy)")
  for name, outcome in results.get("multitask_clusters", {}).items():
    print(f"cluster {name}: mean accuracy {outcome['accuracy']:.3f}, length-normalised "
          f"{outcome['accuracy_norm']:.3f} over {outcome['tasks']} tasks (chance "
          f"{outcome['chance']:.2f})")
  for name, outcome in results.get("chain_of_thought", {}).items():
    print(f"{name}: accuracy {outcome['accuracy']:.3f} ± {outcome['stderr']:.3f} "
          f"({outcome['items']} items, majority of {outcome['samples']})")
  print(f"results: {results['output_path']}\nper-example predictions: "
        f"{results['predictions_path']}")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
