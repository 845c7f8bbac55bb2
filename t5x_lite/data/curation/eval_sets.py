"""The evaluation items a corpus is decontaminated against, and their n-gram index.

An item is one question of an evaluation set as a model would see it whole: the prompt
and its gold answer (a multiple-choice context with its correct choice, a multitask
example's inputs and targets, the addition set's sum and result). Sets by name:

  pydocs_cloze, shakespeare_cloze   the cloze sets (t5x_lite/data/multiple_choice/)
  addition                          the generated two-digit addition set (addition.py)
  multitask.<task>                  one multitask task's validation examples
  multitask.held_out                each held-out task (the harness's t5x_lite_held_out)
  multitask                         each multitask task
  <path>.jsonl                      a file of your own: per line "text", or "context" +
                                    "choices" + "label", or "inputs" + "targets", or
                                    "question" + "answer", or "prompt" + "completion"

Overlap is GPT-3's (Brown et al. 2020, Appendix C): an item is contaminated when any of
its word n-grams occurs in a training document. n is 13 by default but, as there, at
most a set's 5th-percentile item length and at least `min_ngram` (8), so sets of short
items are still checked; an item shorter than its set's n is matched whole, and one
shorter than `min_ngram` words cannot be checked (counted as such in the report). Words
come from datatrove's tokenizer after its text normalization (lower case, punctuation
and digits normalized as in its NGramsDecontFilter), so "the same n-gram" means what it
means in datatrove's own decontamination.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Iterable, Sequence

import numpy as np
from datatrove.utils.hashing import HashConfig, create_hash_func
from datatrove.utils.text import TextNormConfig, ngrams, simplify_text
from datatrove.utils.word_tokenizers import load_word_tokenizer

from t5x_lite.data import addition, multitask, text_files
from t5x_lite.data.corpus_store import CorpusError

CLOZE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                         "multiple_choice")
CLOZE_SETS = ("pydocs_cloze", "shakespeare_cloze")
DEFAULT_SETS = ("pydocs_cloze", "shakespeare_cloze", "addition", "multitask.held_out")
# Digits are kept: the addition set's items are numbers (datatrove's default folds them).
NORMALIZATION = TextNormConfig(norm_numbers=False)
# datatrove's sha1 hash: its default, xxhash, is written for xxhash < 4, which hashed str;
# xxhash 4 (what installs next to the rest of our dependencies) takes bytes only.
HASH = HashConfig(precision=64, hash_fc="sha1")


@dataclasses.dataclass(frozen=True)
class EvalItem:
  """One evaluation question, whole (prompt and gold answer)."""
  set: str
  index: int
  text: str


def _cloze_items(name: str, path: str) -> list[EvalItem]:
  items = []
  with open(path, "rb") as handle:
    lines = text_files.record_lines(handle.read(), path)
  for number, line in enumerate(lines, start=1):
    if line.strip():
      items.append(EvalItem(name, len(items), _item_text(json.loads(line), path, number)))
  return items


def _item_text(record: object, path: str, number: int) -> str:
  """The whole text of a JSONL record in any of the accepted shapes."""
  if isinstance(record, dict):
    if isinstance(record.get("text"), str):
      return record["text"]
    if isinstance(record.get("choices"), list) and isinstance(record.get("label"), int) \
        and 0 <= record["label"] < len(record["choices"]):
      return str(record.get("context", "")) + str(record["choices"][record["label"]])
    for prompt, answer in (("inputs", "targets"), ("question", "answer"),
                           ("prompt", "completion")):
      if isinstance(record.get(prompt), str) and isinstance(record.get(answer), str):
        return record[prompt] + " " + record[answer]
  raise CorpusError(f"{path}:{number}: an evaluation item needs a string \"text\", or "
                    "\"context\"/\"choices\"/\"label\", or \"inputs\"/\"targets\", "
                    "\"question\"/\"answer\" or \"prompt\"/\"completion\".")


def _multitask_items(name: str, task: str) -> list[EvalItem]:
  return [EvalItem(name, index, e["inputs"] + " " + e["targets"])
          for index, e in enumerate(multitask.examples(task, "validation"))]


def check_name(name: str) -> None:
  """Raises CorpusError unless `name` is a set this module can read (without reading it)."""
  known = (*CLOZE_SETS, addition.NAME, "multitask", "multitask.held_out",
           *(f"multitask.{task}" for task in multitask.TASKS))
  if name in known:
    return
  if isinstance(name, str) and name.endswith(text_files.JSONL_SUFFIXES):
    if not os.path.isfile(name):
      raise CorpusError(f"evaluation set file {name!r} does not exist.")
    return
  raise CorpusError(f"unknown evaluation set {name!r}; choose from {list(CLOZE_SETS)}, "
                    f"{addition.NAME!r}, 'multitask', 'multitask.held_out', "
                    "'multitask.<task>', or a .jsonl path.")


def expand(names: Iterable[str]) -> list[str]:
  """Set names with the multitask groups as their tasks (`multitask.<task>` each), so an
  item's index is its index in that task's validation examples, as evaluation counts."""
  expanded = []
  for name in names:
    if name == "multitask":
      expanded += [f"multitask.{task}" for task in multitask.TASKS]
    elif name == "multitask.held_out":
      expanded += [f"multitask.{task}" for task in multitask.held_out_tasks()]
    else:
      expanded.append(name)
  return list(dict.fromkeys(expanded))


def items(name: str) -> list[EvalItem]:
  """The items of one evaluation set by name or JSONL path (module docstring)."""
  check_name(name)
  if name in CLOZE_SETS:
    return _cloze_items(name, os.path.join(CLOZE_DIR, f"{name}.jsonl"))
  if name == addition.NAME:
    return [EvalItem(name, index, q["context"] + q["choices"][q["label"]])
            for index, q in enumerate(addition.questions())]
  if name in ("multitask", "multitask.held_out"):
    raise CorpusError(f"{name!r} is a group of sets; expand() names its tasks.")
  if name.startswith("multitask."):
    return _multitask_items(name, name.removeprefix("multitask."))
  return _cloze_items(name, name)


class Words:
  """datatrove's English word tokenizer after its decontamination normalization."""

  def __init__(self):
    self._tokenizer = load_word_tokenizer("en")

  def __call__(self, text: str) -> list[str]:
    return self._tokenizer.word_tokenize(simplify_text(text, NORMALIZATION))


