"""Chain-of-thought prompting (Wei et al., 2022) with self-consistency (Wang et al., 2023)
for generation tasks, in the project's own evaluation.

A set is items {"question", "answer"} and exemplars {"question", "rationale", "answer"}.
The prompt is `shots` exemplars, each written

    Q: <question>
    A: <rationale> The answer is <answer>.

separated by `separator`, then `Q: <question>\\nA:`. From each generation the answer
is extracted by `pattern` (a regular expression: its first group, else the whole
match; no match is no answer). With samples > 1 the model samples at `temperature`
and the answer extracted most often wins (self-consistency's majority vote; a tie
goes to the answer reached first); with samples = 1 it decodes greedily. An item is
right when the voted answer equals its reference exactly (whitespace-normalised).

`arithmetic` names the built-in set: two-step word problems with small numbers,
generated deterministically (items and exemplars from different seeds), so nothing is
downloaded; a JSONL path names a user's items (then `exemplars` names theirs).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import random
import re
from typing import Optional, Sequence

import numpy as np

from t5x_lite.common.errors import ConfigError, check_field_types
from t5x_lite.inference import textio
from t5x_lite.inference.multiple_choice import binomial_stderr

ANSWER_SENTENCE = "The answer is {answer}."
BUILTIN = "arithmetic"


@dataclasses.dataclass(frozen=True)
class ChainOfThought:
  """A chain-of-thought evaluation (gin: `chain_of_thought.*`, used by evaluate).

  Attributes:
    items: "arithmetic" or a JSONL path of {"question", "answer"}.
    exemplars: JSONL path of {"question", "rationale", "answer"} (None: the built-in
      set's own).
    shots: exemplars in each prompt.
    separator: between exemplars and before the question.
    pattern: regular expression that extracts the answer from a generation.
    samples: generations per item (1: greedy; more: sampled, majority vote).
    temperature: sampling temperature when samples > 1.
    max_new_tokens: tokens generated per sample.
    max_items: evaluate the first max_items items (None: all).
    seed: sampling seed.
  """
  items: str = BUILTIN
  exemplars: Optional[str] = None
  shots: int = 4
  separator: str = "\n\n"
  pattern: str = r"The answer is\s*([^\s.]+)"
  samples: int = 1
  temperature: float = 0.7
  max_new_tokens: int = 64
  max_items: Optional[int] = None
  seed: int = 0

  def __post_init__(self):
    check_field_types(self, "chain_of_thought")
    try:
      re.compile(self.pattern)
    except re.error as error:
      raise ConfigError(f"chain_of_thought.pattern {self.pattern!r} is not a regular "
                        f"expression: {error}.") from None
    if self.samples < 1 or self.shots < 0 or self.temperature <= 0:
      raise ConfigError("chain_of_thought.samples must be >= 1, shots >= 0 and temperature "
                        "> 0.")
    if self.items != BUILTIN and self.exemplars is None and self.shots:
      raise ConfigError("chain_of_thought.exemplars: give the exemplars (with rationales) "
                        f"for the items in {self.items}, or set shots = 0.")


def arithmetic_problems(count: int, seed: int) -> list[dict]:
  """Two-step word problems: {"question", "rationale", "answer"}."""
  rng = random.Random(seed)
  names = ["Ada", "Ben", "Cleo", "Dev", "Ema", "Finn", "Gus", "Hana"]
  things = ["apples", "books", "coins", "marbles", "pens", "shells", "stamps", "tickets"]
  problems = []
  for _ in range(count):
    name, thing = rng.choice(names), rng.choice(things)
    start, more = rng.randint(2, 20), rng.randint(2, 20)
    less = rng.randint(1, start + more - 1)
    answer = start + more - less
    problems.append({
        "question": f"{name} has {start} {thing}. {name} gets {more} more and then gives "
                    f"away {less}. How many {thing} does {name} have now?",
        "rationale": f"{name} starts with {start} {thing}. {start} + {more} = {start + more}. "
                     f"{start + more} - {less} = {answer}.",
        "answer": str(answer)})
  return problems


def _read(path: str, fields: Sequence[str]) -> list[dict]:
  rows = []
  try:
    with open(path, encoding="utf-8") as handle:
      for number, line in enumerate(handle, start=1):
        if not line.strip():
          continue
        try:
          row = json.loads(line)
        except json.JSONDecodeError as error:
          raise ConfigError(f"{path}:{number}: not JSON ({error.msg}).") from None
        missing = [f for f in fields if not isinstance(row, dict)
                   or not isinstance(row.get(f), str)]
        if missing:
          raise ConfigError(f"{path}:{number}: needs string fields {missing}.")
        rows.append(row)
  except OSError as error:
    raise ConfigError(f"chain-of-thought file {path}: {error.strerror}.") from None
  return rows


def load(config: ChainOfThought) -> tuple[list[dict], list[dict]]:
  """(items, exemplars) of a configuration."""
  builtin = config.items == BUILTIN
  items = arithmetic_problems(200, seed=1) if builtin else _read(config.items,
                                                                 ("question", "answer"))
  if config.exemplars:
    exemplars = _read(config.exemplars, ("question", "rationale", "answer"))
  else:
    exemplars = arithmetic_problems(8, seed=2) if builtin else []
  if len(exemplars) < config.shots:
    raise ConfigError(f"chain_of_thought.shots = {config.shots} but only {len(exemplars)} "
                      "exemplars are given.")
  return items[:config.max_items], exemplars[:config.shots]


def prompt(exemplars: Sequence[dict], question: str, separator: str = "\n\n") -> str:
  """Exemplars with their rationales and answers, then the question."""
  shots = [f"Q: {e['question']}\nA: {e['rationale']} "
           + ANSWER_SENTENCE.format(answer=e["answer"]) for e in exemplars]
  return separator.join([*shots, f"Q: {question}\nA:"])


def extract(text: str, pattern: str) -> Optional[str]:
  """The answer in a generation: the pattern's first group (or whole match), or None."""
  match = re.search(pattern, text)
  if match is None:
    return None
  return (match.group(1) if match.groups() else match.group(0)).strip()


def majority_vote(answers: Sequence[Optional[str]]) -> Optional[str]:
  """The most frequent answer (None: no answer, never chosen over one); a tie goes to
  the answer that appears first."""
  counts = collections.Counter(a for a in answers if a is not None)
  if not counts:
    return None
  best = max(counts.values())
  return next(a for a in answers if a is not None and counts[a] == best)


def encoded_prompts(config: ChainOfThought, vocabulary, add_eos: bool
                    ) -> tuple[list[dict], list[dict], list[list[int]]]:
  """(items, exemplars, each item's few-shot prompt as token ids)."""
  items, exemplars = load(config)
  prompts = [prompt(exemplars, item["question"], config.separator) for item in items]
  return items, exemplars, textio.encode_prompts([{"inputs": p} for p in prompts],
                                                    vocabulary, add_eos)


def check_lengths(model_config, vocabulary, add_eos: bool, config: ChainOfThought,
                  encoded: Optional[list[list[int]]] = None) -> None:
  """Refuses prompts (exemplars + question) longer than the model allows, naming the knobs
  that shorten them (evaluation.report calls it before any other evaluation runs)."""
  if encoded is None:
    _, _, encoded = encoded_prompts(config, vocabulary, add_eos)
  textio.check_lengths(
      encoded, model_config, config.max_new_tokens, name="chain-of-thought item",
      fix=f"Lower chain_of_thought.shots (now {config.shots}) or "
      "chain_of_thought.max_new_tokens, or shorten the exemplars.")


def score(model, vocabulary, add_eos: bool, config: ChainOfThought,
          batch_size: int = 8) -> dict:
  """Accuracy (with its binomial standard error) and every item's generations, extracted
  answers and vote."""
  items, exemplars, encoded = encoded_prompts(config, vocabulary, add_eos)
  check_lengths(model.config, vocabulary, add_eos, config, encoded)
  samples = []
  for sample in range(config.samples):
    samples.append([p["prediction"] for p in textio.predict(
        model, encoded, vocabulary, method="greedy" if config.samples == 1 else "sample",
        max_new_tokens=config.max_new_tokens, temperature=config.temperature, top_k=0,
        top_p=1.0, beams=1, alpha=0.0, batch_size=batch_size,
        seed=config.seed + 1000 * sample)])
  predictions = []
  for index, item in enumerate(items):
    # A generation's answer is the one its own reasoning reaches: text after the next
    # "Q:" (the model writing another exemplar) is not part of it.
    generations = [s[index].split("\nQ:")[0] for s in samples]
    answers = [extract(g, config.pattern) for g in generations]
    vote = majority_vote(answers)
    predictions.append({"question": item["question"], "answer": item["answer"],
                        "generations": generations, "answers": answers, "vote": vote,
                        "correct": vote is not None and " ".join(vote.split()) == " ".join(
                            item["answer"].split())})
  accuracy = float(np.mean([p["correct"] for p in predictions])) if predictions else 0.0
  return {"accuracy": accuracy, "stderr": binomial_stderr(accuracy, max(len(predictions), 1)),
          "items": len(predictions), "shots": len(exemplars), "samples": config.samples,
          "predictions": predictions}
