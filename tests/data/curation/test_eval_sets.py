"""Decontamination's n-gram index: GPT-3's n per set, whole-item matching for short
items, and exactly the planted overlaps found."""

import json

import pytest

from t5x_lite.data.corpus_store import CorpusError
from t5x_lite.data.curation import eval_sets

ITEM = ("the quick brown fox jumps over the lazy dog near the quiet river bank "
        "while seven owls watch")


def write_set(path, records):
  path.write_text("".join(json.dumps(r) + "\n" for r in records))
  return str(path)


def test_a_planted_13_gram_is_found_and_a_12_gram_is_not(tmp_path):
  name = write_set(tmp_path / "set.jsonl", [{"text": ITEM}, {"question": "What is two plus two",
                                                               "answer": "four"}])
  index = eval_sets.build_index([name])
  words = eval_sets.Words()
  item = ITEM.split()
  assert index.set_ngram[name] == 8  # the 5th-percentile item has 5 words: min_ngram
  index13 = eval_sets.build_index([name], min_ngram=13)
  assert index13.set_ngram[name] == 13 and index13.unchecked[name] == 1
  planted = "Unrelated words come first. " + " ".join(item[2:15]) + ". And then others."
  assert set(index13.matches(words(planted))) == {(name, 0)}
  almost = "Unrelated words come first. " + " ".join(item[2:14]) + ". And then others."
  assert index13.matches(words(almost)) == {}


def test_items_shorter_than_n_are_matched_whole_and_case_and_punctuation_do_not_matter(tmp_path):
  short = "one two three four five six seven eight nine"
  name = write_set(tmp_path / "set.jsonl", [{"text": short}, {"text": ITEM}])
  index = eval_sets.build_index([name], n_grams=13, min_ngram=8)
  words = eval_sets.Words()
  assert set(index.matches(words("So: One, two; THREE four five six seven eight nine!"))) == {
      (name, 0)}
  assert index.matches(words("one two three four five six seven eight")) == {}


def test_the_project_sets_read_and_unknown_sets_are_refused():
  cloze = eval_sets.items("pydocs_cloze")
  assert len(cloze) == 200 and cloze[0].text.endswith(" dfas -- a dict")
  assert len(eval_sets.items("addition")) == 200
  assert eval_sets.items("multitask.same_play")
  with pytest.raises(CorpusError, match="unknown evaluation set 'mmlu'"):
    eval_sets.items("mmlu")
  with pytest.raises(CorpusError, match="does not exist"):
    eval_sets.items("missing.jsonl")
