"""The addition set: two-digit sums as multiple choice, the same on every machine."""

import re

from t5x_lite.data import addition
from t5x_lite.inference import multiple_choice


def test_every_question_offers_the_sum_and_three_typical_errors():
  questions = addition.questions()
  assert len(questions) == addition.QUESTIONS and questions == addition.questions()
  for question in questions:
    a, b = map(int, re.fullmatch(r"(\d+) \+ (\d+) =", question["context"]).groups())
    values = [int(choice) for choice in question["choices"]]
    assert values[question["label"]] == a + b and len(set(values)) == 4
    errors = {value - (a + b) for value in values} - {0}
    assert any(abs(e) == 1 for e in errors) and any(abs(e) == 10 for e in errors)
    if (a % 10 + b % 10) >= 10:  # the units carry: dropping it is one of the errors
      assert (a + b) - 10 in values


def test_it_is_a_builtin_question_set():
  questions = multiple_choice.question_sets(["addition"], limit=5)["addition"]
  assert len(questions) == 5 and questions[0].choices[questions[0].label].startswith(" ")
