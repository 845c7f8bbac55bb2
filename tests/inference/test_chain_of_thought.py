"""Chain-of-thought prompting with self-consistency (t5x_lite/chain_of_thought.py)."""

import json
from types import SimpleNamespace

import pytest
import seqio

from t5x_lite.common.errors import ConfigError
from t5x_lite.inference import chain_of_thought as cot
from t5x_lite.inference import evaluation
from t5x_lite.inference.textio import InferenceError
from t5x_lite.models import TransformerConfig

PATTERN = cot.ChainOfThought().pattern


def test_answers_are_extracted_by_the_pattern():
  assert cot.extract("3 + 4 = 7. 7 - 2 = 5. The answer is 5.", PATTERN) == "5"
  assert cot.extract("The answer is 12", PATTERN) == "12"
  assert cot.extract("I think it is 5", PATTERN) is None
  assert cot.extract("Answer: forty two", r"Answer: (.*)") == "forty two"
  assert cot.extract("x = 9", r"\d+") == "9"  # no group: the whole match


def test_majority_vote_ignores_missing_answers_and_breaks_ties_by_order():
  assert cot.majority_vote(["5", "7", "5", None]) == "5"
  assert cot.majority_vote([None, "7", "5"]) == "7"  # a tie: the first answer reached
  assert cot.majority_vote([None, None, "3", None]) == "3"  # an answer beats none
  assert cot.majority_vote([None, None]) is None


def test_the_prompt_shows_rationales_then_asks():
  exemplars = [{"question": "1 + 1?", "rationale": "One and one make 2.", "answer": "2"}]
  assert cot.prompt(exemplars, "2 + 2?", separator="\n###\n") == (
      "Q: 1 + 1?\nA: One and one make 2. The answer is 2.\n###\nQ: 2 + 2?\nA:")
  problem = cot.arithmetic_problems(1, seed=0)[0]
  numbers = [int(word) for word in problem["question"].replace(".", " ").split()
             if word.isdigit()]
  assert int(problem["answer"]) == numbers[0] + numbers[1] - numbers[2]
  assert cot.arithmetic_problems(3, seed=1) != cot.arithmetic_problems(3, seed=2)


def test_self_consistency_votes_over_samples(monkeypatch):
  config = cot.ChainOfThought(samples=3, max_items=2, shots=2)
  items, _ = cot.load(config)
  # Hand-made generations, per sample, per item: item 0 gets its answer twice out of
  # three; item 1 gets a wrong answer twice; text after a new "Q:" is not the answer.
  right, wrong = items[0]["answer"], str(int(items[1]["answer"]) + 1)
  outputs = iter([[f" so. The answer is {right}.", f" The answer is {wrong}."],
                  [" no idea\nQ: x\nA: The answer is 0.", f" The answer is {wrong}."],
                  [f" The answer is {right}", f" The answer is {items[1]['answer']}."]])
  calls = []

  def predict(model, prompts, vocabulary, **kwargs):
    calls.append(kwargs)
    return [{"prediction": text} for text in next(outputs)]

  monkeypatch.setattr(cot.textio, "predict", predict)
  result = cot.score(SimpleNamespace(config=TransformerConfig(max_length=2048)),
                        seqio.ByteVocabulary(), False, config)
  assert [p["vote"] for p in result["predictions"]] == [right, wrong]
  assert result["predictions"][0]["answers"] == [right, None, right]
  assert result["accuracy"] == 0.5 and result["items"] == 2
  assert result["stderr"] == pytest.approx(0.5 / 2 ** 0.5)
  assert {c["method"] for c in calls} == {"sample"} and len({c["seed"] for c in calls}) == 3


def test_a_users_items_need_exemplars_and_bad_files_are_named(tmp_path):
  items = tmp_path / "items.jsonl"
  items.write_text(json.dumps({"question": "q", "answer": "a"}) + "\n" + "{oops\n")
  with pytest.raises(ConfigError, match="give the exemplars"):
    cot.ChainOfThought(items=str(items))
  with pytest.raises(ConfigError, match="items.jsonl:2: not JSON"):
    cot.load(cot.ChainOfThought(items=str(items), shots=0))
  with pytest.raises(ConfigError, match="not a regular expression"):
    cot.ChainOfThought(pattern="(")


def test_prompts_too_long_for_the_model_are_refused_before_any_evaluation_runs(monkeypatch):
  # Eight exemplars of arithmetic do not fit a 256-position model: evaluate says so (and
  # which knobs shorten them) before its perplexity pass, which would take the longest.
  def perplexity(*args, **kwargs):
    raise AssertionError("evaluation ran before the prompt lengths were checked")

  monkeypatch.setattr(evaluation, "perplexity", perplexity)
  model = SimpleNamespace(config=TransformerConfig(max_length=256))
  with pytest.raises(InferenceError, match=r"chain-of-thought item 1: .*chain_of_thought.shots "
                     r"\(now 8\)"):
    evaluation.report(model, "pydocs.full_lm.byte", {"targets": 64},
                        chain_of_thought=cot.ChainOfThought(shots=8, max_items=2))
  with pytest.raises(InferenceError, match="example 1: .*infer.max_new_tokens"):
    evaluation.report(model, "pydocs.full_lm.byte", {"targets": 64},
                        generation_sets={"long": [{"inputs": "x" * 300, "targets": "y"}]})
  # A model with room for them refuses nothing: the check passes and evaluation starts.
  roomy = SimpleNamespace(config=TransformerConfig(max_length=4096))
  with pytest.raises(AssertionError, match="evaluation ran"):
    evaluation.report(roomy, "pydocs.full_lm.byte", {"targets": 64},
                        chain_of_thought=cot.ChainOfThought(shots=8, max_items=2))
