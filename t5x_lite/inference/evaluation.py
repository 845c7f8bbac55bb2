"""Evaluation as a library: how good is a loaded model on a task? The command line
(`python -m t5x_lite.evaluate`) is evaluate.py.

  - validation loss, perplexity and token accuracy over packed batches, through the
    same forward+loss path as training (losses.model_loss_sums);
  - the task's own seqio metrics, when it defines any (predict metrics from greedy
    decoding of its inputs, score metrics from target log-likelihoods);
  - zero/few-shot rank-classification multiple choice (multiple_choice.py);
  - generation tasks without answer choices (multitask ones) by greedy decoding and
    exact match, whitespace-normalised;
  - per multitask cluster, the mean over its tasks of either;
  - chain-of-thought prompting with self-consistency (chain_of_thought.py).
Every set's per-example predictions are returned under "predictions" for inspection.
"""

from __future__ import annotations

from typing import Collection, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from t5x_lite.data import get_batches, get_task
from t5x_lite.inference import chain_of_thought as cot
from t5x_lite.inference import multiple_choice as mc
from t5x_lite.inference import textio
from t5x_lite.models import losses


def perplexity(model, task: str, feature_lengths: Mapping[str, int], split: str,
               batch_size: int, eval_batches: int) -> dict:
  """Loss / perplexity / token accuracy over the first `eval_batches` batches of `split`."""
  batches = get_batches(task, feature_lengths, split, batch_size, model.config.architecture,
                        shuffle=False, num_epochs=1)
  graphdef, state = nnx.split(model)
  totals = {"cross_entropy": 0.0, "correct": 0.0, "tokens": 0.0}
  for _, batch in zip(range(eval_batches), batches):
    sums = jax.device_get(losses.evaluate_batch(
        graphdef, state, {k: jnp.asarray(v) for k, v in batch.items()}))._asdict()
    for key in totals:
      totals[key] += float(sums[key])
  return losses.eval_metrics(totals)


def task_metrics(model, task: str, split: str, num_examples: int, max_new_tokens: int,
                 feature_lengths: Mapping[str, int] | None = None) -> dict:
  """The seqio task's predict and score metrics on its first `num_examples` examples."""
  provider = get_task(task)
  predict_fns = getattr(provider, "predict_metric_fns", [])
  score_fns = getattr(provider, "score_metric_fns", [])
  if not predict_fns and not score_fns:
    return {}
  examples = textio.task_examples(task, split, num_examples, prompt_length=32,
                                     feature_lengths=feature_lengths)
  input_vocabulary, vocabulary, add_eos = textio.task_vocabularies(task)
  prompts = textio.encode_prompts(examples, input_vocabulary, add_eos)
  targets = [example["targets"] for example in examples]
  results = {}
  if predict_fns:
    predictions = [p["prediction"] for p in textio.predict(
        model, prompts, vocabulary, method="greedy", max_new_tokens=max_new_tokens,
        temperature=0.0, top_k=0, top_p=1.0, beams=1, alpha=0.0, batch_size=8, seed=0)]
    for fn in predict_fns:
      results.update(fn(targets, predictions))
  if score_fns:
    scores = [s["log_likelihood"] for s in textio.score_examples(
        model, examples, prompts, vocabulary, 8, add_eos)]
    for fn in score_fns:
      results.update(fn(targets, scores))
  return {name: float(np.asarray(value)) for name, value in results.items()}


def normalise(text: str) -> str:
  """Exact match compares texts with runs of whitespace as one space, ends stripped."""
  return " ".join(text.split())


def exact_match(model, examples: Sequence[Mapping[str, str]], vocabulary, add_eos: bool,
                max_new_tokens: int, batch_size: int = 8) -> dict:
  """Zero-shot greedy generation from each example's inputs, scored by exact match with
  its targets (normalise); returns the rate, the count and the predictions."""
  prompts = textio.encode_prompts(examples, vocabulary, add_eos)
  predictions = [p["prediction"] for p in textio.predict(
      model, prompts, vocabulary, method="greedy", max_new_tokens=max_new_tokens,
      temperature=0.0, top_k=0, top_p=1.0, beams=1, alpha=0.0, batch_size=batch_size,
      seed=0)]
  matches = [normalise(p) == normalise(e["targets"]) for p, e in zip(predictions, examples)]
  return {"exact_match": float(np.mean(matches)), "examples": len(matches),
          "predictions": predictions}


