"""Builds the multiple-choice cloze sets that ship with t5x_lite
(t5x_lite/data/multiple_choice/<corpus>_cloze.jsonl) from an embedded corpus's
validation documents, offline: pydocs (200 questions) and shakespeare (500).

Each question: a passage of a validation document (up to ~300 characters, cut at a
word boundary) as context; the true next four words as the right choice; three
distractors, each four consecutive words from a different validation document.
A model that has learnt the corpus's language (Python documentation) should
prefer the true continuation; chance is 25%.

  python tools/build_cloze.py [--corpus pydocs] [--questions 200] [--seed 0] [--output PATH]
  python tools/build_cloze.py --corpus shakespeare --questions 500
"""

from __future__ import annotations

import argparse
import json
import os
import re

import numpy as np

from t5x_lite.data import corpus_store, pydocs, shakespeare
from t5x_lite.inference.multiple_choice import BUILTIN

CONTEXT_CHARS = 300
ANSWER_WORDS = 4


CORPORA = {"pydocs": pydocs.documents, "shakespeare": shakespeare.documents}


def validation_documents(corpus: str = "pydocs") -> list[str]:
  splits = corpus_store.split_documents(CORPORA[corpus](),
                                        corpus_store.DEFAULT_VALIDATION_FRACTION)
  return [" ".join(text.split()) for text in splits["validation"]]


def build(questions: int, seed: int, corpus: str = "pydocs") -> list[dict]:
  rng = np.random.default_rng(seed)
  documents = [d.split(" ") for d in validation_documents(corpus)]
  documents = [words for words in documents if len(words) > 80]
  made, seen = [], set()
  while len(made) < questions:
    source = int(rng.integers(len(documents)))
    words = documents[source]
    cut = int(rng.integers(20, len(words) - ANSWER_WORDS))
    context_words = []
    for word in reversed(words[:cut]):  # the last ~300 characters before the cut
      if sum(len(w) + 1 for w in context_words) + len(word) > CONTEXT_CHARS:
        break
      context_words.insert(0, word)
    answer = " " + " ".join(words[cut:cut + ANSWER_WORDS])
    if (source, cut) in seen or not re.search(r"[A-Za-z]", answer):
      continue
    seen.add((source, cut))
    choices = [answer]
    while len(choices) < 4:
      other = int(rng.integers(len(documents)))
      if other == source:
        continue
      start = int(rng.integers(0, len(documents[other]) - ANSWER_WORDS))
      distractor = " " + " ".join(documents[other][start:start + ANSWER_WORDS])
      if distractor not in choices:
        choices.append(distractor)
    order = rng.permutation(4)
    made.append({"context": " ".join(context_words), "choices": [choices[i] for i in order],
                 "label": int(np.flatnonzero(order == 0)[0])})
  return made


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--corpus", choices=sorted(CORPORA), default="pydocs")
  parser.add_argument("--questions", type=int, default=200)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--output", help="default: the builtin set of the corpus")
  args = parser.parse_args()
  made = build(args.questions, args.seed, args.corpus)
  args.output = args.output or BUILTIN[f"{args.corpus}_cloze"]
  os.makedirs(os.path.dirname(args.output), exist_ok=True)
  with open(args.output, "w", encoding="utf-8") as handle:
    for question in made:
      handle.write(json.dumps(question) + "\n")
  print(f"{len(made)} questions written to {args.output}")


if __name__ == "__main__":
  main()
