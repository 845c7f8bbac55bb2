"""Rank-classification multiple choice (zero- and few-shot), as in Wang et al. (2022)
and lm-evaluation-harness: each choice is scored by its log-likelihood as a
continuation of the prompt, and the highest wins.

Questions are JSON lines {"context": str, "choices": [str, ...], "label": int}; a
choice is appended to the context as written (so it usually starts with a
space). A k-shot prompt puts k other questions, each followed by its correct
choice, before the context, separated by blank lines. Two accuracies are
reported: by total log-likelihood, and length-normalised (per character of the
choice, lm-eval's acc_norm), which removes the bias towards short choices; beside them
the continuous and generative views of the same answers (the correct answer's
log-likelihood per token, the Brier score of the choices, greedy exact match), whose
disagreement is what an "emergent" ability is made of (Schaeffer et al. 2023).
`pydocs_cloze` names the set that ships with the project (see
tools/build_cloze.py); `multitask.<task>` names a task of the offline multitask
mixture (validation examples with answer choices, data/multitask.py), and
`multitask.held_out` every held-out one, `zero_shot_suite` all of them (SUITE). Every
accuracy comes with its binomial standard error. Multitask tasks without answer choices are
generation sets instead (`generation_sets`; scored by exact match in evaluation.py).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from typing import Optional, Sequence, TextIO

import numpy as np

from t5x_lite.common.errors import UserError
from t5x_lite.data import addition, multitask
from t5x_lite.inference import decoding

# The cloze sets ship as package data of t5x_lite/data/ (tools/build_cloze.py writes them).
BUILTIN = {name: os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                              "data", "multiple_choice", f"{name}.jsonl")
           for name in ("pydocs_cloze", "shakespeare_cloze")}


class MultipleChoiceError(UserError, ValueError):
  """A question file that cannot be used at all (missing, or no valid question)."""


@dataclasses.dataclass(frozen=True)
class Question:
  context: str
  choices: tuple[str, ...]
  label: int


def _question(line: str) -> Question:
  record = json.loads(line)
  if not isinstance(record, dict):
    raise ValueError("not a JSON object")
  missing = [key for key in ("context", "choices", "label") if key not in record]
  if missing:
    raise ValueError(f"missing {missing}")
  choices, label = record["choices"], record["label"]
  if not isinstance(choices, list) or len(choices) < 2 or not all(
      isinstance(c, str) and c for c in choices):
    raise ValueError("choices must be a list of two or more non-empty strings")
  if not isinstance(label, int) or not 0 <= label < len(choices):
    raise ValueError(f"label must be an index into the {len(choices)} choices, got {label!r}")
  return Question(str(record["context"]), tuple(choices), label)


def read_questions(path: str, warn: Optional[TextIO] = None) -> list[Question]:
  """Questions from a JSONL file (or a builtin name; `addition` is generated,
  data/addition.py); malformed lines are reported with their line numbers on `warn`
  and skipped."""
  if path == addition.NAME:
    return [Question(q["context"], tuple(q["choices"]), q["label"])
            for q in addition.questions()]
  path = BUILTIN.get(path, path)
  if not os.path.isfile(path):
    raise MultipleChoiceError(f"multiple-choice file {path!r} does not exist; give a JSONL path "
                              f"or one of {sorted([*BUILTIN, addition.NAME])}.")
  questions = []
  with open(path, encoding="utf-8") as handle:
    for number, line in enumerate(handle, start=1):
      if not line.strip():
        continue
      try:
        questions.append(_question(line))
      except (ValueError, TypeError) as error:  # json.JSONDecodeError is a ValueError
        print(f"warning: {path}:{number}: skipped: {error}", file=warn or sys.stderr)
  if not questions:
    raise MultipleChoiceError(f"{path} holds no valid question.")
  return questions


def multitask_questions(task: str, split: str = "validation") -> list[Question]:
  """A multitask-mixture task's examples with answer choices as questions: the prompt as
  context, each choice continuing it after a space."""
  if task not in multitask.TASKS:
    raise MultipleChoiceError(f"no multitask task {task!r}; choose from {list(multitask.TASKS)}.")
  questions = [Question(example["inputs"], tuple(f" {c}" for c in example["choices"]),
                        example["choices"].index(example["targets"]))
               for example in multitask.examples(task, split) if example["choices"]]
  if not questions:
    raise MultipleChoiceError(f"multitask task {task!r} has no answer choices (it is scored "
                              "by generation).")
  return questions


# The offline zero-shot suite: both cloze sets and every multitask task with answer
# choices (validation examples only): 2,365 questions over 11 task types, so one
# model's accuracy has a binomial standard error of about one point.
SUITE = "zero_shot_suite"


def _expand(names: Sequence[str]) -> list[str]:
  """`multitask.held_out` as each held-out task's name and `zero_shot_suite` as its
  sets; unknown multitask tasks named."""
  expanded = []
  for name in names:
    if name == SUITE:
      expanded += [*BUILTIN, *(f"multitask.{task}" for task in multitask.TASKS
                               if not _is_generation(f"multitask.{task}"))]
    elif name == "multitask.held_out":
      expanded += [f"multitask.{task}" for task in multitask.held_out_tasks()]
    elif name.startswith("multitask.") and name.removeprefix("multitask.") not in multitask.TASKS:
      raise MultipleChoiceError(f"no multitask task {name!r}; choose from "
                                f"{[f'multitask.{t}' for t in multitask.TASKS]}.")
    else:
      expanded.append(name)
  return expanded


def _is_generation(name: str) -> bool:
  task = name.removeprefix("multitask.")
  return (name.startswith("multitask.")
          and not any(example["choices"] for example in multitask.examples(task, "validation")))


def question_sets(names: Sequence[str], limit: Optional[int] = None
                  ) -> dict[str, list[Question]]:
  """{set name: questions} for builtin names, JSONL paths, `multitask.<task>` and
  `multitask.held_out` (expanded to each held-out task); the first `limit` of each.
  Multitask tasks without answer choices are left to `generation_sets`."""
  sets: dict[str, list[Question]] = {}
  for name in _expand(names):
    if name.startswith("multitask."):
      if not _is_generation(name):
        sets[name] = multitask_questions(name.removeprefix("multitask."))
    else:
      sets[name] = read_questions(name)
  return {name: questions[:limit] for name, questions in sets.items()}


def generation_sets(names: Sequence[str], limit: Optional[int] = None
                    ) -> dict[str, list[dict]]:
  """{`multitask.<task>`: its first `limit` validation examples} for the multitask tasks
  in `names` (directly or through `multitask.held_out`) that have no answer choices."""
  return {name: list(multitask.examples(name.removeprefix("multitask."), "validation"))[:limit]
          for name in _expand(names) if _is_generation(name)}


def cluster_means(results: dict[str, dict]) -> dict[str, dict]:
  """Mean accuracies per multitask cluster over results keyed "multitask.<task>/<k>-shot"
  (multiple-choice outcomes, and generation outcomes with their exact match)."""
  grouped: dict[str, list[dict]] = {}
  for key, outcome in results.items():
    name, _, shots = key.partition("/")
    task = name.removeprefix("multitask.")
    if name.startswith("multitask.") and task in multitask.TASKS:
      grouped.setdefault(f"{multitask.TASKS[task][0]}/{shots}", []).append(outcome)

  def score(outcome: dict, metric: str) -> float:
    # A generation task (exact match only, no choices) counts with its exact match (and
    # chance 0) in every column.
    if "accuracy" not in outcome:
      return 0.0 if metric == "chance" else outcome["exact_match"]
    return outcome[metric]

  return {key: {metric: float(np.mean([score(o, metric) for o in outcomes]))
                for metric in ("accuracy", "accuracy_norm", "chance")} | {"tasks": len(outcomes)}
          for key, outcomes in grouped.items()}


def prompts(questions: Sequence[Question], shots: int, seed: int = 0,
            separator: str = "\n\n") -> list[str]:
  """Each question's context after `shots` other questions answered correctly, each
  followed by `separator`; `seed` draws which questions and in what order."""
  if shots and shots >= len(questions):
    raise MultipleChoiceError(f"{shots}-shot prompts need more than {shots} questions; the set "
                              f"has {len(questions)}.")
  rng = np.random.default_rng(seed)
  built = []
  for index, question in enumerate(questions):
    others = [i for i in rng.permutation(len(questions))[:shots + 1] if i != index][:shots]
    examples = [f"{questions[i].context}{questions[i].choices[questions[i].label]}{separator}"
                for i in others]
    built.append("".join(examples) + question.context)
  return built


def binomial_stderr(accuracy: float, questions: int) -> float:
  """The standard error of an accuracy measured on `questions` independent questions."""
  return float(np.sqrt(accuracy * (1 - accuracy) / questions))


def rank_classify(model, vocabulary, questions: Sequence[Question], *, shots: int = 0,
                  seed: int = 0, separator: str = "\n\n", batch_size: int = 32) -> dict:
  """Accuracy (with its binomial standard error), length-normalised accuracy and each
  question's chosen answer, of `model` on `questions` (k-shot: see `prompts`). A context
  too long for the model keeps its last tokens (ArchitectureSpec.scoring_context, the
  lm-eval model's rule too); how many were cut, and by how much, is reported."""
  contexts = [vocabulary.encode(p) for p in prompts(questions, shots, seed, separator)]
  pairs = [(q, c) for q, question in enumerate(questions) for c in range(len(question.choices))]
  scores, lengths = np.zeros(len(pairs)), np.zeros(len(pairs))
  greedy = np.zeros(len(pairs), bool)
  spec, max_length = model.config.architecture_spec, model.config.max_length
  cut = {}  # question -> tokens its context lost to the truncation rule (the longest choice)
  for start in range(0, len(pairs), batch_size):
    chunk = pairs[start:start + batch_size]
    targets = [vocabulary.encode(questions[q].choices[c]) for q, c in chunk]
    inputs = [spec.scoring_context(contexts[q], len(target), max_length)
              for (q, _), target in zip(chunk, targets)]
    for (q, _), kept in zip(chunk, inputs):
      if len(kept) < len(contexts[q]):
        cut[q] = max(cut.get(q, 0), len(contexts[q]) - len(kept))
    chunk_scores, _, chunk_greedy = decoding.score(model, inputs, targets, greedy=True)
    scores[start:start + len(chunk)] = chunk_scores
    greedy[start:start + len(chunk)] = chunk_greedy
    lengths[start:start + len(chunk)] = [len(target) for target in targets]
  correct = correct_normalised = 0
  predictions, answer_logprobs, briers, exact = [], [], [], []
  position = 0
  for question in questions:
    choice_scores = scores[position:position + len(question.choices)]
    answer_tokens = lengths[position + question.label]
    exact.append(bool(greedy[position + question.label]))
    position += len(question.choices)
    normalised = choice_scores / np.array([len(c) for c in question.choices])
    predictions.append(int(np.argmax(choice_scores)))
    correct += predictions[-1] == question.label
    correct_normalised += int(np.argmax(normalised)) == question.label
    answer_logprobs.append(choice_scores[question.label] / answer_tokens)
    # The model's distribution over the choices (their likelihoods renormalised).
    probabilities = np.exp(choice_scores - np.logaddexp.reduce(choice_scores))
    briers.append(float(np.sum((probabilities - np.eye(len(choice_scores))[question.label]) ** 2)))
  accuracy = correct / len(questions)
  return {"accuracy": accuracy, "stderr": binomial_stderr(accuracy, len(questions)),
          "accuracy_norm": correct_normalised / len(questions),
          # Continuous views of the same answers (Schaeffer et al. 2023: an ability that
          # looks sudden under accuracy can be smooth under these): the correct answer's
          # log-likelihood per token, and the Brier score of the choice distribution.
          "answer_logprob_per_token": float(np.mean(answer_logprobs)),
          "brier": float(np.mean(briers)),
          # Generation's view: the correct answer is exactly what greedy decoding continues
          # the prompt with (scored by teacher forcing: every answer token is the argmax).
          "exact_match": float(np.mean(exact)),
          "questions": len(questions), "shots": shots,
          # Contexts cut (left) to fit the model, as the lm-eval model cuts them.
          "truncated_contexts": len(cut), "truncated_tokens_max": max(cut.values(), default=0),
          "chance": float(np.mean([1 / len(q.choices) for q in questions])),
          "predictions": predictions}
