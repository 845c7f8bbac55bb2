"""`python -m t5x_lite.evaluate`: how good is a trained model?

  python -m t5x_lite.evaluate --gin_file=runs/evaluate.gin \
      --gin_file=models/quickstart_decoder.gin --gin.CHECKPOINT_PATH="'/tmp/t5x_lite_quickstart'"

Reports, and writes as JSON to <CHECKPOINT_PATH>/evaluation.json (or
evaluate.output_path):
  - validation loss, perplexity and token accuracy on the task (MIXTURE_OR_TASK_NAME)
    over `eval_batches` packed batches, as the trainer measures them;
  - the task's own seqio metrics, when it defines any (predict metrics from greedy
    decoding of its inputs, score metrics from target log-likelihoods);
  - zero/few-shot rank-classification multiple choice on each JSONL set in
    `multiple_choice` (t5x_lite/multiple_choice.py), accuracy and length-normalised
    accuracy at every count in `shots`.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from typing import Mapping, Optional, Sequence

import gin
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from t5x_lite import files, gin_utils, losses, run_dir
from t5x_lite.errors import run_cli


@functools.partial(jax.jit, static_argnums=(0,))
def _loss_sums(graphdef, state, batch):
  logits = nnx.merge(graphdef, state)(batch)
  sums = losses.token_loss_sums(logits, batch["decoder_target_tokens"],
                                batch["decoder_loss_weights"], z_loss=0.0)
  return {"cross_entropy": sums.cross_entropy, "correct": sums.correct, "tokens": sums.tokens}


def perplexity(model, task: str, feature_lengths: Mapping[str, int], split: str,
               batch_size: int, eval_batches: int) -> dict:
  """Loss / perplexity / token accuracy over the first `eval_batches` batches of `split`."""
  from t5x_lite.data import get_batches

  batches = get_batches(task, feature_lengths, split, batch_size, model.config.architecture,
                        shuffle=False, num_epochs=1)
  graphdef, state = nnx.split(model)
  totals = {"cross_entropy": 0.0, "correct": 0.0, "tokens": 0.0}
  for _, batch in zip(range(eval_batches), batches):
    sums = jax.device_get(_loss_sums(graphdef, state, {k: jnp.asarray(v)
                                                        for k, v in batch.items()}))
    for key in totals:
      totals[key] += float(sums[key])
  return losses.eval_metrics(totals)


def task_metrics(model, task: str, split: str, num_examples: int, max_new_tokens: int,
                 feature_lengths: Optional[Mapping[str, int]] = None) -> dict:
  """The seqio task's predict and score metrics on its first `num_examples` examples."""
  import seqio

  from t5x_lite import infer

  provider = seqio.get_mixture_or_task(task)
  predict_fns = getattr(provider, "predict_metric_fns", [])
  score_fns = getattr(provider, "score_metric_fns", [])
  if not predict_fns and not score_fns:
    return {}
  examples = infer.task_examples(task, split, num_examples, prompt_length=32,
                                 feature_lengths=feature_lengths)
  input_vocabulary, vocabulary, add_eos = infer.task_vocabularies(task)
  prompts = infer.encode_prompts(examples, input_vocabulary, add_eos)
  targets = [example["targets"] for example in examples]
  results = {}
  if predict_fns:
    predictions = [p["prediction"] for p in infer.predict(
        model, prompts, vocabulary, method="greedy", max_new_tokens=max_new_tokens,
        temperature=0.0, top_k=0, top_p=1.0, beams=1, alpha=0.0, batch_size=8, seed=0)]
    for fn in predict_fns:
      results.update(fn(targets, predictions))
  if score_fns:
    scores = [s["log_likelihood"] for s in infer.score_examples(model, examples, prompts,
                                                                 vocabulary, 8, add_eos)]
    for fn in score_fns:
      results.update(fn(targets, scores))
  return {name: float(np.asarray(value)) for name, value in results.items()}


@gin.configurable
def evaluate(checkpoint_path: str = gin.REQUIRED, task: Optional[str] = None,
             feature_lengths: Optional[Mapping[str, int]] = None, batch_size: int = 8,
             split: str = "validation", eval_batches: int = 8,
             multiple_choice: Sequence[str] = ("pydocs_cloze",), shots: Sequence[int] = (0,),
             metric_examples: int = 64, max_new_tokens: int = 64, seed: int = 0,
             output_path: Optional[str] = None) -> dict:
  """Evaluates CHECKPOINT_PATH's model (see the module docstring); returns the results.

  task, feature_lengths: None means those the checkpoint was trained with.
  """
  from t5x_lite import infer
  from t5x_lite import multiple_choice as mc

  question_sets = {name: mc.read_questions(name) for name in multiple_choice}  # fail early
  model = infer.load_model(checkpoint_path)
  task = infer.resolve_task(checkpoint_path, task, model.config.vocab_size)
  if feature_lengths is None:
    record = run_dir.read_record(checkpoint_path)
    if record is None:
      raise gin_utils.GinConfigError(f"{checkpoint_path} records no feature lengths; set "
                                     "TASK_FEATURE_LENGTHS.")
    feature_lengths = record["spec"]["train"]["feature_lengths"]
  _, vocabulary, _ = infer.task_vocabularies(task)
  results = {"checkpoint": checkpoint_path, "task": task, "split": split,
             "language_modelling": perplexity(model, task, feature_lengths, split, batch_size,
                                              eval_batches),
             "task_metrics": task_metrics(model, task, split, metric_examples, max_new_tokens,
                                          feature_lengths),
             "multiple_choice": {}}
  for name, questions in question_sets.items():
    for count in shots:
      outcome = mc.rank_classify(model, vocabulary, questions, shots=count, seed=seed)
      outcome.pop("predictions")
      results["multiple_choice"][f"{name}/{count}-shot"] = outcome
  output_path = output_path or os.path.join(checkpoint_path, "evaluation.json")
  with files.atomic_write(output_path) as handle:
    json.dump(results, handle, indent=1)
  results["output_path"] = output_path
  return results


def main(argv: Sequence[str]) -> int:
  return run_cli(lambda: _main(argv))


def _main(argv: Sequence[str]) -> int:
  gin_utils.parse_flags(argv)
  results = evaluate()
  lm = results["language_modelling"]
  print(f"{results['task']} {results['split']}: loss {lm['loss']:.4f}, perplexity "
        f"{lm['perplexity']:.2f}, token accuracy {lm['accuracy']:.3f} ({lm['tokens']:.0f} tokens)")
  for name, value in results["task_metrics"].items():
    print(f"{name}: {value:.4f}")
  for name, outcome in results["multiple_choice"].items():
    print(f"{name}: accuracy {outcome['accuracy']:.3f}, length-normalised "
          f"{outcome['accuracy_norm']:.3f} ({outcome['questions']} questions, chance "
          f"{outcome['chance']:.2f})")
  print(f"results: {results['output_path']}")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
