"""The offline harness tasks' documents (their YAML files name these functions with
`custom_dataset: !function documents.<name>`): built from data that ships with
t5x_lite, so nothing is downloaded.

  - pydocs_cloze: the four-way cloze set (t5x_lite/data/multiple_choice/*.jsonl);
  - multitask: the validation examples of one task of the offline multitask mixture
    (t5x_lite/data/multitask.py), held-out ones with answer choices and the
    docstring summary, scored by exact match.
"""

from __future__ import annotations

import datasets

from t5x_lite.data import multitask as mixture
from t5x_lite.inference import multiple_choice


def pydocs_cloze(**_) -> datasets.DatasetDict:
  questions = multiple_choice.read_questions("pydocs_cloze")
  return datasets.DatasetDict({"validation": datasets.Dataset.from_list(
      [{"context": q.context, "choices": list(q.choices), "label": q.label}
       for q in questions])})


def multitask(task: str, **_) -> datasets.DatasetDict:
  examples = [{"inputs": e["inputs"], "targets": e["targets"], "choices": list(e["choices"]),
               "label": e["choices"].index(e["targets"]) if e["choices"] else -1}
              for e in mixture.examples(task, "validation")]
  return datasets.DatasetDict({"validation": datasets.Dataset.from_list(examples)})
