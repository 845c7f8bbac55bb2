"""Rewards of sampled completions, by name (gin binds one: `rl.reward = 'exact_match'`).

A reward function takes the prompts, the completions (text, EOS removed) and the rows'
reference answers (the supervised rows' targets; may be unused) and returns one float
per completion. Rules that a function can judge are what small-scale RL can learn from:

- exact_match: 1 when the completion, stripped, equals the answer stripped, else 0.
- leading_number: 1 when the first number in the completion equals the answer's
  (GSM8K-style answer extraction: "= 42." and "42 apples" both count), else 0.
- format: 1 when the completion matches `FORMAT_PATTERN` (one line, no trailing text).
- length: the completion's length in characters, negated and scaled (-len / 100): a
  reward that shortens answers, for tests and ablations.
"""

from __future__ import annotations

import re
from typing import Callable, Sequence

import numpy as np

from t5x_lite.common.errors import ConfigError

RewardFunction = Callable[[Sequence[str], Sequence[str], Sequence[str]], np.ndarray]
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
FORMAT_PATTERN = re.compile(r"^\s*\S[^\n]*$")


def exact_match(prompts, completions, answers) -> np.ndarray:
  del prompts
  return np.array([float(c.strip() == a.strip()) for c, a in zip(completions, answers)])


def _first_number(text: str):
  found = _NUMBER.search(text)
  return None if found is None else float(found.group())


def leading_number(prompts, completions, answers) -> np.ndarray:
  del prompts
  scores = []
  for completion, answer in zip(completions, answers):
    got, want = _first_number(completion), _first_number(answer)
    scores.append(float(got is not None and want is not None and got == want))
  return np.array(scores)


def format_reward(prompts, completions, answers) -> np.ndarray:
  del prompts, answers
  return np.array([float(bool(FORMAT_PATTERN.match(c))) for c in completions])


def length(prompts, completions, answers) -> np.ndarray:
  del prompts, answers
  return np.array([-len(c) / 100.0 for c in completions])


REWARDS: dict[str, RewardFunction] = {"exact_match": exact_match,
                                      "leading_number": leading_number,
                                      "format": format_reward, "length": length}


def get(name: str) -> RewardFunction:
  """The reward function registered as `name` (ConfigError naming those that exist)."""
  if name not in REWARDS:
    raise ConfigError(f"unknown reward {name!r}; choose one of {sorted(REWARDS)} (or train "
                      "a reward model and name its MODEL_DIR).")
  return REWARDS[name]