@dataclasses.dataclass
class NGramIndex:
  """{n: {n-gram hash: [(set, item index), ...]}} over every checked item, with each
  set's n and its counts of items checked and too short to check."""
  hashes: dict[int, dict[int, list[tuple[str, int]]]]
  set_ngram: dict[str, int]
  checked: dict[str, int]
  unchecked: dict[str, int]
  hash_config: HashConfig

  def matches(self, words: Sequence[str]) -> dict[tuple[str, int], str]:
    """{(set, item): the first matching n-gram} for a document's words."""
    hash_fn = create_hash_func(self.hash_config)
    found: dict[tuple[str, int], str] = {}
    for n, table in self.hashes.items():
      for gram in ngrams(words, n):
        text = " ".join(gram)
        for key in table.get(hash_fn(text), ()):
          found.setdefault(key, text)
    return found


def set_ngram_size(lengths: Sequence[int], n_grams: int, min_ngram: int) -> int:
  """GPT-3's n for a set: its 5th-percentile item length in words, within
  [min_ngram, n_grams]."""
  if not lengths:
    return n_grams
  return int(min(n_grams, max(min_ngram, np.percentile(lengths, 5, method="lower"))))


def build_index(sets: Iterable[str], n_grams: int = 13, min_ngram: int = 8,
                hash_config: HashConfig = HASH) -> NGramIndex:
  """The n-gram index of every item of `sets` (module docstring)."""
  words = Words()
  hash_fn = create_hash_func(hash_config)
  hashes: dict[int, dict[int, list[tuple[str, int]]]] = {}
  set_ngram, checked, unchecked = {}, {}, {}
  for name in expand(sets):
    tokenized = [(item, words(item.text)) for item in items(name)]
    n = set_ngram_size([len(w) for _, w in tokenized], n_grams, min_ngram)
    set_ngram[name], checked[name], unchecked[name] = n, 0, 0
    for item, item_words in tokenized:
      if len(item_words) < min_ngram:
        unchecked[name] += 1
        continue
      checked[name] += 1
      size = min(n, len(item_words))
      table = hashes.setdefault(size, {})
      for gram in set(ngrams(item_words, size)):
        table.setdefault(hash_fn(" ".join(gram)), []).append((name, item.index))
  return NGramIndex(hashes, set_ngram, checked, unchecked, hash_config)