def contamination_split(correct: Sequence[bool], dirty: Collection[int]) -> dict:
  """Accuracy on the clean and on the contaminated items of a set apart (GPT-3, Appendix
  C): each subset's accuracy, its binomial standard error and size, and clean minus all,
  the change decontamination would make to the reported score. A subset with no items
  has accuracy None."""
  def subset(values: list) -> dict:
    if not values:
      return {"accuracy": None, "stderr": None, "questions": 0}
    accuracy = float(np.mean(values))
    return {"accuracy": accuracy, "stderr": mc.binomial_stderr(accuracy, len(values)),
            "questions": len(values)}

  clean = subset([bool(c) for i, c in enumerate(correct) if i not in dirty])
  contaminated = subset([bool(c) for i, c in enumerate(correct) if i in dirty])
  overall = float(np.mean([bool(c) for c in correct])) if len(correct) else None
  return {"clean": clean, "dirty": contaminated, "all": overall,
          "clean_minus_all": None if clean["accuracy"] is None or overall is None
          else clean["accuracy"] - overall}


def describe_contamination(split: dict) -> str:
  """One line: accuracy on the clean and the contaminated items of a set."""
  def part(name: str) -> str:
    subset = split[name]
    if subset["accuracy"] is None:
      return f"{name} - (0 items)"
    return f"{name} {subset['accuracy']:.3f} ± {subset['stderr']:.3f} ({subset['questions']})"
  return f"{part('clean')}, {part('dirty')}" + (
      f"; clean - all {split['clean_minus_all']:+.3f}" if split["clean_minus_all"] is not None
      else "")


def report(model, task: str, feature_lengths: Mapping[str, int], *, split: str = "validation",
           batch_size: int = 8, eval_batches: int = 8,
           question_sets: Mapping[str, Sequence[mc.Question]] = (), shots: Sequence[int] = (0,),
           generation_sets: Mapping[str, Sequence[Mapping[str, str]]] = (),
           chain_of_thought: Optional[cot.ChainOfThought] = None,
           separator: str = "\n\n", metric_examples: int = 64, max_new_tokens: int = 64,
           seed: int = 0, contamination: Optional[Mapping[str, Collection[int]]] = None) -> dict:
  """Language modelling, task metrics, multiple choice (each set at each shot count, k-shot
  examples joined by `separator` in an order drawn by `seed`), zero-shot generation sets
  (exact match), per-cluster means of multitask tasks, and chain of thought. Given
  `contamination` ({set: indices of its items found in the training corpus}, a curation
  report's, data/curation/report.dirty_items), each of those sets is also scored on its
  clean and its contaminated items apart (`contamination_split`)."""
  _, vocabulary, add_eos = textio.task_vocabularies(task)
  # Prompts the model cannot hold are bad input that generation meets last: refuse them
  # before the language-modelling and multiple-choice passes spend their time.
  for examples in dict(generation_sets).values():
    textio.check_lengths(textio.encode_prompts(examples, vocabulary, add_eos),
                            model.config, max_new_tokens)
  if chain_of_thought is not None:
    cot.check_lengths(model.config, vocabulary, add_eos, chain_of_thought)
  results = {"task": task, "split": split,
             "language_modelling": perplexity(model, task, feature_lengths, split, batch_size,
                                              eval_batches),
             "task_metrics": task_metrics(model, task, split, metric_examples, max_new_tokens,
                                          feature_lengths),
             "multiple_choice": {}, "generation": {}, "predictions": {}}
  for name, questions in dict(question_sets).items():
    for count in shots:
      outcome = mc.rank_classify(model, vocabulary, questions, shots=count, seed=seed,
                                 separator=separator)
      key = f"{name}/{count}-shot"
      results["predictions"][key] = [
          {"index": i, "prediction": p, "label": q.label, "correct": p == q.label}
          for i, (p, q) in enumerate(zip(outcome.pop("predictions"), questions))]
      results["multiple_choice"][key] = outcome
  for name, examples in dict(generation_sets).items():
    outcome = exact_match(model, examples, vocabulary, add_eos, max_new_tokens, batch_size)
    key = f"{name}/0-shot"
    results["predictions"][key] = [
        {"index": i, "prediction": p, "target": e["targets"],
         "correct": normalise(p) == normalise(e["targets"])}
        for i, (p, e) in enumerate(zip(outcome.pop("predictions"), examples))]
    results["generation"][key] = outcome
  for key, rows in results["predictions"].items():
    dirty = (contamination or {}).get(key.split("/")[0])
    if dirty is not None:
      results.setdefault("contamination", {})[key] = contamination_split(
          [row["correct"] for row in rows], dirty)
  if chain_of_thought is not None:
    outcome = cot.score(model, vocabulary, add_eos, chain_of_thought, batch_size)
    key = f"chain_of_thought/{outcome['shots']}-shot/{outcome['samples']}-samples"
    results["predictions"][key] = outcome.pop("predictions")
    results["chain_of_thought"] = {key: outcome}
  clusters = mc.cluster_means({**results["multiple_choice"], **results["generation"]})
  if clusters:
    results["multitask_clusters"] = clusters
  return results
