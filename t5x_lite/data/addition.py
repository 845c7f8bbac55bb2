"""A small arithmetic set for emergence studies: two-digit addition as multiple choice
(`addition`; the chain-of-thought set `arithmetic` is word problems, a different one).

Each question is "a + b =" with four answers: the sum, and the three errors a model
makes on its way there (off by one, off by ten, and the sum with its carry dropped;
off by two where there is no carry). Generated from a seed, so the set is the same on
every machine and nothing ships or downloads. Rank classification scores it by
accuracy, by the correct answer's log-likelihood and by Brier score, and by whether
greedy decoding writes the sum (inference/multiple_choice.py).
"""

from __future__ import annotations

import numpy as np

NAME = "addition"
QUESTIONS = 200


def _without_carry(a: int, b: int) -> int:
  return (a // 10 + b // 10) * 10 + (a % 10 + b % 10) % 10


def questions(count: int = QUESTIONS, seed: int = 0) -> list[dict]:
  """`count` questions {"context", "choices", "label"} (the label's place drawn too)."""
  rng = np.random.default_rng(seed)
  made = []
  while len(made) < count:
    a, b = (int(x) for x in rng.integers(10, 100, 2))
    total = a + b
    carry_error = _without_carry(a, b)
    errors = [total + int(rng.choice([-1, 1])), total + int(rng.choice([-10, 10])),
              carry_error if carry_error != total else total + int(rng.choice([-2, 2]))]
    choices = [total, *errors]
    if len(set(choices)) < 4 or min(choices) < 0:
      continue
    order = rng.permutation(4)
    made.append({"context": f"{a} + {b} =",
                 "choices": [f" {choices[i]}" for i in order],
                 "label": int(np.flatnonzero(order == 0)[0])})
  return made
